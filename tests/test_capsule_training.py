"""End to end on tiny data: train.py outputs, cross-validation with pre-training, resume, test-only,
predict.py and tsne.py on a tiny checkpoint."""
import argparse
import csv
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from capsule_classifier import predict
from capsule_classifier.checkpoint import load_checkpoint, trained_vertical_flips
from capsule_classifier.data import load_sources
from capsule_classifier.engine import TrainConfig, fit
from capsule_classifier.experiment import Experiment, run_experiment
from capsule_classifier.network import make_model
from preprocess.flags import apply_cli_flags

ROOT = Path(__file__).resolve().parents[1]
TINY = {"width": 8}


def test_train_script_writes_checkpoints_and_metrics(holdout_run):
    run_dir, stdout = holdout_run
    for name in ("best.pt", "last.pt", "metrics.json", "curves.png", "confusion_validation.png"):
        assert (run_dir / name).is_file(), name
    assert "parameters" in stdout and "Total params" in stdout      # torchinfo summary printed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["flags"]["epochs"] == 2 and metrics["flags"]["image_size"] == 64
    assert 0 <= metrics["validation"]["accuracy"] <= 1 and "git_commit" in metrics
    checkpoint = load_checkpoint(run_dir / "best.pt")
    assert checkpoint["model_name"] == "capsule" and checkpoint["image_size"] == 64
    assert checkpoint["class_names"] == ["meningioma", "glioma", "pituitary"]
    assert "percentile" in checkpoint["normalisation"]


def _synthetic_copy(source, path):
    shutil.copy(source, path)
    with h5py.File(path, "a") as f:
        f.attrs["synthetic"] = True
    return path


