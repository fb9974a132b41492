"""One fold of the study: its split, the GAN and synthetic slices from its training patients only,
and every classifier arm for every seed. Every step is skipped when its output is complete, so a
killed study continues where it stopped; what is reused is first checked against the call's flags
(``check_reuse``, study_pipeline/reuse.py).

    <out>/fold_<k>/train.h5, val.h5        the fold's real slices (classifier size)
    <out>/fold_<k>/gan_train.h5            the training slices at the GAN's size (when it differs)
    <out>/fold_<k>/masks.h5, gan/, synthetic.h5
    <out>/fold_<k>/arms/<arm>_s<seed>/     classifier runs (train.py's layout)
    <out>/fold_<k>/fold.json               patients of each part and every arm's test metrics
"""
import dataclasses
import glob
import os

import numpy as np

from capsule_classifier.checkpoint import load_model
from capsule_classifier.embedding import embed_files, map_coordinates, write_tsne
from capsule_classifier.engine import TrainConfig
from capsule_classifier.experiment import Experiment, run_experiment
from capsule_classifier.report import write_json_atomic
from generative_model.evaluation import heldout_leakage
from generative_model.settings import GanSettings
from generative_model.synthesis import synthesize
from generative_model.trainer import train_models
from preprocess.dataset import read_attrs, read_column
from preprocess.devices import resolve_device
from preprocess.json_files import read_json
from preprocess.mask_augmentation import augment_masks
from preprocess.splits import patient_folds, write_rows
from study_pipeline.reuse import check_finished_run, check_fold_file, check_fold_gan, check_per_class
from study_pipeline.settings import ARMS, baseline_preset

FOLD_FILE = "fold.json"


def fold_rows(settings):
    """The (train_rows, val_rows) of every fold of ``settings.data_path``."""
    labels, patients, sources = (read_column(settings.data_path, name)
                                 for name in ("labels", "patient_ids", "source_ids"))
    return patient_folds(labels, patients, settings.k_folds, settings.split_seed, sources, settings.group_by)


def _rows_of_sources(path, source_ids):
    """Rows of ``path`` whose source id is in ``source_ids`` (the GAN file may be another size)."""
    return np.flatnonzero(np.isin(read_column(path, "source_ids"), list(source_ids)))


def fold_paths(settings, fold):
    """Where the fold's files are (made or not): its dataset files and its GAN folder."""
    fold_dir = os.path.join(settings.out, f"fold_{fold}")
    paths = {name: os.path.join(fold_dir, f"{name}.h5") for name in ("train", "val", "masks", "synthetic")}
    paths["gan_train"], paths["gan"] = paths["train"], os.path.join(fold_dir, "gan")
    if settings.gan_data_path and os.path.realpath(settings.gan_data_path) != os.path.realpath(settings.data_path):
        paths["gan_train"] = os.path.join(fold_dir, "gan_train.h5")
    return paths


def _fold_files(settings, fold, train_rows, val_rows):
    """(part, path, source, rows) of each dataset file the fold's split makes."""
    paths = fold_paths(settings, fold)
    files = [("train", paths["train"], settings.data_path, train_rows),
             ("val", paths["val"], settings.data_path, val_rows)]
    if paths["gan_train"] != paths["train"]:
        train_sources = read_column(settings.data_path, "source_ids")[train_rows]
        files.append(("train", paths["gan_train"], settings.gan_data_path,
                      _rows_of_sources(settings.gan_data_path, train_sources)))
    return files


def _split_record(settings, fold):
    """How the fold was cut, as its files record it (their ``split`` attribute)."""
    return {"fold": fold, "k_folds": settings.k_folds, "group_by": settings.group_by, "seed": settings.split_seed}


def prepare_split(settings, fold, train_rows, val_rows, log=print):
    """The fold's dataset files (those missing are written); returns the fold's paths."""
    for part, path, source, rows in _fold_files(settings, fold, train_rows, val_rows):
        if not os.path.exists(path):
            write_rows(source, path, rows, dict(_split_record(settings, fold), part=part))
    log(f"fold {fold}: {len(train_rows)} training, {len(val_rows)} validation slices")
    return fold_paths(settings, fold)


