"""Benchmark: prepare_dataset.py on real figshare .mat files (wall time, slices/s, peak memory),
side by side with a plain implementation of the same steps.

    python bench/bench_prepare.py --source=data/figshare_dev_mat --image_size=512 --limit=714

If ``source`` does not exist it is first built from the development slices with the shared
converter (``../shared/tools/figshare_to_mat.py``). The run is the real script in a subprocess;
peak memory is the largest sum of resident memory over that process and its workers, sampled
every 50 ms. The baseline (``plain_prepare``) does what a careful user would write by hand: h5py
read, percentile scaling, PIL resize, Otsu, scipy's hole filling, the closing by two distance
transforms, box smoothing, largest region, outlines, a pool of worker processes, the same gzip-1
per-slice chunks; it runs in this process, alternating with the script ``repeats`` times. Then
the skull closing by distance transforms is timed against scikit-image's closing with a disk on
the same slices (the baseline it replaces).
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ----------------------------------------------------------------------------- flags
source = "data/figshare_dev_mat"                 # folder of real .mat files
convert_from = "../shared/data/figshare_dev"     # used to build ``source`` when it is missing
image_size = 512
workers = 0                                      # 0 = one per core
limit = 0                                        # first N files only (0: all)
repeats = 2                                      # alternating runs of the script and the baseline
closing_slices = 20                              # slices for the closing comparison
# -----------------------------------------------------------------------------


def tree_rss_bytes(pid):
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in open(f"/proc/{current}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return total


def plain_slice(job):
    """The baseline's worker: one .mat file -> (image float16, label, pid, tumour mask, condition)."""
    import h5py
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    path, size = job
    with h5py.File(path, "r") as f:
        group = f["cjdata"]
        image = np.asarray(group["image"][()], np.float32).T
        tumour = np.asarray(group["tumorMask"][()]).T > 0
        label = int(np.asarray(group["label"][()]).ravel()[0]) - 1
        pid = "".join(chr(c) for c in np.asarray(group["PID"][()]).ravel() if c)
    lo, hi = np.percentile(image, (0.5, 99.5))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        tumour = np.asarray(Image.fromarray(tumour.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    radius, box = max(1, round(25 * size / 512)), max(1, round(50 * size / 512))
    head = ndimage.binary_fill_holes(image > threshold_otsu(image))
    padded = np.pad(head, radius + 1)
    closed = ndimage.distance_transform_edt(ndimage.distance_transform_edt(~padded) <= radius) > radius
    head = ndimage.binary_fill_holes(closed[radius + 1:-radius - 1, radius + 1:-radius - 1])
    head = ndimage.uniform_filter(head.astype(np.float32), size=box, mode="constant") > 0.5
    labelled, count = ndimage.label(head, structure=np.ones((3, 3), bool))
    if count > 1:
        head = labelled == np.bincount(labelled.ravel())[1:].argmax() + 1
    head = ndimage.binary_fill_holes(head)
    edges = [m & ~ndimage.binary_erosion(m, border_value=0) for m in (head, tumour)]
    return image.astype(np.float16), label, pid, tumour.astype(np.uint8), (edges[0] | edges[1]).astype(np.uint8)


def plain_prepare(paths, out, size, processes):
    """The baseline: ``plain_slice`` in a pool, the parent writes gzip-1 chunks of one slice."""
    import multiprocessing

    import h5py
    started = time.perf_counter()
    n = len(paths)
    with h5py.File(out, "w") as f, multiprocessing.get_context("spawn").Pool(processes) as pool:
        columns = {name: f.create_dataset(name, (n, size, size), dtype=dtype, chunks=(1, size, size),
                                          compression="gzip", compression_opts=1)
                   for name, dtype in (("images", "f2"), ("tumor_masks", "u1"), ("conditions", "u1"))}
        labels, pids = f.create_dataset("labels", (n,), "i8"), []
        for row, (image, label, pid, tumour, condition) in enumerate(
                pool.imap(plain_slice, [(p, size) for p in paths], chunksize=4)):
            columns["images"][row], columns["tumor_masks"][row], columns["conditions"][row] = image, tumour, condition
            labels[row] = label
            pids.append(pid)
        f.create_dataset("patient_ids", data=pids)
    return time.perf_counter() - started


def time_prepare(out, source):
    command = [sys.executable, "preprocess/prepare_dataset.py", f"--source={source}", f"--out={out}",
               f"--image_size={image_size}", f"--workers={workers}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"prepare_dataset.py failed with status {process.returncode}")
    return seconds, peak, process.stdout.read().strip()


def time_closings(paths):
    import numpy as np
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk

    from preprocess.intensity import normalise_slice, resize_slice
    from preprocess.mat_reader import read_mat_slice
    from preprocess.masks import CLOSING_RADIUS, disk_closing, scaled

    radius = scaled(CLOSING_RADIUS, image_size)
    regions = []
    for path in paths:
        image = resize_slice(normalise_slice(read_mat_slice(path)["image"]), image_size)
        regions.append(image > threshold_otsu(image))
    timings = {}
    for name, close in (("distance transforms", lambda r: disk_closing(r, radius)),
                        ("skimage closing(disk)", lambda r: closing(np.pad(r, radius + 1), disk(radius)))):
        started = time.perf_counter()
        for region in regions:
            close(region)
        timings[name] = (time.perf_counter() - started) / len(regions) * 1000
    return radius, timings


if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags
    from preprocess.mat_reader import iter_sources
    from preprocess.parallel import default_workers

    apply_cli_flags(globals())
    if not os.path.isdir(source):
        subprocess.run([sys.executable, str(ROOT / "../shared/tools/figshare_to_mat.py"), convert_from, source],
                       check=True)
    files = iter_sources(source)[:limit or None]
    processes = workers or default_workers()
    with tempfile.TemporaryDirectory() as folder:
        subset = os.path.join(folder, "mat")
        os.mkdir(subset)
        for ref in files:
            os.symlink(os.path.abspath(ref.path), os.path.join(subset, ref.name))
        ours, plain = [], []
        for _ in range(repeats):
            seconds, peak, message = time_prepare(os.path.join(folder, "bench.h5"), subset)
            size_mb = os.path.getsize(os.path.join(folder, "bench.h5")) / 2**20
            os.remove(os.path.join(folder, "bench.h5"))
            ours.append(seconds)
            plain.append(plain_prepare([ref.path for ref in files], os.path.join(folder, "plain.h5"), image_size,
                                       processes))
            plain_mb = os.path.getsize(os.path.join(folder, "plain.h5")) / 2**20
            os.remove(os.path.join(folder, "plain.h5"))
    print(message)
    print(f"{len(files)} slices at {image_size} px, {processes} worker processes, {os.cpu_count()} cores "
          f"({repeats} alternating runs each):")
    print(f"  prepare_dataset.py  {min(ours):6.1f} s best ({', '.join(f'{s:.1f}' for s in ours)}), "
          f"{len(files) / min(ours):5.1f} slices/s, peak memory {peak / 2**20:.0f} MiB, output {size_mb:.0f} MiB")
    print(f"  plain baseline      {min(plain):6.1f} s best ({', '.join(f'{s:.1f}' for s in plain)}), "
          f"{len(files) / min(plain):5.1f} slices/s, output {plain_mb:.0f} MiB")
    print(f"  speed of prepare_dataset.py relative to the baseline: {min(plain) / min(ours):.2f}x")
    radius, timings = time_closings([f.path for f in files[:closing_slices]])
    print(f"skull closing, disk radius {radius} px at {image_size} px, per slice:")
    for name, ms in timings.items():
        print(f"  {name:24s} {ms:7.1f} ms")
