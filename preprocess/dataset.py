"""The dataset file: the HDF5 contract between the pipeline's stages.

A dataset file (written by ``prepare_dataset.py`` for real slices, ``generate.py`` for synthetic
ones) holds, for N slices of S x S pixels, one chunk per slice, compressed:

    images       (N, S, S) float16 in [0, 1], each slice normalised on its own
    labels       (N,)      int64 in {0, 1, 2}; attribute class_names
    patient_ids  (N,)      UTF-8 strings (patient-wise splits group on these)
    source_ids   (N,)      UTF-8 strings (figshare index or file name of each slice)
    tumor_masks  (N, S, S) uint8 {0, 1}
    conditions   (N, S, S) uint8 {0, 1}   skull outline + tumour outline
    attributes: image_size, source, skipped (list), created_with (JSON of the flags), synthetic

An augmented-mask file (``augment_masks.py``) holds conditions, tumor_masks, labels and source_ids.

``DatasetWriter`` streams slices into such a file under a temporary name and renames it into place
only when everything was written, so a crash never leaves a half-written file behind.
``SliceDataset`` reads slices lazily (one chunk per item) and reopens the file in each process, so
it is safe to use from DataLoader workers. ``read_column`` reads one small column (labels,
patient ids) without touching the images.
"""
import contextlib
import json
import os

import h5py
import numpy as np

from preprocess.atomic import atomic_path

CLASS_NAMES = ("meningioma", "glioma", "pituitary")
IMAGE_FIELDS = ("images", "tumor_masks", "conditions")
_STRING = h5py.string_dtype("utf-8")
_DTYPES = {"images": np.float16, "tumor_masks": np.uint8, "conditions": np.uint8,
           "labels": np.int64, "patient_ids": _STRING, "source_ids": _STRING}


class DatasetWriter:
    """Append slices to a new dataset file; the file appears at ``path`` only on success.

    Use as a context manager::

        with DatasetWriter(path, image_size=256, fields=("images", "labels", ...)) as out:
            out.append(images=batch_images, labels=batch_labels, ...)
            out.attrs["source"] = "..."

    Every ``append`` must give all ``fields`` with the same number of slices.
    """

    def __init__(self, path, image_size, fields, compression="gzip", compression_level=1):
        unknown = set(fields) - set(_DTYPES)
        if unknown:
            raise ValueError(f"unknown dataset fields {sorted(unknown)}; known: {sorted(_DTYPES)}")
        self.path = os.fspath(path)
        self.image_size = int(image_size)
        self.fields = tuple(fields)
        self.attrs = {"image_size": self.image_size, "class_names": list(CLASS_NAMES)}
        self.count = 0
        self._compression = dict(compression=compression,
                                 compression_opts=compression_level if compression == "gzip" else None)
        self._file = None
        self._tmp_path = None

    def __enter__(self):
        self._atomic = contextlib.ExitStack()
        self._tmp_path = self._atomic.enter_context(atomic_path(self.path))
        self._file = h5py.File(self._tmp_path, "w")
        size = self.image_size
        for name in self.fields:
            if name in IMAGE_FIELDS:
                self._file.create_dataset(name, shape=(0, size, size), maxshape=(None, size, size),
                                          dtype=_DTYPES[name], chunks=(1, size, size),
                                          shuffle=True, **self._compression)
            else:
                self._file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_DTYPES[name],
                                          chunks=(4096,))
        return self

    def append(self, **columns):
        """Write a batch: every field of the file, each with the same leading length."""
        missing = set(self.fields) - set(columns)
        extra = set(columns) - set(self.fields)
        if missing or extra:
            raise ValueError(f"append needs exactly the fields {list(self.fields)}; "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        lengths = {name: len(value) for name, value in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"append got columns of different lengths: {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            return
        for name, value in columns.items():
            column = self._file[name]
            if name in IMAGE_FIELDS:
                value = np.asarray(value)
                if value.shape[1:] != (self.image_size, self.image_size):
                    raise ValueError(f"{name}: slices of shape {value.shape[1:]}, the file holds "
                                     f"{self.image_size}x{self.image_size}")
                value = value.astype(_DTYPES[name], copy=False)
            elif name == "labels":
                value = np.asarray(value, dtype=np.int64)
            else:
                value = [str(v) for v in value]
            column.resize(self.count + n, axis=0)
            column[self.count:self.count + n] = value
        self.count += n

    def __exit__(self, exc_type, exc, tb):
        with self._atomic:              # renames the file into place only when nothing failed
            if exc_type is None:
                for key, value in self.attrs.items():
                    self._file.attrs[key] = _attribute(value)
            self._file.close()
            if exc_type is not None:    # let atomic_path see the failure and remove the file
                raise exc.with_traceback(tb)
        return False


def _attribute(value):
    """HDF5 attributes take numbers, strings and arrays; anything richer is stored as JSON."""
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=_STRING)
    return json.dumps(value, default=str)


def read_attrs(path):
    """All attributes of a dataset file as plain Python values (JSON attributes decoded)."""
    with h5py.File(path, "r") as f:
        out = {}
        for key, value in f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, np.ndarray):
                value = [v.decode() if isinstance(v, bytes) else getattr(v, "item", lambda: v)() for v in value]
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            out[key] = value
        return out


