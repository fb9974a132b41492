"""Patient-wise and leave-stretch-out folds, in-memory loading, study pickles and batch augmentation."""
import os
import pickle

import numpy as np
import pytest
import torch

from capsule_classifier.augment import augment_batch, random_flips, random_intensity, rotated_copies
from capsule_classifier.data import load_sources
from preprocess.splits import figshare_numbers, holdout_split, patient_folds, stretch_ids
from capsule_classifier.study_pickle import load_study_pickle
from preprocess.dataset import read_column


def test_folds_never_share_a_patient_and_cover_every_slice():
    rng = np.random.default_rng(0)
    patients = np.array([f"P{p}" for p in rng.integers(0, 40, 400)], dtype=object)
    labels = np.array([hash(p) % 3 for p in patients])
    folds = patient_folds(labels, patients, 5, seed=3)
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen) == list(range(400))
    for train, val in folds:
        assert not set(patients[train]) & set(patients[val])
        assert len(np.unique(labels[val])) == 3
    train, val = holdout_split(labels, patients, 0.2, seed=0)
    assert not set(patients[train]) & set(patients[val]) and 0.1 < len(val) / 400 < 0.3


def test_too_few_patients_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match="at least 5 patients"):
        patient_folds(np.zeros(6, int), np.array(["a", "b", "c"] * 2, dtype=object), 5, 0)


def test_load_sources_resizes_and_keeps_columns(blob_dataset):
    data = load_sources([blob_dataset], image_size=32)
    assert data.images.shape == (36, 32, 32) and data.images.dtype == torch.float16
    assert list(data.patient_ids) == list(read_column(blob_dataset, "patient_ids"))
    assert not data.synthetic.any()
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([[_RunsCode(), 0]]))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_study_pickle(path)


def test_study_pickle_is_read(tmp_path):
    rng = np.random.default_rng(0)
    items = [[(rng.random((16, 16)) * 255).astype(np.uint8), k % 3] for k in range(6)]
    path = tmp_path / "train.pkl"
    path.write_bytes(pickle.dumps(np.array(items, dtype=object)))
    images, labels = load_study_pickle(path)
    assert images.shape == (6, 16, 16) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.warns(UserWarning, match="NOT patient-wise"):
        data = load_sources([path])
    assert len(set(data.patient_ids)) == 6


@pytest.mark.parametrize("mode", ["affine", "mri", "scanner"])
def test_augmentation_is_seeded_and_keeps_shapes(mode):
    images, labels = torch.rand(4, 1, 32, 32), torch.arange(4)
    one = augment_batch(images, labels, mode, torch.Generator().manual_seed(1))[0]
    two = augment_batch(images, labels, mode, torch.Generator().manual_seed(1))[0]
    assert one.shape == images.shape and torch.equal(one, two) and not torch.equal(one, images)
    assert one.min() >= 0 and one.max() <= 1


@pytest.mark.parametrize("vertical", [True, False])
def test_vertical_flips_can_be_left_out(vertical):
    images = torch.zeros(64, 1, 8, 8)
    images[:, :, 0, 0] = 1                                    # a mark in the top-left corner
    flipped = random_flips(images, torch.Generator().manual_seed(0), vertical=vertical)
    top_kept = flipped[:, 0, 0, :].sum(1) == 1
    left_kept = flipped[:, 0, :, 0].sum(1) == 1
    assert not left_kept.all()                               # left-right flips happen either way
    assert top_kept.all() != vertical


def test_study_rotated_copies():
    images, labels = torch.rand(4, 1, 32, 32), torch.arange(4)
    copies, copy_labels = rotated_copies(images, labels)
    assert copies.shape == (16, 1, 32, 32) and copy_labels.tolist()[:5] == [0, 0, 0, 0, 1]
    torch.testing.assert_close(copies[1], torch.rot90(images[0], 1, dims=(-2, -1)))


def test_intensity_augmentation_keeps_black_and_order_of_intensities():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).repeat(8, 1, 4, 1)
    out = random_intensity(ramp, torch.Generator().manual_seed(0))
    assert torch.all(out[..., 0] == 0) and not torch.equal(out, ramp)
    assert torch.all(out[..., 1:] >= out[..., :-1])      # monotone: anatomy keeps its contrast order


