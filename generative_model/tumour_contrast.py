"""Do synthetic tumours enhance like real ones? Per class, each slice's tumour brightness over its
tissue level (``preprocess.intensity.tumour_contrast``), real against synthetic.

On T1 contrast-enhanced slices this ratio is a class cue: meningiomas and pituitary tumours enhance
(median about 1.5 on the development slices), gliomas much less (about 1.0). A GAN that gets it
wrong teaches a classifier trained on its slices the wrong cue, however good its texture looks.
Written to evaluation.json (medians, quartiles, and the Wasserstein-1 distance between the real and
synthetic distributions) and ``tumour_contrast.png`` (box plots per class).
"""
import h5py
import numpy as np
from scipy.stats import wasserstein_distance

from preprocess.dataset import CLASS_NAMES, read_column
from preprocess.intensity import tumour_contrast

BATCH = 256


def contrasts_by_class(path, max_slices=None, seed=0):
    """Per class name: the tumour contrasts of (at most ``max_slices``, drawn at random) slices of a
    dataset file with tumor_masks; slices without a tumour or tissue are left out."""
    labels = read_column(path, "labels")
    rows = np.arange(len(labels))
    if max_slices and len(rows) > max_slices:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_slices, replace=False))
    values = {name: [] for name in CLASS_NAMES}
    with h5py.File(path, "r") as f:
        if "tumor_masks" not in f:
            raise KeyError(f"{path}: no 'tumor_masks', which the tumour contrast needs")
        for start in range(0, len(rows), BATCH):
            part = rows[start:start + BATCH]
            images = f["images"][part].astype(np.float32)
            masks = f["tumor_masks"][part]
            for image, mask, label in zip(images, masks, labels[part]):
                value = tumour_contrast(image, mask)
                if np.isfinite(value):
                    values[CLASS_NAMES[label]].append(value)
    return {name: np.array(v) for name, v in values.items()}


def _summary(values):
    if not len(values):
        return {"slices": 0}
    q1, median, q3 = np.percentile(values, (25, 50, 75))
    return {"slices": int(len(values)), "median": float(median), "quartiles": [float(q1), float(q3)]}


def tumour_contrast_report(real_path, synthetic_path, heldout_path=None, png_path=None, max_slices=2000, seed=0):
    """Per class: the contrast summaries of the real (training), synthetic and, if given, held-out
    real slices, the synthetic median over the real one, and the Wasserstein-1 distance of each
    other set from the real training slices (the held-out one is the real-to-real floor)."""
    sets = {"real": contrasts_by_class(real_path, max_slices, seed),
            "synthetic": contrasts_by_class(synthetic_path, max_slices, seed)}
    if heldout_path:
        sets["heldout"] = contrasts_by_class(heldout_path, max_slices, seed)
    report = {}
    for name in CLASS_NAMES:
        real = sets["real"][name]
        entry = {part: _summary(values[name]) for part, values in sets.items()}
        for part in sets:
            if part != "real" and len(real) and len(sets[part][name]):
                entry[f"wasserstein_{part}"] = float(wasserstein_distance(real, sets[part][name]))
        if len(real) and len(sets["synthetic"][name]):
            entry["synthetic_over_real_median"] = entry["synthetic"]["median"] / entry["real"]["median"]
        report[name] = entry
    if png_path:
        _plot(sets, png_path)
        report["figure"] = str(png_path)
    return report


def _plot(sets, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CLASS_NAMES), figsize=(3.2 * len(CLASS_NAMES), 3.2), sharey=True)
    for ax, name in zip(axes, CLASS_NAMES):
        parts = [part for part in sets if len(sets[part][name])]
        ax.boxplot([sets[part][name] for part in parts], showfliers=False)
        ax.set_xticks(range(1, len(parts) + 1), parts)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("tumour mean / tissue median")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
