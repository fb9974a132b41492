"""Condition masks as in the study: skull outline plus tumour outline, one pixel wide.

Skull: Otsu threshold, fill holes, morphological closing with a disk, fill again, smooth with a
box filter and threshold at 0.5, keep the largest region; its outer boundary is the outline. Sizes
are given for 512 px (closing radius 25, box 50) and scaled with the image size. The closing uses
Euclidean distance transforms, whose cost does not grow with the disk radius; holes are filled by
labelling the background once (scipy's ``binary_fill_holes`` dilates until nothing changes, which
costs several times as much on a head-sized region).
"""
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

REFERENCE_SIZE = 512
CLOSING_RADIUS = 25
SMOOTHING_BOX = 50


def scaled(pixels, image_size):
    """A length in pixels at 512 px, scaled to ``image_size`` (at least 1)."""
    return max(1, int(round(pixels * image_size / REFERENCE_SIZE)))


def disk_closing(region, radius):
    """Binary closing with a disk of ``radius`` via two distance transforms (cost independent of radius)."""
    padded = np.pad(region, radius + 1)
    dilated = ndimage.distance_transform_edt(~padded) <= radius
    closed = ndimage.distance_transform_edt(dilated) > radius
    return closed[radius + 1:-radius - 1, radius + 1:-radius - 1]


FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def fill_holes(region):
    """``region`` with every background pixel that cannot reach the image border through
    4-connected background set: the same result as ``ndimage.binary_fill_holes``, in one labelling."""
    region = np.asarray(region, dtype=bool)
    labelled, count = ndimage.label(~region, structure=FOUR_NEIGHBOURS)
    reaches_border = np.zeros(count + 1, bool)
    for edge in (labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]):
        reaches_border[edge] = True
    reaches_border[0] = False           # label 0: the region itself
    return ~reaches_border[labelled]


def largest_region(region):
    """The largest 8-connected component of a binary image (empty in, empty out)."""
    labelled, count = ndimage.label(region, structure=np.ones((3, 3), bool))
    if count <= 1:
        return labelled > 0
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()


def skull_region(image):
    """The filled head region of a slice: everything inside the skull's outer boundary."""
    image = np.asarray(image, dtype=np.float32)
    size = image.shape[0]
    if image.max() <= image.min():
        return np.zeros(image.shape, bool)
    region = fill_holes(image > threshold_otsu(image))
    region = fill_holes(disk_closing(region, scaled(CLOSING_RADIUS, size)))
    box = scaled(SMOOTHING_BOX, size)
    region = ndimage.uniform_filter(region.astype(np.float32), size=box, mode="constant") > 0.5
    return fill_holes(largest_region(region))


def outline(region):
    """One-pixel boundary of a binary region: its pixels with a 4-neighbour outside it."""
    region = np.asarray(region, dtype=bool)
    return region & ~ndimage.binary_erosion(region, border_value=0)


def condition_mask(head_region, tumor_mask):
    """The study's condition mask: union of the skull outline and the tumour outline (uint8 0/1)."""
    return (outline(head_region) | outline(tumor_mask)).astype(np.uint8)
