"""Exponential moving average of a network's weights and batch-norm statistics, used by the
classifier's and the GAN's training loops (``torch.optim.swa_utils.AveragedModel``)."""
import torch
from torch.optim.swa_utils import AveragedModel


def _ramped_ema_step(decay):
    """EMA step whose decay ramps up as (1 + n) / (10 + n) towards ``decay``, so that the average
    follows the weights closely early in a short run; integer buffers are copied."""
    def update(averaged, current, num_averaged):
        rate = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - rate)
        else:
            torch._foreach_copy_(averaged, current)
    return update


def exponential_average(model, decay):
    """An ``AveragedModel`` of ``model`` (weights and buffers) with this decay; None when it is 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"an exponential moving average needs a decay in [0, 1), got {decay}")
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=_ramped_ema_step(decay), use_buffers=True)
