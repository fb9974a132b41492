"""One classifier experiment as ``train.py`` runs it: pre-train, cross-validate or hold out, test.

Layout of ``model_dir/<run name>/``:
    pretrain/{best,last}.pt       when synthetic dataset files are given (attribute synthetic)
    fold_<k>/{best,last}.pt, fold.json     patient-wise cross-validation, one fresh model per fold
    best.pt, last.pt              single run (CrossValidation=False): every slice trains, or with
                                  val_fraction > 0 a patient-wise part validates and picks best.pt
    metrics.json, report.txt, confusion_cv.png / confusion_validation.png / confusion_test.png,
    curves.png
"""
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torchinfo import summary

from capsule_classifier.augment import PASTE_DONORS, PASTE_LEVELS, PASTE_PLACES
from capsule_classifier.checkpoint import (load_checkpoint, load_model, scoring_prior, scoring_warps,
                                           trained_vertical_flips)
from capsule_classifier.data import load_sources
from capsule_classifier.engine import TrainConfig, fit, predict, unusable_settings
from capsule_classifier.network import count_parameters, make_model
from capsule_classifier.report import (classification_metrics, plot_confusion, plot_curves,
                                       summarise_folds, text_report, write_json_atomic)
from capsule_classifier.stretch_adversary import check_reads
from preprocess import distributed
from preprocess.devices import describe_device, resolve_device
from preprocess.splits import holdout_split, patient_folds


MASK_HEAD_PREFIX = "mask_head."
# train.py's flags that fill Experiment fields of other names (the study's capitalised flags) ...
RENAMED_FLAGS = {"Train": "train", "Test": "test", "CrossValidation": "cross_validation",
                 "LoadSavedModel": "load_saved_model", "FreezeLayers": "freeze_layers"}
# ... that become the capsule network's options, and that are used before an Experiment exists
CAPSULE_OPTION_FLAGS = ("routing", "capsule_types", "scaled_norm", "tumour_crop", "tumour_levels")
RESIDUAL_ONLY_OPTIONS = ("tumour_crop", "tumour_levels")
SCRIPT_ONLY_FLAGS = ("threads", "preset")


@dataclass
class Experiment:
    """What to run (the flags of train.py, resolved)."""
    model: str = "capsule"
    data_path: list = field(default_factory=list)
    data_test_path: list = field(default_factory=list)
    model_dir: str = "checkpoints"
    run_name: str = None            # None: <model>_<image size or "native">
    train: bool = True
    test: bool = False
    cross_validation: bool = True
    k_folds: int = 7
    fold: int = 0                   # 1..k_folds: cross-validate that fold only (0: every fold)
    val_fraction: float = 0.0       # hold-out runs: validation part (0: every slice trains)
    train_fraction: float = 1.0     # cross-validation: keep about this share of each fold's training patients
    group_by: str = "patient"       # split by "patient" or by "stretch" of figshare numbering
    split_seed: int = 0             # the folds / hold-out part, the same for every training seed
    load_saved_model: bool = False
    check_name: str = ""
    image_size: int = None
    pretrain_epochs: int = 5
    capsule_preset: str = "residual"
    capsule_options: dict = field(default_factory=dict)
    freeze_layers: bool = False     # ResNet50: freeze its first freeze_children children
    freeze_children: int = 8
    pretrained: str = "none"
    test_time_flips: bool = True    # score folds, hold-out and test with flip-averaged probabilities
    resume: bool = False
    device: str = "auto"
    config: TrainConfig = field(default_factory=TrainConfig)
    flags: dict = field(default_factory=dict)


def experiment_from_flags(flags, device):
    """The Experiment (and its TrainConfig) of ``train.py``'s flags, filled by field name, so that a
    setting is defined once: at the top of the script."""
    values = {RENAMED_FLAGS.get(name, name): value for name, value in flags.items()}
    config = TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)})
    as_list = lambda value: [value] if isinstance(value, str) else list(value or [])  # noqa: E731
    model = "resnet50" if values["model"] == "resnet" else values["model"]
    values.update(
        model=model, data_path=as_list(values["data_path"]), data_test_path=as_list(values["data_test_path"]),
        capsule_options={name: values[name] for name in CAPSULE_OPTION_FLAGS},
        device=str(device), config=config, flags=flags)
    return Experiment(**{f.name: values[f.name] for f in dataclasses.fields(Experiment)})


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def uses_mask_head(exp):
    """The residual capsule network trains a tumour-mask head when the mask loss is on."""
    return exp.model == "capsule" and exp.capsule_preset == "residual" and exp.config.mask_weight > 0


