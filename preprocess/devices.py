"""Which torch device a ``--device`` flag means."""
import torch


def resolve_device(name):
    """``auto`` picks CUDA when present, else the CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
