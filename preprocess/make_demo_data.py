"""Write a small synthetic dataset in the published figshare layout (MATLAB v7.3 .mat files).

    python preprocess/make_demo_data.py --out=data/demo_mat --patients=36 --slices_per_patient=5

Several slices per patient, one class per patient, classes in turn; a few patients get 256x256
slices as in the published set. See preprocess/phantom.py for what the slices look like.
"""

# ----------------------------------------------------------------------------- flags
out = "data/demo/mat"          # folder to write <index>.mat files into
patients = 36                  # synthetic patients (classes in turn: 1, 2, 3, 1, ...)
slices_per_patient = 5         # slices per patient, at different heights through the head
image_size = 512               # side of the slices (the published set: 512, a few 256)
small_fraction = 0.1           # share of patients whose slices are 256x256
seed = 0                       # same seed, same files
version = "7.3"                # MAT-file version: "7.3" (HDF5, as published) or "5"
# -----------------------------------------------------------------------------


def write_demo_data(out, patients, slices_per_patient, image_size, small_fraction, seed, version):
    import os

    import numpy as np
    from tqdm import tqdm

    from preprocess.mat_writer import write_mat_slice
    from preprocess.phantom import draw_patient, render_slice, tumour_border

    os.makedirs(out, exist_ok=True)
    index = 0
    for number in tqdm(range(patients), desc="demo patients", unit="patient"):
        rng = np.random.default_rng([seed, number])
        label = number % 3 + 1
        patient = draw_patient(label, rng)
        size = 256 if rng.random() < small_fraction else image_size
        for height in np.linspace(-0.6, 0.6, slices_per_patient) + rng.normal(0, 0.05, slices_per_patient):
            image, mask = render_slice(patient, height, size, rng)
            index += 1
            write_mat_slice(os.path.join(out, f"{index}.mat"), image, label, str(100000 + number),
                            mask, tumour_border(mask), version=version)
    return index


if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags

    apply_cli_flags(globals())
    count = write_demo_data(out, patients, slices_per_patient, image_size, small_fraction, seed, version)
    print(f"wrote {count} demo slices to {out}")