def test_cross_validation_with_pretraining_and_test(blob_dataset, tmp_path):
    synthetic = _synthetic_copy(blob_dataset, tmp_path / "synthetic.h5")
    exp = Experiment(data_path=[str(synthetic), str(blob_dataset)], data_test_path=[str(blob_dataset)],
                     model_dir=str(tmp_path), run_name="cv", test=True, k_folds=3, pretrain_epochs=1,
                     capsule_preset="compact", capsule_options=TINY, device="cpu",
                     config=TrainConfig(epochs=2, batch_size=8), flags={"k_folds": 3})
    metrics = run_experiment(exp, log=lambda *a: None)
    run_dir = tmp_path / "cv"
    for name in ("metrics.json", "curves.png", "confusion_cv.png", "confusion_test.png", "report.txt",
                 "report_test.txt", "pretrain/best.pt", "fold_1/best.pt", "fold_3/last.pt", "fold_2/fold.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    cv = saved["cv"]
    assert len(cv["folds"]) == 3 and {"accuracy", "macro_f1"} <= set(cv["folds"][0])
    assert {"accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std"} <= set(cv)
    assert np.array(cv["confusion_matrix"]).sum() == 36          # every real slice validated once
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(saved["test"])
    assert saved["flags"] == {"k_folds": 3} and metrics["pretrain"]["slices"] == 36


def _history_without_timing(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_interruption_gives_the_same_result(blob_dataset, tmp_path, ema_decay):
    data = load_sources([blob_dataset])
    train, val = data.subset(np.arange(0, 27)), data.subset(np.arange(27, 36))
    config = TrainConfig(epochs=3, batch_size=8, seed=5, ema_decay=ema_decay)

    def fresh():
        torch.manual_seed(0)
        return make_model("capsule", image_size=64, preset="compact", **TINY)

    whole, whole_best = fit(fresh(), "capsule", train, val, config, str(tmp_path / "whole"), torch.device("cpu"),
                            log=lambda *a: None)

    def interrupt(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), "capsule", train, val, config, str(tmp_path / "cut"), torch.device("cpu"),
            on_epoch_end=interrupt, log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--resume=True"):
        fit(fresh(), "capsule", train, val, config, str(tmp_path / "cut"), torch.device("cpu"),
            log=lambda *a: None)
    longer = TrainConfig(epochs=5, batch_size=8, seed=5, ema_decay=ema_decay)
    with pytest.raises(ValueError, match=r"--epochs=5 \(the run used 3\)"):
        fit(fresh(), "capsule", train, val, longer, str(tmp_path / "cut"), torch.device("cpu"), resume=True)
    with pytest.raises(ValueError, match="the training data"):
        fit(fresh(), "capsule", data.subset(np.arange(1, 28)), val, config, str(tmp_path / "cut"),
            torch.device("cpu"), resume=True)
    resumed, resumed_best = fit(fresh(), "capsule", train, val, config, str(tmp_path / "cut"),
                                torch.device("cpu"), resume=True, log=lambda *a: None)
    assert _history_without_timing(resumed) == _history_without_timing(whole)
    assert resumed_best == whole_best
    whole_last = load_checkpoint(tmp_path / "whole" / "last.pt")
    a, b = whole_last["state_dict"], load_checkpoint(tmp_path / "cut" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if ema_decay:   # the saved weights are the average, not the last step's weights
        raw = whole_last["train_state_dict"]
        assert not all(torch.equal(a[k], raw[k]) for k in a)


def test_checkpoint_says_whether_training_flipped_up_down(holdout_run, blob_dataset, tmp_path):
    data = load_sources([blob_dataset])
    config = TrainConfig(epochs=1, batch_size=8, vertical_flips=True)
    fit(make_model("capsule", image_size=64, preset="compact", **TINY), "capsule", data.subset(np.arange(27)),
        data.subset(np.arange(27, 36)), config, str(tmp_path), torch.device("cpu"), log=lambda *a: None)
    for name in ("best.pt", "last.pt"):
        assert trained_vertical_flips(load_checkpoint(tmp_path / name))
    assert not trained_vertical_flips(load_checkpoint(holdout_run[0] / "best.pt"))    # the default


def test_test_only_from_checkpoint(holdout_run, blob_dataset, tmp_path):
    run_dir, _ = holdout_run
    exp = Experiment(train=False, test=True, check_name=str(run_dir / "best.pt"),
                     data_test_path=[str(blob_dataset)], model_dir=str(tmp_path), run_name="test",
                     device="cpu")
    metrics = run_experiment(exp, log=lambda *a: None)
    assert metrics["test"]["count"] == 36 and "cv" not in metrics
    assert (tmp_path / "test" / "confusion_test.png").is_file()


def test_predict_on_mat_png_and_dataset(holdout_run, blob_dataset, demo_mat_dir, tmp_path):
    run_dir, _ = holdout_run
    picture = tmp_path / "slice.png"
    Image.fromarray((np.random.default_rng(0).random((100, 90)) * 255).astype(np.uint8)).save(picture)
    out = tmp_path / "preds.csv"
    for source, count in ((demo_mat_dir, 12), (picture, 1), (blob_dataset, 36)):
        flags = [f"--checkpoint={run_dir / 'best.pt'}", f"--input={source}", f"--out={out}"]
        if source == demo_mat_dir:      # once as a script, the other inputs in this process
            done = subprocess.run([sys.executable, "capsule_classifier/predict.py"] + flags, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            predict.run(apply_cli_flags(vars(predict).copy(), flags))
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == count
        assert list(rows[0]) == ["file", "predicted_class", "p_meningioma", "p_glioma", "p_pituitary", "error"]
        probabilities = np.array([[float(r[f"p_{c}"]) for c in ("meningioma", "glioma", "pituitary")]
                                  for r in rows])
        np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)
    assert rows[0]["file"].endswith("#1")


def test_predict_names_unreadable_files_and_classifies_the_rest(holdout_run, demo_mat_dir, tmp_path):
    run_dir, _ = holdout_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(Path(demo_mat_dir).glob("*.mat"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "truncated.mat").write_bytes(good[0].read_bytes()[:3000])
    slice_ = (np.random.default_rng(1).random((80, 80)) * 255).astype(np.uint8)
    Image.fromarray(slice_).save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes((folder / "good.png").read_bytes()[:200])
    out = tmp_path / "preds.csv"
    command = [sys.executable, "capsule_classifier/predict.py", f"--checkpoint={run_dir / 'best.pt'}",
               f"--input={folder}", f"--out={out}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {Path(r["file"]).name: r for r in csv.DictReader(out.open())}
    assert len(rows) == 6
    for name in ("truncated.mat", "empty.png", "cut.png"):
        assert rows[name]["error"] and not rows[name]["predicted_class"], rows[name]
        assert name in done.stderr
    for name in [p.name for p in good] + ["good.png"]:
        assert rows[name]["predicted_class"] and not rows[name]["error"]
    strict = subprocess.run(command + ["--strict=True"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1 and "3 of 6 files could not be read" in strict.stderr
    only_bad = subprocess.run(command[:-2] + [f"--input={folder / 'empty.png'}", f"--out={tmp_path / 'b.csv'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert only_bad.returncode == 1 and "Traceback" not in only_bad.stderr


def test_predict_reads_16_bit_png_at_full_depth(holdout_run, tmp_path):
    run_dir, _ = holdout_run
    smooth = np.add.outer(np.linspace(0, 1, 96), np.linspace(0, 1, 96)) / 2
    eight, sixteen = tmp_path / "eight.png", tmp_path / "sixteen.png"
    Image.fromarray((smooth * 255).round().astype(np.uint8)).save(eight)
    Image.fromarray((smooth * 65535).round().astype(np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    from capsule_classifier.inference import iter_slices
    (_, prepared_8, _, _), (_, prepared_16, _, _) = (next(iter_slices(p, 64)) for p in (eight, sixteen))
    assert np.abs(prepared_8 - prepared_16).max() < 0.02       # the same slice, not one cut to 8 bits
    rows = []
    for path in (eight, sixteen):
        predict.run(apply_cli_flags(vars(predict).copy(), [f"--checkpoint={run_dir / 'best.pt'}",
                                                           f"--input={path}", f"--out={tmp_path / 'p.csv'}"]))
        rows.append(next(csv.DictReader((tmp_path / "p.csv").open())))
    assert rows[0]["predicted_class"] == rows[1]["predicted_class"]
    for name in ("p_meningioma", "p_glioma", "p_pituitary"):
        assert abs(float(rows[0][name]) - float(rows[1][name])) < 0.05


def test_raw_mat_files_are_prepared_as_the_dataset_file_holds_them(demo_mat_dir, demo_dataset):
    """The held-back check classifies raw .mat files with predict.py, while every validation number
    comes from the dataset file prepare.py writes: both paths must give the classifier the same
    slices (and explain.py the same tumour masks)."""
    from capsule_classifier.inference import iter_slices
    from preprocess.dataset import read_column, read_images
    from preprocess.prepare import source_id as source_id_of
    source_ids = read_column(demo_dataset, "source_ids")
    prepared = dict(zip(source_ids, read_images(demo_dataset)))
    masks = dict(zip(source_ids, read_images(demo_dataset, "tumor_masks")))
    raw = {source_id_of(name): (image, truth) for name, image, error, truth in iter_slices(demo_mat_dir, 64)
           if error is None}
    assert len(raw) == len(prepared) == 12
    for source_id, (image, truth) in raw.items():
        assert image.shape == prepared[source_id].shape
        assert np.abs(image - prepared[source_id]).max() < 1e-3, source_id
        assert np.array_equal(truth["tumour_mask"] > 0.5, masks[source_id] > 0.5), source_id


def test_tsne_on_real_and_synthetic(holdout_run, blob_dataset, tmp_path):
    from capsule_classifier import tsne
    run_dir, _ = holdout_run
    synthetic = _synthetic_copy(blob_dataset, tmp_path / "synthetic.h5")
    flags = {"checkpoint": str(run_dir / "best.pt"), "data_path": [str(blob_dataset), str(synthetic)],
             "out_dir": str(tmp_path / "tsne"), "max_slices": 0, "seed": 0, "device": "cpu", "threads": 2,
             "method": "tsne", "colour_by": "class"}
    out_png, out_csv = tsne.run(flags)
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 72 and {r["synthetic"] for r in rows} == {"True", "False"}
    assert Path(out_png).stat().st_size > 1000
    by_file, _ = tsne.run(dict(flags, colour_by="file", max_slices=40))
    assert Path(by_file).stat().st_size > 1000
    pytest.importorskip("umap")
    umap_png, umap_csv = tsne.run(dict(flags, method="umap"))
    assert umap_png.endswith("umap.png") and len(list(csv.DictReader(open(umap_csv)))) == 72


def test_fine_tune_from_saved_model_and_refuse_a_mismatch(holdout_run, blob_dataset, tmp_path):
    run_dir, _ = holdout_run
    common = dict(load_saved_model=True, check_name=str(run_dir / "best.pt"), data_path=[str(blob_dataset)],
                  cross_validation=False, model_dir=str(tmp_path), device="cpu",
                  config=TrainConfig(epochs=1, batch_size=8))
    saved = load_checkpoint(run_dir / "best.pt")["model_config"]
    options = {k: v for k, v in saved.items() if k not in ("image_size", "num_classes")}
    metrics = run_experiment(Experiment(run_name="tuned", capsule_preset="residual", capsule_options=options,
                                        **common), log=lambda *a: None)
    assert (tmp_path / "tuned" / "best.pt").is_file() and "validation" in metrics
    with pytest.raises(ValueError, match="does not fit"):
        run_experiment(Experiment(run_name="bad", capsule_preset="study", **common), log=lambda *a: None)


def test_mask_loss_trains_the_residual_network_and_is_refused_politely_elsewhere(blob_dataset, tmp_path):
    said = []
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), cross_validation=False,
                  device="cpu", capsule_options={"widths": (8, 8, 16, 16), "stem_channels": 4})
    config = TrainConfig(epochs=1, batch_size=8, mask_weight=0.5, mixup=0.4, augmentation="scanner")
    run_experiment(Experiment(run_name="masked", config=config, **common), log=said.append)
    record = load_checkpoint(tmp_path / "masked" / "last.pt")
    assert record["model_config"]["mask_head"] and "mask_head.weight" in record["state_dict"]
    assert record["train_config"]["mask_weight"] == 0.5 and record["train_config"]["mixup"] == 0.4
    assert all(np.isfinite(row["train_loss"]) for row in record["history"])   # mixed masks and labels
    compact = TrainConfig(epochs=1, batch_size=8, mask_weight=0.5)
    run_experiment(Experiment(run_name="compact", config=compact, capsule_preset="compact",
                              **{**common, "capsule_options": TINY}), log=said.append)
    assert any("mask_weight=0.5 ignored" in line for line in said) and compact.mask_weight == 0


def test_tumour_levels_train_their_expert_with_its_own_loss(blob_dataset, tmp_path, monkeypatch):
    from capsule_classifier import engine
    losses = []

    def spy(logits, *args, **kwargs):
        losses.append(logits.shape)
        return cross_entropy(logits, *args, **kwargs)
    cross_entropy = engine.F.cross_entropy
    monkeypatch.setattr(engine.F, "cross_entropy", spy)
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), cross_validation=False, device="cpu")
    options = {"widths": (8, 8, 16, 16), "stem_channels": 4}
    config = TrainConfig(epochs=1, batch_size=8, mask_weight=0.5)
    run_experiment(Experiment(run_name="plain", config=config, capsule_options=options, **common), log=lambda *a: None)
    plain = len(losses)
    run_experiment(Experiment(run_name="levels", config=config, capsule_options={**options, "tumour_levels": True},
                              **common), log=lambda *a: None)
    assert plain > 0 and len(losses) - plain == 2 * plain          # two cross-entropies a step
    record = load_checkpoint(tmp_path / "levels" / "last.pt")
    assert record["model_config"]["tumour_levels"] and "levels_expert.classify.0.weight" in record["state_dict"]
    assert all(np.isfinite(row["train_loss"]) for row in record["history"])
    with pytest.raises(ValueError, match="tumour_levels"):
        run_experiment(Experiment(run_name="compact", config=config, capsule_preset="compact",
                                  capsule_options={**TINY, "tumour_levels": True}, **common), log=lambda *a: None)


def test_tumour_pasting_trains_with_or_without_the_mask_loss_and_is_skipped_without_masks(blob_dataset, tmp_path,
                                                                                          monkeypatch):
    from capsule_classifier import engine
    shares, places, mixed, steps = [], set(), [], []

    def spy(images, masks, *args, **kwargs):
        result = engine_paste(images, masks, *args, **kwargs)
        shares.append(result[3])
        places.add((kwargs["at"], kwargs["donors"], kwargs["match_levels"]))
        pasted = result[3] > 0
        mixed.append((kwargs["labels"][pasted] != kwargs["labels"][result[2][pasted]]).float())
        steps.append("paste")
        return result

    def intensity_spy(*args, **kwargs):
        steps.append("intensity")
        return engine_intensity(*args, **kwargs)
    engine_paste, engine_intensity = engine.paste_tumours, engine.augment_intensity
    monkeypatch.setattr(engine, "paste_tumours", spy)
    monkeypatch.setattr(engine, "augment_intensity", intensity_spy)
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), cross_validation=False,
                  device="cpu", capsule_options={"widths": (8, 8, 16, 16), "stem_channels": 4})
    for name, mask_weight, mixup, place, donors, levels in (
            ("pasted", 0.0, 0.0, "host", "any", "raw"), ("pasted_mixed", 0.5, 0.4, "donor", "any", "raw"),
            ("other_class", 0.5, 0.0, "donor", "other_class", "raw"), ("matched", 0.5, 0.0, "donor", "any", "matched")):
        config = TrainConfig(epochs=1, batch_size=8, mask_weight=mask_weight, mixup=mixup, tumour_paste=0.5,
                             paste_at=place, paste_donor=donors, paste_levels=levels)
        run_experiment(Experiment(run_name=name, config=config, **common), log=lambda *a: None)
        record = load_checkpoint(tmp_path / name / "last.pt")
        assert record["train_config"]["tumour_paste"] == 0.5 and record["train_config"]["paste_at"] == place
        assert record["train_config"]["paste_levels"] == levels
        assert record["model_config"]["mask_head"] == bool(mask_weight)
        assert all(np.isfinite(row["train_loss"]) for row in record["history"])
        assert shares and torch.cat(shares).gt(0).any()          # tumours were pasted in this run
        assert places == {(place, donors, levels == "matched")}    # where, whose and how the flags say
        if donors == "other_class":                                # every pasted tumour of another class
            assert torch.cat(mixed).eq(1).all()
        # every batch: the intensity changes before the paste (raw), or after it (matched levels)
        order = ["intensity", "paste"] if levels == "raw" else ["paste", "intensity"]
        assert steps[:2] == order and steps == order * (len(steps) // 2)
        shares.clear(), places.clear(), mixed.clear(), steps.clear()
    pickled = tmp_path / "no_masks.pkl"
    with open(pickled, "wb") as out:
        pickle.dump([[np.random.rand(32, 32).astype(np.float32), k % 3] for k in range(12)], out)
    said = []
    run_experiment(Experiment(run_name="unmasked", config=TrainConfig(epochs=1, batch_size=4, tumour_paste=0.5),
                              **dict(common, data_path=[str(pickled)])), log=said.append)
    assert any(line.startswith("tumour_paste=0.5 ignored: a data file has no tumor_masks") and "no_masks.pkl" in line
               for line in said)
    assert load_checkpoint(tmp_path / "unmasked" / "last.pt")["train_config"]["tumour_paste"] == 0 and not shares
    with pytest.raises(ValueError, match="tumour_paste=1.5"):
        run_experiment(Experiment(run_name="refused", config=TrainConfig(tumour_paste=1.5), **common),
                       log=lambda *a: None)
    with pytest.raises(ValueError, match="paste_at='middle'"):
        run_experiment(Experiment(run_name="refused", config=TrainConfig(paste_at="middle"), **common),
                       log=lambda *a: None)
    with pytest.raises(ValueError, match="paste_donor='same'"):
        run_experiment(Experiment(run_name="refused", config=TrainConfig(paste_donor="same"), **common),
                       log=lambda *a: None)
    with pytest.raises(ValueError, match="paste_levels='bright'"):
        run_experiment(Experiment(run_name="refused", config=TrainConfig(paste_levels="bright"), **common),
                       log=lambda *a: None)
    with pytest.raises(ValueError, match="ema_decay=1.0"):         # before any data is read
        run_experiment(Experiment(run_name="refused", config=TrainConfig(ema_decay=1.0), **common),
                       log=lambda *a: None)


def test_one_fold_at_a_time(blob_dataset, tmp_path):
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), k_folds=3, device="cpu",
                  capsule_preset="compact", capsule_options=TINY, config=TrainConfig(epochs=1, batch_size=8))
    metrics = run_experiment(Experiment(run_name="one", fold=2, **common), log=lambda *a: None)
    assert [f["fold"] for f in metrics["cv"]["folds"]] == [2]
    assert (tmp_path / "one" / "fold_2" / "fold.json").is_file()
    assert not (tmp_path / "one" / "fold_1").exists() and not (tmp_path / "one" / "fold_3").exists()
    metrics = run_experiment(Experiment(run_name="one", fold=1, **common), log=lambda *a: None)
    assert [f["fold"] for f in metrics["cv"]["folds"]] == [1, 2] and metrics["cv"]["folds_finished"] == 2
    with pytest.raises(ValueError, match="--fold=4"):
        run_experiment(Experiment(run_name="bad", fold=4, **common), log=lambda *a: None)
    with pytest.raises(ValueError, match="tumour_crop"):
        run_experiment(Experiment(run_name="crop", **{**common, "capsule_options": {**TINY, "tumour_crop": True}}),
                       log=lambda *a: None)


def test_stretch_folds_need_enough_stretches(blob_dataset, tmp_path):
    exp = Experiment(data_path=[str(blob_dataset)], model_dir=str(tmp_path), run_name="stretch",
                     group_by="stretch", k_folds=3, device="cpu", config=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="at least 3 stretches"):
        run_experiment(exp, log=lambda *a: None)



def test_an_unsafe_checkpoint_is_refused_by_name_without_a_traceback(blob_dataset, tmp_path):
    from preprocess.checkpoint_io import save_checkpoint
    evil = tmp_path / "evil.pt"
    save_checkpoint({"model_name": "capsule", "payload": argparse.Namespace(code="arbitrary")}, evil)
    for script, extra in (("predict.py", [f"--input={blob_dataset}"]), ("tsne.py", [f"--data_path={blob_dataset}"])):
        done = subprocess.run([sys.executable, f"capsule_classifier/{script}", f"--checkpoint={evil}", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert "evil.pt" in done.stderr and "refused as unsafe" in done.stderr
        assert "Traceback" not in done.stderr and "weights_only=False" not in done.stderr


def test_fold_ensemble_of_two_seeds(blob_dataset, tmp_path):
    import runpy

    from capsule_classifier.ensemble_folds import run as ensemble
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), k_folds=3, device="cpu",
                  capsule_preset="compact", capsule_options=TINY)
    for name, seed, split_seed in (("s0", 0, 0), ("s1", 1, 0), ("other_split", 0, 1)):
        run_experiment(Experiment(run_name=name, split_seed=split_seed,
                                  config=TrainConfig(epochs=1, batch_size=8, seed=seed), **common), log=lambda *a: None)
    flags = {n: v for n, v in runpy.run_path(str(ROOT / "capsule_classifier" / "ensemble_folds.py"),
                                              run_name="defaults_only").items() if not n.startswith("_")}
    flags.update(runs=[str(tmp_path / "s0"), str(tmp_path / "s1")], data_path=str(blob_dataset), k_folds=3,
                 out=str(tmp_path / "ensemble.json"), threads=1)
    report = ensemble(flags)
    first = json.loads((tmp_path / "s0" / "fold_1" / "fold.json").read_text())
    assert len(report["folds"]) == 3 and report["folds"][0]["accuracy"][0] == pytest.approx(first["accuracy"])
    assert json.loads((tmp_path / "ensemble.json").read_text())["summary"]["ensemble_accuracy_mean"] >= 0
    with pytest.raises(ValueError, match="other slices"):
        ensemble({**flags, "runs": [str(tmp_path / "s0"), str(tmp_path / "other_split")], "out": ""})
    # one run scored again another way: without the test-time warps the runs scored with, and with
    # a fold not finished (one fold per job) skipped by name
    from capsule_classifier.experiment import checkpoint_probabilities
    from capsule_classifier.report import classification_metrics
    from preprocess.splits import patient_folds
    shutil.move(tmp_path / "s0" / "fold_3" / "last.pt", tmp_path / "fold_3_last.pt")
    again = ensemble({**flags, "runs": [str(tmp_path / "s0")], "out": "", "test_time_warps": False})
    assert [row["fold"] for row in again["folds"]] == [1, 2] and again["skipped_folds"] == [3]
    data = load_sources([str(blob_dataset)])
    _, val_rows = patient_folds(data.labels, data.patient_ids, 3, 0, data.source_ids, "patient")[0]
    plain = checkpoint_probabilities(tmp_path / "s0" / "fold_1" / "last.pt", data.images[val_rows], torch.device("cpu"), True, None, False)
    assert again["folds"][0]["accuracy"][0] == pytest.approx(classification_metrics(data.labels[val_rows], plain)["accuracy"])
    assert again["summary"]["run_mean_macro_f1"][0] >= 0


def test_a_run_without_validation_part_trains_on_every_slice(blob_dataset, tmp_path):
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), device="cpu", capsule_preset="compact",
                  capsule_options=TINY, config=TrainConfig(epochs=2, batch_size=8))
    said = []
    metrics = run_experiment(Experiment(run_name="all", cross_validation=False, **common), log=said.append)
    assert metrics["validation"]["validation_slices"] == 0
    assert any(f"train {len(load_sources([str(blob_dataset)]))}, validation 0 slices" in line for line in said)
    best, last = load_checkpoint(tmp_path / "all" / "best.pt"), load_checkpoint(tmp_path / "all" / "last.pt")
    assert best["epoch"] == 2 and all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])
    assert (tmp_path / "all" / "curves.png").is_file()
    assert Experiment().val_fraction == 0          # the default: the model to use trains on every slice
    held = run_experiment(Experiment(run_name="held", cross_validation=False, val_fraction=0.3, **common),
                          log=said.append)
    assert 0 < held["validation"]["count"] < len(load_sources([str(blob_dataset)]))


