"""Classifier checkpoints: what they hold, and rebuilding a model from one.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (``preprocess/checkpoint_io.py`` writes and reads it). Every
checkpoint carries what is needed to use it: model name and constructor arguments, image size,
class names and the normalisation applied.
"""
from capsule_classifier.network import model_from_config
from preprocess.checkpoint_io import CheckpointError, load_checkpoint_file
from preprocess.dataset import CLASS_NAMES

NORMALISATION = ("per-slice: clip to the 0.5-99.5 percentiles, scale to [0, 1], "
                 "bilinear resize to image_size (preprocess.intensity)")


def model_record(model_name, model, image_size):
    """The part of a checkpoint that says what the weights are and how inputs were prepared."""
    return {"model_name": model_name, "model_config": dict(model.config),
            "image_size": int(image_size), "class_names": list(CLASS_NAMES),
            "normalisation": NORMALISATION,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_checkpoint(path):
    """The checkpoint dict at ``path`` (tensors on the CPU)."""
    checkpoint = load_checkpoint_file(path)
    for key in ("model_name", "model_config", "image_size", "state_dict"):
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise CheckpointError(f"{path}: not a classifier checkpoint (no {key!r})")
    return checkpoint


def prior_from_counts(counts):
    """Class shares from class counts, one added to every count (so that a class absent from
    training has a small share, not none)."""
    return [(int(count) + 1) / (int(sum(counts)) + len(counts)) for count in counts]


def training_prior(checkpoint):
    """The share of each class among the slices the checkpoint was trained on (``prior_from_counts``),
    or None for checkpoints saved before ``class_counts`` was recorded."""
    counts = checkpoint.get("class_counts")
    return prior_from_counts(counts) if counts else None


def scoring_prior(checkpoint, strength, path):
    """(training prior, strength) to score ``checkpoint`` with (``engine.correct_for_prior``);
    ``strength`` None: as its training run scored (0 for runs from before ``prior_correction``).
    A correction asked of a checkpoint that does not record its class counts is refused, naming it."""
    if strength is None:
        strength = float(checkpoint.get("train_config", {}).get("prior_correction", 0.0))
    prior = training_prior(checkpoint)
    if strength and prior is None:
        raise ValueError(f"{path}: the checkpoint does not record its training class counts (saved before "
                         f"they were); score it with --prior_correction=0")
    return prior, strength


def scoring_warps(checkpoint, warps):
    """Whether to score ``checkpoint`` over the test-time warps too (``engine.TEST_TIME_WARPS``);
    ``warps`` None: as its training run scored (runs from before ``test_time_warps``: not)."""
    if warps is None:
        return bool(checkpoint.get("train_config", {}).get("test_time_warps", False))
    return bool(warps)


def trained_vertical_flips(checkpoint):
    """Whether the checkpoint's training flipped images up-down (so test-time views may too);
    checkpoints from before the option was added were."""
    return bool(checkpoint.get("train_config", {}).get("vertical_flips", True))


def load_model(path, device="cpu"):
    """(model in eval mode on ``device``, checkpoint dict) from a checkpoint file."""
    checkpoint = load_checkpoint(path)
    model = model_from_config(checkpoint["model_name"], checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def model_for_script(flags, script, input_flag):
    """(model, checkpoint record, device) for a script whose flags name a ``checkpoint``, an input
    (``input_flag``), a ``device`` and ``threads``; stops with a usage line when one is missing."""
    import torch

    from preprocess.devices import resolve_device

    if not flags["checkpoint"] or not flags[input_flag]:
        raise SystemExit(f"{script} needs --checkpoint=FILE and --{input_flag}=PATH")
    torch.set_num_threads(flags["threads"])
    device = resolve_device(flags["device"])
    model, record = load_model(flags["checkpoint"], device)
    return model, record, device
