"""How much a tumour's own brightness tells the class: a logistic regression on a few intensity
statistics read inside each slice's true tumour mask, scored on the same folds as train.py.

    python capsule_classifier/tumour_statistics.py --data_path=data/figshare_dev_256.h5 --k_folds=5 --group_by=stretch

Per slice, each divided by the slice's tissue level (preprocess.intensity.tissue_level: the median of
its pixels above TISSUE_FLOOR outside the tumour, so that per-slice normalisation drops out): the
tumour's mean, 10th and 90th percentile and standard deviation, and the mean of a ring around it
(1/32 of the image side wide). ``--place=True`` adds the tumour's area share and where it sits (row, distance
of its column from the middle). Not a classifier to use: it reads the true tumour masks, which
prediction does not have. It is a reference that needs no imaging plane, skull or scanner cue, for
the folds where the networks meet a plane they never saw with that class (capsule_classifier/RESULTS.md).
"""
import numpy as np
from scipy import ndimage

from preprocess.intensity import tissue_level, tissue_mask

data_path = "data/figshare_dev_256.h5"   # a prepared dataset file with tumor_masks
k_folds = 5
group_by = "stretch"          # "patient" or "stretch", as train.py's --group_by
split_seed = 0                # as train.py's --split_seed: the same folds
place = False                 # also the tumour's area share and where it sits
out = ""                      # optional JSON file for the per-fold results

RING_FRACTION = 1 / 32        # the ring around the tumour, as a share of the image side
STATISTICS = ("tumour mean", "tumour 10th percentile", "tumour 90th percentile", "tumour std", "ring mean")
PLACE = ("area share", "row", "column offset")


def slice_statistics(image, tumour, ring_px):
    """The statistics of one slice (see the module docstring) as a list, intensity ones first."""
    tissue = tissue_mask(image, tumour)
    level = tissue_level(image, tumour) if tissue.any() else 1.0
    inside = image[tumour] if tumour.any() else np.zeros(1, dtype=image.dtype)
    ring = ndimage.binary_dilation(tumour, iterations=ring_px) & tissue
    side = image.shape[-1]
    rows, columns = np.nonzero(tumour) if tumour.any() else (np.array([side / 2]), np.array([side / 2]))
    return [inside.mean() / level, np.percentile(inside, 10) / level, np.percentile(inside, 90) / level,
            inside.std() / level, (image[ring].mean() if ring.any() else level) / level,
            tumour.mean(), rows.mean() / side, abs(columns.mean() - side / 2) / side]


def run(flags):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from capsule_classifier.data import load_file
    from capsule_classifier.report import classification_metrics, summarise_folds, write_json_atomic
    from preprocess.dataset import CLASS_NAMES
    from preprocess.splits import patient_folds
    data = load_file(flags["data_path"])
    if data.masks is None:
        raise ValueError(f"{flags['data_path']}: no tumor_masks, which the tumour statistics need")
    images, masks = data.images.float().numpy(), data.masks.numpy() > 0
    ring_px = max(1, round(RING_FRACTION * images.shape[-1]))
    columns = len(STATISTICS) + (len(PLACE) if flags["place"] else 0)
    features = np.array([slice_statistics(image, tumour, ring_px)[:columns] for image, tumour in zip(images, masks)])
    folds = []
    for k, (train_rows, val_rows) in enumerate(patient_folds(data.labels, data.patient_ids, flags["k_folds"],
                                                             flags["split_seed"], data.source_ids,
                                                             flags["group_by"]), start=1):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        model.fit(features[train_rows], data.labels[train_rows])
        probabilities = np.zeros((len(val_rows), len(CLASS_NAMES)))
        probabilities[:, model.classes_] = model.predict_proba(features[val_rows])
        folds.append(dict(classification_metrics(data.labels[val_rows], probabilities), fold=k))
        print(f"fold {k}: accuracy {folds[-1]['accuracy']:.3f}  macro-F1 {folds[-1]['macro_f1']:.3f}  "
              f"confusion {folds[-1]['confusion_matrix']}")
    summary = summarise_folds(folds)
    print(f"{flags['k_folds']} folds by {flags['group_by']}, {columns} statistics: accuracy "
          f"{summary['accuracy_mean']:.3f} +- {summary['accuracy_std']:.3f}, macro-F1 {summary['macro_f1_mean']:.3f} "
          f"+- {summary['macro_f1_std']:.3f}")
    if flags["out"]:
        write_json_atomic(dict(summary, statistics=list(STATISTICS + PLACE)[:columns]), flags["out"])
    return summary


if __name__ == "__main__":
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(ValueError, FileNotFoundError))
