"""New condition masks from real ones: a real skull outline with its tumour under a random affine warp.

As in the study, each new mask takes one real slice of the class, keeps its skull outline and warps
its tumour about the tumour's centre (per-axis scale 0.8-1.0, shear +-0.25, rotation +-15 degrees).
The warped tumour is kept inside the skull: a warp that would lose more than half of the tumour
outside the head is drawn again, and what remains outside is cut away.
"""
import os

import h5py
import numpy as np
from scipy import ndimage

from preprocess.masks import condition_mask, scaled, skull_region

SCALE_RANGE = (0.8, 1.0)
SHEAR_RANGE = (-0.25, 0.25)
ROTATION_DEGREES = 15.0
SKULL_MARGIN = 4          # pixels at 512 px kept free between tumour and skull outline
MAX_TRIES = 10
MIN_KEPT_FRACTION = 0.5

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
