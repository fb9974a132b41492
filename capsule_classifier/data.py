"""Training data in memory, and patient-wise splits.

``load_sources`` reads dataset files (``.h5``) or study pickles (``.pkl``) into one
``LabelledImages`` (images as a float16 tensor, resized to the working size when a file holds
another size). Slices from pickles have no patient id: each becomes its own group, which is said
loudly, because then splits cannot be patient-wise.

``patient_folds`` / ``holdout_split`` use scikit-learn's ``StratifiedGroupKFold``: no patient is
ever in both parts, and classes are balanced across folds where the groups allow it. With
``group_by="stretch"`` the groups are stretches of consecutive figshare indices (``stretch_ids``):
the figshare numbering runs in long one-label stretches whose slices resemble each other (and
share imaging planes), so leaving whole stretches out asks what a model meets on patients from
elsewhere in the numbering, which patient-wise folds never ask.
"""
import os
import re
import warnings
from dataclasses import dataclass

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedGroupKFold

from capsule_classifier.study_pickle import load_study_pickle
from preprocess.dataset import read_attrs, read_column, read_images

RESIZE_BATCH = 256
GROUPINGS = ("patient", "stretch")
STRETCH_SLICES = 200      # target size of a stretch (whole patients, consecutive figshare indices)


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
    parts = []
    for path in paths:
        part = load_file(path, image_size)
        image_size = image_size or part.image_size
        parts.append(part)
    if not parts:
        raise ValueError("no data files given")
    masks = None
    if all(p.masks is not None for p in parts):
        masks = torch.cat([p.masks for p in parts])
    return LabelledImages(torch.cat([p.images for p in parts]),
                          np.concatenate([p.labels for p in parts]),
                          np.concatenate([p.patient_ids for p in parts]),
                          np.concatenate([p.source_ids for p in parts]),
                          np.concatenate([p.synthetic for p in parts]), masks)


def figshare_numbers(source_ids):
    """The figshare index of every slice: the last run of digits of its source id (``"1234"``,
    ``"1234.mat"``, ``"brainTumorDataPublic_1-766.zip:12.mat"``)."""
    numbers = []
    for source_id in source_ids:
        found = re.findall(r"\d+", os.path.basename(str(source_id)))
        if not found:
            raise ValueError(f"source id {source_id!r} holds no figshare index: group_by=stretch needs "
                             f"slices numbered as in the figshare dataset; use group_by=patient")
        numbers.append(int(found[-1]))
    return np.array(numbers)


def stretch_ids(patient_ids, source_ids, stretch_slices=STRETCH_SLICES):
    """Cut the slices, ordered by figshare index, into stretches of about ``stretch_slices``
    consecutive slices without splitting a patient: patients are taken in the order of their
    first index and a stretch closes once it holds ``stretch_slices`` slices (a last short one
    joins the stretch before it). Returns a stretch number per slice."""
    numbers = figshare_numbers(source_ids)
    patients, inverse = np.unique(patient_ids, return_inverse=True)
    first = np.full(len(patients), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, numbers)
    sizes = np.bincount(inverse, minlength=len(patients))
    stretch_of_patient = np.empty(len(patients), dtype=np.int64)
    stretch, filled = 0, 0
    for patient in np.argsort(first, kind="stable"):
        if filled >= stretch_slices:
            stretch, filled = stretch + 1, 0
        stretch_of_patient[patient] = stretch
        filled += sizes[patient]
    if 0 < filled < stretch_slices / 2 and stretch > 0:
        stretch_of_patient[stretch_of_patient == stretch] = stretch - 1
    return stretch_of_patient[inverse]


def split_groups(patient_ids, source_ids, group_by):
    """The group of every slice for a split: its patient, or its stretch (see ``stretch_ids``)."""
    if group_by == "patient":
        return np.asarray(patient_ids)
    if group_by == "stretch":
        return stretch_ids(patient_ids, source_ids)
    raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")


def patient_folds(labels, patient_ids, k, seed, source_ids=None, group_by="patient"):
    """k (train_rows, val_rows) pairs; every patient (with ``group_by="stretch"`` every stretch
    of whole patients) lies in exactly one validation part."""
    groups = np.unique(split_groups(patient_ids, source_ids, group_by), return_inverse=True)[1]
    if len(np.unique(groups)) < k:
        plural = {"patient": "patients", "stretch": "stretches"}[group_by]
        hint = (f" (a stretch holds about {STRETCH_SLICES} slices: use group_by=patient for data this "
                f"small)" if group_by == "stretch" else "")
        raise ValueError(f"{k}-fold cross-validation needs at least {k} {plural}, "
                         f"the data has {len(np.unique(groups))}{hint}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train, val) for train, val in splitter.split(np.zeros(len(labels)), labels, groups)]


def holdout_split(labels, patient_ids, fraction, seed, source_ids=None, group_by="patient"):
    """One (train_rows, val_rows) split with about ``fraction`` held out, by patient or stretch."""
    k = max(2, int(round(1.0 / fraction)))
    return patient_folds(labels, patient_ids, k, seed, source_ids, group_by)[0]
