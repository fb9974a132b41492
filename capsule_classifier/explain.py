"""Explain a classifier's predictions: a saliency map per slice, overlays, and how much of each map
falls on the tumour (when the input has tumour masks).

    python capsule_classifier/explain.py --checkpoint=checkpoints/RUN/best.pt --input=PATH --out=DIR

PATH is what predict.py takes (.mat files or zips, png/jpg, dataset files, folders). Writes
DIR/explanations.csv (file, true and predicted class, in_tumour, in_margin, pointing_hit,
tumour_area, overlay), DIR/summary.json (means per class and for right and wrong predictions) and
DIR/overlays/*.png for the first --max_overlays slices. Needs captum (pip install captum).
"""
import sys

import numpy as np

checkpoint = ""
input = ""
out = "explanations"
method = "gradcam"            # "gradcam", "occlusion" or "lime" (see capsule_classifier/explanations.py)
max_overlays = 50             # overlay PNGs for the first this many slices (the CSV covers all)
batch_size = 16
device = "cpu"
threads = 2

SCORES = ("in_tumour", "in_margin", "pointing_hit", "tumour_area")


def _group_means(rows, key):
    groups = {}
    for row in rows:
        if row["in_tumour"] != "":
            groups.setdefault(row[key], []).append(row)
    return {str(name): {"slices": len(members), **{s: round(float(np.mean([float(m[s]) for m in members])), 4)
                                                 for s in SCORES}}
            for name, members in sorted(groups.items())}


def run(flags):
    import csv
    import json
    import os

    import torch

    from capsule_classifier.checkpoint import model_for_script
    from capsule_classifier.explanations import gradcam_layer, overlay, saliency, tumour_scores
    from capsule_classifier.inference import iter_slices
    from preprocess.atomic import atomic_path
    from preprocess.dataset import CLASS_NAMES

    model, record, chosen = model_for_script(flags, "explain.py", "input")
    size = record["image_size"]
    layer = gradcam_layer(model, size) if flags["method"] == "gradcam" else None
    os.makedirs(os.path.join(flags["out"], "overlays"), exist_ok=True)
    rows, pending = [], []

    def flush():
        images = torch.as_tensor(np.stack([p[1] for p in pending]))[:, None].float().to(chosen)
        maps, predicted = saliency(model, images, flags["method"], layer)
        for (name, image, truth), saliency_map, label in zip(pending, maps, predicted):
            row = {"file": name, "true_class": "" if truth["label"] is None else CLASS_NAMES[truth["label"]],
                   "predicted_class": CLASS_NAMES[int(label)], **{s: "" for s in SCORES}, "overlay": ""}
            row["correct"] = "" if truth["label"] is None else str(truth["label"] == int(label))
            if truth["tumour_mask"] is not None and np.any(truth["tumour_mask"]):
                row.update(tumour_scores(saliency_map, truth["tumour_mask"]))
            if len(rows) < flags["max_overlays"]:
                row["overlay"] = os.path.join("overlays", f"{len(rows):05d}.png")
                title = f"{os.path.basename(name)}: predicted {row['predicted_class']}" + (
                    f", true {row['true_class']}" if row["true_class"] else "") + (
                    f"; {row['in_tumour']:.0%} of the map in the tumour" if row["in_tumour"] != "" else "")
                overlay(os.path.join(flags["out"], row["overlay"]), image, saliency_map, truth["tumour_mask"], title)
            rows.append(row)
        pending.clear()

    for name, image, error, truth in iter_slices(flags["input"], size):
        if error is None:
            pending.append((name, image, truth))
            if len(pending) == flags["batch_size"]:
                flush()
        else:
            print(f"could not read {name}: {error}", file=sys.stderr)
    if pending:
        flush()
    if not rows:
        raise SystemExit(f"error: no readable slice in {flags['input']}")
    columns = ["file", "true_class", "predicted_class", "correct", *SCORES, "overlay"]
    with atomic_path(os.path.join(flags["out"], "explanations.csv")) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: row[k] for k in columns} for row in rows])
    summary = {"checkpoint": flags["checkpoint"], "method": flags["method"], "slices": len(rows),
               "all": _group_means([dict(r, everything="all") for r in rows], "everything").get("all"),
               "per_true_class": _group_means(rows, "true_class"), "correct_vs_wrong": _group_means(rows, "correct")}
    with open(os.path.join(flags["out"], "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps({k: summary[k] for k in ("all", "per_true_class", "correct_vs_wrong")}, indent=1))
    print(f"wrote {flags['out']}/explanations.csv, summary.json and {min(len(rows), flags['max_overlays'])} overlays")
    return summary


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.distributed import leave_unless_rank_zero
    from preprocess.flags import run_script

    leave_unless_rank_zero("explain.py")

    run_script(run, globals(), expected=(CheckpointError, ValueError, RuntimeError))
