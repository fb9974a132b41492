"""Whether the folds of a study ran alike, checked before ``collect`` merges them: every finished run
of an arm against that arm's first run (network, image size, training and scoring settings,
pre-training epochs), every fold's GAN and synthetic slices against the first fold's. Folds run one
at a time (``--fold=K``) may have been started with other flags; without this check their results
would be averaged together without a word. Reads only the study's folder (the runs' checkpoints,
the GANs' records): runs whose checkpoints were deleted are listed as unchecked, not refused."""
import dataclasses
import os

import numpy as np

from capsule_classifier.engine import SAVED_WITHOUT, TrainConfig, setting_changes
from generative_model.settings import GanSettings
from preprocess.dataset import read_column
from study_pipeline.folds import arm_run_dir
from study_pipeline.reuse import EXECUTION_ONLY, GAN_EXECUTION_ONLY, named_change, saved_gan_settings, saved_run

PER_RUN = ("seed",)                       # the one training setting the runs of a study differ in by design
CHECKPOINTS = ("last.pt", "best.pt")
TRAIN_CONFIG_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}
GAN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(GanSettings)}


def _has_checkpoint(run_dir):
    return any(os.path.exists(os.path.join(run_dir, name)) for name in CHECKPOINTS)


def _run_settings(run_dir):
    """(network, train_config, pre-training epochs) of a finished run; None without a checkpoint."""
    if not _has_checkpoint(run_dir):
        return None
    state = saved_run(run_dir)
    network = {"network": state["model_name"], "image size": int(state["image_size"]),
               **{f"the network's {key}": value for key, value in state["model_config"].items()}}
    pretrain_dir = os.path.join(run_dir, "pretrain")
    pretrain = (saved_run(pretrain_dir).get("train_config", {}).get("epochs")
                if _has_checkpoint(pretrain_dir) else None)
    return network, state.get("train_config", {}), pretrain


def _as_train_config(saved):
    """A saved train_config as a TrainConfig (settings added since: what such a run did)."""
    return TrainConfig(**{name: value for name, value in {**SAVED_WITHOUT, **saved}.items()
                          if name in TRAIN_CONFIG_FIELDS})


def _run_differences(settings, reference, whose):
    """How a run's settings differ from the reference run's, each named as study.py's flag."""
    (network, config, pretrain), (ref_network, ref_config, ref_pretrain) = settings, reference
    differ = [f"{key}={network.get(key)!r} ({whose}: {ref_network.get(key)!r})"
              for key in sorted(set(network) | set(ref_network)) if network.get(key) != ref_network.get(key)]
    differ += [named_change(name, value, old, whose) for name, old, value
               in setting_changes(config, _as_train_config(ref_config), skip=EXECUTION_ONLY + PER_RUN)]
    if pretrain != ref_pretrain:
        differ.append(f"--pretrain_epochs={pretrain!r} ({whose}: {ref_pretrain!r})")
    return differ


def _fold_gan(out, fold):
    """(GAN settings, synthetic slices per class) of a fold, each None where the fold has none."""
    fold_dir = os.path.join(out, f"fold_{fold}")
    saved = saved_gan_settings(os.path.join(fold_dir, "gan"))
    gan = None if saved is None else {name: value for name, value in {**GAN_DEFAULTS, **saved}.items()
                                      if name not in GAN_EXECUTION_ONLY}
    synthetic = os.path.join(fold_dir, "synthetic.h5")
    per_class = np.bincount(read_column(synthetic, "labels")).tolist() if os.path.exists(synthetic) else None
    return gan, per_class


def _gan_differences(out, folds):
    """How each fold's GAN and synthetic slices differ from the first fold's that has them, and the
    number of GANs compared."""
    differ, reference, gans = [], {}, 0
    for record in folds:
        gan, per_class = _fold_gan(out, record["fold"])
        if gan is not None:
            gans += 1
            ref_fold, ref = reference.setdefault("gan", (record["fold"], gan))
            differ += [f"fold {record['fold']}'s GAN: " + named_change(name, gan.get(name), ref.get(name),
                                                                          f"fold {ref_fold}'s", gan=True)
                       for name in sorted(set(gan) | set(ref)) if gan.get(name) != ref.get(name)]
        if per_class is not None:
            ref_fold, ref = reference.setdefault("synthetic", (record["fold"], per_class))
            if per_class != ref:
                differ.append(f"fold {record['fold']}'s synthetic slices per class: {per_class} "
                              f"(fold {ref_fold}'s: {ref}; --synthetic_per_class)")
    return differ, gans


def check_folds_alike(out, folds):
    """Refuse to merge ``folds`` (fold records of the study in ``out``) whose runs or GANs were made
    with different settings, naming each difference; returns what was compared:
    {"runs_compared": n, "unchecked_runs": [...], "gans_compared": n}."""
    differ, unchecked, compared, references = [], [], 0, {}
    for record in folds:
        fold_dir = os.path.join(out, f"fold_{record['fold']}")
        for arm, runs in record["arms"].items():
            for seed in runs:
                settings = _run_settings(arm_run_dir(fold_dir, arm, int(seed)))
                if settings is None:
                    unchecked.append(f"fold {record['fold']} {arm} seed {seed}")
                    continue
                compared += 1
                ref_name, reference = references.setdefault(arm, (f"fold {record['fold']} seed {seed}", settings))
                differ += [f"{arm} fold {record['fold']} seed {seed}: {change}"
                           for change in _run_differences(settings, reference, f"{ref_name}'s")]
    gan_differ, gans = _gan_differences(out, folds)
    differ += gan_differ
    if differ:
        raise ValueError(f"{out}: its folds were not all run with the same settings, so their results are not "
                         "merged: " + "; ".join(differ) + ". Rerun those folds or runs with the study's flags "
                         "(delete their run folders), or collect differently made folds in their own --out")
    return {"runs_compared": compared, "unchecked_runs": unchecked, "gans_compared": gans}
