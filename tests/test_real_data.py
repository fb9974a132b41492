"""Opt-in checks on real MRI: set FIGSHARE_DEV_DIR to a folder of figshare .mat files.

.ci/run converts ~50 development slices with ../shared/tools/figshare_to_mat.py and sets it, plus
FIGSHARE_DEV_JPEGS to the folder of the original JPEG copies, which give an independent check that
images come out upright. Skipped on a user's machine, which has no such data.
"""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon2mask

from preprocess.dataset import SliceDataset, read_attrs
from preprocess.intensity import normalise_slice, resize_slice
from preprocess.mat_reader import iter_sources, read_mat_slice
from preprocess.masks import outline, skull_region
from preprocess.prepare import prepare_dataset

MAT_DIR = os.environ.get("FIGSHARE_DEV_DIR")
JPEG_DIR = os.environ.get("FIGSHARE_DEV_JPEGS")
pytestmark = pytest.mark.skipif(not MAT_DIR, reason="FIGSHARE_DEV_DIR is not set (no real data here)")


@pytest.fixture(scope="module")
def slices():
    refs = iter_sources(MAT_DIR)[:60]
    return [(ref.name, read_mat_slice(ref.read_bytes(), ref.name)) for ref in refs]


def correlation(a, b):
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


@pytest.mark.skipif(not JPEG_DIR, reason="FIGSHARE_DEV_JPEGS is not set")
def test_images_come_out_upright(slices):
    for name, fields in slices:
        jpeg = Path(JPEG_DIR) / (Path(name).stem + ".jpg")
        picture = np.asarray(Image.open(jpeg).convert("L"), dtype=np.float32)
        image = resize_slice(normalise_slice(fields["image"]), picture.shape[0])
        upright = correlation(image, picture)
        assert upright > 0.9, name
        for wrong in (image.T, image[::-1], image[:, ::-1]):
            assert correlation(wrong, picture) < upright - 0.05, name


def test_tumour_border_lines_up_with_mask(slices):
    for name, fields in slices:
        x, y = fields["tumor_border"].T
        filled = polygon2mask(fields["image"].shape, np.column_stack([y, x]))
        mask = fields["tumor_mask"]
        assert (filled & mask).sum() / (filled | mask).sum() > 0.85, name


def test_tumour_lies_inside_skull_outline(slices):
    inside = []
    for name, fields in slices:
        image = resize_slice(normalise_slice(fields["image"]), 256)
        head = skull_region(image)
        skull = outline(head)
        assert ndimage.label(skull, structure=np.ones((3, 3)))[1] == 1, name
        assert 0.1 < head.mean() < 0.95, name
        tumour = resize_slice(fields["tumor_mask"].astype(np.float32), 256) >= 0.5
        inside.append(head[tumour].mean())
    assert np.median(inside) == 1.0 and np.mean(inside) > 0.95


def test_prepare_on_real_files_skips_none(tmp_path):
    summary = prepare_dataset(MAT_DIR, tmp_path / "real.h5", image_size=128, workers=2)
    assert summary["skipped"] == [] and summary["slices"] == len(iter_sources(MAT_DIR))
    assert read_attrs(tmp_path / "real.h5")["skipped"] == []
    data = SliceDataset(tmp_path / "real.h5", fields=("images", "tumor_masks", "conditions"))
    for item in (data[i] for i in range(0, len(data), 5)):
        assert item["conditions"].sum() > 50
        assert (item["conditions"][0] > 0)[item["tumor_masks"][0] > 0].any()   # tumour outline drawn
