"""The study's paired-difference figure: per comparison of two arms, each fold's per-seed accuracy
differences, the fold's mean, and the 95 % intervals over the pairs and over the fold means."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from preprocess.atomic import atomic_path  # noqa: E402

PAIRED_FIGURE = "paired_differences.png"


def _count(number, noun):
    return f"{number} {noun}" + ("" if number == 1 else "s")


def plot_paired_differences(differences, path):
    """One panel per comparison (``differences``: name -> ``paired_difference`` of accuracy): each
    seed's difference and each fold's mean, then the mean with its 95 % interval over all pairs and
    over the fold means; returns the file's name."""
    most_folds = max(d["folds"] for d in differences.values())
    panel_width = max(4.2, 1.5 + 0.45 * most_folds)             # room for each fold's tick
    fig, axes = plt.subplots(1, len(differences), figsize=(panel_width * len(differences), 3.6), squeeze=False)
    for ax, (name, d) in zip(axes[0], differences.items()):
        folds = list(d["per_fold"])
        for x, fold in enumerate(folds):
            values = d["per_fold"][fold]
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]   # seeds side by side
            ax.scatter(x + np.asarray(offsets), values, s=18, color="tab:blue", alpha=0.7,
                       label="one seed" if x == 0 else None)
            ax.scatter([x], [np.mean(values)], marker="_", s=400, color="black",
                       label="fold mean" if x == 0 else None)
        summaries = [("all\npairs", d["mean"], d.get("ci95")),
                     ("fold\nmeans", d["fold_means_mean"], d.get("fold_means_ci95"))]
        ticks = []
        for offset, (label, centre, bounds) in enumerate(summaries, start=1):
            x = len(folds) - 0.5 + offset
            if bounds:
                ax.errorbar([x], [centre], yerr=[[centre - bounds[0]], [bounds[1] - centre]], fmt="o",
                            color="tab:red", capsize=4, label="mean, 95 % CI" if offset == 1 else None)
            else:                   # too few values, or no spread: a hollow mean and no bar
                ax.plot([x], [centre], "o", mfc="none", color="tab:red")
                label += "\n(no CI)"
            ticks.append((x, label))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(list(range(len(folds))) + [x for x, _ in ticks],
                      [f"fold {fold}" if len(folds) <= 6 else fold for fold in folds] + [label for _, label in ticks],
                      fontsize=8)
        if len(folds) > 6:
            ax.set_xlabel("fold")
        ax.set_ylabel("accuracy difference")
        ax.set_title(f"{name}: {_count(d['pairs'], 'pair')}, {_count(d['folds'], 'fold')}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return os.path.basename(path)
