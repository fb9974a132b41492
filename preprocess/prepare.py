"""Turn figshare slice files into one dataset file: normalise, resize, build condition masks."""
import os
import time
from typing import NamedTuple

import numpy as np

from preprocess.atomic import check_outputs
from preprocess.dataset import DatasetWriter
from preprocess.intensity import normalise_slice, resize_mask, resize_slice
from preprocess.masks import condition_mask, skull_region
from preprocess.mat_reader import MatFileError, iter_sources, read_mat_slice
from preprocess.parallel import parallel_map

FIELDS = ("images", "labels", "patient_ids", "source_ids", "tumor_masks", "conditions")
WRITE_BATCH = 32


class PreparedSlice(NamedTuple):
    image: np.ndarray        # float32 (S, S) in [0, 1]
    label: int
    patient_id: str
    source_id: str
    tumor_mask: np.ndarray   # bool (S, S)
    condition: np.ndarray    # uint8 (S, S)
    original_size: tuple


def source_id(name):
    """The figshare index of a slice file ('1.mat' -> '1'), else its name without extension."""
    return os.path.splitext(os.path.basename(name))[0]


def prepare_slice(job):
    """Worker: read one slice file and build everything the dataset file stores about it.

    ``job`` is (SliceFile, image_size). Returns a PreparedSlice, or the MatFileError when the file
    is unusable (so that the caller decides whether to stop or skip).
    """
    ref, size = job
    try:
        fields = read_mat_slice(ref.read_bytes(), ref.name)
    except MatFileError as error:
        return error
    except OSError as error:
        return MatFileError(ref.name, f"cannot read ({error})")
    image = resize_slice(normalise_slice(fields["image"]), size)
    tumor = resize_mask(fields["tumor_mask"], size)
    condition = condition_mask(skull_region(image), tumor)
    return PreparedSlice(image, fields["label"], fields["pid"], source_id(ref.name), tumor, condition,
                         fields["image"].shape)


MIN_IMAGE_SIZE = 32      # smaller slices hold no usable anatomy (and break the condition masks)


def prepare_dataset(source, out, image_size=256, skip_bad=False, workers=0, created_with=None):
    """Read every slice under ``source`` and write the dataset file ``out``.

    A bad file raises MatFileError unless ``skip_bad``; then it is left out, listed at the end and
    in the file's ``skipped`` attribute. Returns a summary dict.
    """
    check_outputs({"out": out}, {"source": source})
    if int(image_size) < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size={image_size}: slices need at least {MIN_IMAGE_SIZE} px")
    started = time.time()
    refs = iter_sources(source)
    skipped, resized, counts = [], 0, np.zeros(3, int)
    jobs = [(ref, int(image_size)) for ref in refs]
    batch = []
    with DatasetWriter(out, image_size=image_size, fields=FIELDS) as writer:
        for result in parallel_map(prepare_slice, jobs, workers, description=f"prepare {image_size}px"):
            if isinstance(result, MatFileError):
                if not skip_bad:
                    raise result
                skipped.append(str(result))
                continue
            resized += result.original_size != (512, 512)
            counts[result.label] += 1
            batch.append(result)
            if len(batch) == WRITE_BATCH:
                _write(writer, batch)
                batch = []
        _write(writer, batch)
        if writer.count == 0:
            raise MatFileError(os.fspath(source), "no usable slice")
        writer.attrs.update(source=os.path.abspath(os.fspath(source)), skipped=skipped,
                            created_with=created_with or {}, synthetic=False)
    summary = {"out": os.fspath(out), "slices": int(counts.sum()), "per_class": counts.tolist(),
               "not_512": int(resized), "skipped": skipped, "seconds": round(time.time() - started, 1)}
    return summary


def _write(writer, batch):
    if batch:
        writer.append(images=np.stack([s.image for s in batch]),
                      labels=[s.label for s in batch],
                      patient_ids=[s.patient_id for s in batch],
                      source_ids=[s.source_id for s in batch],
                      tumor_masks=np.stack([s.tumor_mask for s in batch]),
                      conditions=np.stack([s.condition for s in batch]))
