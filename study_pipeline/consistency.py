"""Whether the folds of a study ran alike, checked before ``collect`` merges them: every finished run
of an arm against that arm's first run (network, image size, training and scoring settings,
pre-training epochs), every fold's GAN and synthetic slices against those of the first fold that has
them. Folds run one at a time (``--fold=K``) may have been started with other flags; without this
check their results would be averaged together without a word. Reads only the study's folder (the
runs' checkpoints, the GANs' records): what cannot be compared (checkpoints deleted, a GAN and its
record gone) is listed as not compared, not refused."""
import dataclasses
import os

import numpy as np

from capsule_classifier.engine import SAVED_WITHOUT, TrainConfig, setting_changes
from preprocess.dataset import read_column
from study_pipeline.folds import arm_run_dir
from study_pipeline.reuse import (EXECUTION_ONLY, GAN_EXECUTION_ONLY, fold_gan_settings, has_saved_run,
                                  named_change, network_changes, saved_pretrain_epochs, saved_run)

PER_RUN = ("seed",)                       # the one training setting the runs of a study differ in by design
SMALLEST_FIRST = ("best.pt", "last.pt")   # the same network and train_config; best.pt without the optimiser
TRAIN_CONFIG_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}
UNKNOWN = "unknown"                       # pre-training epochs of a pretrain/ folder whose checkpoints are gone


def _run_settings(run_dir):
    """(saved network and train_config, pre-training epochs or UNKNOWN) of a finished run; None
    without a checkpoint."""
    if not has_saved_run(run_dir):
        return None
    pretrain = os.path.join(run_dir, "pretrain")
    epochs = (UNKNOWN if os.path.isdir(pretrain) and not has_saved_run(pretrain)
              else saved_pretrain_epochs(run_dir, SMALLEST_FIRST))
    return saved_run(run_dir, SMALLEST_FIRST), epochs


def _as_train_config(saved):
    """A saved train_config as a TrainConfig (settings added since: what such a run did)."""
    return TrainConfig(**{name: value for name, value in {**SAVED_WITHOUT, **saved}.items()
                          if name in TRAIN_CONFIG_FIELDS})


def _run_differences(run, reference, whose, baseline):
    """How a run differs from the reference run (``whose`` it is), each named as study.py's flag;
    ``baseline``: the baseline arm, whose settings may come from --baseline_preset."""
    (state, pretrain), (ref_state, ref_pretrain) = run, reference
    differ = network_changes(ref_state, state["model_name"], state["image_size"], state["model_config"], whose)
    # setting_changes(saved, config) gives (name, config's value, saved value): here (name, reference's, run's)
    differ += [named_change(name, value, old, whose, preset=baseline) for name, old, value
               in setting_changes(state.get("train_config", {}), _as_train_config(ref_state.get("train_config", {})),
                                  skip=EXECUTION_ONLY + PER_RUN)]
    if UNKNOWN not in (pretrain, ref_pretrain) and pretrain != ref_pretrain:
        differ.append(f"--pretrain_epochs={pretrain!r} ({whose}: {ref_pretrain!r})")
    return differ


def _fold_gan(out, fold):
    """(GAN settings, synthetic slices per class) of a fold, each None where it has none."""
    fold_dir = os.path.join(out, f"fold_{fold}")
    synthetic = os.path.join(fold_dir, "synthetic.h5")
    _, _, saved = fold_gan_settings(os.path.join(fold_dir, "gan"), synthetic)
    gan = None if saved is None else {name: value for name, value in saved.items() if name not in GAN_EXECUTION_ONLY}
    per_class = np.bincount(read_column(synthetic, "labels")).tolist() if os.path.exists(synthetic) else None
    return gan, per_class


def _gan_differences(out, folds):
    """How each fold's GAN and synthetic slices differ from those of the first fold that has them;
    the number of GANs compared."""
    differ, reference, compared = [], {}, 0
    for record in folds:
        fold = record["fold"]
        gan, per_class = _fold_gan(out, fold)
        if gan is not None:
            compared += 1
            ref_fold, ref = reference.setdefault("gan", (fold, gan))
            differ += [f"fold {fold}'s GAN: " + named_change(name, gan[name], ref[name],
                                                              f"fold {ref_fold}'s", gan=True)
                       for name in sorted(set(gan) & set(ref)) if gan[name] != ref[name]]
        if per_class is not None:
            ref_fold, ref = reference.setdefault("synthetic", (fold, per_class))
            if per_class != ref:
                differ.append(f"fold {fold}'s synthetic slices per class: {per_class} "
                              f"(fold {ref_fold}'s: {ref}; --synthetic_per_class)")
    return differ, compared


def check_folds_alike(out, folds):
    """Refuse to merge ``folds`` (fold records of the study in ``out``) whose runs or GANs were made
    with different settings, naming each difference; returns what was compared:
    {"runs_compared": n, "unchecked_runs": [...], "gans_compared": n}. A fold that trained a GAN but
    kept neither it nor its synthetic slices' record is in none of these (its GAN is not compared)."""
    differ, unchecked, compared, references = [], [], 0, {}
    for record in folds:
        fold_dir = os.path.join(out, f"fold_{record['fold']}")
        for arm, runs in record["arms"].items():
            for seed in runs:
                name = f"fold {record['fold']} {arm} seed {seed}"
                run = _run_settings(arm_run_dir(fold_dir, arm, int(seed)))
                if run is None:
                    unchecked.append(name)
                    continue
                compared += 1
                if run[1] == UNKNOWN:
                    unchecked.append(f"{name} (pre-training)")
                ref_name, reference = references.setdefault(arm, (f"fold {record['fold']} seed {seed}", run))
                differ += [f"{name}: {change}" for change
                           in _run_differences(run, reference, f"{ref_name}'s", baseline=arm == "baseline")]
    gan_differences, gans = _gan_differences(out, folds)
    differ += gan_differences
    if differ:
        raise ValueError(f"{out}: its folds were not all run with the same settings, so their results are not "
                         "merged: " + "; ".join(differ) + ". Each names a run's or fold's setting "
                         "and, in brackets, the first one's: rerun the odd runs or folds with the study's settings "
                         "(delete their run folders, or the fold's folder), or collect differently made folds in "
                         "their own --out")
    return {"runs_compared": compared, "unchecked_runs": unchecked, "gans_compared": gans}
