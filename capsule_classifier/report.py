"""Evaluation numbers and figures: accuracy, macro-F1, confusion matrix, per-class report, plots."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score  # noqa: E402

from preprocess import distributed  # noqa: E402
from preprocess.atomic import atomic_path  # noqa: E402
from preprocess.dataset import CLASS_NAMES  # noqa: E402
from preprocess.tensorboard_log import tensorboard_writer  # noqa: E402

LABELS = list(range(len(CLASS_NAMES)))


def classification_metrics(labels, probabilities):
    """accuracy, macro_f1, confusion_matrix (rows: true class) and scikit-learn's per-class report.

    macro_f1 averages the F1 of the classes present in ``labels``: a fold that holds no meningioma
    (leave-stretch-out folds often hold one or two classes) would otherwise count an F1 of 0 for it
    and cap the mean at 2/3. Wrong predictions of an absent class still lower the others' recall.
    """
    predicted = np.asarray(probabilities).argmax(axis=1)
    labels = np.asarray(labels)
    present = [label for label in LABELS if (labels == label).any()] or LABELS
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=LABELS).tolist(),
        "per_class": classification_report(labels, predicted, labels=LABELS,
                                           target_names=list(CLASS_NAMES), output_dict=True,
                                           zero_division=0),
        "count": int(len(labels)),
    }


def text_report(labels, probabilities):
    """scikit-learn's per-class report as text."""
    return classification_report(labels, np.asarray(probabilities).argmax(axis=1), labels=LABELS,
                                 target_names=list(CLASS_NAMES), digits=4, zero_division=0)


def macro_f1_of_confusion(matrix):
    """Macro-F1 over the classes present (rows with slices) of a confusion matrix."""
    matrix = np.asarray(matrix, dtype=float)
    true_positive = np.diag(matrix)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    present = matrix.sum(axis=1) > 0
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def summarise_folds(folds):
    """Mean and standard deviation over folds, the pooled confusion matrix and its accuracy and
    macro-F1 (every class is present in the pooled predictions, whatever the folds hold)."""
    accuracy = np.array([f["accuracy"] for f in folds])
    macro_f1 = np.array([f["macro_f1"] for f in folds])
    pooled = np.sum([np.array(f["confusion_matrix"]) for f in folds], axis=0)
    return {"folds": folds, "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
            "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": float(macro_f1.std()),
            "confusion_matrix": pooled.tolist(),
            "pooled_accuracy": float(np.trace(pooled) / max(pooled.sum(), 1)),
            "pooled_macro_f1": macro_f1_of_confusion(pooled)}


def write_json_atomic(data, path):
    if not distributed.is_main():       # under torchrun only rank 0 writes
        return
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        json.dump(data, out, indent=2, default=str)


def plot_confusion(matrix, path, title):
    if not distributed.is_main():
        return
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(LABELS, CLASS_NAMES)
    ax.set_yticks(LABELS, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    writer = tensorboard_writer(os.path.dirname(os.path.abspath(path)))     # beside the PNG, when installed
    if writer is not None:
        writer.add_figure(os.path.splitext(os.path.basename(path))[0], fig)
        writer.close()
    plt.close(fig)


def plot_curves(histories, path, title):
    """Loss and accuracy per epoch; ``histories`` maps a name (e.g. a fold) to its history list."""
    if not distributed.is_main():
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["train_loss"] for h in history], label=f"{name} train")
        right.plot(epochs, [h["train_accuracy"] for h in history], label=f"{name} train")
        if any(h["val_loss"] is not None for h in history):     # a run without validation part has none
            left.plot(epochs, [h["val_loss"] for h in history], "--", label=f"{name} val")
            right.plot(epochs, [h["val_accuracy"] for h in history], "--", label=f"{name} val")
    left.set(xlabel="epoch", ylabel="loss")
    right.set(xlabel="epoch", ylabel="accuracy")
    if len(histories) <= 3:
        right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