def test_scanner_augmentation_pieces_do_what_they_say():
    from capsule_classifier.augment import random_bias_field, random_blur, random_noise
    flat = torch.full((16, 1, 64, 64), 0.5)
    field = random_bias_field(flat, torch.Generator().manual_seed(0))
    assert field.std() > 0.02 and torch.all(field > 0)            # a gain that varies over the slice...
    assert (field[..., 1:, :] - field[..., :-1, :]).abs().max() < 0.05   # ...smoothly, not pixel by pixel
    edge = torch.zeros(16, 1, 64, 64)
    edge[..., 32:] = 1
    blurred = random_blur(edge, torch.Generator().manual_seed(0), max_fraction=0.05)
    assert torch.allclose(blurred.sum((-2, -1)), edge.sum((-2, -1)), rtol=1e-4)   # brightness kept
    assert (blurred[..., 31] > 0.01).any() and (blurred[..., 31] < 0.5).all()   # the edge softened
    noisy = random_noise(flat, torch.Generator().manual_seed(0))
    assert 0 < (noisy - flat).std() < 0.03 and noisy.min() >= 0


def test_mixup_blends_images_and_masks_with_the_same_partner():
    from capsule_classifier.engine import mix_batch
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 4, 4)
    mixed, masks, partner = mix_batch(images, images.clone(), 0.7, torch.Generator().manual_seed(0))
    assert sorted(partner.tolist()) == list(range(6))
    assert torch.allclose(mixed, 0.7 * images + 0.3 * images[partner]) and torch.allclose(masks, mixed)


def _square_tumours(corners, side=64, size=8):
    """A batch with one bright square tumour per slice (top-left corners given; None: no tumour),
    each tumour of brightness 0.1 * (its slice's number + 1) on a background of 0.05."""
    images = torch.full((len(corners), 1, side, side), 0.05)
    masks = torch.zeros_like(images)
    for k, corner in enumerate(corners):
        if corner is not None:
            r, c = corner
            images[k, 0, r:r + size, c:c + size] = 0.1 * (k + 1)
            masks[k, 0, r:r + size, c:c + size] = 1
    return images, masks


def test_pasted_tumours_land_on_the_own_tumour_and_share_the_label():
    from capsule_classifier.augment import paste_tumours
    corners = [(8, 8), (40, 30), (20, 44), (30, 10), None, (50, 50)]
    images, masks = _square_tumours(corners)
    # margin 1/8 at 64 px: two coarse pixels around the tumour, one of soft edge (as the defaults at 256 px)
    out, out_masks, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(0), "host",
                                                 margin=1 / 8)
    pasted = [k for k in range(6) if share[k] > 0]
    assert pasted and all(corners[k] is not None and corners[donor[k]] is not None and donor[k] != k
                          for k in pasted)
    for k in range(6):
        if k not in pasted:                                        # untouched: image, mask, label
            assert torch.equal(out[k], images[k]) and torch.equal(out_masks[k], masks[k]) and share[k] == 0
            continue
        r, c = corners[k]
        middle = out[k, 0, r + 2:r + 6, c + 2:c + 6]               # the donor's tumour, moved onto this one
        torch.testing.assert_close(middle, torch.full_like(middle, 0.1 * (int(donor[k]) + 1)))
        assert out_masks[k, 0, r:r + 8, c:c + 8].min() > 0.99 and out_masks[k].sum() == pytest.approx(64, abs=1)
        assert share[k] == pytest.approx(1.0)                      # same size: the own tumour is covered
        assert out[k, 0, 0, 0] == pytest.approx(0.05) or (r, c) == (8, 8)   # far from the patch: unchanged
    none = paste_tumours(images, masks, 0.0, torch.Generator().manual_seed(0), "host")
    assert torch.equal(none[0], images) and not none[3].any()


def test_a_small_pasted_tumour_leaves_part_of_the_label_to_the_slice():
    from capsule_classifier.augment import paste_tumours
    from capsule_classifier.engine import blend_targets
    images, masks = _square_tumours([(20, 20), (20, 20)], size=24)
    masks[1] = 0
    masks[1, 0, 30:34, 30:34] = 1                                  # slice 1's tumour: 16 px
    out, out_masks, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(1), "host",
                                                 margin=0, feather=0)
    assert donor.tolist() == [1, 0] and share[1] == pytest.approx(1.0)   # the big one covers the small one
    shown = out_masks[0].sum() - 16                                # what is left of slice 0's own tumour
    assert share[0] == pytest.approx(16 / (16 + shown.item()), rel=1e-4) and 0 < share[0] < 0.05
    targets = blend_targets(torch.eye(3)[[0, 2]], donor, share)
    torch.testing.assert_close(targets[0], torch.tensor([1 - share[0].item(), 0, share[0].item()]))
    torch.testing.assert_close(targets.sum(1), torch.ones(2))


