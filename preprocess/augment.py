"""Write an augmented-mask file: N new condition masks per class from a prepared dataset file."""
import os
import time

import numpy as np

from preprocess.atomic import check_outputs
from preprocess.dataset import CLASS_NAMES, DatasetWriter, read_attrs, read_column
from preprocess.mask_augmentation import augment_one
from preprocess.parallel import parallel_map

FIELDS = ("conditions", "tumor_masks", "labels", "source_ids")
WRITE_BATCH = 64


def choose_sources(labels, per_class, seed):
    """Rows of the dataset to warp: ``per_class`` random rows of each class (with replacement)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            raise ValueError(f"the dataset has no slice of class {label} ({CLASS_NAMES[label]})")
        rows.append(rng.choice(members, size=per_class, replace=True))
    return np.concatenate(rows)


def augment_masks(dataset, out, per_class, seed=0, workers=0, created_with=None):
    """Write ``per_class`` augmented masks of every class from ``dataset`` into ``out``."""
    check_outputs({"out": out}, {"dataset": dataset})
    started = time.time()
    labels = read_column(dataset, "labels")
    source_ids = read_column(dataset, "source_ids")
    rows = choose_sources(labels, per_class, seed)
    jobs = [(os.fspath(dataset), int(row), (seed, k)) for k, row in enumerate(rows)]
    size = read_attrs(dataset)["image_size"]
    with DatasetWriter(out, image_size=size, fields=FIELDS) as writer:
        conditions, masks = [], []
        for condition, mask in parallel_map(augment_one, jobs, workers, description="augment masks"):
            conditions.append(condition)
            masks.append(mask)
            if len(conditions) == WRITE_BATCH or writer.count + len(conditions) == len(rows):
                done = slice(writer.count, writer.count + len(conditions))
                writer.append(conditions=np.stack(conditions), tumor_masks=np.stack(masks),
                              labels=labels[rows[done]], source_ids=source_ids[rows[done]])
                conditions, masks = [], []
        writer.attrs.update(source=os.path.abspath(os.fspath(dataset)), created_with=created_with or {})
    return {"out": os.fspath(out), "masks": len(rows), "seconds": round(time.time() - started, 1)}
