"""Classify raw slices with a checkpoint: figshare .mat files (or zips of them), png/jpg images,
dataset files, or folders of those; each slice is prepared exactly like the training data
(per-slice percentile normalisation, then a bilinear resize to the checkpoint's image size).
"""
import csv
import os

import numpy as np
from PIL import Image

from capsule_classifier.engine import predict
from preprocess.atomic import atomic_path, check_outputs
from preprocess.dataset import CLASS_NAMES, read_column, read_images
from preprocess.intensity import normalise_slice, resize_slice
from preprocess.mat_reader import iter_sources, read_mat_slice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAT_SUFFIXES = (".mat", ".zip")
BATCH = 64


def prepare_raw(image, size):
    """A raw slice (any range, any size) as the training data holds it: float32 [0, 1], size x size."""
    return resize_slice(normalise_slice(image), size)


def _read_picture(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("L"), dtype=np.float32)


def iter_slices(source, size):
    """Yield (name, prepared image) for every slice under ``source`` (file or folder)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        names = sorted(os.listdir(source))
        if not any(n.lower().endswith(MAT_SUFFIXES + IMAGE_SUFFIXES + (".h5",)) for n in names):
            raise FileNotFoundError(f"{source}: no .mat, .zip, .png, .jpg or .h5 files in this folder")
        for name in names:
            if name.lower().endswith(MAT_SUFFIXES + IMAGE_SUFFIXES + (".h5",)):
                yield from iter_slices(os.path.join(source, name), size)
        return
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file or folder")
    lower = source.lower()
    if lower.endswith(MAT_SUFFIXES):
        for ref in iter_sources(source):
            fields = read_mat_slice(ref.read_bytes(), ref.name)
            yield os.path.join(os.path.dirname(source), ref.name), prepare_raw(fields["image"], size)
    elif lower.endswith(IMAGE_SUFFIXES):
        yield source, prepare_raw(_read_picture(source), size)
    elif lower.endswith(".h5"):
        # dataset files already hold prepared slices; only the size may need to change
        source_ids = read_column(source, "source_ids")
        for source_id, image in zip(source_ids, read_images(source)):
            yield f"{source}#{source_id}", resize_slice(image, size)
    else:
        raise ValueError(f"{source}: cannot classify this file type (use .mat, .zip, .png, .jpg or .h5)")


def classify(model, source, size, device, out_csv, flips=True, vertical_flips=True):
    """Write ``out_csv`` (file, predicted_class, p_<class>...) for every slice; returns the rows.
    ``flips``: average the probabilities over the slice and its flips (up-down ones only with
    ``vertical_flips``), as training scored them."""
    check_outputs({"out": out_csv}, {"input": source})
    rows, names, batch = [], [], []

    def flush():
        probabilities = predict(model, np.stack(batch), device, flips=flips, vertical_flips=vertical_flips)
        for name, p in zip(names, probabilities):
            rows.append([name, CLASS_NAMES[int(p.argmax())]] + [f"{v:.6f}" for v in p])
        names.clear()
        batch.clear()

    for name, image in iter_slices(source, size):
        names.append(name)
        batch.append(image)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted_class"] + [f"p_{name}" for name in CLASS_NAMES])
        writer.writerows(rows)
    return rows