def test_a_tumour_pasted_at_the_donor_place_stays_where_it_was_and_the_own_one_shows():
    from capsule_classifier.augment import paste_tumours
    corners = [(8, 8), (40, 40)]                                   # apart: neither patch covers the other tumour
    images, masks = _square_tumours(corners)
    out, out_masks, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(1),
                                                 margin=1 / 8, at="donor")
    assert donor.tolist() == [1, 0]
    for k in range(2):
        (r, c), (dr, dc) = corners[k], corners[1 - k]
        pasted = out[k, 0, dr + 2:dr + 6, dc + 2:dc + 6]          # the donor's tumour, in its own place
        torch.testing.assert_close(pasted, torch.full_like(pasted, 0.1 * (2 - k)))
        own = out[k, 0, r:r + 8, c:c + 8]                          # the slice's own tumour, untouched
        torch.testing.assert_close(own, images[k, 0, r:r + 8, c:c + 8])
        assert out_masks[k].sum() == pytest.approx(128, abs=1) and share[k] == pytest.approx(0.5, abs=0.01)
    images, masks = _square_tumours([(8, 8), (12, 12)])            # overlapping: each covers part of the other
    out, out_masks, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(1), "donor",
                                                 margin=0, feather=0)
    assert out_masks[0].sum() == 112 and share[0] == pytest.approx(64 / 112)   # 64 pasted + 48 of its own left
    with pytest.raises(ValueError, match="at='middle'"):
        paste_tumours(images, masks, 1.0, torch.Generator(), "middle")


def test_other_class_donors_give_every_pasted_slice_a_tumour_of_another_class():
    from capsule_classifier.augment import paste_tumours
    images, masks = _square_tumours([(8, 8), (40, 30), (20, 44), (30, 10), (44, 12), (50, 50)])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(20):
        _, _, donor, share = paste_tumours(images, masks, 1.0, generator, "donor", labels=labels,
                                           donors="other_class")
        assert share.gt(0).all() and (labels[donor] != labels).all()
        drawn.append(donor)
    assert len({tuple(d.tolist()) for d in drawn}) > 1                # random, not one fixed pairing
    any_class = [paste_tumours(images, masks, 1.0, generator, "donor")[2] for _ in range(20)]
    assert any((labels[d] == labels).any() for d in any_class)        # the default also pairs within a class
    one_class = torch.zeros(6, dtype=torch.long)                      # nothing of another class: nothing pasted
    out, _, _, share = paste_tumours(images, masks, 1.0, generator, "donor", labels=one_class, donors="other_class")
    assert not share.any() and torch.equal(out, images)
    empty = masks.clone()
    empty[[2, 3]] = 0                                                 # two slices without a tumour to give
    for _ in range(20):                                               # every slice with one still gets one
        _, _, donor, share = paste_tumours(images, empty, 1.0, generator, "donor", labels=labels,
                                           donors="other_class")
        assert share[[0, 1, 4, 5]].gt(0).all() and not share[[2, 3]].any()
        assert not any(int(donor[k]) in (2, 3) for k in (0, 1, 4, 5))
    with pytest.raises(ValueError, match="2 labels for a batch of 6"):
        paste_tumours(images, masks, 1.0, generator, "donor", labels=labels[:2], donors="other_class")
    with pytest.raises(ValueError, match="needs the labels"):
        paste_tumours(images, masks, 1.0, generator, "donor", donors="other_class")


