"""Per-slice intensity normalisation, resizing of images and masks to the working size, and what the
normalised intensities say: where the tissue is, its level, a tumour's brightness against it."""
import numpy as np
from skimage.transform import resize

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
TISSUE_FLOOR = 0.05       # normalised intensities at or below this are background, not tissue


def normalise_slice(image, low=LOW_PERCENTILE, high=HIGH_PERCENTILE):
    """Map one slice to float32 [0, 1] by its own robust percentiles (scanner ranges vary a lot)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def resize_slice(image, size):
    """Resize a 2-D image to size x size (bilinear, anti-aliased when shrinking)."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape == (size, size):
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    return resize(image, (size, size), order=1, anti_aliasing=shrinking,
                  preserve_range=True).astype(np.float32)


def resize_mask(mask, size):
    """Resize a binary mask to size x size; a pixel is set when at least half of it was covered."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (size, size):
        return mask
    return resize_slice(mask.astype(np.float32), size) >= 0.5


def tissue_mask(images, tumour, floor=TISSUE_FLOOR):
    """Where the tissue is: pixels above ``floor`` outside the tumour (``tumour`` 1 or True inside);
    works on torch tensors and numpy arrays alike."""
    return (images > floor) & (tumour < 0.5)


def tissue_level(image, tumour, floor=TISSUE_FLOOR):
    """A normalised slice's tissue level: the median of its ``tissue_mask`` pixels (NaN without any)."""
    image = np.asarray(image)
    tissue = tissue_mask(image, np.asarray(tumour), floor)
    return float(np.median(image[tissue])) if tissue.any() else float("nan")


def tumour_contrast(image, tumour, floor=TISSUE_FLOOR):
    """A tumour's mean intensity over its slice's tissue level (``tissue_level``): about 1 for a tumour
    as bright as the tissue around it, more for one that enhances. NaN without tumour or tissue."""
    image, tumour = np.asarray(image), np.asarray(tumour) > 0.5
    level = tissue_level(image, tumour, floor)
    if not tumour.any() or not level > 0:
        return float("nan")
    return float(image[tumour].mean() / level)
