"""preprocess/split_dataset.py: two dataset files, whole patients on one side only."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess.dataset import read_column, read_images
from preprocess.splits import holdout_split, write_split

ROOT = Path(__file__).resolve().parents[1]


def test_split_keeps_every_slice_once_and_no_patient_on_both_sides(blob_dataset, tmp_path):
    summary = write_split(blob_dataset, tmp_path / "train.h5", tmp_path / "heldout.h5", 0.25, seed=1)
    train, heldout = (set(read_column(tmp_path / f"{p}.h5", "source_ids")) for p in ("train", "heldout"))
    assert not train & heldout and train | heldout == set(read_column(blob_dataset, "source_ids"))
    patients = {p: set(read_column(tmp_path / f"{p}.h5", "patient_ids")) for p in ("train", "heldout")}
    assert not patients["train"] & patients["heldout"]
    assert summary["heldout"]["slices"] == len(heldout) and summary["train"]["slices"] == len(train)
    # the same rows the classifier's hold-out takes, and the pixels come along unchanged
    labels, ids = read_column(blob_dataset, "labels"), read_column(blob_dataset, "patient_ids")
    _, expected = holdout_split(labels, ids, 0.25, 1, read_column(blob_dataset, "source_ids"))
    np.testing.assert_array_equal(read_images(tmp_path / "heldout.h5"), read_images(blob_dataset, indices=np.sort(expected)))
    with h5py.File(tmp_path / "heldout.h5") as handle:
        split = json.loads(handle.attrs["split"])
        assert set(handle) == set(h5py.File(blob_dataset))
    assert split["part"] == "heldout" and set(split["patients"]) == patients["heldout"]


def test_split_refuses_to_overwrite_its_input(blob_dataset, tmp_path):
    with pytest.raises(ValueError, match="also the input --dataset"):
        write_split(blob_dataset, blob_dataset, tmp_path / "heldout.h5")
    done = subprocess.run([sys.executable, "preprocess/split_dataset.py", f"--dataset={blob_dataset}",
                           f"--train_out={tmp_path / 'a.h5'}", f"--heldout_out={tmp_path / 'a.h5'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "name the same file" in done.stderr and not (tmp_path / "a.h5").exists()
