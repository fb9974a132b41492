"""study.py end to end on tiny data: no validation patient reaches the GAN, every arm on every
fold, resumable, one fold at a time plus collect, presets."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess.flags import load_preset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--k_folds=3", "--seeds=1", "--gan_epochs=1", "--gan_ngf=4", "--gan_ndf=4", "--synthetic_per_class=8",
        "--epochs=1", "--pretrain_epochs=1", "--batch_size=8", "--threads=1", "--device=cpu"]


def _study(dataset, out, *extra, succeeds=True):
    done = subprocess.run([sys.executable, "study.py", f"--data_path={dataset}", f"--out={out}", *TINY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert (done.returncode == 0) == succeeds, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def one_fold_then_the_rest(blob_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    first = _study(blob_dataset, out, "--fold=2")
    rest = _study(blob_dataset, out)
    return out, first, rest


def test_every_arm_on_every_fold_and_no_validation_patient_reaches_the_gan(one_fold_then_the_rest):
    out, _, _ = one_fold_then_the_rest
    results = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == [1, 2, 3]
    for record in results["folds"]:
        assert record["val_patients"] and record["gan_train_patients"]
        assert not set(record["val_patients"]) & set(record["gan_train_patients"])
        assert record["leakage"]["heldout_patients_the_gan_saw"] == 0
        assert set(record["arms"]) == {"real_only", "pretrained", "baseline", "synthetic_only"}
    assert {"pretrained - real_only", "baseline - real_only"} <= set(results["paired_differences"])
    text = (out / "RESULTS.md").read_text()
    assert "capsule, GAN pre-training + real" in text and "0.93 / 0.92" in text
    assert "Settings: the same in the 12 runs and 3 GAN(s) compared." in text        # 3 folds x 4 arms
    assert results["settings_check"] == {"runs_compared": 12, "unchecked_runs": [], "gans_compared": 3}
    assert (out / "confusion_pretrained.png").is_file() and (out / "fold_1" / "tsne.png").is_file()
    assert all(run["device"] == "cpu (1 thread)" for record in results["folds"]
               for arm in record["arms"].values() for run in arm.values())
    fold_rows = [line for line in text.splitlines() if line.startswith(("| 1 | ", "| 2 | ", "| 3 | "))]
    assert "| fold | validation patients / slices |" in text and len(fold_rows) == 3
    assert all(row.endswith("| cpu (1 thread) |") for row in fold_rows)   # each fold names its machine


def test_a_finished_fold_is_reused_not_retrained(one_fold_then_the_rest):
    out, first, rest = one_fold_then_the_rest
    assert "fold_2: pretrained, seed 0" in first.stdout
    assert "fold_2: pretrained, seed 0" not in rest.stdout and "fold_1: pretrained, seed 0" in rest.stdout


def test_a_fold_rerun_with_other_arms_or_seeds_adds_to_its_record_and_drops_nothing(
        one_fold_then_the_rest, blob_dataset, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(one_fold_then_the_rest[0], out)      # the shared study stays as it was
    record_file = out / "fold_2" / "fold.json"
    before = json.loads(record_file.read_text())
    again = _study(blob_dataset, out, "--fold=2", "--arms=real_only", "--seeds=2")
    assert "fold_2: real_only, seed 0" not in again.stdout and "fold_2: real_only, seed 1" in again.stdout
    after = json.loads(record_file.read_text())
    assert set(after["arms"]) == {"real_only", "pretrained", "baseline", "synthetic_only"}
    assert set(after["arms"]["real_only"]) == {"0", "1"}                # the new seed added ...
    assert after["arms"]["real_only"]["0"] == before["arms"]["real_only"]["0"]
    assert {arm: runs for arm, runs in after["arms"].items() if arm != "real_only"} == \
        {arm: runs for arm, runs in before["arms"].items() if arm != "real_only"}   # ... every other run kept
    assert after["leakage"] == before["leakage"] and after["gan_train_patients"] == before["gan_train_patients"]
    assert after["tsne"] == before["tsne"] and after["gan_samples"] == before["gan_samples"]
    # the header names what the folds ran and how they were cut, not the collect call's flags
    _study(blob_dataset, out, "--collect=True", "--seeds=1", "--group_by=stretch", "--k_folds=5")
    header = (out / "RESULTS.md").read_text().splitlines()[2]
    assert "3 fold(s) of 3 (patient-wise)" in header and "seeds 0, 1 (the runs column" in header
    shutil.rmtree(out / "fold_2" / "arms" / "baseline_s0")              # a run deleted by hand leaves the record
    _study(blob_dataset, out, "--fold=2", "--arms=real_only", "--seeds=1")
    runs = json.loads(record_file.read_text())["arms"]
    assert set(runs) == {"real_only", "pretrained", "synthetic_only"} and set(runs["real_only"]) == {"0", "1"}
    shutil.rmtree(out / "fold_2" / "arms" / "real_only_s1")             # ... one seed of an arm too
    _study(blob_dataset, out, "--fold=2", "--arms=pretrained")
    assert set(json.loads(record_file.read_text())["arms"]["real_only"]) == {"0"}


def test_a_broken_fold_record_stops_a_rerun_before_the_gan_and_deleting_it_rebuilds_it(
        one_fold_then_the_rest, blob_dataset, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(one_fold_then_the_rest[0], out)
    before = json.loads((out / "fold_3" / "fold.json").read_text())
    shutil.rmtree(out / "fold_3" / "gan")
    (out / "fold_3" / "fold.json").write_text('{"fold": 3, "arms": ')
    failed = _study(blob_dataset, out, "--fold=3", "--arms=pretrained", succeeds=False)
    assert "fold_3/fold.json: not readable as JSON" in failed.stderr and "arms/ folder are reused" in failed.stderr
    assert not (out / "fold_3" / "gan").exists()                     # stopped before the GAN trained
    (out / "fold_3" / "fold.json").unlink()                          # as the error says: delete, rerun
    again = _study(blob_dataset, out, "--fold=3", "--arms=pretrained")
    assert "fold_3: " not in again.stdout                            # no arm trained again ("fold_3: <arm>, seed")
    assert json.loads((out / "fold_3" / "fold.json").read_text())["arms"] == before["arms"]


def test_a_rerun_with_another_split_gan_or_training_is_refused_before_anything_trains(
        one_fold_then_the_rest, blob_dataset, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(one_fold_then_the_rest[0], out)
    fold = out / "fold_2"
    gan_checkpoint = fold / "gan" / "all" / "checkpoint.pt"
    before = gan_checkpoint.stat().st_mtime_ns

    def refused(flag, *named):
        failed = _study(blob_dataset, out, "--fold=2", flag, succeeds=False)
        assert all(text in failed.stderr for text in named), failed.stderr[-2000:]

    gan_epochs = "--gan_epochs=2 (the fold's GAN: 1)"
    refused("--gan_epochs=2", "fold_2/gan: made by a GAN that these flags would train otherwise: " + gan_epochs)
    (fold / "gan" / "run.json").unlink()                                 # a GAN cut short: its checkpoint says
    refused("--gan_epochs=2", gan_epochs)
    refused("--synthetic_per_class=9", "fold_2/masks.h5: slices per class from an earlier run: "
                                       "--synthetic_per_class=9 (the file's: [8, 8, 8])")
    assert gan_checkpoint.stat().st_mtime_ns == before                   # the GAN was not trained further
    shutil.rmtree(fold / "gan")                            # from here a rerun that went on would train one
    refused("--gan_epochs=2", "fold_2/synthetic.h5: made by a GAN that these flags would train otherwise: "
                              "--gan_epochs=2 (the GAN that drew it: 1)")  # the slices record their GAN's settings
    run = "pretrained_s0: a finished run that these flags would train or score otherwise: "
    refused("--epochs=2", "fold_2/arms/", "--epochs=2 (the run's: 1)")
    refused("--test_time_warps=True", "fold_2/arms/", "--test_time_warps=True (the run's: False)")
    refused("--pretrain_epochs=2", run + "--pretrain_epochs=2 (the run's: 1)")
    refused("--capsule_preset=compact", "fold_2/arms/", "the network's ")
    refused("--baseline=resnet50", "baseline_s0: ", "the network: resnet50 (the run's: resnet18; --baseline)")
    refused("--k_folds=4", "fold_2/train.h5: a fold file made by an earlier run with another split: "
                           "--k_folds=4 (the file's: 3)")
    for part in ("train.h5", "val.h5"):                     # deleted, so they would be cut again: the runs
        (fold / part).unlink()                              # say what they trained on
    refused("--k_folds=4", "fold_2/arms/", "the training slices: this split gives")
    assert not (fold / "gan").exists()


def test_folds_run_with_other_settings_are_named_not_collected(one_fold_then_the_rest, blob_dataset, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(one_fold_then_the_rest[0], out)
    results = out / "results.json"
    before = results.read_text()
    shutil.rmtree(out / "fold_2" / "arms")              # fold 2 run again with another --epochs (its other
    _study(blob_dataset, out, "--fold=2", "--arms=real_only", "--epochs=2")     # runs would refuse it)
    failed = _study(blob_dataset, out, "--collect=True", succeeds=False)
    assert "its folds were not all run with the same settings" in failed.stderr
    assert "fold 2 real_only seed 0: --epochs=2 (fold 1 seed 0's: 1)" in failed.stderr, failed.stderr[-2000:]
    assert results.read_text() == before                                       # nothing merged
    gan_index = out / "fold_3" / "gan" / "run.json"
    index = json.loads(gan_index.read_text())
    index["settings"]["epochs"] = 3
    gan_index.write_text(json.dumps(index))
    failed = _study(blob_dataset, out, "--collect=True", succeeds=False)
    assert "fold 3's GAN: --gan_epochs=3 (fold 1's: 1)" in failed.stderr, failed.stderr[-2000:]
    index["settings"]["epochs"] = 1
    gan_index.write_text(json.dumps(index))
    for name in ("last.pt", "best.pt"):                        # a run without checkpoints cannot be compared:
        (out / "fold_2" / "arms" / "real_only_s0" / name).unlink()    # merged, and said; so a pre-training
        (out / "fold_1" / "arms" / "pretrained_s0" / "pretrain" / name).unlink()    # phase without them
    shutil.rmtree(out / "fold_3" / "gan")                      # its synthetic slices still say how it trained
    _study(blob_dataset, out, "--collect=True")
    check = json.loads(results.read_text())["settings_check"]
    assert check == {"runs_compared": 8, "gans_compared": 3,
                     "unchecked_runs": ["fold 1 pretrained seed 0 (pre-training)", "fold 2 real_only seed 0"]}
    assert "not compared, their checkpoints gone: fold 1 pretrained seed 0 (pre-training), fold 2 real_only " \
           "seed 0." in (out / "RESULTS.md").read_text()


def test_a_network_setting_added_to_the_code_since_a_run_is_no_difference():
    from study_pipeline.reuse import network_changes
    saved = {"model_name": "capsule", "image_size": 64, "model_config": {"widths": [8]}}
    assert network_changes(saved, "capsule", 64, {"widths": [8], "added_since": 1}) == []
    assert network_changes(saved, "capsule", 64, {"widths": [16]}, "fold 1 seed 0's") == [
        "the network's widths=[16] (fold 1 seed 0's: [8]; --capsule_preset or a default of the code)"]


def test_a_fold_file_of_a_split_file_is_recognised_and_another_split_is_named(blob_dataset, tmp_path):
    """A --data_path made by write_split carries its own split record, which its fold files replace
    with theirs: the same rows are reused, other rows refused with the split flag that differs."""
    from preprocess.splits import write_rows, write_split
    from study_pipeline.reuse import check_fold_file
    source, held_out = tmp_path / "train_part.h5", tmp_path / "test_part.h5"
    write_split(blob_dataset, source, held_out, fraction=0.25, seed=0)
    split = {"fold": 1, "k_folds": 3, "group_by": "patient", "seed": 0}
    write_rows(source, tmp_path / "fold.h5", [0, 2, 4, 6], dict(split, part="train"))
    check_fold_file(tmp_path / "fold.h5", source, [6, 4, 2, 0], split)          # the same rows: reused
    with pytest.raises(ValueError, match=r"fold\.h5: a fold file made by an earlier run with another split: "
                                         r"--split_seed=1 \(the file's: 0\)"):
        check_fold_file(tmp_path / "fold.h5", source, [1, 3, 5, 7], dict(split, seed=1))
    other = tmp_path / "prepared_otherwise.h5"                     # the same slices, prepared another way
    shutil.copy(source, other)
    with h5py.File(other, "a") as handle:
        handle.attrs["percentiles"] = "1-99"
    with pytest.raises(ValueError, match=r"prepared_otherwise\.h5 is not made as the file the fold was cut from"):
        check_fold_file(tmp_path / "fold.h5", other, [0, 2, 4, 6], split)


def test_a_gan_setting_added_after_the_fold_gan_counts_as_its_default(tmp_path):
    """A fold GAN whose run.json predates a GanSettings field ran as that field's default does."""
    from generative_model.settings import GanSettings
    from study_pipeline.reuse import check_fold_gan
    saved = dataclasses.asdict(GanSettings())
    del saved["generator_ema"]                                  # as if added after this GAN was trained
    (tmp_path / "run.json").write_text(json.dumps({"settings": saved}))
    check_fold_gan(tmp_path, GanSettings(), tmp_path / "synthetic.h5")          # the default: reused
    with pytest.raises(ValueError, match=r"made by a GAN that these flags would train otherwise: generator_ema=0\.9 \(the fold's GAN: 0\.0"):
        check_fold_gan(tmp_path, GanSettings(generator_ema=0.9), tmp_path / "synthetic.h5")


