"""What the synthetic slices are worth: diversity, intensity fidelity, and use to a classifier.

* Diversity: for fixed masks, slices from different latent vectors compared pairwise (mean L1 in
  [0, 1] intensity units, and SSIM). L1 0 / SSIM 1 means the generator ignores its latent vector.
* Intensity fidelity: per class, the distance between the intensity histograms of real and
  synthetic slices (total variation, and the 1-D Wasserstein distance in intensity units).
* A PNG grid of real and synthetic slices per class, side by side.
* Classifier (through ``capsule_classifier/train.py`` as a subprocess; this package never imports
  it): train on synthetic / test on real, and patient-wise cross-validation on the real slices with
  and without synthetic pre-training (same folds, same seed).
"""
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from skimage.metrics import structural_similarity

from generative_model.synthesis import plan_class, read_mask_batch
from generative_model.saved_runs import CONDITIONAL_FOLDER, load_generators, read_run_index
from preprocess.devices import resolve_device
from preprocess.dataset import CLASS_NAMES, read_column

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER_SCRIPT = ROOT / "capsule_classifier" / "train.py"
HISTOGRAM_BINS = 64


@torch.no_grad()
def latent_diversity(run_dir, masks_path, n_masks=8, n_latents=4, seed=0, device="cpu"):
    """Per class: mean pairwise L1 and SSIM between slices of the same mask, different latents."""
    device = resolve_device(device)
    generators, index = load_generators(run_dir, device)
    labels = read_column(masks_path, "labels")
    results = {}
    with h5py.File(masks_path, "r") as masks:
        for class_index, name in enumerate(CLASS_NAMES):
            key = CONDITIONAL_FOLDER if index["conditional"] else name
            if key not in generators or not np.any(labels == class_index):
                continue
            generator = generators[key]
            rows = plan_class(labels, class_index, n_masks, seed)
            mask = torch.from_numpy(read_mask_batch(masks, rows, ["conditions"])["conditions"])
            mask = mask.to(device, torch.float32)[:, None] * 2 - 1
            latents = torch.randn(n_latents, generator.latent_dim,
                                  generator=torch.Generator().manual_seed(seed + 7)).to(device)
            label_t = torch.full((len(rows),), class_index, device=device)
            noise = torch.Generator(device=device).manual_seed(seed + 11)   # noise maps, if the generator has them
            samples = torch.stack([generator(mask, z.expand(len(rows), -1), label_t, noise)[:, 0] for z in latents])
            samples = ((samples.float().cpu().numpy() + 1) / 2).clip(0, 1)  # (latents, masks, S, S)
            l1, ssim = [], []
            for a, b in itertools.combinations(range(n_latents), 2):
                for m in range(len(rows)):
                    l1.append(np.abs(samples[a, m] - samples[b, m]).mean())
                    ssim.append(structural_similarity(samples[a, m], samples[b, m], data_range=1.0))
            results[name] = {"pairwise_l1": float(np.mean(l1)), "pairwise_ssim": float(np.mean(ssim)),
                             "masks": len(rows), "latents": n_latents}
    return results


def class_histograms(path, bins=HISTOGRAM_BINS, batch=256):
    """Per class: normalised intensity histogram over all pixels of all slices, and the mean."""
    labels = read_column(path, "labels")
    counts = np.zeros((len(CLASS_NAMES), bins))
    sums = np.zeros(len(CLASS_NAMES))
    with h5py.File(path, "r") as f:
        images = f["images"]
        for start in range(0, len(labels), batch):
            part = images[start:start + batch].astype(np.float32)
            for class_index in np.unique(labels[start:start + batch]):
                pixels = part[labels[start:start + batch] == class_index]
                counts[class_index] += np.histogram(pixels, bins=bins, range=(0, 1))[0]
                sums[class_index] += pixels.sum()
    pixels_per_class = counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / pixels_per_class[:, None], sums / pixels_per_class


def histogram_distances(real_path, synthetic_path, bins=HISTOGRAM_BINS):
    """Per class: total variation and Wasserstein-1 between real and synthetic intensity histograms."""
    real, real_mean = class_histograms(real_path, bins)
    fake, fake_mean = class_histograms(synthetic_path, bins)
    results = {}
    for class_index, name in enumerate(CLASS_NAMES):
        if not (np.isfinite(real[class_index]).all() and np.isfinite(fake[class_index]).all()):
            continue
        p, q = real[class_index], fake[class_index]
        results[name] = {
            "total_variation": float(0.5 * np.abs(p - q).sum()),
            "wasserstein": float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / bins),
            "mean_intensity_real": float(real_mean[class_index]),
            "mean_intensity_synthetic": float(fake_mean[class_index])}
    return results