def test_a_learning_curve_point_trains_on_whole_patients_of_the_fold(blob_dataset, tmp_path):
    from preprocess.splits import patient_folds
    common = dict(data_path=[str(blob_dataset)], model_dir=str(tmp_path), device="cpu", capsule_preset="compact",
                  capsule_options=TINY, k_folds=3, fold=1, config=TrainConfig(epochs=1, batch_size=8))
    run_experiment(Experiment(run_name="half", train_fraction=0.5, **common), log=lambda *a: None)
    run_experiment(Experiment(run_name="all", **common), log=lambda *a: None)
    half, full = (json.loads((tmp_path / name / "fold_1" / "fold.json").read_text()) for name in ("half", "all"))
    assert half["val_sources_sha1"] == full["val_sources_sha1"]          # the same validation slices
    assert 0.3 * full["train_slices"] <= half["train_slices"] <= 0.7 * full["train_slices"]
    data = load_sources([str(blob_dataset)])
    train_rows, _ = patient_folds(data.labels, data.patient_ids, 3, 0, data.source_ids, "patient")[0]
    from capsule_classifier.experiment import _training_share
    kept = _training_share(Experiment(train_fraction=0.5, **common), data, train_rows)
    assert set(kept) < set(train_rows)
    dropped = set(data.patient_ids[sorted(set(train_rows) - set(kept))])
    assert dropped and not dropped & set(data.patient_ids[kept])           # whole patients left out
    third = _training_share(Experiment(train_fraction=0.3, **common), data, train_rows)     # one of 3 folds kept
    most = _training_share(Experiment(train_fraction=0.75, **common), data, train_rows)     # one of 4 left out
    assert len(third) < len(kept) < len(most) < len(train_rows)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="train_fraction"):
            run_experiment(Experiment(run_name="bad", train_fraction=bad, **common), log=lambda *a: None)
    with pytest.raises(ValueError, match="train_fraction"):
        run_experiment(Experiment(run_name="bad", train_fraction=0.5, cross_validation=False,
                                  **{k: v for k, v in common.items() if k != "fold"}), log=lambda *a: None)


