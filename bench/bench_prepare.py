"""Benchmark: prepare_dataset.py on real figshare .mat files (wall time, slices/s, peak memory).

    python bench/bench_prepare.py --source=data/figshare_dev_mat --image_size=512

If ``source`` does not exist it is first built from the development slices with the shared
converter (``../shared/tools/figshare_to_mat.py``). The run is the real script in a subprocess;
peak memory is the largest sum of resident memory over that process and its workers, sampled
every 50 ms. In the same process, the skull closing by distance transforms is timed against
scikit-image's closing with a disk on the same slices (the baseline it replaces).
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


def time_prepare(out):
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

    apply_cli_flags(globals())
    if not os.path.isdir(source):
        subprocess.run([sys.executable, str(ROOT / "../shared/tools/figshare_to_mat.py"), convert_from, source],
                       check=True)
    files = iter_sources(source)
    with tempfile.TemporaryDirectory() as folder:
        seconds, peak, message = time_prepare(os.path.join(folder, "bench.h5"))
        size_mb = os.path.getsize(os.path.join(folder, "bench.h5")) / 2**20
    print(message)
    print(f"prepare_dataset.py, {len(files)} slices at {image_size} px, {os.cpu_count()} cores: "
          f"{seconds:.1f} s wall, {len(files) / seconds:.1f} slices/s, peak memory {peak / 2**20:.0f} MiB "
          f"(process tree), output {size_mb:.0f} MiB")
    radius, timings = time_closings([f.path for f in files[:closing_slices]])
    print(f"skull closing, disk radius {radius} px at {image_size} px, per slice:")
    for name, ms in timings.items():
        print(f"  {name:24s} {ms:7.1f} ms")
