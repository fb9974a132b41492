"""Stage 1a: read the figshare .mat files (folder or the published zip archives) into a dataset file.

    python preprocess/prepare_dataset.py --source=PATH --out=data/figshare_256.h5 --image_size=256

Each slice is normalised on its own, resized to image_size (the 256x256 slices of the published
set are upsampled, not dropped) and given its condition mask (skull outline + tumour outline).
The layout of the output is documented in preprocess/dataset.py.
"""
# ----------------------------------------------------------------------------- flags
source = "data/demo/mat"       # folder of <index>.mat files, a .mat file, a .zip or folder of zips
out = "data/demo/demo_128.h5"  # dataset file to write (appears only when complete)
image_size = 128               # side of the square slices in the output (512 = published size)
skip_bad = False               # True: leave unreadable or invalid files out and list them
workers = 0                    # processes; 0 = one per core
# -----------------------------------------------------------------------------


def run(flags):
    from preprocess.prepare import prepare_dataset

    summary = prepare_dataset(flags["source"], flags["out"], flags["image_size"], flags["skip_bad"],
                              flags["workers"], created_with=flags)
    print(f"wrote {summary['out']}: {summary['slices']} slices (per class {summary['per_class']}), "
          f"{summary['not_512']} resized from a size other than 512, in {summary['seconds']} s")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} files:")
        for line in summary["skipped"]:
            print("  " + line)


if __name__ == "__main__":
    from preprocess.flags import run_script
    from preprocess.mat_reader import MatFileError

    run_script(run, globals(), expected=(MatFileError, FileNotFoundError, ValueError))