def test_a_copied_fold_record_is_not_collected_twice(one_fold_then_the_rest, tmp_path):
    from study_pipeline.summary import load_folds
    out = tmp_path / "study"
    shutil.copytree(one_fold_then_the_rest[0], out)
    assert [f["fold"] for f in load_folds(out)] == [1, 2, 3]
    shutil.copytree(out / "fold_2", out / "fold_2_old")
    with pytest.raises(ValueError, match=r"fold_2_old/fold\.json: the record of fold 2 in fold_2_old/"):
        load_folds(out)


@pytest.mark.parametrize("content", [b'{"fold": 1, "arms": {"real_', b'["not", "a", "record"]',
                                     b'{"arms": {}}', b'{"fold": 1, "arms": {"real_only": {"s0": {}}}}',
                                     b'\xff\xfe{"fold": 1}'])
def test_a_broken_fold_record_is_named_in_the_error(tmp_path, content):
    from study_pipeline.summary import load_folds
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "fold.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"fold_1/fold\.json: not (readable as JSON|a fold record)"):
        load_folds(tmp_path)


def test_presets_are_known_settings():
    import runpy
    flags = runpy.run_path(str(ROOT / "study.py"), run_name="defaults_only")
    for name in ("demo", "cpu", "study"):
        assert load_preset("study", name, flags)["data_path"].endswith(".h5")
    with pytest.raises(ValueError, match="presets"):
        load_preset("study", "nope")


