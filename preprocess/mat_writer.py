"""Write slices as figshare-layout .mat files (struct ``cjdata``), MATLAB v7.3 or the older v5 format.

Used by the demo-data generator and the tests. A v7.3 MAT-file is an HDF5 file with a 512-byte
MATLAB header in front; MATLAB stores arrays column-major, so every matrix is written transposed
and tagged with its MATLAB class, which is how MATLAB itself (and so the published dataset) does it.
"""
import time

import h5py
import numpy as np
import scipy.io

from preprocess.atomic import atomic_path

_USERBLOCK = 512


def _matlab_header():
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.ctime()} HDF5 schema 1.00 ."
    return text.encode().ljust(116) + b" " * 8 + b"\x00\x02" + b"IM"


def _put(group, name, array, matlab_class, int_decode=None):
    array = np.asarray(array)
    column = group.create_dataset(name, data=np.ascontiguousarray(array.T),
                                  compression="gzip" if array.size > 64 else None)
    column.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if int_decode is not None:
        column.attrs["MATLAB_int_decode"] = np.int32(int_decode)


def border_values(tumor_border):
    """A (K, 2) array of x, y points as MATLAB's interleaved column x1, y1, x2, y2, ..."""
    return np.asarray(tumor_border, dtype=np.float64).reshape(-1, 1)


def write_mat_slice(path, image, label, pid, tumor_mask, tumor_border, version="7.3"):
    """Write one slice; ``label`` uses the dataset's coding (1, 2, 3); ``image`` is upright."""
    image = np.asarray(image, dtype=np.int16)
    tumor_mask = np.asarray(tumor_mask, dtype=np.uint8)
    if version not in ("7.3", "5"):
        raise ValueError(f"version must be '7.3' or '5', got {version!r}")
    with atomic_path(path) as partial:
        if version == "7.3":
            with h5py.File(partial, "w", userblock_size=_USERBLOCK) as f:
                group = f.create_group("cjdata")
                group.attrs["MATLAB_class"] = np.bytes_("struct")
                _put(group, "image", image, "int16")
                _put(group, "label", np.array([[float(label)]]), "double")
                _put(group, "PID", np.array([[ord(c) for c in pid]], dtype=np.uint16), "char", 2)
                _put(group, "tumorBorder", border_values(tumor_border), "double")
                _put(group, "tumorMask", tumor_mask, "logical", 1)
            with open(partial, "r+b") as handle:
                handle.write(_matlab_header())
        elif version == "5":
            struct = {"image": image, "label": float(label), "PID": pid,
                      "tumorBorder": border_values(tumor_border), "tumorMask": tumor_mask.astype(bool)}
            scipy.io.savemat(partial, {"cjdata": struct}, do_compression=True)