def comparison_grid(real_path, synthetic_path, png_path, per_class=4, seed=0):
    """Rows per class: per_class real slices, then per_class synthetic ones (matplotlib PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(CLASS_NAMES), 2 * per_class, figsize=(2 * per_class * 1.6, len(CLASS_NAMES) * 1.75))
    for class_index, name in enumerate(CLASS_NAMES):
        for column, path in enumerate((real_path, synthetic_path)):
            rows = np.flatnonzero(read_column(path, "labels") == class_index)
            picks = np.sort(rng.choice(rows, min(per_class, len(rows)), replace=False)) if len(rows) else []
            with h5py.File(path, "r") as f:
                tiles = f["images"][picks].astype(np.float32) if len(picks) else []
            for k in range(per_class):
                ax = axes[class_index, column * per_class + k]
                ax.axis("off")
                if k < len(tiles):
                    ax.imshow(tiles[k], cmap="gray", vmin=0, vmax=1)
                if k == 0:
                    ax.set_title(f"{name}: {'real' if column == 0 else 'synthetic'}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return os.fspath(png_path)


def run_classifier(args, model_dir, run_name, log_path):
    """Run capsule_classifier/train.py with the given flags; returns its metrics.json and seconds.

    A run that already finished with exactly the same command line (first line of its log) is
    reused, so an interrupted evaluation can be started again.
    """
    if not CLASSIFIER_SCRIPT.exists():
        raise FileNotFoundError(f"{CLASSIFIER_SCRIPT}: the classifier stage is not there")
    command = [sys.executable, str(CLASSIFIER_SCRIPT), *args, f"--model_dir={model_dir}", f"--run_name={run_name}"]
    metrics_path = Path(model_dir) / run_name / "metrics.json"
    if metrics_path.exists() and Path(log_path).exists():
        with open(log_path) as log:
            same_command = log.readline().split()[1:] == command[1:]
        if same_command:  # finished earlier with exactly these flags: reuse it
            with open(metrics_path) as handle:
                metrics = json.load(handle)
            return metrics, metrics.get("seconds"), " ".join(command[1:])
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"classifier run failed (exit {done.returncode}); see {log_path}")
    with open(metrics_path) as handle:
        metrics = json.load(handle)
    return metrics, round(time.perf_counter() - started, 1), " ".join(command[1:])


def heldout_leakage(run_dir, synthetic_path, heldout_path):
    """How much of the held-out file the GAN and its masks saw: held-out patients in the GAN's
    training file (run.json's ``dataset``), and synthetic slices whose mask came from a held-out
    slice (matching ``source_ids``). Both must be 0 for an honest train-on-synthetic test."""
    index = read_run_index(run_dir)
    if index is None:
        raise FileNotFoundError(f"{run_dir}: no run.json, so no trained GAN run to check")
    gan_dataset = index.get("dataset")
    heldout_patients = set(read_column(heldout_path, "patient_ids"))
    report = {"gan_dataset": gan_dataset, "heldout_patients": len(heldout_patients)}
    if gan_dataset and os.path.exists(gan_dataset):
        report["heldout_patients_the_gan_saw"] = len(heldout_patients & set(read_column(gan_dataset, "patient_ids")))
    else:
        report["heldout_patients_the_gan_saw"] = None      # unknown: the GAN's file is not here
    mask_sources = read_column(synthetic_path, "source_ids")
    report["synthetic_slices_from_heldout_masks"] = int(np.isin(mask_sources, read_column(heldout_path, "source_ids")).sum())
    return report


def _over_seeds(first, args, more_seeds, work_dir, name):
    """Accuracy and macro-F1 of a tested classifier run over its first seed and ``more_seeds``
    (each a run of its own, ``--seed`` appended so it wins over the first)."""
    scores = [(first["accuracy"], first["macro_f1"])]
    for extra in more_seeds:
        metrics, _, _ = run_classifier([*args, f"--seed={extra}"], work_dir, f"{name}_seed{extra}",
                                       work_dir / f"{name}_seed{extra}.log")
        scores.append((metrics["test"]["accuracy"], metrics["test"]["macro_f1"]))
    accuracy, macro_f1 = np.array(scores).T
    return {"runs": len(scores), "accuracy": accuracy.tolist(), "macro_f1": macro_f1.tolist(),
            "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std(ddof=1)),
            "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": float(macro_f1.std(ddof=1))}


# the tested runs keep a fifth of their training slices to pick the epoch, and pre-training in the
# cross-validation runs a fifth of the synthetic slices, and every run trains 30 epochs, as every
# measured row of generative_model/RESULTS.md did (train.py's own defaults became 0 and 60 later).
# --classifier_args with --epochs or a --preset (which sets its own epochs) replaces the 30. Runs of
# evaluations started before the pin are not reused (their command differs) and train again.
TESTED_RUN_VAL_FRACTION = 0.2
CLASSIFIER_EPOCHS = 30
CLASSIFIER_TUMOUR_PASTE = 0.0      # the classifier's default became 0.5 after these rows were measured
CLASSIFIER_RUNS = ("synthetic_to_real", "real_to_heldout", "real_only", "synthetic_pretrained")
DEFAULT_CLASSIFIER_RUNS = ("synthetic_to_real", "real_only", "synthetic_pretrained")


def pinned_protocol(extra_args):
    """The classifier recipe every measured row used, where the user's classifier flags do not
    choose otherwise (directly or by preset): ``--epochs=30`` and ``--tumour_paste=0``."""
    preset = any(arg.startswith("--preset=") for arg in extra_args)
    pinned = []
    for flag, value in (("--epochs=", CLASSIFIER_EPOCHS), ("--tumour_paste=", CLASSIFIER_TUMOUR_PASTE)):
        if not preset and not any(arg.startswith(flag) for arg in extra_args):
            pinned.append(f"{flag}{value}")
    return pinned


def classifier_comparison(real_path, synthetic_path, image_size, work_dir, k_folds=5, seed=0,
                          extra_args=(), runs=DEFAULT_CLASSIFIER_RUNS, heldout_path=None, more_seeds=()):
    """Classifier runs, each in its own folder under work_dir (and reused when already done):

    synthetic_to_real      train on the synthetic slices, test on real ones: the held-out file
                           (patients the GAN never saw) when given, else all real slices
    real_to_heldout        train on the real slices, test on the held-out file (the reference
                           the synthetic-only classifier is measured against; needs heldout_path)
    real_only              patient-wise k-fold CV on the real slices
    synthetic_pretrained   the same folds and seed, after pre-training on the synthetic slices

    ``more_seeds``: the two tested runs again with these classifier seeds (folders ``NAME_seedS``);
    each then also reports ``over_seeds``: its accuracy and macro-F1 as mean +- std over ``seed``
    and these, so one seed's luck is not read as a difference between GANs.
    """
    unknown = set(runs) - set(CLASSIFIER_RUNS)
    if unknown:
        raise ValueError(f"unknown classifier runs {sorted(unknown)}; known: {list(CLASSIFIER_RUNS)}")
    if "real_to_heldout" in runs and not heldout_path:
        raise ValueError("the real_to_heldout run needs a held-out file (--heldout)")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    real_path, synthetic_path = os.path.abspath(real_path), os.path.abspath(synthetic_path)
    test_path = os.path.abspath(heldout_path) if heldout_path else real_path
    common = [f"--image_size={image_size}", f"--seed={seed}", *pinned_protocol(extra_args), *extra_args]
    cv = [f"--k_folds={k_folds}", "--CrossValidation=True", "--Train=True", "--Test=False",
          f"--val_fraction={TESTED_RUN_VAL_FRACTION}", *common]       # pre-training's validation part
    tested = ["--CrossValidation=False", "--Train=True", "--Test=True", f"--data_test_path={test_path}",
              f"--val_fraction={TESTED_RUN_VAL_FRACTION}", *common]
    results = {}
    for name in runs:
        tests = name in ("synthetic_to_real", "real_to_heldout")
        if tests:
            train_on = synthetic_path if name == "synthetic_to_real" else real_path
            args = [f"--data_path={train_on}", *tested]
        else:
            data = real_path if name == "real_only" else f"{synthetic_path},{real_path}"
            args = [f"--data_path={data}", *cv]
        metrics, seconds, command = run_classifier(args, work_dir, name, work_dir / f"{name}.log")
        part = metrics["test"] if tests else metrics["cv"]
        keys = ("accuracy", "macro_f1") if tests else \
            ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std")
        results[name] = {key: part.get(key) for key in keys}
        if tests:
            results[name].update(recall={c: part["per_class"][c]["recall"] for c in CLASS_NAMES},
                                 tested_on=test_path)
        results[name].update(seconds=seconds, command=command)
        if tests and more_seeds:
            results[name]["over_seeds"] = _over_seeds(results[name], args, more_seeds, work_dir, name)
    return results
