"""Condition masks: closing, skull outline on demo slices, augmented tumours."""
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import closing, disk

from preprocess.intensity import normalise_slice
from preprocess.mask_augmentation import random_affine, warped_tumour_inside
from preprocess.masks import condition_mask, disk_closing, outline, scaled, skull_region
from preprocess.phantom import draw_patient, render_slice


@pytest.mark.parametrize("radius", [3, 7])
def test_distance_transform_closing_matches_skimage(radius):
    rng = np.random.default_rng(radius)
    blobs = ndimage.gaussian_filter(rng.random((96, 96)), 3) > 0.52
    expected = closing(np.pad(blobs, 2 * radius), disk(radius))[2 * radius:-2 * radius, 2 * radius:-2 * radius]
    np.testing.assert_array_equal(disk_closing(blobs, radius), expected)


def test_sizes_scale_with_the_image():
    assert scaled(25, 512) == 25 and scaled(25, 256) == 12 and scaled(50, 128) == 12 and scaled(1, 64) == 1


def phantom(label, size=128, seed=0):
    rng = np.random.default_rng(seed)
    image, tumour = render_slice(draw_patient(label, rng), 0.0, size, rng)
    return normalise_slice(image), tumour


@pytest.mark.parametrize("label", [1, 2, 3])
def test_skull_outline_encloses_the_brain(label):
    image, tumour = phantom(label, seed=label)
    head = skull_region(image)
    skull = outline(head)
    assert ndimage.label(skull, structure=np.ones((3, 3)))[1] == 1          # one closed curve
    enclosed = ndimage.binary_fill_holes(skull)
    assert enclosed[tumour].all()
    bright = ndimage.binary_opening(image > 0.25, iterations=2)
    assert enclosed[bright].mean() > 0.97
    assert enclosed.mean() < 0.8                                              # not the whole image


def test_condition_mask_is_union_of_outlines():
    image, tumour = phantom(2)
    head = skull_region(image)
    condition = condition_mask(head, tumour)
    assert condition.dtype == np.uint8 and set(np.unique(condition)) == {0, 1}
    assert (condition.astype(bool) == (outline(head) | outline(tumour))).all()
    assert condition[tumour & ~outline(tumour)].sum() == 0                     # outline, not filled


def test_random_affine_stays_in_the_study_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        matrix = random_affine(rng)
        assert 0.8 * 0.8 * 0.74 < abs(np.linalg.det(matrix)) <= 1.0 + 1e-9


@pytest.mark.parametrize("label", [1, 2, 3])
def test_augmented_tumours_stay_inside_skull_and_differ(label):
    image, tumour = phantom(label, seed=10 + label)
    head = skull_region(image)
    rng = np.random.default_rng(label)
    for _ in range(5):
        warped = warped_tumour_inside(tumour, head, rng)
        assert warped.any()
        assert head[warped].all()
        assert not outline(head)[warped].any()
        overlap = (warped & tumour).sum() / (warped | tumour).sum()
        assert overlap < 0.97


def test_fill_holes_matches_scipy():
    from preprocess.masks import fill_holes
    rng = np.random.default_rng(3)
    for _ in range(50):
        region = ndimage.binary_opening(rng.random((48, 40)) < rng.uniform(0.3, 0.9))
        assert np.array_equal(fill_holes(region), ndimage.binary_fill_holes(region))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(np.zeros((5, 5), bool)).any()