def test_a_run_saved_before_paste_at_paste_donor_or_paste_levels_existed_resumes_only_with_its_own():
    from dataclasses import asdict
    from capsule_classifier.engine import check_resumable
    saved = {k: v for k, v in asdict(TrainConfig(tumour_paste=0.5)).items() if k != "paste_at"}
    with pytest.raises(ValueError, match=r"--paste_at='donor' \(the run used 'host'\)"):
        check_resumable({"train_config": saved}, TrainConfig(tumour_paste=0.5), None, "ninth_session_run")
    check_resumable({"train_config": saved}, TrainConfig(tumour_paste=0.5, paste_at="host"), None, "ninth_session_run")
    before_pasting = {k: v for k, v in saved.items() if k != "tumour_paste"}
    with pytest.raises(ValueError, match=r"--tumour_paste=0.5 \(the run used 0.0\)"):
        check_resumable({"train_config": before_pasting}, TrainConfig(), None, "older_run")
    check_resumable({"train_config": before_pasting}, TrainConfig(tumour_paste=0.0), None, "older_run")
    before_donors = {k: v for k, v in asdict(TrainConfig(tumour_paste=0.5)).items() if k != "paste_donor"}
    with pytest.raises(ValueError, match=r"--paste_donor='other_class' \(the run used 'any'\)"):
        check_resumable({"train_config": before_donors}, TrainConfig(tumour_paste=0.5, paste_donor="other_class"),
                        None, "seventeenth_session_run")
    check_resumable({"train_config": before_donors}, TrainConfig(tumour_paste=0.5), None, "seventeenth_session_run")
    before_levels = {k: v for k, v in asdict(TrainConfig(tumour_paste=0.5)).items() if k != "paste_levels"}
    with pytest.raises(ValueError, match=r"--paste_levels='matched' \(the run used 'raw'\)"):
        check_resumable({"train_config": before_levels}, TrainConfig(tumour_paste=0.5, paste_levels="matched"),
                        None, "nineteenth_session_run")
    check_resumable({"train_config": before_levels}, TrainConfig(tumour_paste=0.5), None, "nineteenth_session_run")
    unpasted = dict(before_donors, tumour_paste=0.0)           # whose tumours is moot when nothing was pasted
    check_resumable({"train_config": unpasted}, TrainConfig(tumour_paste=0.0, paste_donor="other_class"), None,
                    "unpasted_run")


