"""Score cross-validation runs made on the same folds (other seeds, other models) one by one and as an
ensemble that averages their probabilities: what would averaging several models buy on each fold?
With one run, and --prior_correction / --test_time_warps, it scores that run's fold models again
another way (what would a scoring setting have given?).

    python capsule_classifier/ensemble_folds.py --runs=checkpoints/cv_s0,checkpoints/cv_s1 \
        --data_path=data/figshare_dev_256.h5 --out=ensemble.json
    python capsule_classifier/ensemble_folds.py --runs=checkpoints/cv_s0 --test_time_warps=False

Each run folder holds train.py's cross-validation layout (metrics.json, fold_<k>/last.pt). Every
fold is scored with each run's final model, at the image size it was trained at and flip-averaged
when the run scored itself so, with its training class shares divided out as the run's
--prior_correction said (runs from before it: not) and over the test-time warps when its
--test_time_warps did, unless the flags below say otherwise. The folds are rebuilt from the dataset file
with each run's split seed and grouping (from its metrics.json); runs whose validation parts differ
are refused. Folds that not every run has finished (one fold per job) are skipped, and named.
"""
runs = []                    # cross-validation run folders, trained on the same folds
data_path = "data/figshare_dev_256.h5"
k_folds = 5
out = ""                     # optional JSON file with every number
device = "cpu"
threads = 2
prior_correction = None      # score every run with this correction (None: as each run scored)
test_time_warps = None       # score every run with (True) or without (False) the test-time warps
                             # (None: as each run scored)


def run_folds(run_dir, labels, patient_ids, source_ids, k_folds):
    """The (train_rows, val_rows) a run was cross-validated on, and how it scored itself."""
    import json
    import os

    from preprocess.splits import patient_folds

    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    if "cv" not in metrics:
        raise ValueError(f"{run_dir}/metrics.json: not a cross-validation run")
    # runs before split_seed existed made their folds with the training seed
    split_seed = metrics.get("split_seed", metrics.get("seed", 0))
    folds = patient_folds(labels, patient_ids, k_folds, split_seed, source_ids, metrics["cv"].get("group_by", "patient"))
    return folds, metrics.get("flags", {}).get("test_time_flips", True)


def run(flags):
    import os

    import numpy as np
    import torch

    from capsule_classifier.checkpoint import load_checkpoint
    from capsule_classifier.data import load_sources
    from capsule_classifier.experiment import checkpoint_probabilities
    from capsule_classifier.report import classification_metrics, write_json_atomic
    from preprocess.dataset import read_column
    from preprocess.devices import resolve_device

    torch.set_num_threads(flags["threads"])
    if not flags["runs"]:
        raise ValueError("--runs: name one run folder (scored again) or several (an ensemble)")
    device = resolve_device(flags["device"])
    columns = [read_column(flags["data_path"], name) for name in ("labels", "patient_ids", "source_ids")]
    per_run = [run_folds(run_dir, *columns, flags["k_folds"]) for run_dir in flags["runs"]]
    for run_dir, (folds, _) in zip(flags["runs"][1:], per_run[1:]):
        for k, ((_, first), (_, other)) in enumerate(zip(per_run[0][0], folds), start=1):
            if not np.array_equal(np.sort(first), np.sort(other)):
                raise ValueError(f"{run_dir}: fold {k} validated on other slices than {flags['runs'][0]} "
                                 f"(another split seed or grouping): an ensemble would score training slices")
    def model_path(run_dir, k):
        return os.path.join(run_dir, f"fold_{k}", "last.pt")

    finished = [k for k in range(1, flags["k_folds"] + 1)
                if all(os.path.exists(model_path(run_dir, k)) for run_dir in flags["runs"])]
    if not finished:
        raise FileNotFoundError(f"no fold has a last.pt in every one of {', '.join(flags['runs'])}")
    skipped = sorted(set(range(1, flags["k_folds"] + 1)) - set(finished))
    if skipped:
        print(f"folds {skipped} skipped: not finished in every run")
    # each run's image size (read once, from its first finished fold) and the data at each of those sizes
    sizes = [load_checkpoint(model_path(run_dir, finished[0]))["image_size"] for run_dir in flags["runs"]]
    sized = {size: load_sources([flags["data_path"]], size) for size in set(sizes)}
    report = {"flags": flags, "folds": [], "skipped_folds": skipped}
    several = len(flags["runs"]) > 1
    for k, (_, val_rows) in enumerate(per_run[0][0], start=1):
        if k not in finished:
            continue
        probabilities = [checkpoint_probabilities(model_path(run_dir, k), sized[size].images[val_rows], device,
                                                  flips, flags["prior_correction"], flags["test_time_warps"])
                         for run_dir, size, (_, flips) in zip(flags["runs"], sizes, per_run)]
        labels = columns[0][val_rows]
        single = [classification_metrics(labels, p) for p in probabilities]
        together = classification_metrics(labels, np.mean(probabilities, axis=0))
        row = {"fold": k, "slices": int(len(val_rows)), "accuracy": [m["accuracy"] for m in single],
               "macro_f1": [m["macro_f1"] for m in single], "ensemble_accuracy": together["accuracy"],
               "ensemble_macro_f1": together["macro_f1"]}
        report["folds"].append(row)
        print(f"fold {k}: " + "  ".join(f"{a:.3f} ({f:.3f})" for a, f in zip(row["accuracy"], row["macro_f1"]))
              + (f"  -> ensemble {row['ensemble_accuracy']:.3f} ({row['ensemble_macro_f1']:.3f})" if several else ""))
    accuracy = np.array([row["accuracy"] for row in report["folds"]])      # (folds, runs)
    macro_f1 = np.array([row["macro_f1"] for row in report["folds"]])
    ensemble = [row["ensemble_accuracy"] for row in report["folds"]]
    report["summary"] = {"run_mean_accuracy": accuracy.mean(0).tolist(), "run_std_accuracy": accuracy.std(0).tolist(),
                         "run_mean_macro_f1": macro_f1.mean(0).tolist(),
                         "ensemble_accuracy_mean": float(np.mean(ensemble)),
                         "ensemble_accuracy_std": float(np.std(ensemble)),
                         "ensemble_macro_f1_mean": float(np.mean([r["ensemble_macro_f1"] for r in report["folds"]]))}
    print("accuracy (macro-F1), mean over folds: "
          + "  ".join(f"{a:.3f} +- {sd:.3f} ({f:.3f})" for a, sd, f in zip(accuracy.mean(0), accuracy.std(0), macro_f1.mean(0)))
          + (f"  -> ensemble {np.mean(ensemble):.3f} +- {np.std(ensemble):.3f}" if several else ""))
    if flags["out"]:
        write_json_atomic(report, flags["out"])
    return report


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(CheckpointError, ValueError, FileNotFoundError))