DATASET_FIELDS = ("images", "labels", "patient_ids", "source_ids")


def check_dataset_file(path, required=DATASET_FIELDS):
    """Raise ValueError naming ``path`` unless it is an HDF5 dataset file with the ``required``
    fields (a figshare .mat file, a mask file of augment_masks.py or any other file is not)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such dataset file")
    hint = ("; make a dataset file with preprocess/prepare_dataset.py (real .mat slices) or "
            "generative_model/generate.py (synthetic slices)")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in required if name not in f]
            is_mat = "cjdata" in f
    except OSError as error:
        raise ValueError(f"{path}: not an HDF5 dataset file ({error}){hint}") from None
    if is_mat:
        raise ValueError(f"{path}: a figshare .mat slice, not a dataset file{hint}")
    if missing:
        raise ValueError(f"{path}: not a dataset file of this project: no field(s) {missing}{hint}")


def has_field(path, name):
    """Whether the file holds the field ``name`` (optional columns: tumor_masks, source_ids)."""
    with h5py.File(path, "r") as f:
        return name in f


def read_column(path, name):
    """One whole column of a dataset file as a numpy array (strings decoded to str)."""
    with h5py.File(path, "r") as f:
        if name not in f:
            raise KeyError(f"{path}: no field {name!r}; it has {sorted(f.keys())}")
        column = f[name]
        if column.dtype.kind in "OS":
            return np.array(column.asstr()[()], dtype=object)
        return column[()]


def read_images(path, name="images", indices=None, batch=256):
    """Slices of one image field as a float32 array, read in batches (indices sorted or None)."""
    with h5py.File(path, "r") as f:
        column = f[name]
        order = np.arange(len(column)) if indices is None else np.asarray(indices)
        out = np.empty((len(order),) + column.shape[1:], dtype=np.float32)
        for start in range(0, len(order), batch):
            part = order[start:start + batch]
            sorted_part, inverse = np.unique(part, return_inverse=True)
            out[start:start + len(part)] = column[sorted_part][inverse]
        return out


class SliceDataset:
    """Map-style dataset over one dataset file: item i is a dict of the requested fields.

    Image fields come back as float32 arrays of shape (1, S, S); labels as int. The HDF5 file is
    opened on first use in each process, so the object can be handed to DataLoader workers.
    ``indices`` restricts the dataset to those rows (e.g. one cross-validation fold).
    """

    def __init__(self, path, fields=("images", "labels"), indices=None):
        self.path = os.fspath(path)
        self.fields = tuple(fields)
        with h5py.File(self.path, "r") as f:
            missing = [name for name in self.fields if name not in f]
            if missing:
                raise KeyError(f"{self.path}: missing fields {missing}; it has {sorted(f.keys())}")
            total = len(f[self.fields[0]])
        self.indices = np.arange(total) if indices is None else np.asarray(indices, dtype=np.int64)
        self._file = None
        self._pid = None

    def __len__(self):
        return len(self.indices)

    def _open(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, item):
        f = self._open()
        row = int(self.indices[item])
        out = {}
        for name in self.fields:
            value = f[name][row]
            if name in IMAGE_FIELDS:
                value = value.astype(np.float32)[None]
            elif name == "labels":
                value = int(value)
            elif isinstance(value, bytes):
                value = value.decode()
            out[name] = value
        return out

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        return state