def test_test_time_warps_are_recorded_and_followed_by_predict(holdout_run, blob_dataset, tmp_path):
    from capsule_classifier.checkpoint import scoring_warps
    from capsule_classifier.engine import check_resumable
    from capsule_classifier.experiment import checkpoint_probabilities
    run_dir, _ = holdout_run
    record = load_checkpoint(run_dir / "last.pt")
    assert record["train_config"]["test_time_warps"] is True                      # the default, recorded
    data, cpu = load_sources([blob_dataset]), torch.device("cpu")
    warped = checkpoint_probabilities(run_dir / "last.pt", data.images, cpu, True, 0.0)      # as the run scored
    plain = checkpoint_probabilities(run_dir / "last.pt", data.images, cpu, True, 0.0, False)
    np.testing.assert_allclose(warped, checkpoint_probabilities(run_dir / "last.pt", data.images, cpu, True, 0.0, True))
    assert not np.allclose(warped, plain, atol=1e-4)
    older = {k: v for k, v in record.items() if k != "train_config"}                # saved before the option
    older["train_config"] = {k: v for k, v in record["train_config"].items() if k != "test_time_warps"}
    assert scoring_warps(older, None) is False and scoring_warps(older, True) is True
    torch.save(older, tmp_path / "older.pt")
    for path, flag, expected in ((run_dir / "last.pt", [], warped), (tmp_path / "older.pt", [], plain),
                                 (run_dir / "last.pt", ["--test_time_warps=False"], plain)):
        out = tmp_path / f"{path.stem}{len(flag)}.csv"
        predict.run(apply_cli_flags(vars(predict).copy(), [f"--checkpoint={path}", f"--input={blob_dataset}",
                                                          f"--out={out}", "--prior_correction=0"] + flag))
        scored = [[float(r[f"p_{c}"]) for c in ("meningioma", "glioma", "pituitary")] for r in csv.DictReader(out.open())]
        np.testing.assert_allclose(scored, expected, atol=1e-5)
    unwarped = {"train_config": {**record["train_config"], "test_time_warps": False}}   # scoring only:
    check_resumable(unwarped, TrainConfig(**record["train_config"]), None, "run")        # free on resume


