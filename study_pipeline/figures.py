"""The study's paired-difference figure: per comparison of two arms, each fold's per-seed accuracy
differences, the fold's mean, and the 95 % intervals over the pairs and over the fold means."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from preprocess.atomic import atomic_path  # noqa: E402

PAIRED_FIGURE = "paired_differences.png"


def plot_paired_differences(differences, path):
    """One panel per comparison (``differences``: name -> ``paired_difference`` of accuracy);
    returns the file's name."""
    fig, axes = plt.subplots(1, len(differences), figsize=(4.2 * len(differences), 3.6), squeeze=False)
    for ax, (name, d) in zip(axes[0], differences.items()):
        folds = list(d["per_fold"])
        for x, fold in enumerate(folds):
            values = d["per_fold"][fold]
            ax.scatter([x] * len(values), values, s=18, color="tab:blue", alpha=0.7,
                       label="one seed" if x == 0 else None)
            ax.scatter([x], [np.mean(values)], marker="_", s=400, color="black",
                       label="fold mean" if x == 0 else None)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        right = len(folds) - 0.5
        for key, colour, label in (("ci95", "tab:orange", "95 % CI, pairs"),
                                   ("fold_means_ci95", "tab:green", "95 % CI, fold means")):
            if d.get(key):
                ax.axhspan(*d[key], xmin=0, xmax=1, color=colour, alpha=0.15, label=label)
        ax.set_xlim(-0.5, right)
        ax.set_xticks(range(len(folds)), [f"fold {fold}" for fold in folds], fontsize=8)
        ax.set_ylabel("accuracy difference")
        ax.set_title(f"{name}: mean {d['mean']:+.3f} over {d['pairs']} pairs", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return os.path.basename(path)
