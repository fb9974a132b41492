"""prepare_dataset and augment_masks end to end on demo files: layout, sizes, bad input, atomicity."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT
from preprocess.mask_augmentation import augment_masks
from preprocess.dataset import SliceDataset, read_attrs, read_column
from preprocess.make_demo_data import write_demo_data
from preprocess.mat_reader import MatFileError
from preprocess.masks import skull_region
from preprocess.prepare import prepare_dataset
from test_mat_reader import BAD_CASES, write_bad


def test_dataset_file_layout(demo_dataset):
    with h5py.File(demo_dataset, "r") as f:
        n = len(f["labels"])
        assert n == 12
        for name, dtype in (("images", np.float16), ("tumor_masks", np.uint8), ("conditions", np.uint8)):
            assert f[name].shape == (n, 64, 64) and f[name].dtype == dtype
            assert f[name].chunks == (1, 64, 64) and f[name].compression is not None
        images = f["images"][()].astype(np.float32)
        assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
        assert set(np.unique(f["conditions"][()])) == {0, 1}
        assert f["labels"].dtype == np.int64
    assert sorted(set(read_column(demo_dataset, "labels"))) == [0, 1, 2]
    patients = read_column(demo_dataset, "patient_ids")
    assert len(set(patients)) == 6 and all(isinstance(p, str) for p in patients)
    assert list(read_column(demo_dataset, "source_ids")) == [str(i) for i in range(1, 13)]
    attrs = read_attrs(demo_dataset)
    assert attrs["class_names"] == ["meningioma", "glioma", "pituitary"]
    assert attrs["image_size"] == 64 and attrs["skipped"] == [] and attrs["synthetic"] is False


def test_tumours_lie_inside_the_skull_outline(demo_dataset):
    data = SliceDataset(demo_dataset, fields=("images", "tumor_masks", "conditions"))
    for item in (data[i] for i in range(len(data))):
        head = skull_region(item["images"][0])
        assert head[item["tumor_masks"][0] > 0].mean() > 0.95
        assert item["conditions"][0][head].sum() > 0


def test_256_slices_are_resized_not_dropped(tmp_path):
    write_demo_data(tmp_path / "small", patients=1, slices_per_patient=2, image_size=256,
                    small_fraction=0, seed=3, version="7.3")
    write_demo_data(tmp_path / "big", patients=1, slices_per_patient=1, image_size=512,
                    small_fraction=0, seed=4, version="7.3")
    shutil.copy(tmp_path / "big" / "1.mat", tmp_path / "small" / "3.mat")
    summary = prepare_dataset(tmp_path / "small", tmp_path / "out.h5", image_size=128, workers=1)
    assert summary["slices"] == 3 and summary["not_512"] == 2
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["images"].shape == (3, 128, 128)
        assert all(f["tumor_masks"][i].any() for i in range(3))


def folder_with_bad_file(demo_mat_dir, tmp_path, problem):
    folder = tmp_path / "mats"
    shutil.copytree(demo_mat_dir, folder)
    write_bad(folder / "5.mat", problem)
    return folder


@pytest.mark.parametrize("problem", sorted(BAD_CASES))
def test_bad_file_stops_the_run_and_leaves_no_output(demo_mat_dir, tmp_path, problem):
    folder = folder_with_bad_file(demo_mat_dir, tmp_path, problem)
    with pytest.raises(MatFileError, match="5.mat"):
        prepare_dataset(folder, tmp_path / "out.h5", image_size=32, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["mats"]      # no output, no partial file


def test_skip_bad_lists_skipped_files(demo_mat_dir, tmp_path):
    folder = folder_with_bad_file(demo_mat_dir, tmp_path, "truncated")
    write_bad(folder / "7.mat", "unknown label")
    summary = prepare_dataset(folder, tmp_path / "out.h5", image_size=32, skip_bad=True, workers=2)
    assert summary["slices"] == 10
    skipped = read_attrs(tmp_path / "out.h5")["skipped"]
    assert len(skipped) == 2 and skipped[0].startswith("5.mat") and skipped[1].startswith("7.mat")
    assert "5" not in read_column(tmp_path / "out.h5", "source_ids")


def test_damaged_zip_member_is_named_and_skippable(demo_mat_dir, tmp_path):
    archive = tmp_path / "brainTumorDataPublic_1-12.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in sorted(Path(demo_mat_dir).glob("*.mat")):
            out.write(path, path.name)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as check:
        member = check.getinfo("3.mat")
    data[member.header_offset + 30 + len("3.mat") + 100] ^= 0xFF     # flip a byte inside 3.mat: bad CRC
    archive.write_bytes(bytes(data))
    with pytest.raises(MatFileError, match=r"brainTumorDataPublic_1-12.zip/3.mat: damaged member"):
        prepare_dataset(archive, tmp_path / "out.h5", image_size=32, workers=1)
    summary = prepare_dataset(archive, tmp_path / "out.h5", image_size=32, skip_bad=True, workers=2)
    assert summary["slices"] == 11 and summary["skipped"][0].startswith("brainTumorDataPublic_1-12.zip/3.mat")


def test_augmented_mask_file(demo_dataset, tmp_path):
    out = tmp_path / "aug.h5"
    augment_masks(demo_dataset, out, per_class=4, seed=0, workers=1)
    labels = read_column(out, "labels")
    assert sorted(np.bincount(labels)) == [4, 4, 4]
    sources = read_column(out, "source_ids")
    real_labels = dict(zip(read_column(demo_dataset, "source_ids"), read_column(demo_dataset, "labels")))
    assert all(real_labels[s] == label for s, label in zip(sources, labels))
    with h5py.File(out, "r") as f:
        assert f["conditions"].shape == (12, 64, 64) and f["tumor_masks"][()].any(axis=(1, 2)).all()
    again = tmp_path / "again.h5"
    augment_masks(demo_dataset, again, per_class=4, seed=0, workers=2)
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_array_equal(a["conditions"][()], b["conditions"][()])   # seeded


def test_scripts_run_from_the_command_line(demo_mat_dir, tmp_path):
    prepared, masks = tmp_path / "d.h5", tmp_path / "m.h5"
    for command in (["preprocess/prepare_dataset.py", f"--source={demo_mat_dir}", f"--out={prepared}",
                     "--image_size=32", "--workers=1"],
                    ["preprocess/augment_masks.py", f"--dataset={prepared}", f"--out={masks}",
                     "--per_class=2", "--workers=1"]):
        run = subprocess.run([sys.executable] + command, cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert read_attrs(prepared)["created_with"]["image_size"] == 32
    assert len(read_column(masks, "labels")) == 6


def test_script_error_names_the_bad_file(demo_mat_dir, tmp_path):
    folder = folder_with_bad_file(demo_mat_dir, tmp_path, "missing field")
    run = subprocess.run([sys.executable, "preprocess/prepare_dataset.py", f"--source={folder}",
                          f"--out={tmp_path / 'x.h5'}", "--workers=1"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "5.mat: field cjdata.tumorMask is missing" in run.stderr