def test_the_baseline_arm_takes_a_classifier_preset(tmp_path):
    import dataclasses

    from study_pipeline.folds import arm_experiment
    from study_pipeline.settings import StudySettings
    paths = {"train": "t.h5", "val": "v.h5"}
    settings = StudySettings(baseline_preset="resnet18_cpu", epochs=30, lr=1e-3)
    baseline = arm_experiment(settings, "baseline", 1, paths, None, str(tmp_path / "b"), 256)
    assert (baseline.model, baseline.image_size, baseline.config.epochs, baseline.config.lr) == ("resnet18", 128, 12, 2e-3)
    capsule = arm_experiment(settings, "real_only", 1, paths, None, str(tmp_path / "c"), 256)
    assert (capsule.model, capsule.image_size, capsule.config.epochs, capsule.config.seed) == ("capsule", 256, 30, 1)
    pretrained = arm_experiment(settings, "pretrained", 1, {**paths, "synthetic": "s.h5"}, "s.h5", str(tmp_path / "p"), 256)
    assert pretrained.image_size == 256 and pretrained.data_path == ["s.h5", "t.h5"]
    with pytest.raises(ValueError, match="cannot take"):
        arm_experiment(dataclasses.replace(settings, baseline_preset="study"), "baseline", 0, paths, None,
                       str(tmp_path / "d"), 256)
    from study_pipeline.settings import settings_from_flags
    flags = {**dataclasses.asdict(StudySettings()), "baseline_preset": "resnet18_cpu", "baseline": "resnet50"}
    with pytest.raises(ValueError, match="trains resnet18, but --baseline=resnet50"):
        settings_from_flags(flags)


