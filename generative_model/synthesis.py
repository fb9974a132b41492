"""Synthesis: trained generators + an augmented-mask file -> a synthetic dataset file.

For each class, ``per_class`` masks of that class (``mask_classes="any"``: of any class, for a
class-conditional run) are drawn from the mask file (a seeded permutation, repeated when more
slices than masks are asked for), each gets its own latent vector, and the generated slices are
streamed to a dataset file of the real layout (images, labels, conditions, tumor_masks when the
mask file has them, patient_ids ``synthetic-<class>-<k>``, source_ids of the masks, attributes
``synthetic`` = True and ``mask_classes``).

Reading the next batch of masks and writing (compressing) the previous batch of slices run in
background threads while the generator works on the current batch, so end to end synthesis runs
close to the speed of the bare forward pass. The same seed gives the same file.
"""
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch
from tqdm import tqdm

from generative_model.saved_runs import CONDITIONAL_FOLDER, load_generators
from preprocess.devices import resolve_device
from preprocess.atomic import atomic_path, check_outputs
from preprocess.dataset import CLASS_NAMES, DatasetWriter, has_field, read_attrs, read_column

COMPRESSIONS = ("gzip", "lzf", "none")
MASK_CLASSES = ("own", "any")


def check_mask_classes(mask_classes):
    """Refuses a ``mask_classes`` other than those of MASK_CLASSES."""
    if mask_classes not in MASK_CLASSES:
        raise ValueError(f"--mask_classes={mask_classes!r}: use one of {MASK_CLASSES}")


def plan_class(labels, class_index, per_class, seed, mask_classes="own"):
    """Rows of the mask file used for one class: a seeded permutation, cycled to per_class.

    ``mask_classes``: "own" draws the class's slices into masks of that class only; "any" into
    masks of every class (a class-conditional GAN then paints, say, a meningioma into the skull
    and tumour outline of a glioma slice: class and anatomy decoupled).
    """
    check_mask_classes(mask_classes)
    rows = np.flatnonzero(labels == class_index) if mask_classes == "own" else np.arange(len(labels))
    if len(rows) == 0:
        raise ValueError(f"no masks of class {CLASS_NAMES[class_index]!r} in the mask file" if mask_classes == "own"
                         else "the mask file holds no masks")
    order = np.random.default_rng([seed, class_index]).permutation(rows)
    return np.resize(order, per_class)


def read_mask_batch(handle, rows, fields):
    """The given rows (any order, repeats allowed) of the image fields.

    Rows are sorted and read as runs of consecutive rows, one slice read per run: h5py's
    fancy indexing (``column[list]``) is about ten times slower on chunked files.
    """
    unique, inverse = np.unique(rows, return_inverse=True)
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    runs = [(run[0], run[-1] + 1) for run in np.split(unique, breaks)]
    return {name: np.concatenate([handle[name][start:stop] for start, stop in runs])[inverse]
            for name in fields}