def check_reuse(settings, fold, train_rows, val_rows):
    """Refuse, before anything is written or trained, what an earlier run left in the fold's folder
    that this call's flags would have made otherwise: its split files, finished runs, GAN, masks and
    synthetic slices (study_pipeline.reuse). Returns the earlier record and the finished runs."""
    fold_dir, paths = os.path.join(settings.out, f"fold_{fold}"), fold_paths(settings, fold)
    earlier, runs = _earlier_record(fold_dir, fold), finished_runs(fold_dir)
    for _, path, source, rows in _fold_files(settings, fold, train_rows, val_rows):
        if os.path.exists(path):
            check_fold_file(path, source, rows, _split_record(settings, fold))
    device = resolve_device(settings.device)
    # the slices each arm's last phase trains on, as this call's split gives them (not as the fold's
    # files hold them: files deleted and about to be made again with another split are caught too)
    synthetic = paths["synthetic"]
    trained = {"real": read_column(settings.data_path, "source_ids")[np.sort(train_rows)],
               "synthetic": read_column(synthetic, "source_ids") if os.path.exists(synthetic) else None}
    for arm, seeds in runs.items():
        for seed in seeds:
            run_dir = arm_run_dir(fold_dir, arm, int(seed))
            exp = arm_experiment(settings, arm, int(seed), paths, synthetic, run_dir, classifier_size(settings))
            check_finished_run(run_dir, exp, trained["synthetic" if arm == "synthetic_only" else "real"], device)
    if {"pretrained", "synthetic_only"} & set(settings.arms):
        check_fold_gan(paths["gan"], gan_settings(settings, gan_size(settings)), paths["synthetic"])
        for path in (paths["masks"], paths["synthetic"]):
            if os.path.exists(path):
                check_per_class(path, settings.synthetic_per_class)
    return earlier, runs


STUDY_GAN_FILES = {"gan_data_path"}          # study settings named gan_* that are not GAN settings


def gan_settings(settings, image_size):
    """The fold's GAN settings: each study setting gan_<name> gives the GAN's <name>; the rest are its defaults."""
    chosen = {field.name[len("gan_"):]: getattr(settings, field.name) for field in dataclasses.fields(settings)
              if field.name.startswith("gan_") and field.name not in STUDY_GAN_FILES}
    # an unknown gan_<name>, or one the study sets itself (image size, seed, device), fails here by name
    return GanSettings(image_size=image_size, seed=settings.split_seed, device=settings.device, **chosen)


def gan_size(settings):
    """The GAN's image size: that of --gan_data_path, else of --data_path."""
    return int(read_attrs(settings.gan_data_path or settings.data_path)["image_size"])


def synthetic_slices(settings, fold, paths, log=print):
    """Masks, GAN and synthetic slices from the fold's training patients only; returns the
    synthetic file and the leakage check against the validation part."""
    fold_dir = os.path.join(settings.out, f"fold_{fold}")
    masks, synthetic = paths["masks"], paths["synthetic"]
    if not os.path.exists(masks):
        augment_masks(paths["gan_train"], masks, settings.synthetic_per_class, seed=settings.split_seed, workers=0)
    size = gan_size(settings)
    log(f"fold {fold}: GAN at {size} px, {settings.gan_epochs} epochs")
    train_models(paths["gan_train"], fold_dir, "gan", gan_settings(settings, size), resume=True,
                 created_with=dataclasses.asdict(settings))
    if not os.path.exists(synthetic):
        synthesize(paths["gan"], masks, synthetic, per_class=settings.synthetic_per_class,
                   seed=settings.split_seed, device=settings.device, progress=False)
    leakage = heldout_leakage(paths["gan"], synthetic, paths["val"])
    if leakage["heldout_patients_the_gan_saw"] or leakage["synthetic_slices_from_heldout_masks"]:
        raise RuntimeError(f"fold {fold}: the GAN saw validation patients ({leakage}); this must not happen")
    return synthetic, leakage


def classifier_size(settings):
    """The image size of every capsule arm: ``settings.image_size``, else that of the real slices.
    (The synthetic slices come at the GAN's size and are resized to it, so that the arms differ in
    what they train on, not in resolution.)"""
    return settings.image_size or int(read_attrs(settings.data_path)["image_size"])


