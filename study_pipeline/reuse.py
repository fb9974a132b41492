"""What a rerun of a fold reuses from an earlier run: its split files, its GAN, masks and synthetic
slices, and its finished classifier runs. Each is refused, with what differs named, when this
call's flags would have made it otherwise (another split, GAN, training recipe or scoring), so that
a fold's record never mixes runs of two settings."""
import dataclasses
import glob
import json
import os

import numpy as np

from capsule_classifier.checkpoint import load_checkpoint
from capsule_classifier.engine import effective_config, setting_changes, source_fingerprint
from capsule_classifier.experiment import build_model, uses_mask_head
from generative_model.saved_runs import CHECKPOINT, read_run_index
from generative_model.settings import GanSettings
from preprocess.checkpoint_io import load_checkpoint_file
from preprocess.dataset import has_field, read_attrs, read_column
from study_pipeline.settings import BASELINE_PRESET_KEYS, StudySettings

EXECUTION_ONLY = ("amp", "channels_last")                # how a run computed (differs by device), not what
GAN_EXECUTION_ONLY = ("device", "amp", "num_workers")
STUDY_FLAGS = {field.name for field in dataclasses.fields(StudySettings)}
GAN_FLAG_NAMES = {"image_size": "the GAN's image size (--gan_data_path)", "seed": "split_seed"}
SPLIT_FLAG_NAMES = {"k_folds": "--k_folds", "group_by": "--group_by", "seed": "--split_seed"}
WHERE_FROM = ("split", "source", "skipped")              # attributes that say where a file came from, not what
WHERE_FROM_CREATED_WITH = ("out", "source", "workers")   # it holds (paths move, workers vary)
RERUN_ADVICE = "rerun with the fold's own flags, or use another --out"


def _refuse(path, what, differ, advice=RERUN_ADVICE):
    raise ValueError(f"{path}: {what}: " + "; ".join(differ) + f". {advice[0].upper()}{advice[1:]}")


def named_change(name, value, old, whose, gan=False, preset=False):
    """One difference as a message names it: the study flag that sets the setting, else that it
    follows from other flags or the code; ``preset``: the baseline arm, which may take it from
    --baseline_preset."""
    flag = (GAN_FLAG_NAMES.get(name) if gan else None) or (f"gan_{name}" if gan else name)
    note = "; the baseline arm takes it from --baseline_preset when one is named" if (
        preset and name in BASELINE_PRESET_KEYS) else ""
    if flag in STUDY_FLAGS:
        return f"--{flag}={value!r} ({whose}: {old!r}{note})"
    if flag.startswith("the "):
        return f"{flag}: {value!r} ({whose}: {old!r})"
    return f"{name}={value!r} ({whose}: {old!r}; not a flag of study.py: it follows from other flags{note} or the code)"


def _content(attrs):
    """A dataset file's attributes less those that say where it came from."""
    kept = {key: value for key, value in attrs.items() if key not in WHERE_FROM}
    if isinstance(kept.get("created_with"), dict):
        kept["created_with"] = {key: value for key, value in kept["created_with"].items()
                                if key not in WHERE_FROM_CREATED_WITH}
    return kept


def check_fold_file(path, source, rows, split):
    """Refuse a fold file from an earlier run that does not hold rows ``rows`` of ``source`` (made the
    same way: its attributes; the same slices; the same size). ``split`` is how this call cuts the
    folds (fold, k_folds, group_by, seed), which the file records."""
    attrs, source_attrs = read_attrs(path), read_attrs(source)
    recorded = attrs.get("split", {})
    held, wanted = read_column(path, "source_ids"), read_column(source, "source_ids")[np.sort(rows)]
    same_source = _content(attrs) == _content(source_attrs)
    if same_source and np.array_equal(held, wanted):
        return
    differ = [f"{SPLIT_FLAG_NAMES[key]}={value!r} (the file's: {recorded[key]!r})" for key, value in split.items()
              if key in SPLIT_FLAG_NAMES and key in recorded and recorded[key] != value]
    if not same_source:
        differ.append(f"{source} is not made as the file the fold was cut from ({recorded.get('of', '?')}): "
                      "another preparation or size")
    differ = differ or [f"{source} now gives fold {split['fold']} {len(wanted)} slices, the file holds "
                        f"{len(held)} others"]
    _refuse(path, "a fold file made by an earlier run with another split", differ)


CHECKPOINT_NAMES = ("last.pt", "best.pt")     # a finished run's checkpoints; both hold its network and train_config


def has_saved_run(run_dir):
    """Whether ``run_dir`` holds a checkpoint of a run."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in CHECKPOINT_NAMES)


def saved_run(run_dir, names=CHECKPOINT_NAMES):
    """What a finished run saved of how it trained: the first of ``names`` that exists (last.pt also
    holds the fingerprint of the slices it trained on; best.pt is a quarter of its size)."""
    for name in names:
        if os.path.exists(os.path.join(run_dir, name)):
            return load_checkpoint(os.path.join(run_dir, name))
    raise ValueError(f"{run_dir}: neither last.pt nor best.pt, so what the run trained cannot be compared "
                     "with these flags; delete the run folder to train it again")


def saved_pretrain_epochs(run_dir, names=CHECKPOINT_NAMES):
    """The epochs of a run's pre-training phase (its ``pretrain/`` folder); None when it had none."""
    pretrain = os.path.join(run_dir, "pretrain")
    if not os.path.isdir(pretrain):
        return None
    return saved_run(pretrain, names).get("train_config", {}).get("epochs")


