"""Synthetic T1-contrast-like brain slices with a tumour whose place, shape and enhancement follow its class.

The demo data and the tests use these instead of real MRI. A patient fixes the head's size,
position, rotation, intensity scale, bias field and the tumour's place; its slices differ by their
height in the head (the head and the tumour shrink towards the ends) and by noise. The classes:

- meningioma (label 1): extra-axial, a bright homogeneous lump with its base on the inner skull;
- glioma (label 2): intra-axial, irregular, ring-enhancing (bright rim, dark core, darker oedema);
- pituitary (label 3): small, bright, on the midline at the sella (front-centre of the head).

Sizes, contrasts and places overlap between classes, so telling them apart is learnable, not trivial.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours


@dataclass
class Patient:
    label: int                 # 1, 2, 3 as in the figshare files
    centre: np.ndarray         # head centre, (row, col) in [0, 1]
    axes: np.ndarray           # head half-axes (rows, cols) as fractions of the image
    angle: float               # head rotation, radians
    scale: float               # int16 intensity scale of this scanner
    bias: np.ndarray           # linear bias-field gradient (rows, cols)
    tumour_at: np.ndarray      # tumour centre in head coordinates (unit head = radius 1)
    tumour_radius: float       # in head units
    contrast: float            # tumour enhancement strength
    seed: int


def draw_patient(label, rng):
    """Random anatomy and scanner settings for one patient with a tumour of ``label``."""
    angle_in_head = rng.uniform(0, 2 * np.pi)
    if label == 1:       # against the skull, anywhere around it
        radius = rng.uniform(0.08, 0.22)
        at = (0.87 - 0.3 * radius) * np.array([np.sin(angle_in_head), np.cos(angle_in_head)])
    elif label == 2:     # inside the brain, off the midline more often than not
        at = rng.uniform(0.1, 0.5) * np.array([np.sin(angle_in_head), np.cos(angle_in_head)])
        radius = rng.uniform(0.10, 0.26)
    else:                # midline, at the sella: in front of the centre
        at = np.array([-rng.uniform(0.15, 0.35), rng.normal(0, 0.03)])
        radius = rng.uniform(0.06, 0.15)
    return Patient(label=label, centre=0.5 + rng.normal(0, 0.03, 2),
                   axes=np.array([rng.uniform(0.38, 0.45), rng.uniform(0.31, 0.38)]),
                   angle=rng.uniform(-0.25, 0.25), scale=rng.uniform(300, 3000),
                   bias=rng.normal(0, 0.12, 2), tumour_at=at, tumour_radius=radius,
                   contrast=rng.uniform(0.55, 1.0), seed=int(rng.integers(2**31)))


def render_slice(patient, height, size, rng):
    """One slice at ``height`` in [-1, 1] through the head. Returns (int16 image, bool tumour mask)."""
    rows, cols = np.mgrid[:size, :size] / size
    shrink = np.sqrt(1 - 0.35 * height ** 2)
    dy, dx = rows - patient.centre[0], cols - patient.centre[1]
    cos, sin = np.cos(patient.angle), np.sin(patient.angle)
    u = (cos * dy - sin * dx) / (patient.axes[0] * shrink)   # head coordinates: radius 1 at the scalp
    v = (sin * dy + cos * dx) / (patient.axes[1] * shrink)
    radius = np.hypot(u, v)

    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 100)
    image = np.where(radius < 1.0, 0.85, 0.02)                       # scalp fat
    image = np.where(radius < 0.93, 0.12, image)                     # skull bone
    brain = radius < 0.87
    image = np.where(brain, 0.45 + 0.06 * texture / (texture.std() + 1e-6), image)
    ventricles = (np.hypot((u + 0.05) / 0.09, (np.abs(v) - 0.13) / 0.05 / (1 - 0.5 * abs(height))) < 1)
    image = np.where(ventricles & brain, 0.15, image)

    tumour, image = _add_tumour(patient, u, v, height, brain, image, rng)
    field = 1 + patient.bias[0] * (rows - 0.5) + patient.bias[1] * (cols - 0.5)
    image = image * field + rng.normal(0, 0.03, image.shape)
    return np.clip(image * patient.scale, 0, 32767).astype(np.int16), tumour


def _add_tumour(patient, u, v, height, brain, image, rng):
    size_here = patient.tumour_radius * np.sqrt(max(0.0, 1 - (height / 1.1) ** 2))
    du, dv = u - patient.tumour_at[0], v - patient.tumour_at[1]
    distance = np.hypot(du, dv)
    if patient.label == 2:  # irregular outline: radius wobbles with the direction
        phase = np.arctan2(du, dv)
        wobble = sum(0.12 * np.cos(k * phase + patient.seed % (k + 5)) for k in (2, 3, 5))
        distance = distance / (1 + wobble)
    tumour = (distance < size_here) & brain
    strength = patient.contrast
    if patient.label == 2:
        oedema = (distance < size_here * 1.35) & brain & ~tumour
        image = np.where(oedema, image - 0.08, image)
        rim = distance > size_here * rng.uniform(0.55, 0.75)
        image = np.where(tumour, np.where(rim, 0.45 + 0.45 * strength, 0.25), image)
    else:
        image = np.where(tumour, 0.5 + 0.45 * strength, image)
    return tumour, image


def tumour_border(mask):
    """The outline of the largest tumour piece as (K, 2) x = column, y = row points (figshare order)."""
    if not mask.any():
        return np.zeros((0, 2))
    contours = find_contours(mask.astype(np.float32), 0.5)
    longest = max(contours, key=len)
    return longest[:, ::-1].copy()
