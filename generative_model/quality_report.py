"""The feature-space quality report of ``evaluate.py``: features of real and synthetic slices from a
classifier checkpoint (``capsule_classifier/features.py`` in a subprocess, so this package never
imports the classifier), then KID, FD, precision/recall and memorisation, and one figure page.

Reference sets: ``train`` (real slices the GAN was trained on) and, when given, ``heldout`` (real
slices of patients the GAN never saw). The held-out slices give the floor every metric should be
read against: KID/FD of unseen real slices against the training slices, and how close an unseen
real slice comes to its nearest training slice (memorisation needs synthetic slices that come
closer than that).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from generative_model.quality import (frechet_distance, kernel_distance, nearest_neighbours, precision_recall,
                                      structural_similarities)
from preprocess.dataset import CLASS_NAMES, read_images

ROOT = Path(__file__).resolve().parents[1]
FEATURES_SCRIPT = ROOT / "capsule_classifier" / "features.py"
CLOSEST_PAIRS = 8
QUANTILES = (0.01, 0.05, 0.25, 0.5)


def extract_features(checkpoint, paths, out_path, max_slices=0, seed=0, device="auto"):
    """Run capsule_classifier/features.py; returns the loaded .npz contents as a dict."""
    if not FEATURES_SCRIPT.exists():
        raise FileNotFoundError(f"{FEATURES_SCRIPT}: the classifier stage is not there")
    command = [sys.executable, str(FEATURES_SCRIPT), f"--checkpoint={checkpoint}",
               f"--data_path={','.join(str(p) for p in paths)}", f"--out={out_path}",
               f"--max_slices={max_slices}", f"--seed={seed}", f"--device={device}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"feature extraction failed (exit {done.returncode}): {done.stderr[-2000:]}")
    with np.load(out_path) as data:
        return {key: data[key] for key in data.files}


def distribution_metrics(reference, candidate, seed=0):
    """KID (mean, std), FD, precision and recall of ``candidate`` features against ``reference``."""
    kid_mean, kid_std = kernel_distance(reference, candidate, seed=seed)
    precision, recall = precision_recall(reference, candidate)
    return {"kid_mean": kid_mean, "kid_std": kid_std, "fd": frechet_distance(reference, candidate),
            "precision": precision, "recall": recall, "slices": int(len(candidate))}


def _memorisation(features, part_rows, paths, parts):
    """Nearest training slice of every synthetic (and held-out) slice: feature distances, SSIM of
    the pairs, and the synthetic slices closer to training than almost any unseen real slice."""
    train_features = features[part_rows["train"]]
    report, pairs = {}, {}
    for part in ("synthetic", "heldout"):
        if part not in part_rows:
            continue
        nearest, distance = nearest_neighbours(features[part_rows[part]], train_features)
        query_images = read_images(paths[part], indices=parts[part])
        train_images = read_images(paths["train"], indices=parts["train"][nearest])
        ssim = structural_similarities(query_images, train_images)
        report[part] = {"feature_distance_quantiles": dict(zip(map(str, QUANTILES),
                                                               np.quantile(distance, QUANTILES).round(4).tolist())),
                        "ssim_quantiles_high": dict(zip(("0.5", "0.95", "0.99", "max"),
                                                        np.quantile(ssim, (0.5, 0.95, 0.99, 1.0)).round(4).tolist())),
                        "share_ssim_above_0.9": float((ssim > 0.9).mean())}
        pairs[part] = (distance, ssim, query_images, train_images)
    if "heldout" in pairs:
        floor = np.quantile(pairs["heldout"][0], 0.01)
        report["synthetic"]["share_closer_than_heldout_q01"] = float((pairs["synthetic"][0] < floor).mean())
    return report, pairs


def quality_report(checkpoint, train_path, synthetic_path, heldout_path, out_dir, max_slices=2000, seed=0,
                   device="auto"):
    """Every feature-space number (also written to ``out_dir/quality.json``) and the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": str(train_path), "synthetic": str(synthetic_path)}
    if heldout_path:
        paths["heldout"] = str(heldout_path)
    names = list(paths)
    data = extract_features(checkpoint, [paths[n] for n in names], out_dir / "features.npz", max_slices, seed, device)
    features, labels = data["features"], data["labels"]
    part_rows = {name: np.flatnonzero(data["file_index"] == k) for k, name in enumerate(names)}
    parts = {name: data["rows"][rows] for name, rows in part_rows.items()}
    report = {"checkpoint": str(checkpoint), "feature_dim": int(features.shape[1]), "files": paths,
              "against_train": {}, "per_class": {}}
    for name in names[1:]:
        report["against_train"][name] = distribution_metrics(features[part_rows["train"]], features[part_rows[name]], seed)
    for class_index, class_name in enumerate(CLASS_NAMES):
        rows = {n: r[labels[r] == class_index] for n, r in part_rows.items()}
        if min(len(rows["train"]), len(rows["synthetic"])) > 10:
            report["per_class"][class_name] = {
                name: distribution_metrics(features[rows["train"]], features[rows[name]], seed)
                for name in names[1:] if len(rows[name]) > 10}
    report["memorisation"], pairs = _memorisation(features, part_rows, paths, parts)
    report["figure"] = str(quality_figure(report, pairs, out_dir / "quality.png"))
    with open(out_dir / "quality.json", "w") as handle:
        json.dump(report, handle, indent=2)
    return report


def quality_figure(report, pairs, png_path):
    """One page: the closest synthetic/training pairs, and nearest-neighbour distances and SSIM
    of synthetic and held-out slices."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distance, ssim, synthetic, train = pairs["synthetic"]
    closest = np.argsort(distance)[:CLOSEST_PAIRS]
    fig = plt.figure(figsize=(2 * len(closest), 7.2))
    grid = fig.add_gridspec(3, len(closest), height_ratios=(1, 1, 1.3))
    for column, k in enumerate(closest):
        for row, (tile, label) in enumerate(((synthetic[k], f"synthetic\nSSIM {ssim[k]:.2f}"),
                                             (train[k], "nearest training"))):
            ax = fig.add_subplot(grid[row, column])
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=7)
            ax.axis("off")
    for column, (values, title) in enumerate(((0, "feature distance to the nearest training slice"),
                                               (1, "SSIM with that slice"))):
        ax = fig.add_subplot(grid[2, column * (len(closest) // 2):(column + 1) * (len(closest) // 2)])
        for part, colour in (("synthetic", "tab:orange"), ("heldout", "tab:blue")):
            if part in pairs:
                ax.hist(pairs[part][values], bins=40, alpha=0.6, color=colour, density=True,
                        label="synthetic" if part == "synthetic" else "real, unseen patients")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
    metrics = report["against_train"]["synthetic"]
    fig.suptitle(f"synthetic vs real training slices: KID {metrics['kid_mean']:.4f} +- {metrics['kid_std']:.4f}, "
                 f"precision {metrics['precision']:.2f}, recall {metrics['recall']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
