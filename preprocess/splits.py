"""Patient-wise and leave-stretch-out splits of a dataset, shared by the GAN and the classifier.

``patient_folds`` / ``holdout_split`` use scikit-learn's ``StratifiedGroupKFold``: no patient is
ever in both parts, and classes are balanced across folds where the groups allow it. With
``group_by="stretch"`` the groups are stretches of consecutive figshare indices (``stretch_ids``):
the figshare numbering runs in long one-label stretches whose slices resemble each other (and
share imaging planes), so leaving whole stretches out asks what a model meets on patients from
elsewhere in the numbering, which patient-wise folds never ask.
"""
import json
import os
import re

import h5py
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from preprocess.atomic import check_outputs
from preprocess.dataset import DatasetWriter, read_attrs, read_column, read_images

STRETCH_SLICES = 200      # target size of a stretch (whole patients, consecutive figshare indices)
GROUPINGS = ("patient", "stretch")


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


def write_split(dataset, train_out, heldout_out, fraction=0.2, seed=0, group_by="patient"):
    """Copy a dataset file into two: ``train_out`` and ``heldout_out`` (about ``fraction`` of the
    slices, whole patients or stretches). Every column and attribute of the source is kept; each
    part records the split (``split`` attribute: part, fraction, seed, group_by, its patients)."""
    check_outputs({"train_out": train_out, "heldout_out": heldout_out}, {"dataset": dataset})
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie between 0 and 1, got {fraction}")
    labels, patients, sources = (read_column(dataset, name) for name in ("labels", "patient_ids", "source_ids"))
    train_rows, heldout_rows = holdout_split(labels, patients, fraction, seed, sources, group_by)
    about = {"fraction": fraction, "seed": seed, "group_by": group_by}
    return {"train": write_rows(dataset, train_out, train_rows, dict(about, part="train")),
            "heldout": write_rows(dataset, heldout_out, heldout_rows, dict(about, part="heldout"))}


def write_rows(dataset, out, rows, split=None, batch=256):
    """Copy the given rows of a dataset file (every column and attribute) into ``out``; ``split``
    (a dict) is recorded in the ``split`` attribute with the part's patients. Returns a summary."""
    check_outputs({"out": out}, {"dataset": dataset})
    attrs = read_attrs(dataset)
    columns = {name: read_column(dataset, name) for name in ("labels", "patient_ids", "source_ids")}
    with h5py.File(dataset, "r") as handle:
        fields = [name for name in ("images", "labels", "patient_ids", "source_ids", "tumor_masks",
                                    "conditions") if name in handle]
    rows = np.sort(np.asarray(rows))
    patients = sorted({str(p) for p in columns["patient_ids"][rows]})
    with DatasetWriter(out, int(attrs["image_size"]), fields) as writer:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            writer.append(**{name: columns[name][chunk] if name in columns
                             else read_images(dataset, name, chunk) for name in fields})
        writer.attrs.update({key: value for key, value in attrs.items() if key != "image_size"})
        writer.attrs["split"] = json.dumps({**(split or {}), "of": os.fspath(dataset), "patients": patients})
    return {"out": os.fspath(out), "slices": int(len(rows)), "patients": len(patients),
            "per_class": np.bincount(columns["labels"][rows], minlength=3).tolist()}