def test_the_study_gan_defaults_are_the_gan_defaults_and_every_gan_setting_reaches_the_gan():
    import dataclasses

    from generative_model.settings import GanSettings
    from study_pipeline.folds import STUDY_GAN_FILES, gan_settings
    from study_pipeline.settings import StudySettings

    gan_defaults = GanSettings()
    study_gan = [f.name for f in dataclasses.fields(StudySettings) if f.name.startswith("gan_")]
    not_passed = STUDY_GAN_FILES
    own_budget = {"gan_epochs"}        # the study's CPU budget, chosen apart from the GAN's
    for name in set(study_gan) - not_passed - own_budget:
        assert getattr(StudySettings(), name) == getattr(gan_defaults, name[len("gan_"):]), name
    # a changed value of each passed setting shows up in the fold's GAN settings
    changed = dict(gan_epochs=3, gan_conditional=False, gan_ngf=8, gan_ndf=8, gan_batch_size=2,
                   gan_upsample="transpose", gan_full_res_convs=0, gan_mask_norm=False, gan_spectral_norm=False,
                   gan_feature_matching_weight=0.0)
    assert set(changed) == set(study_gan) - not_passed
    assert all(value != getattr(gan_defaults, name[len("gan_"):]) for name, value in changed.items())
    built = gan_settings(StudySettings(split_seed=4, **changed), image_size=64)
    assert {name: getattr(built, name[len("gan_"):]) for name in changed} == changed
    assert (built.image_size, built.seed) == (64, 4)


