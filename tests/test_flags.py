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


@pytest.mark.parametrize("script,settings", [("generative_model/train.py", "generative_model.trainer.GanSettings"),
                                             ("study.py", "study_pipeline.settings.StudySettings")])
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
