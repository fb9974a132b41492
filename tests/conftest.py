"""Shared test fixtures: small dataset files written through the project's own writer."""
from pathlib import Path

import numpy as np
import pytest

from preprocess.dataset import DatasetWriter

ROOT = Path(__file__).resolve().parents[1]

ALL_FIELDS = ("images", "labels", "patient_ids", "source_ids", "tumor_masks", "conditions")


def write_blob_dataset(path, n=36, size=64, patients=12, seed=0):
    """A learnable toy dataset: a bright disc whose place depends on the class, a ring as skull."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    ring = np.abs(np.hypot(yy - 0.5, xx - 0.5) - 0.42) < 0.02
    centres = [(0.3, 0.3), (0.5, 0.65), (0.7, 0.5)]
    labels = np.arange(n) % 3
    patient_of = [f"P{i % patients:03d}" for i in range(n)]  # patients divisible by 3: one class each
    images, masks, conditions = [], [], []
    for label in labels:
        cy, cx = np.array(centres[label]) + rng.normal(0, 0.03, 2)
        disc = np.hypot(yy - cy, xx - cx) < 0.08 + 0.02 * rng.random()
        image = 0.3 * (np.hypot(yy - 0.5, xx - 0.5) < 0.42) + 0.6 * disc + rng.normal(0, 0.05, (size, size))
        images.append(np.clip(image, 0, 1))
        masks.append(disc)
        conditions.append(ring | (disc & ~np.roll(disc, 1, axis=0)))
    with DatasetWriter(path, image_size=size, fields=ALL_FIELDS) as out:
        out.append(images=np.array(images), labels=labels, patient_ids=patient_of,
                   source_ids=[str(i + 1) for i in range(n)], tumor_masks=np.array(masks),
                   conditions=np.array(conditions))
        out.attrs["source"] = "tests/conftest.py blob dataset"
    return Path(path)


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory):
    """A 36-slice, 64x64 dataset file with 12 patients (3 slices each, one class per patient)."""
    return write_blob_dataset(tmp_path_factory.mktemp("blob") / "blob_64.h5")


@pytest.fixture(scope="session")
def demo_mat_dir(tmp_path_factory):
    """Twelve demo .mat files (v7.3, 128 px; 4 patients of each class would be too slow at 512)."""
    from preprocess.make_demo_data import write_demo_data
    folder = tmp_path_factory.mktemp("demo_mat")
    write_demo_data(folder, patients=6, slices_per_patient=2, image_size=128, small_fraction=0,
                    seed=1, version="7.3")
    return folder


@pytest.fixture(scope="session")
def demo_dataset(demo_mat_dir, tmp_path_factory):
    """The demo .mat files prepared at 64 px."""
    from preprocess.prepare import prepare_dataset
    path = tmp_path_factory.mktemp("demo_h5") / "demo_64.h5"
    prepare_dataset(demo_mat_dir, path, image_size=64, workers=1)
    return path


@pytest.fixture(scope="session")
def holdout_run(blob_dataset, tmp_path_factory):
    """A tiny classifier trained by train.py as a script (2 epochs, 64 px): (run folder, stdout)."""
    import subprocess
    import sys
    model_dir = tmp_path_factory.mktemp("models")
    command = [sys.executable, "capsule_classifier/train.py", "--model=capsule",
               f"--data_path={blob_dataset}", "--image_size=64", "--CrossValidation=False", "--val_fraction=0.2",
               "--Train=True", "--Test=False", f"--model_dir={model_dir}", "--run_name=tiny",
               "--epochs=2", "--batch_size=8"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir / "tiny", done.stdout
