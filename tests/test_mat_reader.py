"""Reading figshare .mat files: both MAT formats, zip archives, orientation, bad input."""
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from skimage.draw import polygon2mask

from preprocess.mat_reader import MatFileError, iter_sources, read_mat_slice
from preprocess.mat_writer import write_mat_slice
from preprocess.phantom import tumour_border


def asymmetric_slice(rows=40, cols=64):
    """An image that is wrong under any flip or transpose, with a tumour in one corner."""
    image = np.zeros((rows, cols), np.int16)
    image[:, :] = np.arange(cols)[None, :] * 3 + np.arange(rows)[:, None]
    image[5:12, 40:60] = 1000
    mask = np.zeros((rows, cols), bool)
    mask[5:12, 40:60] = True
    return image, mask


@pytest.mark.parametrize("version", ["7.3", "5"])
def test_slice_reads_back_upright(tmp_path, version):
    image, mask = asymmetric_slice()
    path = tmp_path / "1.mat"
    write_mat_slice(path, image, 2, "MRN42", mask, tumour_border(mask), version=version)
    fields = read_mat_slice(path)
    np.testing.assert_array_equal(fields["image"], image)
    np.testing.assert_array_equal(fields["tumor_mask"], mask)
    assert fields["label"] == 1 and fields["pid"] == "MRN42"


def test_v73_file_is_stored_column_major_like_matlab(tmp_path):
    image, mask = asymmetric_slice()
    path = tmp_path / "1.mat"
    write_mat_slice(path, image, 1, "7", mask, tumour_border(mask))
    with h5py.File(path, "r") as f:
        assert f["cjdata/image"].shape == (64, 40)            # what MATLAB's 40x64 looks like in HDF5
        np.testing.assert_array_equal(f["cjdata/image"][()], image.T)
        assert f["cjdata/tumorBorder"].shape[0] == 1          # a 2Nx1 column, transposed
    assert open(path, "rb").read(10) == b"MATLAB 7.3"


def test_tumour_border_fills_onto_tumour_mask(demo_mat_dir):
    for ref in iter_sources(demo_mat_dir)[:4]:
        fields = read_mat_slice(ref.read_bytes(), ref.name)
        x, y = fields["tumor_border"].T
        filled = polygon2mask(fields["image"].shape, np.column_stack([y, x]))
        mask = fields["tumor_mask"]
        overlap = (filled & mask).sum() / (filled | mask).sum()
        assert overlap > 0.8, (ref.name, overlap)


def test_zip_archives_read_without_unpacking(demo_mat_dir, tmp_path):
    files = iter_sources(demo_mat_dir)
    half = len(files) // 2
    for part, chunk in (("1-6", files[:half]), ("7-12", files[half:])):
        with zipfile.ZipFile(tmp_path / f"brainTumorDataPublic_{part}.zip", "w") as archive:
            for ref in chunk:
                archive.write(ref.path, ref.name)
    members = iter_sources(tmp_path)
    assert [m.name.split("/")[-1] for m in members] == [f.name for f in files]
    for plain, zipped in zip(files, members):
        np.testing.assert_array_equal(read_mat_slice(plain.read_bytes())["image"],
                                      read_mat_slice(zipped.read_bytes())["image"])


def test_natural_order_of_files(tmp_path, demo_mat_dir):
    for index in (10, 2, 1):
        shutil.copy(demo_mat_dir / "1.mat", tmp_path / f"{index}.mat")
    assert [ref.name for ref in iter_sources(tmp_path)] == ["1.mat", "2.mat", "10.mat"]


def write_bad(path, problem):
    image, mask = asymmetric_slice(32, 32)
    if problem == "truncated":
        write_mat_slice(path, image, 1, "1", mask, tumour_border(mask))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif problem == "not a mat file":
        path.write_text("hello, I am not an MRI slice")
    elif problem == "missing field":
        write_mat_slice(path, image, 1, "1", mask, tumour_border(mask))
        with h5py.File(path, "r+") as f:
            del f["cjdata/tumorMask"]
    elif problem == "unknown label":
        write_mat_slice(path, image, 4, "1", mask, tumour_border(mask))
    elif problem == "mask shape":
        write_mat_slice(path, image, 1, "1", mask[:20], tumour_border(mask))
    elif problem in ("all NaN", "some NaN", "constant"):
        write_mat_slice(path, image, 1, "1", mask, tumour_border(mask))
        with h5py.File(path, "r+") as f:          # a float image, as a scanner export might hold
            pixels = f["cjdata/image"][()].astype(np.float64)
            if problem == "all NaN":
                pixels[:] = np.nan
            elif problem == "some NaN":
                pixels[3:5, 7] = np.nan
            else:
                pixels[:] = 7
            del f["cjdata/image"]
            f["cjdata"].create_dataset("image", data=pixels)


BAD_CASES = {"truncated": "truncated or damaged", "not a mat file": "not a MATLAB .mat file",
             "missing field": "cjdata.tumorMask is missing", "unknown label": "must be 1, 2 or 3",
             "mask shape": "tumorMask has shape", "all NaN": "1024 non-finite pixels",
             "some NaN": "2 non-finite pixels", "constant": "is constant (every pixel 7)"}


@pytest.mark.parametrize("problem", sorted(BAD_CASES))
def test_bad_files_raise_errors_naming_file_and_problem(tmp_path, problem):
    path = tmp_path / "99.mat"
    write_bad(path, problem)
    with pytest.raises(MatFileError) as error:
        read_mat_slice(path)
    assert "99.mat" in str(error.value) and BAD_CASES[problem] in str(error.value)