def network_changes(state, model_name, image_size, model_config, whose="the run's"):
    """How a network of ``model_name`` at ``image_size`` built with ``model_config`` differs from the
    saved one (``state``; ``whose`` it is), compared where both name a setting (one added to the
    code since is no difference)."""
    if state["model_name"] != model_name:
        return [f"the network: {model_name} ({whose}: {state['model_name']}; --baseline)"]
    differ = []
    if int(state["image_size"]) != int(image_size):
        differ.append(f"image size {image_size} px ({whose}: {state['image_size']} px; --image_size, "
                      "--data_path or --baseline_preset)")
    old = state["model_config"]
    differ += [f"the network's {key}={model_config[key]!r} ({whose}: {old[key]!r}; --capsule_preset "
               "or a default of the code)" for key in sorted(set(model_config) & set(old))
               if model_config[key] != old[key]]
    return differ


def check_finished_run(run_dir, exp, trained_sources, device):
    """Refuse to count the finished run in ``run_dir`` when the Experiment ``exp`` (what this call
    would train; its last phase on the slices with source ids ``trained_sources``, None: not known)
    differs from it in what it trains on, what and how it trains, or how it scores, naming every
    difference."""
    state = saved_run(run_dir)
    has_masks = all(has_field(path, "tumor_masks") for path in exp.data_path if os.path.exists(path))
    config = effective_config(exp.config, uses_mask_head(exp), has_masks, device)
    model = build_model(dataclasses.replace(exp, config=config), exp.image_size)   # as training builds it
    differ = network_changes(state, exp.model, exp.image_size, dict(model.config))
    preset = exp.model != "capsule"
    differ += [named_change(name, value, old, "the run's", preset=preset) for name, value, old
               in setting_changes(state.get("train_config", {}), config, skip=EXECUTION_ONLY)]
    trained_on = state.get("train_data")
    if trained_on and trained_sources is not None:
        now = source_fingerprint(trained_sources, exp.image_size)
        if now != trained_on:
            differ.append(f"the training slices: this split gives {now['slices']} other than the "
                          f"{trained_on['slices']} the run trained on")
    pretrain_epochs = saved_pretrain_epochs(run_dir)
    if pretrain_epochs is not None and pretrain_epochs != exp.pretrain_epochs:
        differ.append(f"--pretrain_epochs={exp.pretrain_epochs} (the run's: {pretrain_epochs})")
    if differ:
        _refuse(run_dir, "a finished run that these flags would train or score otherwise", differ,
                f"{RERUN_ADVICE}, or delete the run folder to train it again with these")


def saved_gan_settings(gan_dir):
    """The GAN settings of the fold's GAN: from its run.json, else (a GAN cut short) from its
    checkpoints; None when there is no GAN."""
    index = read_run_index(gan_dir)
    if index is not None:
        return index.get("settings", {})
    checkpoints = sorted(glob.glob(os.path.join(glob.escape(gan_dir), "*", CHECKPOINT)))
    return load_checkpoint_file(checkpoints[0]).get("settings", {}) if checkpoints else None


def fold_gan_settings(gan_dir, synthetic):
    """(where from, whose, settings) of a fold's GAN: its run.json or checkpoint, else the synthetic
    slices drawn from it (which record its settings, so a deleted GAN is still known); settings added
    to GanSettings since it trained are filled with their defaults (what that GAN ran). The settings
    are None when neither is there, or the slices are older than that record."""
    path, whose, saved = gan_dir, "the fold's GAN", saved_gan_settings(gan_dir)
    if saved is None and os.path.exists(synthetic):
        path, whose, saved = synthetic, "the GAN that drew it", read_attrs(synthetic).get("generator_settings")
    if saved:
        saved = {**{field.name: field.default for field in dataclasses.fields(GanSettings)}, **saved}
    return path, whose, saved or None


def check_fold_gan(gan_dir, settings, synthetic):
    """Refuse a fold's GAN, or the synthetic slices drawn from it (compared even when the GAN was
    deleted), trained by an earlier run with GAN settings other than ``settings`` (a GanSettings),
    naming them."""
    path, whose, saved = fold_gan_settings(gan_dir, synthetic)
    if saved is None:
        return                          # no GAN yet (or slices older than the record of their GAN's settings)
    wanted = json.loads(json.dumps(dataclasses.asdict(settings)))     # as run.json stores them
    differ = [named_change(name, value, saved[name], whose, gan=True) for name, value in wanted.items()
              if name not in GAN_EXECUTION_ONLY and saved[name] != value]
    if differ:
        _refuse(path, "made by a GAN that these flags would train otherwise", differ)


def check_per_class(path, per_class):
    """Refuse a fold's masks or synthetic file from an earlier run with another --synthetic_per_class."""
    counts = np.bincount(read_column(path, "labels")).tolist()
    if any(count != per_class for count in counts):
        _refuse(path, "slices per class from an earlier run",
                [f"--synthetic_per_class={per_class} (the file's: {counts})"])
