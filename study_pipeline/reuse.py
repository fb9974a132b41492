"""What a rerun of a fold reuses from an earlier run: its split files, its GAN, masks and synthetic
slices, and its finished classifier runs. Each is refused, with what differs named, when this
call's flags would have made it otherwise (another split, GAN, training recipe or scoring), so that
a fold's record never mixes runs of two settings."""
import dataclasses
import json
import os

import numpy as np

from capsule_classifier.checkpoint import load_checkpoint
from capsule_classifier.engine import changed_settings, effective_config
from capsule_classifier.experiment import build_model
from preprocess.dataset import has_field, read_attrs, read_column

EXECUTION_ONLY = ("amp", "channels_last")   # how a run computed (differs by device), not what it learned
GAN_EXECUTION_ONLY = ("device", "amp", "num_workers")
GAN_FLAG_NAMES = {"image_size": "the GAN's image size (--gan_data_path)", "seed": "--split_seed"}
RERUN_ADVICE = "rerun with the fold's own flags, or use another --out"
SPLIT_FLAGS = "--data_path, --gan_data_path, --k_folds, --group_by and --split_seed make the fold's files"


def check_fold_file(path, source, rows, fold):
    """Refuse a fold file from an earlier run that does not hold rows ``rows`` of ``source``, at its size."""
    held, wanted = read_column(path, "source_ids"), read_column(source, "source_ids")[np.sort(rows)]
    size, wanted_size = read_attrs(path).get("image_size"), read_attrs(source).get("image_size")
    if np.array_equal(held, wanted) and size == wanted_size:
        return
    raise ValueError(f"{path}: made by an earlier run with another split or size ({len(held)} slices at {size} px; "
                     f"fold {fold} of these flags takes {len(wanted)} slices of {source} at {wanted_size} px). "
                     f"{SPLIT_FLAGS}: {RERUN_ADVICE}")


def _network_changes(saved, model_name, model):
    """How the saved network differs from the one these flags build (keys both configurations have)."""
    if saved["model_name"] != model_name:
        return [f"--model={model_name} (the run trained {saved['model_name']})"]
    config, old = dict(model.config), saved["model_config"]
    return [f"the network (--capsule_preset, --image_size): {key}={config[key]!r} (the run's: {old[key]!r})"
            for key in sorted(set(config) & set(old)) if config[key] != old[key]]


def check_finished_run(run_dir, exp, device):
    """Refuse to count the finished run in ``run_dir`` when the Experiment ``exp`` (what this call
    would train) differs from it in what it trains on, how, or how it scores, naming every difference."""
    state = load_checkpoint(os.path.join(run_dir, "last.pt"))
    model = build_model(exp, exp.image_size)
    has_masks = all(has_field(path, "tumor_masks") for path in exp.data_path)
    config = effective_config(exp.config, getattr(model, "mask_head", None) is not None, has_masks, device)
    differ = _network_changes(state, exp.model, model)
    differ += changed_settings(state.get("train_config", {}), config, skip=EXECUTION_ONLY)
    pretrain = os.path.join(run_dir, "pretrain", "last.pt")
    if os.path.exists(pretrain):
        saved = load_checkpoint(pretrain).get("train_config", {}).get("epochs")
        if saved != exp.pretrain_epochs:
            differ.append(f"--pretrain_epochs={exp.pretrain_epochs} (the run used {saved})")
    if differ:
        raise ValueError(f"{run_dir}: a finished run that these flags would train otherwise: " + "; ".join(differ)
                         + f"; {RERUN_ADVICE}, or delete the run folder to train it again with these")


def check_fold_gan(gan_dir, settings):
    """Refuse a fold's GAN (and so the synthetic slices drawn from it) trained by an earlier run with
    GAN settings other than ``settings`` (a GanSettings), naming them."""
    index = os.path.join(gan_dir, "run.json")
    if not os.path.exists(index):
        return                      # none yet, or one cut short (its resume compares the networks)
    with open(index, encoding="utf-8") as handle:
        saved = json.load(handle).get("settings", {})
    differ = [f"{GAN_FLAG_NAMES.get(name, '--gan_' + name)}={value!r} (the fold's GAN used {saved[name]!r})"
              for name, value in dataclasses.asdict(settings).items()
              if name in saved and name not in GAN_EXECUTION_ONLY and saved[name] != value]
    if differ:
        raise ValueError(f"{gan_dir}: a GAN that these flags would train otherwise: " + "; ".join(differ)
                         + f"; {RERUN_ADVICE}")


def check_per_class(path, per_class):
    """Refuse a fold's masks or synthetic file from an earlier run with another --synthetic_per_class."""
    counts = np.bincount(read_column(path, "labels")).tolist()
    if any(count != per_class for count in counts):
        raise ValueError(f"{path}: {counts} slices per class from an earlier run, these flags ask for "
                         f"--synthetic_per_class={per_class}; {RERUN_ADVICE}")