def build_model(exp, image_size):
    options = dict(exp.capsule_options) if exp.model == "capsule" else {}
    if exp.model == "capsule" and exp.capsule_preset == "residual":
        options["mask_head"] = uses_mask_head(exp)
    else:
        for name in RESIDUAL_ONLY_OPTIONS:
            if options.pop(name, False):
                raise ValueError(f"--{name} applies to the residual capsule network (capsule_preset=residual)")
    return make_model(exp.model, image_size=image_size, preset=exp.capsule_preset,
                      freeze_children=exp.freeze_children if exp.freeze_layers else 0, pretrained=exp.pretrained,
                      **options)


def _check_masks(exp, data, log):
    """Switch tumour pasting and the mask loss off, saying why, when the model or the data cannot use
    them (before the network is built: the mask head exists only with the loss)."""
    for name, reason in unusable_settings(exp.config, uses_mask_head(exp), data.masks is not None).items():
        files = f" ({', '.join(exp.data_path)})" if name == "tumour_paste" else ""
        log(f"{name}={getattr(exp.config, name)} ignored: {reason}{files}")
        setattr(exp.config, name, 0.0)


def describe_model(model, image_size, log):
    total, trainable = count_parameters(model)
    log(str(summary(model, input_size=(1, 1, image_size, image_size), verbose=0, device="cpu",
                    col_names=("output_size", "num_params"), depth=3)))
    log(f"model {type(model).__name__}: {total:,} parameters, {trainable:,} trainable")


def _checkpoint_path(exp):
    """The checkpoint named by ``check_name``: a path, or a run name inside ``model_dir``."""
    for candidate in (exp.check_name, os.path.join(exp.model_dir, exp.check_name, "best.pt"),
                      os.path.join(exp.model_dir, exp.check_name)):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"--check_name={exp.check_name!r}: no checkpoint file at that path "
                            f"nor at {os.path.join(exp.model_dir, exp.check_name, 'best.pt')}")