def test_the_training_prior_is_recorded_and_divided_out_when_asked(holdout_run, blob_dataset, tmp_path):
    from capsule_classifier.checkpoint import training_prior
    from capsule_classifier.engine import correct_for_prior
    from capsule_classifier.experiment import checkpoint_probabilities
    p = np.array([[0.4, 0.3, 0.3], [0.2, 0.5, 0.3]], dtype=np.float32)
    corrected = correct_for_prior(p, [0.5, 0.25, 0.25], 1.0)
    np.testing.assert_allclose(corrected[0], np.array([0.8, 1.2, 1.2]) / 3.2, rtol=1e-6)   # the majority loses
    np.testing.assert_allclose(corrected.sum(1), 1, rtol=1e-6)
    assert correct_for_prior(p, [0.5, 0.25, 0.25], 0.0) is p and correct_for_prior(p, None, 1.0) is p
    with pytest.raises(ValueError, match="one positive share per class"):
        correct_for_prior(p, [0.5, 0.5], 1.0)

    run_dir, _ = holdout_run
    record = load_checkpoint(run_dir / "last.pt")
    data = load_sources([blob_dataset])
    assert sum(record["class_counts"]) == record["train_data"]["slices"] and len(record["class_counts"]) == 3
    prior = training_prior(record)
    assert prior == pytest.approx([(c + 1) / (sum(record["class_counts"]) + 3) for c in record["class_counts"]])
    plain = checkpoint_probabilities(run_dir / "last.pt", data.images, torch.device("cpu"), True, 0.0)
    corrected = checkpoint_probabilities(run_dir / "last.pt", data.images, torch.device("cpu"), True, 1.0)
    np.testing.assert_allclose(corrected, correct_for_prior(plain, prior, 1.0), rtol=1e-5)
    out = tmp_path / "corrected.csv"
    predict.run(apply_cli_flags(vars(predict).copy(), [f"--checkpoint={run_dir / 'last.pt'}", f"--input={blob_dataset}",
                                                      f"--out={out}", "--prior_correction=1"]))
    rows = list(csv.DictReader(out.open()))
    np.testing.assert_allclose([[float(r[f"p_{c}"]) for c in ("meningioma", "glioma", "pituitary")] for r in rows],
                               corrected, atol=1e-5)

    scored = tmp_path / "scored.pt"     # an unbalanced run that scored with the correction: predict.py follows
    torch.save({**record, "class_counts": [20, 5, 2],
                "train_config": {**record["train_config"], "prior_correction": 1.0}}, scored)
    predict.run(apply_cli_flags(vars(predict).copy(), [f"--checkpoint={scored}", f"--input={blob_dataset}",
                                                      f"--out={tmp_path / 'followed.csv'}"]))
    followed = np.array([[float(r[f"p_{c}"]) for c in ("meningioma", "glioma", "pituitary")]
                         for r in csv.DictReader((tmp_path / "followed.csv").open())])
    np.testing.assert_allclose(followed, correct_for_prior(plain, [21 / 30, 6 / 30, 3 / 30], 1.0), atol=1e-5)
    assert not np.allclose(followed, plain, atol=1e-3)               # the majority class lost ground
    from capsule_classifier.engine import check_resumable          # scoring only: a resume may change it
    saved_with_none = {"train_config": {**record["train_config"], "prior_correction": 0.0}}
    check_resumable(saved_with_none, TrainConfig(**{**record["train_config"], "prior_correction": 1.0}), None, "run")
    with pytest.raises(ValueError, match="--lr=0.5"):                   # a training setting still counts
        check_resumable(saved_with_none, TrainConfig(**{**record["train_config"], "lr": 0.5}), None, "run")

    older = tmp_path / "older.pt"                       # saved before class counts were recorded
    torch.save({k: v for k, v in record.items() if k != "class_counts"}, older)
    with pytest.raises(ValueError, match="older.pt: the checkpoint does not record its training class counts"):
        checkpoint_probabilities(older, data.images, torch.device("cpu"), True, 1.0)
    checkpoint_probabilities(older, data.images, torch.device("cpu"), True, 0.0)       # uncorrected: fine
    with pytest.raises(ValueError, match="prior_correction=-1"):
        run_experiment(Experiment(data_path=[str(blob_dataset)], model_dir=str(tmp_path),
                                  config=TrainConfig(prior_correction=-1), device="cpu"), log=lambda *a: None)
