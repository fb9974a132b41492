"""Read slices of the figshare brain tumour dataset from MATLAB .mat files, folders and zip archives.

Each published file ``<index>.mat`` holds a struct ``cjdata`` with fields image (int16), label
(1 meningioma, 2 glioma, 3 pituitary), PID (char array), tumorBorder (x1, y1, x2, y2, ... with
x = column, y = row) and tumorMask (logical). The files are MATLAB v7.3, i.e. HDF5, which stores
arrays column-major: h5py sees every matrix transposed, so we transpose back and the image comes out
upright, the way MATLAB shows it. Older-format files are read with scipy.io.loadmat.

``iter_sources`` lists the slices of a source: one .mat file, a folder of .mat files, one of the
published ``brainTumorDataPublic_*.zip`` archives, or a folder of them (read without unpacking).
"""
import io
import os
import re
import zipfile
import zlib
from typing import NamedTuple, Optional

import h5py
import numpy as np
import scipy.io

FIELDS = ("image", "label", "PID", "tumorBorder", "tumorMask")
LABEL_TO_CLASS = {1: 0, 2: 1, 3: 2}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class MatFileError(ValueError):
    """A slice file that cannot be used; the message names the file and the problem."""

    def __init__(self, name, problem):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem

    def __reduce__(self):  # lets worker processes send the error back
        return MatFileError, (self.name, self.problem)


def _natural_key(name):
    """Sort 2.mat before 10.mat."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class SliceFile(NamedTuple):
    """Where one slice lives: a plain file (``member`` None) or a member of a zip archive."""
    name: str
    path: str
    member: Optional[str] = None

    def read_bytes(self):
        if self.member is None:
            with open(self.path, "rb") as handle:
                return handle.read()
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(self.member)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise MatFileError(self.name, f"damaged member of the zip archive {self.path} ({error})") from None


def iter_sources(source):
    """Every slice file under ``source`` as a list of SliceFile, in natural order.

    ``name`` is ``<index>.mat`` for a plain file and ``<archive>.zip/<index>.mat`` for a member of
    a zip archive. Raises FileNotFoundError when ``source`` holds no .mat file and no zip archive.
    """
    source = os.fspath(source)
    if os.path.isfile(source):
        paths = [source]
    elif os.path.isdir(source):
        paths = [os.path.join(source, n) for n in os.listdir(source)
                 if n.lower().endswith((".mat", ".zip"))]
    else:
        raise FileNotFoundError(f"{source}: no such file or folder")
    items = []
    for path in sorted(paths, key=lambda p: _natural_key(os.path.basename(p))):
        if path.lower().endswith(".zip"):
            items.extend(_zip_members(path))
        else:
            items.append(SliceFile(os.path.basename(path), path))
    if not items:
        raise FileNotFoundError(f"{source}: holds no .mat files and no brainTumorDataPublic_*.zip archives")
    return items


def _zip_members(path):
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".mat")]
    except zipfile.BadZipFile as error:
        raise MatFileError(os.path.basename(path), f"not a readable zip archive ({error})") from None
    members.sort(key=lambda m: _natural_key(os.path.basename(m)))
    return [SliceFile(f"{os.path.basename(path)}/{m}", path, m) for m in members]


def read_mat_slice(path_or_bytes, name=None):
    """Read one slice. Returns a dict with

    image (2-D float64, upright), label (class 0-2), pid (str), tumor_mask (bool, image shape),
    tumor_border ((K, 2) float array of x = column, y = row points).
    Raises MatFileError naming the file and the problem for anything that is not a valid slice.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        raw, name = bytes(path_or_bytes), name or "<bytes>"
    else:
        name = name or os.fspath(path_or_bytes)
        try:
            with open(path_or_bytes, "rb") as handle:
                raw = handle.read()
        except OSError as error:
            raise MatFileError(name, f"cannot read file ({error.strerror})") from None
    if raw[:8] == _HDF5_SIGNATURE or raw[512:520] == _HDF5_SIGNATURE:
        fields = _read_v73(raw, name)
    elif raw[:6] == b"MATLAB":
        fields = _read_v5(raw, name)
    else:
        raise MatFileError(name, "not a MATLAB .mat file (no MAT-file or HDF5 header)")
    return _validate(fields, name)


def _read_v73(raw, name):
    try:
        with h5py.File(io.BytesIO(raw), "r") as f:
            if "cjdata" not in f:
                raise MatFileError(name, f"no struct 'cjdata' (found {sorted(f.keys())})")
            group = f["cjdata"]
            out = {}
            for field in FIELDS:
                if field not in group:
                    raise MatFileError(name, f"field cjdata.{field} is missing")
                # HDF5 holds MATLAB's column-major arrays transposed: transpose back.
                out[field] = np.asarray(group[field][()]).T
            out["PID"] = "".join(chr(c) for c in out["PID"].ravel() if c)
            return out
    except (OSError, KeyError) as error:
        raise MatFileError(name, f"truncated or damaged MAT-file ({error})") from None


def _read_v5(raw, name):
    try:
        content = scipy.io.loadmat(io.BytesIO(raw), simplify_cells=True)
    except Exception as error:  # scipy raises several types for damaged files
        raise MatFileError(name, f"truncated or damaged MAT-file ({error})") from None
    if "cjdata" not in content:
        raise MatFileError(name, "no struct 'cjdata'")
    struct = content["cjdata"]
    out = {}
    for field in FIELDS:
        if field not in struct:
            raise MatFileError(name, f"field cjdata.{field} is missing")
        out[field] = struct[field]
    out["PID"] = str(out["PID"]) if not isinstance(out["PID"], np.ndarray) else "".join(
        map(str, out["PID"].ravel()))
    return out


def check_pixels(image, name, field="image"):
    """Raise MatFileError for a slice with non-finite pixels (NaN, inf) or no contrast at all."""
    image = np.asarray(image, dtype=np.float64)
    bad = int(image.size - np.isfinite(image).sum())
    if bad:
        raise MatFileError(name, f"{field} holds {bad} non-finite pixels (NaN or inf) of {image.size}")
    if image.max() == image.min():
        raise MatFileError(name, f"{field} is constant (every pixel {image.flat[0]:g}): no anatomy to use")


def _validate(fields, name):
    image = np.asarray(fields["image"])
    if image.ndim != 2 or min(image.shape) < 8:
        raise MatFileError(name, f"cjdata.image must be a 2-D slice, got shape {image.shape}")
    check_pixels(image, name, "cjdata.image")
    label_values = np.asarray(fields["label"], dtype=np.float64).ravel()
    if label_values.size != 1 or label_values[0] not in LABEL_TO_CLASS:
        raise MatFileError(name, f"cjdata.label must be 1, 2 or 3, got {label_values.tolist()}")
    mask = np.asarray(fields["tumorMask"])
    if mask.shape != image.shape:
        raise MatFileError(name, f"cjdata.tumorMask has shape {mask.shape}, cjdata.image {image.shape}")
    border = np.asarray(fields["tumorBorder"], dtype=np.float64).ravel()
    if border.size % 2:
        raise MatFileError(name, f"cjdata.tumorBorder has an odd number of values ({border.size})")
    return {"image": image.astype(np.float64), "label": LABEL_TO_CLASS[int(label_values[0])],
            "pid": fields["PID"].strip(), "tumor_mask": mask.astype(bool),
            "tumor_border": border.reshape(-1, 2)}
