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
from preprocess.dataset import CLASS_NAMES, check_dataset_file, has_field, read_column, read_images
from preprocess.intensity import normalise_slice, resize_mask, resize_slice
from preprocess.mat_reader import MatFileError, check_pixels, iter_sources, read_mat_slice

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAT_SUFFIXES = (".mat", ".zip")
BATCH = 64
CSV_COLUMNS = ["file", "predicted_class"] + [f"p_{name}" for name in CLASS_NAMES] + ["error"]


def prepare_raw(image, size):
    """A raw slice (any range, any size) as the training data holds it: float32 [0, 1], size x size."""
    return resize_slice(normalise_slice(image), size)


def _read_picture(path):
    """A png/jpg as float32 at its full depth: 16-bit and float images are not cut to 8 bits
    (the per-slice normalisation then scales whatever range they have)."""
    with Image.open(path) as picture:
        if picture.mode.startswith("I") or picture.mode == "F":
            return np.asarray(picture, dtype=np.float32)
        return np.asarray(picture.convert("L"), dtype=np.float32)


def _unreadable(error):
    return f"{type(error).__name__}: {error}"


NO_TRUTH = {"tumour_mask": None, "label": None}


def _file_slices(source, size):
    """(name, prepared image, truth) of every slice in one file; raises on an unreadable file.
    ``truth`` holds the tumour mask (at ``size``) and the class when the file has them."""
    lower = source.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        image = _read_picture(source)
        check_pixels(image, source)
        yield source, prepare_raw(image, size), NO_TRUTH
    elif lower.endswith(".h5"):
        # dataset files already hold prepared slices; only the size may need to change
        check_dataset_file(source, ("images", "source_ids"))
        source_ids = read_column(source, "source_ids")
        labels = read_column(source, "labels")
        masks = read_images(source, "tumor_masks") if has_field(source, "tumor_masks") else None
        for k, (source_id, image) in enumerate(zip(source_ids, read_images(source))):
            truth = {"tumour_mask": None if masks is None else resize_mask(masks[k] > 0.5, size),
                     "label": int(labels[k])}
            yield f"{source}#{source_id}", resize_slice(image, size), truth
    else:
        raise ValueError(f"{source}: cannot classify this file type (use .mat, .zip, .png, .jpg or .h5)")


def iter_slices(source, size):
    """Yield (name, prepared image, None, truth) for every readable slice under ``source`` (file or
    folder) and (name, None, reason, NO_TRUTH) for every file or zip member that cannot be read.
    ``truth``: the tumour mask and class from .mat and dataset files (None elsewhere)."""
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
    if source.lower().endswith(MAT_SUFFIXES):
        try:
            refs = iter_sources(source)
        except (MatFileError, OSError) as error:
            yield source, None, _unreadable(error), NO_TRUTH
            return
        for ref in refs:
            name = os.path.join(os.path.dirname(source), ref.name)
            try:
                fields = read_mat_slice(ref.read_bytes(), ref.name)
            except (MatFileError, OSError) as error:
                yield name, None, _unreadable(error), NO_TRUTH
                continue
            truth = {"tumour_mask": resize_mask(fields["tumor_mask"], size), "label": fields["label"]}
            yield name, prepare_raw(fields["image"], size), None, truth
        return
    try:
        slices = list(_file_slices(source, size))
    except (OSError, ValueError, KeyError, SyntaxError) as error:   # PIL raises SyntaxError for some damage
        yield source, None, _unreadable(error), NO_TRUTH
        return
    for name, image, truth in slices:
        yield name, image, None, truth


def classify(model, source, size, device, out_csv, flips=True, vertical_flips=True, prior=None,
             prior_correction=0.0, warps=False):
    """Write ``out_csv`` (file, predicted_class, p_<class>..., error) for every slice; returns the
    rows. A file that cannot be read gets a row with its reason in ``error`` and no prediction.
    ``flips``: average the probabilities over the slice and its flips (up-down ones only with
    ``vertical_flips``), as training scored them, and with ``warps`` over the test-time warps too
    (``engine.test_time_views``); ``prior``, ``prior_correction``: see ``engine.correct_for_prior``."""
    check_outputs({"out": out_csv}, {"input": source})
    rows, names, batch = [], [], []

    def flush():
        probabilities = predict(model, np.stack(batch), device, flips=flips, vertical_flips=vertical_flips,
                                prior=prior, prior_correction=prior_correction, warps=warps)
        for name, p in zip(names, probabilities):
            rows.append([name, CLASS_NAMES[int(p.argmax())]] + [f"{v:.6f}" for v in p] + [""])
        names.clear()
        batch.clear()

    for name, image, error, _ in iter_slices(source, size):
        if error is not None:
            rows.append([name, ""] + [""] * len(CLASS_NAMES) + [error])
            continue
        names.append(name)
        batch.append(image)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return rows
