"""Score cross-validation runs made on the same folds (other seeds, other models) one by one and as an
ensemble that averages their probabilities: what would averaging several models buy on each fold?

    python capsule_classifier/ensemble_folds.py --runs=checkpoints/cv_s0,checkpoints/cv_s1 \
        --data_path=data/figshare_dev_256.h5 --k_folds=5 --group_by=stretch --out=ensemble.json

Each run folder holds fold_<k>/last.pt (train.py's cross-validation layout); every fold is scored
with the final model of each run, flip-averaged as train.py scores it. The folds are rebuilt from
the dataset file with ``split_seed``; a run whose fold sizes differ from them is refused.
"""
runs = []                    # cross-validation run folders, trained on the same folds
data_path = "data/figshare_dev_256.h5"
k_folds = 5
group_by = "stretch"         # "patient" or "stretch", as the runs were trained
split_seed = 0               # the seed the runs' folds were made with
out = ""                     # optional JSON file with every number
device = "cpu"
threads = 2


def run(flags):
    import json
    import os

    import numpy as np
    import torch

    from capsule_classifier.data import load_sources
    from capsule_classifier.experiment import checkpoint_probabilities
    from capsule_classifier.report import classification_metrics, write_json_atomic
    from preprocess.devices import resolve_device
    from preprocess.splits import patient_folds

    torch.set_num_threads(flags["threads"])
    if len(flags["runs"]) < 2:
        raise ValueError("--runs: name at least two run folders")
    device = resolve_device(flags["device"])
    data = load_sources([flags["data_path"]], None)
    folds = patient_folds(data.labels, data.patient_ids, flags["k_folds"], flags["split_seed"], data.source_ids,
                          flags["group_by"])
    report = {"flags": flags, "folds": []}
    for k, (_, val_rows) in enumerate(folds, start=1):
        val = data.subset(val_rows)
        probabilities = []
        for run_dir in flags["runs"]:
            with open(os.path.join(run_dir, f"fold_{k}", "fold.json")) as handle:
                expected = json.load(handle)["val_slices"]
            if expected != len(val_rows):
                raise ValueError(f"{run_dir}: fold {k} validated on {expected} slices, these folds have "
                                 f"{len(val_rows)} (another split seed, group_by or data file?)")
            probabilities.append(checkpoint_probabilities(os.path.join(run_dir, f"fold_{k}", "last.pt"),
                                                           val.images, device, True))
        single = [classification_metrics(val.labels, p) for p in probabilities]
        together = classification_metrics(val.labels, np.mean(probabilities, axis=0))
        row = {"fold": k, "slices": len(val_rows), "accuracy": [m["accuracy"] for m in single],
               "macro_f1": [m["macro_f1"] for m in single], "ensemble_accuracy": together["accuracy"],
               "ensemble_macro_f1": together["macro_f1"]}
        report["folds"].append(row)
        print(f"fold {k}: " + "  ".join(f"{a:.3f}" for a in row["accuracy"])
              + f"  -> ensemble {row['ensemble_accuracy']:.3f} (macro-F1 {row['ensemble_macro_f1']:.3f})")
    single_means = np.mean([row["accuracy"] for row in report["folds"]], axis=0)
    ensemble = [row["ensemble_accuracy"] for row in report["folds"]]
    report["summary"] = {"run_mean_accuracy": single_means.tolist(),
                         "ensemble_accuracy_mean": float(np.mean(ensemble)),
                         "ensemble_accuracy_std": float(np.std(ensemble)),
                         "ensemble_macro_f1_mean": float(np.mean([r["ensemble_macro_f1"] for r in report["folds"]]))}
    print("mean over folds: " + "  ".join(f"{a:.3f}" for a in single_means)
          + f"  -> ensemble {np.mean(ensemble):.3f} +- {np.std(ensemble):.3f}")
    if flags["out"]:
        write_json_atomic(report, flags["out"])
    return report


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(CheckpointError, ValueError, FileNotFoundError))
