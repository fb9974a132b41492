"""A class-conditional stretch adversary (training only): the trunk is pushed to make the stretches of
the figshare numbering that hold one class look alike.

Why: on the leave-stretch-out folds the networks fail where the imaging plane and the class go
together in training (every training meningioma stretch of fold 5 is coronal or sagittal, most glioma
stretches axial), so the trunk can read the plane as class evidence. Domain-adversarial training
(Ganin et al. 2016) with the stretch as the domain, conditioned on the class: a small head reads the
pooled last-stage features through a gradient-reversal layer and predicts the slice's stretch among
the training stretches that hold the slice's class (its softmax restricted to those), so what the
trunk learns to hide is what tells stretches of one class apart (plane, scanner), not the class.
Prediction is unchanged: the head lives beside the model and is not part of its checkpoint record.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.splits import STRETCH_SLICES, stretch_ids

HIDDEN = 128           # width of the head's hidden layer
RAMP_RATE = 10.0       # DANN's schedule: strength 2 / (1 + exp(-RAMP_RATE * progress)) - 1


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, strength):
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.strength * grad, None


def reverse_gradient(x, strength):
    """``x`` unchanged going forward; its gradient multiplied by ``-strength`` going back."""
    return _ReverseGradient.apply(x, float(strength))


def reversal_strength(progress):
    """DANN's ramp of the reversal's strength over training ``progress`` in [0, 1]: 0 at the start,
    0.76 at a fifth, 0.99 at half, so the trunk first learns the task."""
    return 2.0 / (1.0 + math.exp(-RAMP_RATE * float(progress))) - 1.0


def training_stretches(data):
    """(stretch index per slice, allowed (classes, stretches) bool array: which stretches hold
    slices of each class) of the training data; a ValueError names the flag when the slices carry
    no figshare numbers."""
    try:
        stretches = stretch_ids(data.patient_ids, data.source_ids)
    except ValueError as error:
        raise ValueError(f"--stretch_adversary needs figshare-numbered slices: {error}") from None
    stretches = np.unique(stretches, return_inverse=True)[1]
    labels = np.asarray(data.labels)
    allowed = np.zeros((int(labels.max()) + 1, int(stretches.max()) + 1), dtype=bool)
    allowed[labels, stretches] = True
    if allowed.sum(1).max() < 2:
        raise ValueError(f"--stretch_adversary: the {len(labels)} training slices form {allowed.shape[1]} "
                         f"stretch(es) of about {STRETCH_SLICES} slices and no class lies in two, so there is "
                         f"nothing to tell apart; use it on data the size of the figshare set")
    return stretches, allowed


class StretchAdversary(nn.Module):
    """Pooled trunk features (B, C, h, w) -> stretch logits (B, stretches), behind a gradient reversal."""

    def __init__(self, channels, allowed):
        super().__init__()
        allowed = torch.as_tensor(np.asarray(allowed), dtype=torch.bool)
        self.register_buffer("allowed", allowed, persistent=False)
        self.head = nn.Sequential(nn.Linear(channels, HIDDEN), nn.ReLU(inplace=True),
                                  nn.Linear(HIDDEN, allowed.shape[1]))
        self.losses = []       # this epoch's losses, for the training log (``epoch_loss``)

    def forward(self, features, strength):
        return self.head(reverse_gradient(features.float().mean((-2, -1)), strength))

    def loss(self, logits, stretches, labels):
        """Cross-entropy of each slice's stretch among the stretches that hold its class (0 for a
        class with a single stretch: nothing to tell apart)."""
        logits = logits.float().masked_fill(~self.allowed[labels], float("-inf"))
        loss = F.cross_entropy(logits, stretches)
        self.losses.append(loss.item())
        return loss

    def chance_loss(self, labels):
        """The loss of a head that cannot tell the stretches apart: the mean log of the number of
        stretches holding each slice's class (what a perfect reversal drives the loss to)."""
        return float(self.allowed[torch.as_tensor(labels)].sum(1).float().log().mean())

    def epoch_loss(self):
        """The mean loss since the last call (None when there was none), and a fresh start."""
        mean = float(np.mean(self.losses)) if self.losses else None
        self.losses = []
        return mean


def last_stage(model):
    """The module whose output the adversary reads: the residual trunk's last stage."""
    stages = getattr(model, "stages", None)
    if stages is None:
        raise ValueError("--stretch_adversary applies to the residual capsule network (capsule_preset=residual)")
    return stages[-1]
