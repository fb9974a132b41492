"""Command-line flag overrides shared by every stage script."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from preprocess.flags import FlagError, apply_cli_flags


def flags():
    return {"epochs": 3, "lr": 1e-3, "Train": True, "data_path": ["a.h5"], "name": "x",
            "device": None, "CLASS_NAMES": ("a",), "_private": 1}


def test_values_take_the_type_of_their_default():
    namespace = flags()
    result = apply_cli_flags(namespace, ["--epochs=30", "--lr=5e-5", "--Train=False",
                                         "--data_path=b.h5,c.h5", "--device=cuda", "--name=7"])
    assert result == {"epochs": 30, "lr": 5e-5, "Train": False, "data_path": ["b.h5", "c.h5"],
                      "name": "7", "device": "cuda"}
    assert namespace["epochs"] == 30 and namespace["Train"] is False


def test_constants_and_private_names_are_not_flags():
    result = apply_cli_flags(flags(), [])
    assert "CLASS_NAMES" not in result and "_private" not in result


@pytest.mark.parametrize("argument, message", [
    ("--epoch=3", "did you mean --epochs"),
    ("--epochs=3.5", "expected an integer"),
    ("--Train=maybe", "expected true or false"),
    ("--lr=fast", "expected a number"),
    ("epochs=3", "flags are written --name=value"),
    ("--epochs", "needs a value"),
])
def test_bad_flags_are_clear_errors(argument, message):
    with pytest.raises(FlagError) as error:
        apply_cli_flags(flags(), [argument])
    assert message in str(error.value)
    assert error.value.code == 2


def test_bare_boolean_flag_means_true():
    assert apply_cli_flags({"Test": False}, ["--Test"])["Test"] is True


def test_script_rejects_unknown_flag_listing_valid_ones():
    run = subprocess.run([sys.executable, "preprocess/prepare_dataset.py", "--imagesize=64"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert "did you mean --image_size" in run.stderr and "--skip_bad" in run.stderr


@pytest.mark.parametrize("script,settings", [("generative_model/train.py", "generative_model.settings.GanSettings"),
                                             ("study.py", "study_pipeline.settings.StudySettings"),
                                             ("capsule_classifier/train.py", "capsule_classifier.engine.TrainConfig"),
                                             ("capsule_classifier/train.py", "capsule_classifier.experiment.Experiment")])
def test_script_defaults_agree_with_their_settings_class(script, settings):
    import dataclasses
    import importlib
    import runpy
    module, name = settings.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    flags = runpy.run_path(str(Path(__file__).resolve().parents[1] / script), run_name="defaults_only")
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if field.name in flags:
            value = flags[field.name]
            assert (list(default) if isinstance(default, tuple) else default) == value, field.name


def classifier_flags():
    import runpy
    return runpy.run_path(str(ROOT / "capsule_classifier" / "train.py"), run_name="defaults_only")


def test_every_classifier_flag_reaches_the_experiment():
    """A flag added to train.py but to neither TrainConfig nor Experiment would be silently ignored."""
    import dataclasses

    import torch

    from capsule_classifier import experiment
    from capsule_classifier.engine import TrainConfig
    from preprocess.flags import flag_names
    namespace = classifier_flags()
    names = set(flag_names(namespace))
    fields = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(experiment.Experiment)}
    used = (fields | set(experiment.RENAMED_FLAGS) | set(experiment.CAPSULE_OPTION_FLAGS)
            | set(experiment.SCRIPT_ONLY_FLAGS))
    assert names <= used, sorted(names - used)
    exp = experiment.experiment_from_flags({n: namespace[n] for n in names}, torch.device("cpu"))
    assert exp.config == TrainConfig() and exp.train and exp.cross_validation and exp.k_folds == namespace["k_folds"]
    assert exp.capsule_options["tumour_crop"] is False and exp.run_name is None


def test_a_preset_file_fills_flags_and_the_command_line_overrides_it():
    namespace = classifier_flags()
    values = apply_cli_flags(namespace, ["--preset=study", "--lr=1e-4"])
    assert values["capsule_preset"] == "study" and values["recipe"] == "study_sgd"
    assert values["lr"] == 1e-4 and isinstance(values["label_smoothing"], float) and values["preset"] == "study"
    assert values["vertical_flips"] is True and values["amp"] == "false"


def test_a_bad_preset_is_named(tmp_path):
    with pytest.raises(FlagError, match="presets: .*compact"):
        apply_cli_flags(classifier_flags(), ["--preset=nope"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 3, "epoch": 4}')
    with pytest.raises(FlagError, match=r"bad.json.*unknown: \['epoch'\]"):
        apply_cli_flags(classifier_flags(), [f"--preset={bad}"])


def test_preset_values_take_the_flag_type():
    from preprocess.flags import preset_value
    assert preset_value(5, 1e-3, "lr") == 5.0 and isinstance(preset_value(5, 1e-3, "lr"), float)
    assert preset_value("128", None, "image_size") == 128 and preset_value(128, None, "image_size") == 128
    assert preset_value("real_only", ["a", "b"], "arms") == ["real_only"]
    assert preset_value(["x", "y"], ("a",), "arms") == ("x", "y")
    assert preset_value(False, "auto", "amp") == "False" and preset_value(True, False, "Test") is True
    with pytest.raises(FlagError, match="null"):
        preset_value(None, "x", "name")
    with pytest.raises(FlagError, match="expected an integer"):
        preset_value("many", 3, "epochs")