def arm_experiment(settings, arm, seed, paths, synthetic, run_dir, image_size):
    """The Experiment of one arm at ``image_size``: trained on the whole of the fold's training part
    (and/or the synthetic slices; nothing held out, the final model is tested), tested on its
    validation part. The baseline arm takes ``settings.baseline_preset`` (a presets/classifier
    file: model, image size, epochs, learning rate) when one is named."""
    data = {"real_only": [paths["train"]], "baseline": [paths["train"]],
            "pretrained": [synthetic, paths["train"]], "synthetic_only": [synthetic]}[arm]
    training = dict(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                    augmentation=settings.augmentation, tumour_paste=settings.tumour_paste,
                    prior_correction=settings.prior_correction, test_time_warps=settings.test_time_warps,
                    seed=seed)
    model = "capsule"
    if arm == "baseline":
        preset = baseline_preset(settings.baseline_preset, settings.baseline) if settings.baseline_preset else {}
        model, image_size = preset.pop("model", settings.baseline), preset.pop("image_size", image_size)
        training.update(preset)
    return Experiment(model=model, data_path=data,
                      data_test_path=[paths["val"]], model_dir=os.path.dirname(run_dir),
                      run_name=os.path.basename(run_dir), test=True, cross_validation=False, val_fraction=0,
                      image_size=image_size, pretrain_epochs=settings.pretrain_epochs,
                      capsule_preset=settings.capsule_preset, resume=os.path.exists(run_dir),
                      device=settings.device, config=TrainConfig(**training),
                      flags={"study_arm": arm, "seed": seed})


def arm_run_dir(fold_dir, arm, seed):
    """The run folder of one arm and seed (train.py's layout inside)."""
    return os.path.join(fold_dir, "arms", f"{arm}_s{seed}")


def run_arm(settings, arm, seed, paths, synthetic, fold_dir, log=print):
    """Train one classifier arm on one seed (finished runs are found by ``finished_runs``). Returns
    its test metrics."""
    run_dir = arm_run_dir(fold_dir, arm, seed)
    log(f"{os.path.basename(fold_dir)}: {arm}, seed {seed}")
    return _arm_result(run_experiment(arm_experiment(settings, arm, seed, paths, synthetic, run_dir,
                                                     classifier_size(settings)), log=lambda *a: None))


def _arm_result(metrics):
    """What the fold record keeps of one run's metrics.json."""
    test = metrics["test"]
    return {key: test[key] for key in ("accuracy", "macro_f1", "confusion_matrix")} | {
        "seconds": metrics.get("seconds"), "device": metrics.get("device")}


def _read_run(metrics_path):
    """The record entry of a finished run; a metrics.json without test results is named."""
    try:
        return _arm_result(read_json(metrics_path))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{metrics_path}: no test results of a study run (missing {error}); "
                         "delete its run folder to train it again") from error


def _is_seed_key(text):
    """A seed as the record and the run folders write it: "0", "12"; not "01", "0.bak"."""
    return text.isascii() and text.isdigit() and str(int(text)) == text


def finished_runs(fold_dir):
    """{arm: {seed: result}} of every finished run folder of the fold (``arms/<arm>_s<seed>/metrics.json``),
    read afresh, so that the fold record always matches its run folders."""
    runs = {}
    for path in glob.glob(os.path.join(glob.escape(fold_dir), "arms", "*_s*", "metrics.json")):
        arm, _, seed = os.path.basename(os.path.dirname(path)).rpartition("_s")
        if arm in ARMS and _is_seed_key(seed):
            runs.setdefault(arm, {})[seed] = _read_run(path)
    return {arm: dict(sorted(runs[arm].items(), key=lambda item: int(item[0]))) for arm in ARMS if arm in runs}