def test_either_placement_moves_some_pasted_tumours_onto_the_own_one_and_leaves_others_in_place():
    from capsule_classifier.augment import paste_tumours
    corners = [(4 + 6 * (k % 2), 4 + 6 * k) for k in range(8)]   # tumours of 8 px, 6 px apart on columns
    images, masks = _square_tumours(corners, size=8)
    out, out_masks, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(3), "either",
                                                 margin=0, feather=0)
    places = []
    for k in range(8):
        if share[k] == 0:
            continue
        value = 0.1 * (int(donor[k]) + 1)
        (r, c), (dr, dc) = corners[k], corners[int(donor[k])]
        on_own = torch.allclose(out[k, 0, r:r + 8, c:c + 8], torch.full((8, 8), value))
        at_donor = torch.allclose(out[k, 0, dr:dr + 8, dc:dc + 8], torch.full((8, 8), value))
        assert on_own != at_donor                                  # exactly one of the two places
        places.append("host" if on_own else "donor")
    assert set(places) == {"host", "donor"}                       # the coin chose both in one batch


def _numbered_dataset(sizes, labels_of_patient):
    """Slices numbered 1..N in patient order, with the given slices per patient and patient labels."""
    patients, labels = [], []
    for p, (size, label) in enumerate(zip(sizes, labels_of_patient)):
        patients += [f"P{p:03d}"] * size
        labels += [label] * size
    source_ids = np.array([f"{k + 1}" for k in range(len(patients))], dtype=object)
    return np.array(labels), np.array(patients, dtype=object), source_ids


def test_stretches_are_consecutive_whole_patients_of_about_the_target_size():
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 40, 120)
    labels, patients, source_ids = _numbered_dataset(sizes, np.arange(120) // 40)
    stretches = stretch_ids(patients, source_ids, stretch_slices=200)
    assert (np.diff(stretches) >= 0).all()                              # consecutive in the numbering
    for patient in np.unique(patients):
        assert len(set(stretches[patients == patient])) == 1             # never splits a patient
    counts = np.bincount(stretches)
    assert counts.min() >= 100 and counts[:-1].max() < 200 + sizes.max()
    # numbering, not the order of the rows, decides: shuffled rows give the same stretches
    order = rng.permutation(len(labels))
    assert (stretch_ids(patients[order], source_ids[order], 200) == stretches[order]).all()


def test_stretch_folds_leave_whole_stretches_out():
    rng = np.random.default_rng(1)
    labels, patients, source_ids = _numbered_dataset(rng.integers(5, 30, 150), np.arange(150) // 50)
    stretches = stretch_ids(patients, source_ids)
    folds = patient_folds(labels, patients, 5, 0, source_ids, group_by="stretch")
    assert sorted(np.concatenate([val for _, val in folds])) == list(range(len(labels)))
    for train, val in folds:
        assert not set(stretches[train]) & set(stretches[val])
        assert not set(patients[train]) & set(patients[val])
    # patient-wise folds of the same data do put neighbouring slices of a stretch on both sides
    train, val = patient_folds(labels, patients, 5, 0)[0]
    assert set(stretches[train]) & set(stretches[val])


def test_stretches_need_figshare_numbers():
    assert figshare_numbers(["12", "brainTumorDataPublic_1-766.zip:766.mat", "3064.mat"]).tolist() == \
        [12, 766, 3064]
    with pytest.raises(ValueError, match="group_by=patient"):
        stretch_ids(np.array(["a", "b"], dtype=object), np.array(["x.png", "y.png"], dtype=object))
    with pytest.raises(ValueError, match="group_by must be"):
        patient_folds(np.zeros(6, int), np.array(list("abcdef"), dtype=object), 2, 0, group_by="slice")


def test_masks_follow_the_geometry_of_their_images_and_no_intensity_change():
    images = (torch.rand(8, 1, 32, 32) > 0.7).float()
    labels = torch.arange(8) % 3
    for mode in ("affine", "study"):
        out, out_labels, masks = augment_batch(images, labels, mode, torch.Generator().manual_seed(2),
                                               masks=images.to(torch.uint8))
        assert torch.allclose(out, masks) and len(out_labels) == len(out)   # same warp, same flips
    out, _, masks = augment_batch(images * 0.5, labels, "mri", torch.Generator().manual_seed(2),
                                  masks=images.to(torch.uint8))
    assert masks.max() > 0.99 and not torch.allclose(out * 2, masks, atol=1e-3)   # gamma on images only


def test_load_sources_reads_tumour_masks(blob_dataset):
    data = load_sources([blob_dataset], image_size=32)
    assert data.masks.shape == (36, 32, 32) and data.masks.dtype == torch.uint8
    assert set(torch.unique(data.masks).tolist()) == {0, 1}
    assert torch.equal(data.subset([3, 1]).masks, data.masks[[3, 1]])


def test_macro_f1_counts_only_the_classes_a_fold_holds():
    from capsule_classifier.report import classification_metrics, macro_f1_of_confusion, summarise_folds
    labels = np.array([1, 1, 1, 2])                       # a stretch fold without meningioma
    probabilities = np.eye(3)[[1, 1, 0, 2]]               # one glioma taken for a meningioma
    metrics = classification_metrics(labels, probabilities)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 1.0) / 2)     # F1 glioma 0.8, pituitary 1
    other = classification_metrics(np.array([0, 0]), np.eye(3)[[0, 1]])
    summary = summarise_folds([metrics, other])
    pooled = np.array(summary["confusion_matrix"])
    assert pooled.sum() == 6 and summary["pooled_macro_f1"] == pytest.approx(macro_f1_of_confusion(pooled))
    assert summary["pooled_macro_f1"] == pytest.approx(np.mean([0.5, 2 / 3, 1.0]))   # F1 per class


