"""A classifier's penultimate features over dataset files: t-SNE (coordinates CSV and a scatter plot
by class) and the feature files of ``features.py``."""
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from capsule_classifier.data import concatenate, load_parts, load_sources  # noqa: E402
from capsule_classifier.engine import predict  # noqa: E402
from preprocess.dataset import CLASS_NAMES  # noqa: E402

COLOURS = ("tab:blue", "tab:orange", "tab:green")
MARKERS = {False: "o", True: "^"}


def model_and_files(flags, script):
    """(model, checkpoint record, device, data paths) from a script's ``checkpoint``, ``data_path``,
    ``device`` and ``threads`` flags."""
    from capsule_classifier.checkpoint import model_for_script

    model, record, device = model_for_script(flags, script, "data_path")
    paths = [flags["data_path"]] if isinstance(flags["data_path"], str) else list(flags["data_path"])
    return model, record, device, paths


def file_features(model, path, image_size, device, max_slices, seed):
    """(features, labels, rows) of one dataset file, on a seeded subset of at most ``max_slices``."""
    data = load_sources([path], image_size)
    rows = np.arange(len(data))
    if max_slices and len(data) > max_slices:
        rows = np.sort(np.random.default_rng(seed).choice(len(data), max_slices, replace=False))
        data = data.subset(rows)
    return predict(model, data.images, device, embed=True).astype(np.float32), data.labels, rows


def embed_files(model, paths, image_size, device, max_slices, seed):
    """(features, LabelledImages, file index of each slice) of up to ``max_slices`` random slices."""
    parts = load_parts(paths, image_size)
    data = concatenate(parts)
    file_index = np.concatenate([np.full(len(part), k) for k, part in enumerate(parts)])
    if max_slices and len(data) > max_slices:
        rows = np.sort(np.random.default_rng(seed).choice(len(data), max_slices, replace=False))
        data, file_index = data.subset(rows), file_index[rows]
    return predict(model, data.images, device, embed=True), data, file_index


def map_coordinates(features, seed, method="tsne"):
    """2-D coordinates of the features by t-SNE (scikit-learn) or UMAP (umap-learn, optional)."""
    features = np.asarray(features, dtype=np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise RuntimeError("--method=umap needs umap-learn (pip install umap-learn)") from error
        neighbours = int(min(15, max(2, len(features) - 1)))
        return umap.UMAP(n_neighbors=neighbours, random_state=seed).fit_transform(features)
    if method != "tsne":
        raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
    perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def write_tsne(coordinates, data, out_png, out_csv, title, groups=None, group_names=None):
    """Scatter of the 2-D map (real: circles, synthetic: triangles) and the CSV of points. Colours
    are the classes, or ``groups`` (e.g. the file, or fold, of each slice) named by ``group_names``."""
    fig, ax = plt.subplots(figsize=(6, 5))
    if groups is None:
        groups, group_names, colours = data.labels, list(CLASS_NAMES), COLOURS
    else:
        colours = [plt.get_cmap("tab10")(k % 10) for k in range(len(group_names))]
    for synthetic in (False, True):
        for group, name in enumerate(group_names):
            rows = (groups == group) & (data.synthetic == synthetic)
            if rows.any():
                ax.scatter(coordinates[rows, 0], coordinates[rows, 1], s=9, color=colours[group],
                           marker=MARKERS[synthetic], alpha=0.7,
                           label=f"{name} ({'synthetic' if synthetic else 'real'})")
    ax.legend(fontsize=7, markerscale=1.5)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_id", "patient_id", "label", "class", "synthetic", "x", "y"])
        for k in range(len(data)):
            writer.writerow([data.source_ids[k], data.patient_ids[k], int(data.labels[k]),
                             CLASS_NAMES[data.labels[k]], bool(data.synthetic[k]),
                             f"{coordinates[k, 0]:.4f}", f"{coordinates[k, 1]:.4f}"])
