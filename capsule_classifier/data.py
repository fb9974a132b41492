"""Training data in memory.

``load_sources`` reads dataset files (``.h5``) or study pickles (``.pkl``) into one
``LabelledImages`` (images as a float16 tensor, resized to the working size when a file holds
another size). Slices from pickles have no patient id: each becomes its own group, which is said
loudly, because then splits cannot be patient-wise.

The patient-wise and leave-stretch-out splits live in ``preprocess/splits.py`` (the GAN uses them
too).
"""
import os
import warnings
from dataclasses import dataclass

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from capsule_classifier.study_pickle import load_study_pickle
from preprocess.dataset import check_dataset_file, read_attrs, read_column, read_images

RESIZE_BATCH = 256


@dataclass
class LabelledImages:
    """Slices in memory: images (N, S, S) float16 tensor in [0, 1] and per-slice columns;
    ``masks`` (N, S, S) uint8 tumour masks, or None when a source file has none."""
    images: torch.Tensor
    labels: np.ndarray
    patient_ids: np.ndarray
    source_ids: np.ndarray
    synthetic: np.ndarray    # bool per slice
    masks: torch.Tensor = None

    def __len__(self):
        return len(self.labels)

    def subset(self, rows):
        rows = np.asarray(rows)
        index = torch.as_tensor(rows)
        return LabelledImages(self.images[index], self.labels[rows], self.patient_ids[rows],
                              self.source_ids[rows], self.synthetic[rows],
                              None if self.masks is None else self.masks[index])

    @property
    def image_size(self):
        return int(self.images.shape[-1])


def resize_images(images, size):
    """Resize a stack (N, S, S) of float images to size x size (bilinear, anti-aliased)."""
    images = torch.as_tensor(images)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(images[k:k + RESIZE_BATCH, None].float(), size=(size, size),
                         mode="bilinear", antialias=True, align_corners=False)[:, 0].clamp_(0, 1)
           for k in range(0, len(images), RESIZE_BATCH)]
    return torch.cat(out)


def resize_masks(masks, size):
    """Resize a stack (N, S, S) of binary masks; a pixel is set when at least half of it was."""
    if masks.shape[-1] == size:
        return masks
    return (resize_images(masks.float(), size) >= 0.5).to(torch.uint8)


def is_synthetic(path):
    """True for a dataset file whose attribute ``synthetic`` is set (written by the generator)."""
    return str(path).endswith(".h5") and bool(read_attrs(path).get("synthetic", False))


def load_file(path, image_size=None):
    """One dataset file (.h5) or study pickle (.pkl) as LabelledImages at ``image_size``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.endswith(".pkl"):
        images, labels = load_study_pickle(path)
        name = os.path.basename(path)
        warnings.warn(f"{path}: a study pickle has no patient ids; every slice is its own group, "
                      f"so splits of it are NOT patient-wise")
        patient_ids = np.array([f"{name}:{k}" for k in range(len(labels))], dtype=object)
        source_ids, synthetic, masks = patient_ids.copy(), False, None
    else:
        check_dataset_file(path)
        images = read_images(path)
        labels = read_column(path, "labels").astype(np.int64)
        patient_ids = read_column(path, "patient_ids")
        source_ids = read_column(path, "source_ids")
        synthetic = is_synthetic(path)
        masks = _read_masks(path)
    images = torch.from_numpy(np.asarray(images, dtype=np.float32))
    size = image_size or images.shape[-1]
    images = resize_images(images, size).to(torch.float16)
    if masks is not None:
        masks = resize_masks(masks, size)
    return LabelledImages(images, labels, patient_ids.astype(object), source_ids.astype(object),
                          np.full(len(labels), synthetic), masks)


def _read_masks(path):
    """The file's tumour masks as a uint8 tensor, or None when it has none."""
    with h5py.File(path, "r") as f:
        if "tumor_masks" not in f:
            return None
        return torch.from_numpy(f["tumor_masks"][()].astype(np.uint8))


def load_sources(paths, image_size=None):
    """Several files concatenated (the first file's size when ``image_size`` is None)."""
    return concatenate(load_parts(paths, image_size))


def load_parts(paths, image_size=None):
    """One LabelledImages per file, all at the first file's size when ``image_size`` is None."""
    parts = []
    for path in paths:
        part = load_file(path, image_size)
        image_size = image_size or part.image_size
        parts.append(part)
    if not parts:
        raise ValueError("no data files given")
    return parts


def concatenate(parts):
    """LabelledImages of several parts, one after the other (masks only when every part has them)."""
    masks = None
    if all(p.masks is not None for p in parts):
        masks = torch.cat([p.masks for p in parts])
    return LabelledImages(torch.cat([p.images for p in parts]),
                          np.concatenate([p.labels for p in parts]),
                          np.concatenate([p.patient_ids for p in parts]),
                          np.concatenate([p.source_ids for p in parts]),
                          np.concatenate([p.synthetic for p in parts]), masks)