def load_start_state(model, state):
    """Load starting weights; only the training-only mask head may be absent on either side (a
    model fine-tuned with or without the mask loss from one trained the other way)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    others = [k for k in missing + unexpected if not k.startswith(MASK_HEAD_PREFIX)]
    if others:
        raise RuntimeError(f"Error(s) in loading state_dict: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _fresh_model(exp, image_size, start_state):
    torch.manual_seed(exp.config.seed)
    model = build_model(exp, image_size)
    if start_state is not None:
        load_start_state(model, start_state)
    return model


def check_settings(exp):
    """Refuse settings that would train nothing or fail late, naming the flag."""
    config = exp.config
    for flag, value, least in (("epochs", config.epochs, 1), ("batch_size", config.batch_size, 2),
                               ("k_folds", exp.k_folds, 2),
                               ("image_size", 32 if exp.image_size is None else exp.image_size, 32)):
        if value < least:
            raise ValueError(f"--{flag}={value}: must be at least {least}")
    if config.lr <= 0:
        raise ValueError(f"--lr={config.lr}: must be positive")
    if not 0 <= exp.val_fraction < 1:
        raise ValueError(f"--val_fraction={exp.val_fraction}: must lie in [0, 1) (0: train on every slice, "
                         f"no validation part)")
    if not 0 < exp.train_fraction <= 1:
        raise ValueError(f"--train_fraction={exp.train_fraction}: must lie in (0, 1] (1: every training patient)")
    if not 0 <= config.tumour_paste <= 1:
        raise ValueError(f"--tumour_paste={config.tumour_paste}: a share of each batch, 0 to 1")
    if config.paste_at not in PASTE_PLACES:
        raise ValueError(f"--paste_at={config.paste_at!r}: one of {', '.join(PASTE_PLACES)}")
    if config.paste_donor not in PASTE_DONORS:
        raise ValueError(f"--paste_donor={config.paste_donor!r}: one of {', '.join(PASTE_DONORS)}")
    if config.paste_levels not in PASTE_LEVELS:
        raise ValueError(f"--paste_levels={config.paste_levels!r}: one of {', '.join(PASTE_LEVELS)}")
    check_reads(config.stretch_adversary_reads)
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"--ema_decay={config.ema_decay}: 0 (off) or a decay in (0, 1)")
    if config.prior_correction < 0:
        raise ValueError(f"--prior_correction={config.prior_correction}: 0 (off) or more (1: training class "
                         f"shares divided out)")
    if exp.train_fraction < 1 and not exp.cross_validation:
        raise ValueError("--train_fraction < 1 (a learning-curve point) applies to cross-validation runs")


def run_experiment(exp, log=print):
    """Run everything ``exp`` asks for; returns the metrics dict (also written to metrics.json)."""
    check_settings(exp)
    started = time.time()
    device = resolve_device(exp.device)
    exp.run_name = exp.run_name or f"{exp.model}_{exp.image_size or 'native'}"
    run_dir = os.path.join(exp.model_dir, exp.run_name)
    os.makedirs(run_dir, exist_ok=True)
    metrics = {"flags": exp.flags, "seed": exp.config.seed, "split_seed": exp.split_seed, "git_commit": git_commit(),
               "device": str(device), "model": exp.model}
    start_state = None
    if exp.load_saved_model:
        path = _checkpoint_path(exp)
        checkpoint = load_checkpoint(path)
        exp.image_size = exp.image_size or checkpoint["image_size"]
        start_state = checkpoint["state_dict"]
        try:
            load_start_state(build_model(exp, exp.image_size), start_state)
        except RuntimeError as error:
            raise ValueError(f"{path}: holds a {checkpoint['model_name']} {checkpoint['model_config']} "
                             f"that does not fit --model={exp.model} with these flags "
                             f"({str(error).splitlines()[0]})") from None
        log(f"starting from {path}")
    data = load_sources(exp.data_path, exp.image_size) if exp.data_path else None
    image_size = data.image_size if data is not None else exp.image_size
    histories = {}
    if exp.train:
        if data is None:
            raise ValueError("--Train=True needs --data_path")
        _check_masks(exp, data, log)
        describe_model(build_model(exp, image_size), image_size, log)
        real = data.subset(np.flatnonzero(~data.synthetic))
        if len(real) == 0:
            log("only synthetic files given: training on them (train on synthetic, test on real)")
            real = data
        elif data.synthetic.any():
            start_state = _pretrain(exp, data.subset(np.flatnonzero(data.synthetic)), start_state,
                                    run_dir, device, histories, log)
            metrics["pretrain"] = {"slices": int(data.synthetic.sum()), "epochs": exp.pretrain_epochs}
        log(f"training slices: {len(real)} from {len(set(real.patient_ids))} patients; "
            f"per class {np.bincount(real.labels, minlength=3).tolist()}")
        if exp.cross_validation:
            metrics["cv"] = _cross_validate(exp, real, start_state, run_dir, device, histories, log)
        else:
            metrics["validation"] = _holdout(exp, real, start_state, run_dir, device, histories, log)
        plot_curves(histories, os.path.join(run_dir, "curves.png"), f"{exp.model} {exp.run_name}")
    if exp.test:
        metrics["test"] = _test(exp, run_dir, device, metrics, log)
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["device"] = describe_device(device)
    write_json_atomic(metrics, os.path.join(run_dir, "metrics.json"))
    log(f"wrote {os.path.join(run_dir, 'metrics.json')} ({metrics['seconds']:.0f} s)")
    return metrics


def _pretrain(exp, synthetic, start_state, run_dir, device, histories, log):
    log(f"pre-training on {len(synthetic)} synthetic slices for {exp.pretrain_epochs} epochs")
    train, val = _split_off_validation(dataclasses.replace(exp, group_by="patient"), synthetic, synthetic.source_ids)
    model = _fresh_model(exp, synthetic.image_size, start_state)
    # synthetic slices have no figshare numbering: the stretch adversary is for the real ones
    config = TrainConfig(**{**exp.config.__dict__, "epochs": exp.pretrain_epochs, "stretch_adversary": 0.0})
    history, _ = fit(model, exp.model, train, val, config, os.path.join(run_dir, "pretrain"), device,
                     resume=exp.resume, log=log)
    histories["pretrain"] = history
    return load_checkpoint(os.path.join(run_dir, "pretrain", "last.pt"))["state_dict"]


def checkpoint_probabilities(model_path, images, device, flips, prior_correction=None, warps=None):
    """Class probabilities of a checkpoint; ``flips`` averages over the flips its training showed,
    ``warps`` over the test-time warps too (engine.test_time_views); ``prior_correction`` divides by
    its training class shares to that power (engine.correct_for_prior). None: as the checkpoint's
    run scored."""
    model, record = load_model(model_path, device)
    prior, strength = scoring_prior(record, prior_correction, model_path)
    return predict(model, images, device, flips=flips, vertical_flips=trained_vertical_flips(record),
                   prior=prior, prior_correction=strength, warps=scoring_warps(record, warps))


def _evaluate_fold(model_path, data, device, exp):
    probabilities = checkpoint_probabilities(model_path, data.images, device, exp.test_time_flips,
                                             exp.config.prior_correction, exp.config.test_time_warps)
    return classification_metrics(data.labels, probabilities)


def _cross_validate(exp, real, start_state, run_dir, device, histories, log):
    folds = patient_folds(real.labels, real.patient_ids, exp.k_folds, exp.split_seed, real.source_ids,
                          exp.group_by)
    results = []
    if not 0 <= exp.fold <= exp.k_folds:
        raise ValueError(f"--fold={exp.fold}: use 1..{exp.k_folds} (k_folds), or 0 for every fold")
    for k, (train_rows, val_rows) in enumerate(folds, start=1):
        if exp.fold and k != exp.fold:
            continue
        train_rows = _training_share(exp, real, train_rows)
        shared = set(real.patient_ids[train_rows]) & set(real.patient_ids[val_rows])
        assert not shared, f"fold {k} shares patients {sorted(shared)[:5]}"
        log(f"fold {k}/{exp.k_folds}: train {len(train_rows)}, validation {len(val_rows)} slices "
            f"({len(set(real.patient_ids[val_rows]))} patients)")
        fold_dir = os.path.join(run_dir, f"fold_{k}")
        model = _fresh_model(exp, real.image_size, start_state)
        val = real.subset(val_rows)
        history, best = fit(model, exp.model, real.subset(train_rows), val, exp.config, fold_dir, device,
                            resume=exp.resume, log=log)
        histories[f"fold {k}"] = history
        # the fold's score is its final model: picking the best epoch on the same validation
        # part would be optimistic; the best epoch's numbers are kept for reference only
        final = _evaluate_fold(os.path.join(fold_dir, "last.pt"), val, device, exp)
        final.update(fold=k, best_epoch=best["epoch"], best_epoch_accuracy=best["accuracy"],
                     best_epoch_macro_f1=best["macro_f1"], train_slices=int(len(train_rows)),
                     val_slices=int(len(val_rows)), val_sources_sha1=sources_fingerprint(val.source_ids),
                     seconds=round(sum(h["seconds"] for h in history), 1))
        results.append(final)
        write_json_atomic(final, os.path.join(fold_dir, "fold.json"))    # partial results survive
        log(f"fold {k}: accuracy {final['accuracy']:.4f}  macro-F1 {final['macro_f1']:.4f}")
    if exp.fold:    # one fold per job: summarise every fold finished so far, by any job
        results = _finished_folds(run_dir, exp.k_folds)
        log(f"{len(results)} of {exp.k_folds} folds finished in {run_dir}; the summary covers those")
    cv = summarise_folds(results)
    cv.update(group_by=exp.group_by, folds_finished=len(results))
    plot_confusion(cv["confusion_matrix"], os.path.join(run_dir, "confusion_cv.png"),
                   f"{exp.k_folds}-fold {exp.group_by}-wise CV, pooled: accuracy {cv['pooled_accuracy']:.3f}")
    with open(os.path.join(run_dir, "report.txt") if distributed.is_main() else os.devnull, "w") as out:
        matrix = np.array(cv["confusion_matrix"])
        out.write(f"{exp.k_folds}-fold {exp.group_by}-wise cross-validation\n"
                  f"accuracy {cv['accuracy_mean']:.4f} +- {cv['accuracy_std']:.4f}, "
                  f"macro-F1 {cv['macro_f1_mean']:.4f} +- {cv['macro_f1_std']:.4f}\n"
                  f"pooled confusion matrix (rows true, columns predicted):\n{matrix}\n")
    log(f"cross-validation: accuracy {cv['accuracy_mean']:.4f} +- {cv['accuracy_std']:.4f}, "
        f"macro-F1 {cv['macro_f1_mean']:.4f} +- {cv['macro_f1_std']:.4f}")
    return cv


def _training_share(exp, real, train_rows):
    """The rows of ``train_rows`` that ``train_fraction`` keeps: whole patient groups, stratified by
    class, fixed by ``split_seed`` (the same for every training seed); a point of a learning curve.
    The share is about the one asked for, in whole patient-wise folds of the training part: above
    one half, one of ``round(1 / (1 - train_fraction))`` folds is left out; at or below one half,
    one of ``round(1 / train_fraction)`` folds is kept. The fold log says how many slices train."""
    if exp.train_fraction >= 1:
        return train_rows
    share = exp.train_fraction
    rest, one_fold = holdout_split(real.labels[train_rows], real.patient_ids[train_rows], min(share, 1 - share),
                                   exp.split_seed, real.source_ids[train_rows], "patient")
    return train_rows[np.sort(rest if share > 0.5 else one_fold)]


def sources_fingerprint(source_ids):
    """A short fingerprint of which slices a part holds (order-free), to tell whether two runs
    validated on the same slices."""
    return hashlib.sha1("\n".join(sorted(map(str, source_ids))).encode()).hexdigest()[:16]


def _finished_folds(run_dir, k_folds):
    results = []
    for k in range(1, k_folds + 1):
        path = os.path.join(run_dir, f"fold_{k}", "fold.json")
        if os.path.exists(path):
            with open(path) as handle:
                results.append(json.load(handle))
    return results


def _split_off_validation(exp, data, groups):
    """(training part, validation part or None) of a hold-out run; ``val_fraction=0`` keeps every
    slice for training (the model to use after the validated choices are made)."""
    if exp.val_fraction == 0:
        return data, None
    train_rows, val_rows = holdout_split(data.labels, groups, exp.val_fraction, exp.split_seed,
                                         data.source_ids, exp.group_by)
    return data.subset(train_rows), data.subset(val_rows)


def _holdout(exp, real, start_state, run_dir, device, histories, log):
    train, val = _split_off_validation(exp, real, real.patient_ids)
    log(f"{exp.group_by}-wise hold-out: train {len(train)}, validation {0 if val is None else len(val)} slices")
    model = _fresh_model(exp, real.image_size, start_state)
    history, best = fit(model, exp.model, train, val, exp.config, run_dir, device, resume=exp.resume, log=log)
    histories["all slices" if val is None else "hold-out"] = history
    if val is None:
        return {"validation_slices": 0, "note": "val_fraction=0: trained on every slice, nothing validated"}
    final = _evaluate_fold(os.path.join(run_dir, "last.pt"), val, device, exp)
    final.update(best_epoch=best["epoch"], best_epoch_accuracy=best["accuracy"],
                 best_epoch_macro_f1=best["macro_f1"])
    plot_confusion(final["confusion_matrix"], os.path.join(run_dir, "confusion_validation.png"),
                   f"{exp.group_by}-wise validation (last epoch): accuracy {final['accuracy']:.3f}")
    return final


def _test(exp, run_dir, device, metrics, log):
    if not exp.data_test_path:
        raise ValueError("--Test=True needs --data_test_path")
    if exp.train and "cv" in metrics:
        paths = [os.path.join(run_dir, f"fold_{k}", "best.pt") for k in range(1, exp.k_folds + 1)]
    elif exp.train:
        paths = [os.path.join(run_dir, "best.pt")]
    else:
        paths = [_checkpoint_path(exp)]
    image_size = load_checkpoint(paths[0])["image_size"]
    test = load_sources(exp.data_test_path, image_size)
    # a model trained here is scored as this run scores; a checkpoint only tested, as its own run scored
    strength, warps = (exp.config.prior_correction, exp.config.test_time_warps) if exp.train else (None, None)
    probabilities = [checkpoint_probabilities(path, test.images, device, exp.test_time_flips, strength, warps)
                     for path in paths]
    # several fold models: average their probabilities (an ensemble of the folds)
    mean = np.mean(probabilities, axis=0)
    result = classification_metrics(test.labels, mean)
    result.update(checkpoints=paths)
    if len(paths) > 1:
        result["per_model_accuracy"] = [classification_metrics(test.labels, p)["accuracy"]
                                        for p in probabilities]
    plot_confusion(result["confusion_matrix"], os.path.join(run_dir, "confusion_test.png"),
                   f"test: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    with open(os.path.join(run_dir, "report_test.txt") if distributed.is_main() else os.devnull, "w") as out:
        out.write(text_report(test.labels, mean))
    log(f"test on {len(test)} slices: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}")
    return result
