"""Which torch device a ``--device`` flag means."""
import torch


def resolve_device(name):
    """``auto`` picks CUDA when present, else the CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device):
    """What ran a job, for the record beside its timings: the GPU's name, or the CPU and its threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'s' if threads != 1 else ''})"
