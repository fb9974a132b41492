"""A class-conditional stretch adversary (training only): the trunk is pushed to make the stretches of
the figshare numbering that hold one class look alike.

Why: on the leave-stretch-out folds the networks fail where the imaging plane and the class go
together in training (fold 5 trains on meningiomas that are mostly coronal or sagittal and on gliomas
that are mostly axial), so the trunk can read the plane as class evidence. Domain-adversarial training
(Ganin et al. 2016) with the stretch as the domain, conditioned on the class: a small head reads the
pooled last-stage features through a gradient-reversal layer and predicts the slice's stretch among
the training stretches that hold the slice's class (its softmax restricted to those), so what the
trunk learns to hide is what tells stretches of one class apart (plane, scanner), not the class.
Prediction is unchanged: the head lives beside the model, not in its weights (``last.pt`` keeps it apart, to
resume).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.splits import STRETCH_SLICES, stretch_ids

HIDDEN = 128           # width of the head's hidden layer
READS = ("mean", "map")  # what the head reads: the features averaged over positions, or every position
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


def check_reads(reads):
    """Refuse a ``--stretch_adversary_reads`` value other than those in READS, naming the flag."""
    if reads not in READS:
        raise ValueError(f"--stretch_adversary_reads={reads!r}: one of {', '.join(READS)}")


def training_stretches(data):
    """(stretch index per slice, counts (classes, stretches): the training slices of each class in
    each stretch) of the training data; a ValueError names the flag when the slices carry no figshare
    numbers, or when no class lies in two stretches."""
    try:
        stretches = stretch_ids(data.patient_ids, data.source_ids)
    except ValueError as error:
        raise ValueError(f"--stretch_adversary needs figshare-numbered slices: {error}") from None
    stretches = np.unique(stretches, return_inverse=True)[1]
    labels = np.asarray(data.labels)
    counts = np.zeros((int(labels.max()) + 1, int(stretches.max()) + 1), dtype=np.int64)
    np.add.at(counts, (labels, stretches), 1)
    if (counts > 0).sum(1).max() < 2:
        raise ValueError(f"--stretch_adversary: the {len(labels)} training slices form {counts.shape[1]} "
                         f"stretch(es) of about {STRETCH_SLICES} slices and no class lies in two, so there is "
                         f"nothing to tell apart; use it on data the size of the figshare set")
    return stretches, counts


class StretchAdversary(nn.Module):
    """Trunk features (B, C, h, w) -> stretch logits behind a gradient reversal: (B, stretches) from the
    features averaged over positions (``reads="mean"``), or (B, stretches, h, w), one prediction per
    position (``reads="map"``: the head is two 1x1 convolutions, so every position the capsules read is
    pushed to hide the stretch). ``counts`` (classes, stretches): training slices per class and stretch
    (``training_stretches``)."""

    def __init__(self, channels, counts, reads="mean"):
        super().__init__()
        check_reads(reads)
        self.reads = reads
        counts = np.asarray(counts, dtype=np.float64)
        self.register_buffer("allowed", torch.as_tensor(counts > 0), persistent=False)
        # the loss of a head that knows each slice's class and nothing else: the entropy of the stretch
        # given the class, over the training slices (what a perfect reversal leaves the head)
        shares = counts / counts.sum(1, keepdims=True).clip(min=1)
        self.blind_loss = float(-(counts * np.log(np.where(counts > 0, shares, 1))).sum() / counts.sum())
        layer = (lambda a, b: nn.Linear(a, b)) if reads == "mean" else (lambda a, b: nn.Conv2d(a, b, 1))
        self.head = nn.Sequential(layer(channels, HIDDEN), nn.ReLU(inplace=True), layer(HIDDEN, counts.shape[1]))
        self.losses = []       # this epoch's losses, for the training log (``epoch_loss``)

    def forward(self, features, strength):
        features = features.float()
        return self.head(reverse_gradient(features.mean((-2, -1)) if self.reads == "mean" else features, strength))

    def loss(self, logits, stretches, labels):
        """Cross-entropy of each slice's stretch among the stretches that hold its class (0 for a
        class with a single stretch: nothing to tell apart)."""
        allowed = self.allowed[labels]
        if logits.dim() == 4:                   # one prediction per position, each with the slice's stretch
            allowed = allowed[..., None, None].expand_as(logits)
            stretches = stretches[:, None, None].expand(-1, *logits.shape[-2:])
        logits = logits.float().masked_fill(~allowed, float("-inf"))
        loss = F.cross_entropy(logits, stretches)
        self.losses.append(loss.item())
        return loss

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
