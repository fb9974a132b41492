"""Running under torchrun: the process group, this process's rank, and which process writes.

Launched by ``torchrun`` (which sets RANK, LOCAL_RANK and WORLD_SIZE), a script joins the process
group (NCCL on GPUs, gloo on CPUs) and uses the GPU of its local rank; otherwise everything here
is a no-op and the script runs single-process exactly as before. Only rank 0 writes files.
"""
import os

import torch
import torch.distributed as dist


def world_size():
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank():
    return int(os.environ.get("RANK", "0"))


def is_distributed():
    return world_size() > 1


def is_main():
    """True in the process that writes checkpoints, logs, figures and metrics."""
    return rank() == 0


def progress_bar_options():
    """Keyword arguments for a tqdm bar: silent on every process but the main one. On the main
    process nothing is forced, so tqdm's own environment switch (``TQDM_DISABLE=1``) still works."""
    return {} if is_main() else {"disable": True}


def setup(device):
    """Join the process group when launched by torchrun; returns this process's device."""
    if not is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sum_over_processes(values, device):
    """The element-wise sum of a list of numbers over every process (the list itself when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(module):
    """Average the gradients of ``module`` over every process (explicit data parallelism, for
    training loops such as the GAN's whose several forward passes per step DDP does not take)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size()


def leave_unless_rank_zero(script):
    """For scripts that only read and write (synthesis, prediction, maps): under torchrun rank 0
    does the work and the other processes leave at once, so every file is written once."""
    if is_distributed() and not is_main():
        print(f"{script}: rank {rank()} leaves the work to rank 0 (nothing to share out)")
        raise SystemExit(0)