def test_matched_levels_keep_a_pasted_tumour_as_bright_against_its_new_tissue_as_against_its_own():
    from capsule_classifier.augment import LEVEL_SCALE_LIMITS, paste_tumours, tissue_levels
    images, masks = _square_tumours([(8, 8), (40, 40)])            # apart: each keeps its own tumour
    images[0][images[0] > 0] = 0.4                                 # slice 0: tissue 0.4, tumour 0.8
    images[0, 0, 8:16, 8:16] = 0.8
    images[1][images[1] > 0] = 0.2                                 # slice 1: tissue 0.2, tumour 0.3
    images[1, 0, 40:48, 40:48] = 0.3
    torch.testing.assert_close(tissue_levels(images, masks), torch.tensor([0.4, 0.2]))
    raw = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(1), "donor", margin=0, feather=0)[0]
    out, _, donor, share = paste_tumours(images, masks, 1.0, torch.Generator().manual_seed(1), "donor",
                                         margin=0, feather=0, match_levels=True)
    assert donor.tolist() == [1, 0] and share.gt(0).all()
    assert raw[1, 0, 10, 10] == pytest.approx(0.8) and raw[0, 0, 42, 42] == pytest.approx(0.3)   # as they were
    assert out[1, 0, 10, 10] == pytest.approx(0.4)                # 0.8 x 0.2 / 0.4: twice its tissue, as before
    assert out[0, 0, 42, 42] == pytest.approx(0.6)                # 0.3 x 0.4 / 0.2: 1.5 x its tissue, as before
    torch.testing.assert_close(out[0, 0, 8:16, 8:16], images[0, 0, 8:16, 8:16])   # own tumours untouched
    faint = images.clone()
    faint[1][faint[1] > 0] = 0.06                                  # a far darker slice: the scale is limited
    faint[1, 0, 40:48, 40:48] = 0.09
    out = paste_tumours(faint, masks, 1.0, torch.Generator().manual_seed(1), "donor", margin=0, feather=0,
                        match_levels=True)[0]
    assert out[0, 0, 42, 42] == pytest.approx(0.09 * LEVEL_SCALE_LIMITS[1])


def test_tumour_statistics_read_brightness_against_the_tissue_and_tell_place_only_when_asked(blob_dataset, tmp_path):
    from capsule_classifier import tumour_statistics
    image = np.full((32, 32), 0.2, dtype=np.float32)
    tumour = np.zeros((32, 32), bool)
    tumour[8:12, 20:24] = True
    image[tumour] = 0.6
    values = tumour_statistics.slice_statistics(image, tumour, ring_px=1)
    assert values[0] == pytest.approx(3.0) and values[3] == pytest.approx(0.0) and values[4] == pytest.approx(1.0)
    assert values[5] == pytest.approx(16 / 1024) and values[6] == pytest.approx(9.5 / 32)
    flags = dict(data_path=str(blob_dataset), k_folds=3, group_by="patient", split_seed=0, out="")
    # the toy classes differ by where the disc sits, not by how bright it is
    unplaced = tumour_statistics.run(dict(flags, place=False))["accuracy_mean"]
    placed = tumour_statistics.run(dict(flags, place=True, out=str(tmp_path / "placed.json")))
    assert unplaced < 0.6 and placed["accuracy_mean"] > unplaced + 0.3 and len(placed["folds"]) == 3
    assert "area share" in (tmp_path / "placed.json").read_text()