def test_arms_without_a_common_fold_and_seed_are_collected_with_n_a(tmp_path):
    from study_pipeline.summary import collect
    run = {"accuracy": 0.5, "macro_f1": 0.4, "confusion_matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 1]],
           "seconds": 1.0, "device": "cpu (1 thread)"}
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "fold.json").write_text(json.dumps(
        {"fold": 1, "val_patients": ["p1"], "arms": {"real_only": {"0": run}, "pretrained": {"1": run}}}))
    collect(tmp_path, {"k_folds": 5, "group_by": "stretch", "split_seed": 0})    # no val.h5: the flags
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| pretrained - real_only | 0 | n/a |" in text and "1 fold(s) of 5 (stretch-wise), seeds 0, 1" in text


def test_paired_differences_are_given_per_fold_with_an_interval_over_the_fold_means(tmp_path):
    from scipy import stats

    from study_pipeline.summary import collect, paired_difference
    confusion = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    real_only = {1: {"0": 0.80, "1": 0.80}, 2: {"0": 0.80, "1": 0.80}, 10: {"0": 0.80}}
    pretrained = {1: {"0": 0.82, "1": 0.84}, 2: {"0": 0.79, "1": 0.81, "2": 0.99}, 10: {"0": 0.86}}

    def run(value):
        return {"accuracy": value, "macro_f1": value, "confusion_matrix": confusion}

    for fold in real_only:                   # fold 2's seed 2 has no real-only partner: not a pair
        arms = {"real_only": {seed: run(v) for seed, v in real_only[fold].items()},
                "pretrained": {seed: run(v) for seed, v in pretrained[fold].items()}}
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "fold.json").write_text(
            json.dumps({"fold": fold, "val_patients": [f"p{fold}"], "arms": arms}))
    results = collect(tmp_path, {"k_folds": 10, "group_by": "stretch", "split_seed": 0})
    d = results["paired_differences"]["pretrained - real_only"]["accuracy"]
    assert list(d["per_fold"]) == ["1", "2", "10"]                    # by fold number, not as text
    assert {fold: pytest.approx(values) for fold, values in d["per_fold"].items()} == \
        {"1": [0.02, 0.04], "2": [-0.01, 0.01], "10": [0.06]}
    assert d["pairs"] == 5 and d["mean"] == pytest.approx(0.024)
    half = stats.t.ppf(0.975, 2) * 0.03 / np.sqrt(3)          # fold means 0.03, 0.00, 0.06: std 0.03
    assert (d["folds"], d["fold_means_mean"]) == (3, pytest.approx(0.03))
    assert d["fold_means_ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 1: +0.030 (2), 2: +0.000 (2), 10: +0.060 (1) | +0.030 [-0.045, +0.105] |" in text
    assert results["paired_figure"] == "paired_differences.png" and (tmp_path / "paired_differences.png").stat().st_size
    assert "[paired_differences.png](paired_differences.png)" in text
    # the same gain on every seed, from different accuracies (not bit-equal differences): no interval, no p-value
    same_gain = [{"fold": fold, "arms": {"real_only": {str(k): run(v) for k, v in enumerate((0.80, 0.85, 0.90))},
                                         "pretrained": {str(k): run(v) for k, v in enumerate((0.85, 0.90, 0.95))}}}
                 for fold in (1, 2)]
    d = paired_difference(same_gain, "pretrained", "real_only")
    assert d["mean"] == pytest.approx(0.05) and not {"ci95", "p_value", "fold_means_ci95"} & set(d)
