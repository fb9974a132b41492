"""Figures of the GAN stage: per-epoch sample grids and loss curves (PNG, matplotlib Agg)."""
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def save_image_grid(rows, path, gap=2):
    """Tile a list of rows, each a list of 2-D arrays in [0, 1], into one grey-scale PNG."""
    size = rows[0][0].shape[0]
    height = len(rows) * (size + gap) - gap
    width = len(rows[0]) * (size + gap) - gap
    canvas = np.ones((height, width), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (size + gap), c * (size + gap)
            canvas[y:y + size, x:x + size] = np.clip(tile, 0, 1)
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(path)


def write_loss_table(history, csv_path, png_path):
    """The per-epoch losses as CSV and as a curve plot."""
    if not history:
        return
    columns = list(dict.fromkeys(name for row in history for name in row))   # a resumed run may add a loss
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(history)
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in columns:
        if name.startswith("loss_"):
            ax.plot(epochs, [row.get(name, float("nan")) for row in history], marker="o", ms=3, label=name[5:])
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (epoch mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
