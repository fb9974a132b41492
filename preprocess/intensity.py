"""Per-slice intensity normalisation and resizing of images and masks to the working size."""
import numpy as np
from skimage.transform import resize

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


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
