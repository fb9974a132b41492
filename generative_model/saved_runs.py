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

CHECKPOINT = "checkpoint.pt"
CONDITIONAL_FOLDER = "all"


def models_already_in(run_dir, conditional):
    """Per-class models trained earlier into the same run folder (e.g. one class per process)."""
    path = os.path.join(run_dir, "run.json")
    if conditional or not os.path.exists(path):
        return {}
    with open(path) as handle:
        index = json.load(handle)
    return {} if index.get("conditional") else dict(index.get("models", {}))


def write_run_index(run_dir, models, conditional, image_size, **details):
    """run.json: which checkpoint holds which model (read by load_generators), plus details."""
    index = {"conditional": conditional, "image_size": image_size, "models": models, **details}
    with atomic_path(os.path.join(run_dir, "run.json")) as tmp, open(tmp, "w") as handle:
        json.dump(index, handle, indent=2)


def load_generators(run_dir, device="cpu"):
    """The trained generators of a run: {class name or "all": generator (eval mode)}, and run.json.
    A run trained with ``--generator_ema`` gives its averaged generator."""
    index_path = os.path.join(run_dir, "run.json")
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"{index_path}: no trained GAN run here (train.py writes run.json)")
    with open(index_path) as handle:
        index = json.load(handle)
    generators = {}
    for name, relative in index["models"].items():
        state = load_checkpoint_file(os.path.join(run_dir, relative), map_location=device)
        generator = UNetGenerator(**state["generator_config"])
        # the averaged weights when the run kept them (--generator_ema), as its sample grids show
        generator.load_state_dict(state.get("generator_ema", state["generator"]))
        generators[name] = generator.to(device).eval()
    return generators, index
