"""New condition masks from real ones: a real skull outline with its tumour under a random affine warp.

As in the study, each new mask takes one real slice of the class, keeps its skull outline and warps
its tumour about the tumour's centre (per-axis scale 0.8-1.0, shear +-0.25, rotation +-15 degrees).
The warped tumour is kept inside the skull: a warp that would lose more than half of the tumour
outside the head is drawn again, and what remains outside is cut away. ``augment_masks`` writes
an augmented-mask file of N such masks per class, warped in worker processes.
"""
import os
import time

import h5py
import numpy as np
from scipy import ndimage

from preprocess.atomic import check_outputs
from preprocess.dataset import CLASS_NAMES, DatasetWriter, read_attrs, read_column
from preprocess.masks import condition_mask, scaled, skull_region
from preprocess.parallel import parallel_map

SCALE_RANGE = (0.8, 1.0)
SHEAR_RANGE = (-0.25, 0.25)
ROTATION_DEGREES = 15.0
SKULL_MARGIN = 4          # pixels at 512 px kept free between tumour and skull outline
MAX_TRIES = 10
MIN_KEPT_FRACTION = 0.5
FIELDS = ("conditions", "tumor_masks", "labels", "source_ids")   # of an augmented-mask file
WRITE_BATCH = 64

_open_files = {}


def random_affine(rng):
    """A 2x2 matrix (row, col coordinates): rotation @ shear @ per-axis scale, drawn at random."""
    scale = np.diag(rng.uniform(*SCALE_RANGE, size=2))
    shear = np.array([[1.0, rng.uniform(*SHEAR_RANGE)], [0.0, 1.0]])
    angle = np.deg2rad(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return rotation @ shear @ scale


def warp_about_centre(mask, matrix):
    """Apply ``matrix`` to a binary mask about the mask's centre of mass."""
    centre = np.array(ndimage.center_of_mass(mask))
    inverse = np.linalg.inv(matrix)
    # affine_transform maps each output pixel o to the input pixel inverse @ (o - c) + c.
    warped = ndimage.affine_transform(mask.astype(np.float32), inverse,
                                      offset=centre - inverse @ centre, order=1)
    return warped >= 0.5


def warped_tumour_inside(tumor_mask, head, rng):
    """A warped copy of ``tumor_mask`` that lies inside ``head`` (the filled skull region)."""
    room = ndimage.distance_transform_edt(head) > scaled(SKULL_MARGIN, head.shape[0])
    best = np.zeros_like(tumor_mask)
    for _ in range(MAX_TRIES):
        warped = warp_about_centre(tumor_mask, random_affine(rng))
        kept = warped & room
        if kept.sum() >= MIN_KEPT_FRACTION * max(1, warped.sum()):
            return kept
        if kept.sum() > best.sum():
            best = kept
    return best


def augment_one(job):
    """Worker: job = (dataset path, row, seed). Returns (condition uint8, warped tumour mask bool)."""
    path, row, seed = job
    if path not in _open_files or _open_files[path][0] != os.getpid():
        _open_files[path] = (os.getpid(), h5py.File(path, "r"))
    data = _open_files[path][1]
    image = data["images"][row].astype(np.float32)
    tumor = data["tumor_masks"][row].astype(bool)
    head = skull_region(image)
    rng = np.random.default_rng(seed)
    warped = warped_tumour_inside(tumor, head, rng) if tumor.any() else tumor
    return condition_mask(head, warped), warped


def choose_sources(labels, per_class, seed):
    """Rows of the dataset to warp: ``per_class`` random rows of each class (with replacement)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            raise ValueError(f"the dataset has no slice of class {label} ({CLASS_NAMES[label]})")
        rows.append(rng.choice(members, size=per_class, replace=True))
    return np.concatenate(rows)


def augment_masks(dataset, out, per_class, seed=0, workers=0, created_with=None):
    """Write ``per_class`` augmented masks of every class from ``dataset`` into ``out``."""
    check_outputs({"out": out}, {"dataset": dataset})
    started = time.time()
    labels = read_column(dataset, "labels")
    source_ids = read_column(dataset, "source_ids")
    rows = choose_sources(labels, per_class, seed)
    jobs = [(os.fspath(dataset), int(row), (seed, k)) for k, row in enumerate(rows)]
    size = read_attrs(dataset)["image_size"]
    with DatasetWriter(out, image_size=size, fields=FIELDS) as writer:
        conditions, masks = [], []
        for condition, mask in parallel_map(augment_one, jobs, workers, description="augment masks"):
            conditions.append(condition)
            masks.append(mask)
            if len(conditions) == WRITE_BATCH or writer.count + len(conditions) == len(rows):
                done = slice(writer.count, writer.count + len(conditions))
                writer.append(conditions=np.stack(conditions), tumor_masks=np.stack(masks),
                              labels=labels[rows[done]], source_ids=source_ids[rows[done]])
                conditions, masks = [], []
        writer.attrs.update(source=os.path.abspath(os.fspath(dataset)), created_with=created_with or {})
    return {"out": os.fspath(out), "masks": len(rows), "seconds": round(time.time() - started, 1)}
