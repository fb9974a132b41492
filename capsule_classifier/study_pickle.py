"""Read the study's dataset pickles (a list of ``[image, label]``) without running foreign code.

``pickle.load`` can call any importable function, so a pickle from elsewhere is read through
``RestrictedUnpickler``, which only resolves the few numpy names needed to rebuild arrays and
scalars; anything else (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``.
"""
import pickle

import numpy as np

from preprocess.intensity import normalise_slice

ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and nothing else."""

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: the pickle may hold only numpy arrays, numbers "
            f"and lists of [image, label]")


def load_study_pickle(path):
    """(images float32 (N, S, S) in [0, 1], labels int64 (N,)) from a study-format pickle."""
    with open(path, "rb") as handle:
        try:
            items = RestrictedUnpickler(handle).load()
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(f"{path}: {error}") from None
    if len(items) == 0:
        raise ValueError(f"{path}: the pickle holds no samples")
    images, labels = [], []
    for k, item in enumerate(items):
        if len(item) != 2:
            raise ValueError(f"{path}: item {k} is not an [image, label] pair")
        image, label = np.asarray(item[0]), int(np.asarray(item[1]).ravel()[0])
        if image.ndim == 3 and image.shape[-1] in (1, 3):
            image = image.mean(axis=-1)
        if image.ndim != 2 or label not in (0, 1, 2):
            raise ValueError(f"{path}: item {k} has image shape {image.shape} and label {label}; "
                             f"expected a 2-D image and a label 0-2")
        images.append(_to_unit_range(image))
        labels.append(label)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images of different sizes {sorted(shapes)}")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _to_unit_range(image):
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    if image.min() >= 0.0 and image.max() <= 1.0:
        return image
    return normalise_slice(image)
