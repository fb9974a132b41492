"""Feature-space quality metrics of synthetic slices: KID, FD, precision/recall, memorisation, the
held-out leakage check, and the report of evaluate.py end to end on tiny data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_blob_dataset

from generative_model.quality import (frechet_distance, kernel_distance, nearest_neighbours, precision_recall)
from preprocess.dataset import read_images
from preprocess.splits import write_split

ROOT = Path(__file__).resolve().parents[1]


def _gaussian(n, shift=0.0, scale=1.0, seed=0, dim=8):
    return np.random.default_rng(seed).normal(shift, scale, size=(n, dim))


def test_frechet_distance_matches_the_closed_form_and_grows_with_a_shift():
    real = _gaussian(4000, seed=1)
    assert frechet_distance(real, _gaussian(4000, seed=2)) < 0.05
    # identity covariances: the distance is the squared mean gap, 8 dimensions x 0.5^2
    assert frechet_distance(real, _gaussian(4000, shift=0.5, seed=2)) == pytest.approx(2.0, abs=0.15)


def test_kernel_distance_is_unbiased_near_zero_and_reports_its_spread():
    same_mean, same_std = kernel_distance(_gaussian(400, seed=1), _gaussian(400, seed=2), subsets=20, subset_size=200)
    shifted_mean, _ = kernel_distance(_gaussian(400, seed=1), _gaussian(400, 1.0, seed=2), subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3 and same_std > 0
    assert shifted_mean > 20 * max(same_mean, same_std)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(_gaussian(1), _gaussian(5))


def test_precision_and_recall_tell_collapse_from_spread():
    real = _gaussian(500, seed=1)
    collapsed = _gaussian(500, scale=0.1, seed=2)          # realistic but not diverse
    far = _gaussian(500, shift=6.0, seed=3)                # diverse but unrealistic
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.2
    precision, recall = precision_recall(real, far)
    assert precision < 0.05 and recall < 0.05
    precision, recall = precision_recall(real, _gaussian(500, seed=4))
    assert precision > 0.6 and recall > 0.6


def test_nearest_neighbours_find_copies():
    references = _gaussian(50, seed=1)
    index, distance = nearest_neighbours(references[[7, 3]] + 1e-4, references)
    assert index.tolist() == [7, 3] and (distance < 1e-2).all()


def _train_feature_classifier(train_path, model_dir):
    command = [sys.executable, "capsule_classifier/train.py", "--model=resnet18", f"--data_path={train_path}",
               "--CrossValidation=False", "--epochs=1", "--batch_size=8", f"--model_dir={model_dir}",
               "--run_name=features"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(model_dir) / "features" / "last.pt"


def test_quality_report_and_leakage_check(blob_dataset, tmp_path):
    from generative_model.evaluation import heldout_leakage
    from generative_model.quality_report import quality_report
    from generative_model.synthesis import synthesize
    from generative_model.settings import GanSettings
    from generative_model.trainer import train_models
    from test_gan_training import TINY

    train, heldout = tmp_path / "train.h5", tmp_path / "heldout.h5"
    write_split(blob_dataset, train, heldout, fraction=0.25)
    train_models(train, tmp_path, "gan", GanSettings(**TINY))
    masks = tmp_path / "masks.h5"
    subprocess.run([sys.executable, "preprocess/augment_masks.py", f"--dataset={train}", f"--out={masks}",
                    "--per_class=6", "--workers=1"], cwd=ROOT, check=True, capture_output=True, timeout=120)
    synthetic = tmp_path / "synthetic.h5"
    synthesize(tmp_path / "gan", masks, synthetic, per_class=6, batch_size=6, device="cpu", progress=False)

    leakage = heldout_leakage(tmp_path / "gan", synthetic, heldout)
    assert leakage["heldout_patients_the_gan_saw"] == 0 and leakage["synthetic_slices_from_heldout_masks"] == 0
    assert heldout_leakage(tmp_path / "gan", synthetic, train)["heldout_patients_the_gan_saw"] > 0
    from generative_model.tumour_contrast import tumour_contrast_report
    contrast = tumour_contrast_report(train, synthetic, heldout)      # synthetic slices keep their masks
    assert all(contrast[name]["synthetic"]["slices"] > 0 for name in ("meningioma", "glioma", "pituitary"))

    checkpoint = _train_feature_classifier(train, tmp_path / "classifier")
    report = quality_report(checkpoint, train, synthetic, heldout, tmp_path / "quality", device="cpu")
    for part in ("synthetic", "heldout"):
        metrics = report["against_train"][part]
        assert {"kid_mean", "kid_std", "fd", "precision", "recall"} <= set(metrics)
        assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1 and metrics["fd"] >= 0
    memorisation = report["memorisation"]
    assert 0 <= memorisation["synthetic"]["share_ssim_above_0.9"] <= 1
    assert "share_closer_than_heldout_q01" in memorisation["synthetic"]
    assert (tmp_path / "quality" / "quality.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "quality" / "quality.json").read_text())
    assert saved["against_train"]["synthetic"]["slices"] == 18


def _images_file(path, images):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=np.asarray(images, np.float16))
    return str(path)


def _blob_images(tmp_path, seed):
    return read_images(write_blob_dataset(tmp_path / f"blob_{seed}.h5", n=60, seed=seed))


def test_spectrum_finds_a_faint_lattice_and_its_period(tmp_path):
    from generative_model.spectrum import spectral_artefacts
    real = _images_file(tmp_path / "real.h5", _blob_images(tmp_path, 0))
    heldout = _images_file(tmp_path / "heldout.h5", _blob_images(tmp_path, 1))
    columns = np.arange(64)
    lattice = 0.03 * np.cos(2 * np.pi * columns / 4)[None, None, :]      # stripes every 4 px
    synthetic = _images_file(tmp_path / "synthetic.h5", np.clip(_blob_images(tmp_path, 2) + lattice, 0, 1))
    report = spectral_artefacts(real, synthetic, heldout, tmp_path / "spectrum.png")
    assert report["peak_period_px"] == 4.0 and abs(report["peak_cycles_per_image"][1]) == 16
    assert report["peak_excess"] > 1.0 > 0.5 > report["real_floor"]["peak_excess"]
    assert (tmp_path / "spectrum.png").stat().st_size > 10_000
    clean = spectral_artefacts(real, heldout)
    assert clean["peak_excess"] == report["real_floor"]["peak_excess"] and "real_floor" not in clean


def test_compare_evaluations_tabulates_runs_and_names_a_missing_one(tmp_path):
    from generative_model.compare_evaluations import run as compare
    run_dir = tmp_path / "variant_a"
    (run_dir / "all").mkdir(parents=True)
    (run_dir / "all" / "losses.csv").write_text("epoch,seconds\n1,10.5\n2,11.5\n")
    classes = ("meningioma", "glioma", "pituitary")
    classifier = run_dir / "evaluation" / "classifier" / "synthetic_to_real"
    classifier.mkdir(parents=True)
    (classifier / "metrics.json").write_text(json.dumps(
        {"test": {"per_class": {c: {"recall": r} for c, r in zip(classes, (0.25, 0.5, 0.75))}}}))
    (run_dir / "evaluation" / "evaluation.json").write_text(json.dumps({
        "diversity": {c: {"pairwise_ssim": 0.9} for c in classes},
        "feature_space": {"against_train": {"synthetic": {"kid_mean": 0.0812, "kid_std": 0.01, "fd": 13.2,
                                                          "precision": 0.9, "recall": 0.8}}},
        "classifier": {"synthetic_to_real": {"accuracy": 0.701, "macro_f1": 0.65}},
        "spectrum": {"peak_excess": 0.593, "peak_period_px": 2.03,
                     "real_floor": {"peak_excess": 0.215, "peak_period_px": 5.84}}}))
    table = compare({"runs": [str(run_dir)], "evaluation": "evaluation", "out": str(tmp_path / "t.md")})
    row = table.splitlines()[2]
    assert row.startswith("| variant_a | 0.081 +- 0.010 | 13.2 | 0.90 / 0.80 | 0.701 / 0.650 | 0.25 / 0.50 / 0.75")
    assert row.endswith("| 0.59 (2.0); 0.21 (5.8) | 22 |") and (tmp_path / "t.md").read_text() == table
    with pytest.raises(ValueError, match="nope"):
        compare({"runs": [str(tmp_path / "nope")], "evaluation": "evaluation", "out": ""})
    # newer evaluation.json files carry the recall themselves; no classifier folder is read then
    newer = tmp_path / "variant_b" / "evaluation"
    newer.mkdir(parents=True)
    # ... and an evaluation from before spectrum.py gets its spectrum from the files of its flags
    real = _images_file(tmp_path / "real.h5", _blob_images(tmp_path, 0))
    (newer / "evaluation.json").write_text(json.dumps({
        "flags": {"real": real, "synthetic": real, "heldout": ""},
        "diversity": {c: {"pairwise_ssim": 0.7} for c in classes},
        "classifier": {"synthetic_to_real": {"accuracy": 0.8, "macro_f1": 0.75,
                                             "recall": dict(zip(classes, (0.6, 0.7, 0.9))),
                                             "over_seeds": {"runs": 3, "accuracy_mean": 0.79, "accuracy_std": 0.012,
                                                            "macro_f1_mean": 0.74, "macro_f1_std": 0.02}}}}))
    row = compare({"runs": [str(newer.parent)], "evaluation": "evaluation", "out": ""}).splitlines()[2]
    assert row == ("| variant_b | not run | not run | not run | 0.800 / 0.750; 3 seeds: 0.790 +- 0.012 / 0.740 +- 0.020 "
                   "| 0.60 / 0.70 / 0.90 | 0.70 / 0.70 / 0.70 | 0.00 (no excess) |  |")   # a file against itself
    os.remove(real)
    with pytest.raises(ValueError, match="no 'spectrum' section"):
        compare({"runs": [str(newer.parent)], "evaluation": "evaluation", "out": ""})


def test_classifier_runs_keep_the_measured_recipe_unless_the_flags_choose():
    from generative_model.evaluation import pinned_protocol
    assert pinned_protocol([]) == pinned_protocol(["--lr=1e-3"]) == ["--epochs=30", "--tumour_paste=0.0"]
    assert pinned_protocol(["--epochs=6"]) == ["--tumour_paste=0.0"]    # the user's epochs
    assert pinned_protocol(["--tumour_paste=0.5"]) == ["--epochs=30"]
    assert pinned_protocol(["--preset=resnet18_cpu"]) == []            # the preset's recipe


def test_train_on_synthetic_over_classifier_seeds(tmp_path, monkeypatch):
    from generative_model import evaluation
    calls = []

    def fake_run(args, model_dir, run_name, log_path):          # accuracy 0.7 + seed / 100
        seed = int([a for a in args if a.startswith("--seed=")][-1].split("=")[1])
        calls.append((run_name, seed))
        assert [a for a in args if a.startswith("--epochs=")][-1] == "--epochs=30"   # as every measured row
        per_class = {c: {"recall": 0.5} for c in ("meningioma", "glioma", "pituitary")}
        return {"test": {"accuracy": 0.7 + seed / 100, "macro_f1": 0.6 + seed / 100, "per_class": per_class}}, 1.0, ""
    monkeypatch.setattr(evaluation, "run_classifier", fake_run)
    results = evaluation.classifier_comparison("real.h5", "synthetic.h5", 64, tmp_path, seed=0,
                                               runs=("synthetic_to_real",), heldout_path="heldout.h5",
                                               more_seeds=(1, 2))
    assert calls == [("synthetic_to_real", 0), ("synthetic_to_real_seed1", 1), ("synthetic_to_real_seed2", 2)]
    tstr = results["synthetic_to_real"]
    assert tstr["accuracy"] == pytest.approx(0.70)                          # the first seed, as before
    assert tstr["over_seeds"]["runs"] == 3 and tstr["over_seeds"]["accuracy_mean"] == pytest.approx(0.71)
    assert tstr["over_seeds"]["accuracy_std"] == pytest.approx(0.01)
    assert "over_seeds" not in evaluation.classifier_comparison(
        "real.h5", "synthetic.h5", 64, tmp_path, runs=("synthetic_to_real",), heldout_path="heldout.h5")["synthetic_to_real"]


def test_tumour_contrast_finds_a_class_whose_synthetic_tumours_do_not_enhance(tmp_path):
    from generative_model.tumour_contrast import tumour_contrast_report
    from preprocess.intensity import tumour_contrast
    image = np.full((8, 8), 0.4, dtype=np.float32)
    image[:2] = 0.0                                            # background is not tissue
    tumour = np.zeros((8, 8), dtype=bool)
    tumour[4:6, 4:6] = True
    image[tumour] = 0.6
    assert tumour_contrast(image, tumour) == pytest.approx(1.5)
    assert np.isnan(tumour_contrast(image, np.zeros_like(tumour)))
    real = write_blob_dataset(tmp_path / "real.h5", n=36, seed=0)
    synthetic = write_blob_dataset(tmp_path / "synthetic.h5", n=36, seed=1)
    with h5py.File(synthetic, "r+") as f:                      # class 1's tumours as bright as the tissue
        images, masks, labels = f["images"][:], f["tumor_masks"][:], f["labels"][:]
        images[(labels == 1)[:, None, None] & (masks > 0)] = 0.3
        f["images"][:] = images
    report = tumour_contrast_report(real, synthetic, real, tmp_path / "contrast.png")
    ratios = [report[name]["synthetic_over_real_median"] for name in ("meningioma", "glioma", "pituitary")]
    assert ratios[1] < 0.5 and all(0.8 < r < 1.25 for r in (ratios[0], ratios[2]))
    assert report["glioma"]["wasserstein_synthetic"] > 1.0 > 0.5 > report["meningioma"]["wasserstein_synthetic"]
    assert report["glioma"]["wasserstein_heldout"] == 0.0 and report["glioma"]["real"]["slices"] == 12
    assert (tmp_path / "contrast.png").stat().st_size > 5_000
    _images_file(tmp_path / "bare.h5", _blob_images(tmp_path, 0))
    with pytest.raises(KeyError, match="bare.h5"):
        tumour_contrast_report(real, tmp_path / "bare.h5")