def run_fold(settings, fold, train_rows, val_rows, reused, log=print):
    """Everything of one fold; writes and returns its fold.json record. ``reused`` is what
    ``check_reuse`` returned for the fold (its earlier record and finished runs), checked first."""
    fold_dir = os.path.join(settings.out, f"fold_{fold}")
    # a rerun with other --arms or seeds keeps what earlier runs of this fold recorded: every finished
    # run folder (the split is the fold's own files, reused, so they were tested on the same patients),
    # the leakage check and the figures
    earlier, runs = reused
    paths = prepare_split(settings, fold, train_rows, val_rows, log)
    needs_synthetic = {"pretrained", "synthetic_only"} & set(settings.arms)
    synthetic, leakage = synthetic_slices(settings, fold, paths, log) if needs_synthetic else (None, None)
    record = ({"fold": fold, "val_patients": [], "gan_train_patients": [], "leakage": None, "arms": {}} | earlier
              | {"fold": fold, "val_patients": sorted(set(read_column(paths["val"], "patient_ids"))),
                 "arms": runs})
    if needs_synthetic:
        record.update(gan_train_patients=sorted(set(read_column(paths["gan_train"], "patient_ids"))),
                      leakage=leakage)
    for seed in range(settings.seeds):
        for arm in settings.arms:
            if str(seed) in record["arms"].get(arm, {}):
                continue                                                     # finished earlier
            record["arms"].setdefault(arm, {})[str(seed)] = run_arm(settings, arm, seed, paths, synthetic,
                                                                    fold_dir, log)
            write_json_atomic(record, os.path.join(fold_dir, FOLD_FILE))     # partial results survive
    if needs_synthetic:
        record["gan_samples"] = os.path.relpath(_last_sample_grid(os.path.join(fold_dir, "gan")), settings.out)
        if "pretrained" in settings.arms:
            record["tsne"] = os.path.relpath(real_and_synthetic_tsne(settings, fold_dir, paths, synthetic), settings.out)
    write_json_atomic(record, os.path.join(fold_dir, FOLD_FILE))
    return record


def read_fold_record(path):
    """A fold.json record; a file that is not one is named in the error."""
    try:
        record = read_json(path)
    except ValueError as error:
        raise ValueError(f"{error}; {REBUILD_ADVICE}") from error
    if (not isinstance(record, dict) or not isinstance(record.get("fold"), int)
            or not isinstance(record.get("arms"), dict)
            or not all(isinstance(runs, dict) and all(_is_seed_key(seed) for seed in runs)
                       for runs in record["arms"].values())):
        raise ValueError(f"{path}: not a fold record (needs an integer 'fold' and 'arms' of seed -> result); "
                         + REBUILD_ADVICE)
    return record


REBUILD_ADVICE = ("delete it and rerun the fold with --arms=pretrained to rebuild it (leakage check and figures "
                  "included): the GAN, the synthetic slices and every finished run in its arms/ folder are reused")


def check_fold_folder(path, record):
    """Refuse a fold record that sits in another fold's folder (a copy)."""
    folder = os.path.basename(os.path.dirname(path))
    if folder != f"fold_{record['fold']}":
        raise ValueError(f"{path}: the record of fold {record['fold']} in {folder}/; only fold_K/ folders "
                         "holding fold K's record belong to a study (move or rename the copy)")


def _earlier_record(fold_dir, fold):
    """What the fold's fold.json from an earlier run holds besides its runs (those are read from
    the run folders), or {}."""
    path = os.path.join(fold_dir, FOLD_FILE)
    if not os.path.exists(path):
        return {}
    record = read_fold_record(path)
    check_fold_folder(path, record)
    return {key: value for key, value in record.items() if key != "arms"}


def real_and_synthetic_tsne(settings, fold_dir, paths, synthetic, max_slices=1500):
    """t-SNE of the pre-trained arm's features (seed 0) over the fold's real validation slices and
    the synthetic slices: do the synthetic slices sit where the real ones of their class do?"""
    png = os.path.join(fold_dir, "tsne.png")
    if not os.path.exists(png):
        device = resolve_device(settings.device)
        model, record = load_model(os.path.join(arm_run_dir(fold_dir, "pretrained", 0), "best.pt"), device)
        features, data, _ = embed_files(model, [paths["val"], synthetic], record["image_size"], device,
                                        max_slices, settings.split_seed)
        write_tsne(map_coordinates(features, settings.split_seed), data, png, os.path.join(fold_dir, "tsne.csv"),
                   f"{os.path.basename(fold_dir)}: validation (real) and synthetic slices, pre-trained capsule features")
    return png


def _last_sample_grid(gan_dir):
    """The newest sample grid of the fold's (last) GAN model."""
    grids = sorted(glob.glob(os.path.join(gan_dir, "*", "samples", "epoch_*.png")))
    return grids[-1] if grids else gan_dir
