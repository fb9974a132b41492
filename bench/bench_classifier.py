"""Training throughput of the classifiers: images/s and peak memory of forward + backward + step.

    .venv/bin/python bench/bench_classifier.py --sizes=128,256 --steps=3

For each device (the CPU, and CUDA when present) and image size it measures, in this one process:
  capsule_fast      the study's capsule network (preset "study"), fast routing path, one batch of
                    batch_size images (batch_size/4 samples x their 4 rotated copies) per step
  capsule_baseline  a straightforward version of the study's training: general routing loop
                    (3 iterations) and one sample's 4 rotated copies per step
  capsule_compact   the compact CPU preset (the default of train.py before the residual network), as capsule_fast
                    (opt in: --models=...,capsule_compact)
  resnet50          torchvision ResNet50 with the study's head, batch_size images per step
and the speed-up of capsule_fast over capsule_baseline. Peak memory (weights, optimiser state and
activations) is the CUDA allocator's peak on a GPU; on the CPU it is the growth of the peak resident
memory of a fresh process running one training step (see ``peak_memory_mib``).
"""
from pathlib import Path

sizes = [128, 256, 512]
steps = 3                     # timed steps per measurement (after one warm-up step)
batch_size = 16
models = ["capsule_fast", "capsule_baseline", "resnet50"]
devices = ["cpu", "cuda"]     # cuda is skipped when not available
threads = 2
out = ""                      # optional JSON file for the results

ROTATIONS = 4


def _peak_rss_kib():
    """This process's resident-memory high-water mark (VmHWM; unlike ru_maxrss it is not
    inherited from the parent across exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu_peak_child(kind, size, batch):
    """In a fresh process: growth of peak resident memory over one warm-up and one training step."""
    import torch
    torch.set_num_threads(1)
    before = _peak_rss_kib()
    measure(kind, size, torch.device("cpu"), 1, batch, with_memory=False)
    return (_peak_rss_kib() - before) / 1024


def peak_memory_mib(kind, size, device, batch):
    """Peak memory of training (weights, optimiser state, activations): the CUDA allocator's peak,
    or on the CPU the growth of the peak resident memory of a fresh process (clean of the other
    measurements, which a process's allocator would otherwise reuse)."""
    import multiprocessing

    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        measure(kind, size, device, 1, batch, with_memory=False)
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_cpu_peak_child, (kind, size, batch))


def _train_step(model, optimiser, images, labels):
    import torch.nn.functional as F
    optimiser.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    optimiser.step()


def measure(kind, size, device, n_steps, batch, with_memory=True):
    """(images per second, peak memory in MiB or None) of ``n_steps`` training steps of ``kind``."""
    import time

    import torch

    from capsule_classifier.augment import rotated_copies
    from capsule_classifier.network import make_model

    torch.manual_seed(0)
    if kind == "resnet50":
        model = make_model("resnet50")
    else:
        routing = "general" if kind == "capsule_baseline" else "fast"
        preset = "compact" if kind == "capsule_compact" else "study"
        model = make_model("capsule", image_size=size, preset=preset, routing=routing)
    model.to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=5e-5, momentum=0.9)
    samples = torch.rand(batch // ROTATIONS, 1, size, size, device=device)
    labels = torch.randint(0, 3, (batch // ROTATIONS,), device=device)
    images, image_labels = rotated_copies(samples, labels, ROTATIONS)

    def one_step():
        if kind == "capsule_baseline":      # the study: one sample's rotations per step
            for k in range(len(samples)):
                rows = slice(k * ROTATIONS, (k + 1) * ROTATIONS)
                _train_step(model, optimiser, images[rows], image_labels[rows])
        else:
            _train_step(model, optimiser, images, image_labels)

    one_step()                               # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n_steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    speed = len(images) * n_steps / seconds
    return speed, peak_memory_mib(kind, size, device, batch) if with_memory else None


def run(flags):
    import json

    import torch

    torch.set_num_threads(flags["threads"])
    chosen = [torch.device(d) for d in flags["devices"] if d == "cpu" or torch.cuda.is_available()]
    results = []
    print(f"{'device':6} {'size':>5} {'model':18} {'images/s':>9} {'peak MiB':>9}")
    for device in chosen:
        for size in flags["sizes"]:
            row = {}
            for kind in flags["models"]:
                speed, peak = measure(kind, int(size), device, flags["steps"], flags["batch_size"])
                row[kind] = speed
                results.append({"device": device.type, "size": int(size), "model": kind,
                                "images_per_s": round(speed, 2), "peak_mib": round(peak, 1),
                                "batch_size": flags["batch_size"], "steps": flags["steps"]})
                print(f"{device.type:6} {size:>5} {kind:18} {speed:9.2f} {peak:9.1f}", flush=True)
            if "capsule_fast" in row and "capsule_baseline" in row:
                print(f"{device.type:6} {size:>5} fast / baseline speed-up: "
                      f"{row['capsule_fast'] / row['capsule_baseline']:.2f}x", flush=True)
    if flags["out"]:
        Path(flags["out"]).write_text(json.dumps({"threads": flags["threads"], "results": results}, indent=2))
    return results


if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags

    run(apply_cli_flags(globals()))
