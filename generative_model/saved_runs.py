"""The files of a trained GAN run: ``run.json`` (which checkpoint holds which model) and loading
its generators for synthesis, without importing the training loop.

    <model_dir>/<run_name>/run.json
    <model_dir>/<run_name>/<class name or "all">/checkpoint.pt
"""
import json
import os

from generative_model.networks import UNetGenerator
from preprocess.atomic import atomic_path
from preprocess.checkpoint_io import load_checkpoint_file
from preprocess.json_files import read_json

CHECKPOINT = "checkpoint.pt"
RUN_INDEX = "run.json"
CONDITIONAL_FOLDER = "all"


def read_run_index(run_dir):
    """The run's run.json as a dict, or None when the run has none (not trained, or cut short)."""
    path = os.path.join(run_dir, RUN_INDEX)
    if not os.path.exists(path):
        return None
    return read_json(path)


def models_already_in(run_dir, conditional):
    """Per-class models trained earlier into the same run folder (e.g. one class per process)."""
    index = None if conditional else read_run_index(run_dir)
    return {} if not index or index.get("conditional") else dict(index.get("models", {}))


def write_run_index(run_dir, models, conditional, image_size, **details):
    """run.json: which checkpoint holds which model (read by load_generators), plus details."""
    index = {"conditional": conditional, "image_size": image_size, "models": models, **details}
    with atomic_path(os.path.join(run_dir, RUN_INDEX)) as tmp, open(tmp, "w") as handle:
        json.dump(index, handle, indent=2)


def load_generators(run_dir, device="cpu"):
    """The trained generators of a run: {class name or "all": generator (eval mode)}, and run.json.
    A run trained with ``--generator_ema`` gives its averaged generator."""
    index = read_run_index(run_dir)
    if index is None:
        raise FileNotFoundError(f"{os.path.join(run_dir, RUN_INDEX)}: no trained GAN run here (train.py writes it)")
    generators = {}
    for name, relative in index["models"].items():
        state = load_checkpoint_file(os.path.join(run_dir, relative), map_location=device)
        generator = UNetGenerator(**state["generator_config"])
        # the averaged weights when the run kept them (--generator_ema), as its sample grids show
        generator.load_state_dict(state.get("generator_ema", state["generator"]))
        generators[name] = generator.to(device).eval()
    return generators, index