def synthesize(run_dir, masks_path, out_path, per_class=None, total=7000, batch_size=64, seed=0,
               device="auto", progress=True, pickle_out=None, created_with=None, compression="gzip",
               mask_classes="own"):
    """Write the synthetic dataset file; returns a summary dict (counts, seconds, paths).

    ``mask_classes``: see ``plan_class``; "any" needs a class-conditional run.

    ``compression``: "gzip" (level 1, as the real dataset files; readable everywhere), "lzf"
    (several times faster to write, h5py only) or "none".
    """
    check_outputs({"out": out_path, "pickle_out": pickle_out}, {"masks": masks_path})
    if (per_class or total) < 1 or (per_class or 0) < 0:
        raise ValueError(f"--per_class={per_class} --total={total}: nothing to synthesise; ask for at least one slice")
    check_mask_classes(mask_classes)
    if compression not in COMPRESSIONS:
        raise ValueError(f"--compression={compression!r}: use one of {COMPRESSIONS}")
    device = resolve_device(device) if isinstance(device, str) else device
    generators, index = load_generators(run_dir, device)
    if mask_classes != "own" and not index["conditional"]:
        raise ValueError(f"--mask_classes={mask_classes!r}: {run_dir} holds one model per class; drawing a class "
                         f"into another class's masks needs a class-conditional run (--conditional=True)")
    attrs = read_attrs(masks_path)
    size = int(attrs["image_size"])
    if size != int(index["image_size"]):
        raise ValueError(f"{masks_path}: masks of {size} px, but the generators in {run_dir} "
                         f"were trained at {index['image_size']} px")
    labels = read_column(masks_path, "labels")
    source_ids = read_column(masks_path, "source_ids") if has_field(masks_path, "source_ids") else None
    if index["conditional"]:
        classes = list(range(len(CLASS_NAMES)))
    else:
        classes = sorted(CLASS_NAMES.index(name) for name in generators)
    if per_class:
        counts = [per_class] * len(classes)
    else:  # split the total as evenly as possible: 7,000 -> 2,334 + 2,333 + 2,333
        counts = [total // len(classes) + (k < total % len(classes)) for k in range(len(classes))]
    image_fields = ["conditions"] + (["tumor_masks"] if has_field(masks_path, "tumor_masks") else [])
    fields = ("images", "labels", "patient_ids", "source_ids") + tuple(image_fields)
    use_amp = device.type == "cuda"
    started = time.perf_counter()
    bar = tqdm(total=sum(counts), desc="synthesising", unit="slice", disable=not progress,
               dynamic_ncols=True)
    with DatasetWriter(out_path, image_size=size, fields=fields,
                       compression=None if compression == "none" else compression) as writer, \
            h5py.File(masks_path, "r") as masks, \
            ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as write_worker:
        pending_write = None
        for class_index, per_class in zip(classes, counts):
            name = CLASS_NAMES[class_index]
            generator = generators[CONDITIONAL_FOLDER if index["conditional"] else name]
            rows = plan_class(labels, class_index, per_class, seed, mask_classes)
            latents = torch.randn(per_class, generator.latent_dim,
                                  generator=torch.Generator().manual_seed(seed * 1000 + class_index))
            noise = torch.Generator(device=device).manual_seed(seed * 1000 + class_index)   # for noise inputs
            starts = range(0, per_class, batch_size)
            next_read = reader.submit(read_mask_batch, masks, rows[:batch_size], image_fields)
            for start in starts:
                batch = next_read.result()
                stop = min(start + batch_size, per_class)
                if stop < per_class:
                    next_read = reader.submit(read_mask_batch, masks, rows[stop:stop + batch_size], image_fields)
                mask = torch.from_numpy(batch["conditions"]).to(device, torch.float32)[:, None] * 2 - 1
                z = latents[start:stop].to(device)
                label_t = torch.full((stop - start,), class_index, dtype=torch.long, device=device)
                with torch.inference_mode(), torch.autocast(device.type, enabled=use_amp):
                    fake = generator(mask, z, label_t, noise)
                images = ((fake.float()[:, 0] + 1) / 2).clamp_(0, 1).to(torch.float16).cpu().numpy()
                columns = dict(images=images, labels=np.full(stop - start, class_index),
                               patient_ids=[f"synthetic-{name}-{k}" for k in range(start, stop)],
                               source_ids=(source_ids[rows[start:stop]] if source_ids is not None
                                           else [f"mask-{r}" for r in rows[start:stop]]),
                               **batch)
                if pending_write is not None:
                    pending_write.result()
                pending_write = write_worker.submit(writer.append, **columns)
                bar.update(stop - start)
        if pending_write is not None:
            pending_write.result()
        writer.attrs.update(synthetic=True, source=os.path.abspath(masks_path),
                            generator_run=os.path.abspath(run_dir), seed=seed, mask_classes=mask_classes,
                            generator_settings=index.get("settings", {}), created_with=created_with or {})
    bar.close()
    summary = {"out": os.fspath(out_path), "slices": sum(counts), "per_class": counts,
               "classes": [CLASS_NAMES[c] for c in classes], "image_size": size,
               "seconds": round(time.perf_counter() - started, 2)}
    if pickle_out:
        summary["pickle"] = write_study_pickle(out_path, pickle_out)
    return summary


def write_study_pickle(dataset_path, pickle_path, batch=256):
    """The study's pickle format: a list of [image (float32, [0, 1], S x S), label] (atomic write).

    The whole list is held in memory, as the study's loader does too (7,000 x 512 px = 7 GB);
    prefer the dataset file.
    """
    items = []
    with h5py.File(dataset_path, "r") as f:
        images, labels = f["images"], f["labels"][()]
        for start in range(0, len(labels), batch):
            for image, label in zip(images[start:start + batch], labels[start:start + batch]):
                items.append([image.astype(np.float32), int(label)])
    with atomic_path(pickle_path) as tmp_path, open(tmp_path, "wb") as out:
        pickle.dump(items, out, protocol=4)
    return os.fspath(pickle_path)
