"""Training speed of the classifiers as train.py runs them: float32 against bfloat16 autocast.

    .venv/bin/python bench/bench_training_epoch.py --sizes=256 --slices=320

In this one process, for each image size, each model and each precision, it times one pass of
``engine.train_epoch`` (augmentation on the batch, forward, loss, backward, AdamW step, weight
average; the tumour-mask loss for the residual capsule network) over ``slices`` random slices, after
a warm-up pass:
  residual     the default capsule network (capsule_preset=residual, mask head on)
  residual_paste  the same with --tumour_paste=0.5 (half of each batch gets another slice's tumour,
                  placed as --paste_at's default says)
  residual_paste_other  the same with --paste_donor=other_class (the donor drawn among the slices
                  of another class)
  residual_paste_matched  the same with --paste_levels=matched (pasted before the intensity changes,
                  scaled to the slice's tissue level: one median per slice per batch)
  residual_paste_adversary  the default (pasting) with --stretch_adversary=0.3 (a head behind a
                  gradient reversal reading the last stage; 320 random slices form two stretches, fewer
                  than 300 one, which it refuses)
  compact      the previous default (capsule_preset=compact)
  resnet18     the CPU baseline (--model=resnet18)
Printed: images per second and the bfloat16 speed-up per model, and each model's speed against the
previous default in float32 (what one epoch costs now against before). bfloat16 is only fast on
CPUs that compute it in hardware (AVX-512 BF16 or AMX: ``engine.cpu_has_native_bf16``); the
output says whether this one does.
"""
import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")     # the per-batch progress bars would drown the table
sizes = [256]
slices = 320                  # slices per timed pass (batches of batch_size)
batch_size = 32
models = ["residual", "residual_paste", "compact", "resnet18"]
precisions = ["fp32", "bf16"]
threads = 2
device = "cpu"
out = ""                      # optional JSON file for the results

BASELINE = ("compact", "fp32")   # the previous default of train.py


def _data(size, count):
    import numpy as np
    import torch

    from capsule_classifier.data import LabelledImages
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(size).view(1, size, 1)
    top = torch.randint(0, size // 2, (count, 1, 1), generator=generator)
    left = torch.randint(0, size // 2, (count, 1, 1), generator=generator).transpose(1, 2)
    masks = ((rows >= top) & (rows < top + size // 8) & (rows.transpose(1, 2) >= left)
             & (rows.transpose(1, 2) < left + size // 8)).to(torch.uint8)     # one square tumour per slice
    ids = np.array([str(k) for k in range(count)], dtype=object)
    return LabelledImages(torch.rand(count, size, size, generator=generator).half(),
                          np.arange(count) % 3, ids, ids, np.zeros(count, bool), masks)


def _model(kind, size):
    from capsule_classifier.network import make_model
    if kind == "resnet18":
        return make_model("resnet18")
    return make_model("capsule", image_size=size, preset=kind.split("_")[0])


def measure(kind, size, precision, data, device, batch):
    """Images per second of one timed ``train_epoch`` pass (after one warm-up pass)."""
    import torch

    from capsule_classifier.engine import (TrainConfig, build_stretch_adversary, make_average, make_optimiser,
                                           train_epoch)
    torch.manual_seed(0)
    model = _model(kind, size).to(device)
    config = TrainConfig(epochs=2, batch_size=batch, amp=precision == "bf16",
                         mask_weight=0.5 if kind.startswith("residual") else 0.0, vertical_flips=False,
                         tumour_paste=0.5 if "_paste" in kind else 0.0,
                         paste_donor="other_class" if kind.endswith("_other") else "any",
                         paste_levels="matched" if kind.endswith("_matched") else "raw",
                         stretch_adversary=0.3 if kind.endswith("_adversary") else 0.0)
    adversary, stretches = build_stretch_adversary(model, data, config, device)
    steps = -(-len(data) // batch)
    optimiser, scheduler = make_optimiser(model, config, steps, extra=adversary)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    average = make_average(model, config)
    speeds = [train_epoch(model, data, config, optimiser, scheduler, scaler, device, epoch, kind, average,
                          adversary, stretches)[2] for epoch in range(2)]
    return speeds[-1]


def run(flags):
    import json

    import torch

    from capsule_classifier.engine import cpu_has_native_bf16
    torch.set_num_threads(flags["threads"])
    device = torch.device(flags["device"])
    print(f"device {device}, {flags['threads']} threads, native bfloat16: {cpu_has_native_bf16()}")
    results = []
    for size in flags["sizes"]:
        data = _data(int(size), int(flags["slices"]))
        speed = {}
        for kind in flags["models"]:
            for precision in flags["precisions"]:
                speed[kind, precision] = measure(kind, int(size), precision, data, device, flags["batch_size"])
                results.append({"size": int(size), "model": kind, "precision": precision,
                                "images_per_s": round(speed[kind, precision], 1)})
                print(f"{size:>4} px  {kind:20} {precision:5} {speed[kind, precision]:7.1f} img/s", flush=True)
            if (kind, "fp32") in speed and (kind, "bf16") in speed:
                print(f"{size:>4} px  {kind:20} bf16 / fp32: {speed[kind, 'bf16'] / speed[kind, 'fp32']:.2f}x")
        if BASELINE in speed:
            for (kind, precision), value in speed.items():
                print(f"{size:>4} px  {kind} {precision} against the previous default "
                      f"({BASELINE[0]} {BASELINE[1]}): {value / speed[BASELINE]:.2f}x")
    if flags["out"]:
        Path(flags["out"]).write_text(json.dumps({"threads": flags["threads"], "results": results}, indent=2))
    return results


if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags

    run(apply_cli_flags(globals()))
