"""Checkpoint files of every stage: atomic writes, restricted loading, errors that name the file.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(..., weights_only=True)``, which refuses anything that would run code on unpickling.
"""
import os
import pickle

import torch

from preprocess.atomic import atomic_path


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint_file(path, map_location="cpu"):
    """Read a checkpoint with the restricted unpickler; a clear error if it is missing or unsafe."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).split("\n")[0].strip()
        raise CheckpointError(f"{path}: refused as unsafe: it holds objects other than tensors and plain "
                              f"values, and unpickling them could run code ({reason}). Load only "
                              f"checkpoints from sources you trust.") from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint: {error}") from None
