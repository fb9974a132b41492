"""A tumour-brightness expert for the residual capsule network (its option ``tumour_levels``).

From the input slice and the tumour that the network's own mask head predicts, four numbers per
slice: the tumour's mean brightness over the tissue's (log), the spread of brightness inside it over
its mean, the brightness of a ring just outside it over the tissue's (log), and its area (log share
of the slice). Ratios, so that per-slice normalisation and contrast changes mostly drop out. A small
perceptron turns them into class logits; the network trains it with its own cross-entropy and adds
its logits to the class capsules' (a product of two experts).

Why: on the leave-stretch-out fold whose axial meningiomas the networks miss, five such numbers read
with the true masks classified 137 of 207 of them rightly, networks 74-120
(capsule_classifier/tumour_statistics.py, capsule_classifier/RESULTS.md). The mask the expert reads
is detached: the mask loss alone trains the mask head.
"""
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.intensity import TISSUE_FLOOR

LEVELS_SIZE = 64      # the statistics are read on the slice average-pooled to this side (or its own, if smaller)
RING_PIXELS = 2       # width of the ring outside the tumour at LEVELS_SIZE (8 px of a 256 px slice)
NUM_LEVELS = 4        # the numbers tumour_level_features returns per slice
HIDDEN = 16           # the expert perceptron's hidden units
EPS = 1e-3


def _weighted_mean(values, weights):
    return (values * weights).sum((1, 2, 3)) / (weights.sum((1, 2, 3)) + EPS)


def tumour_level_features(images, tumour, size=LEVELS_SIZE, floor=TISSUE_FLOOR):
    """(B, NUM_LEVELS) float32 numbers of slices ``images`` (B, 1, S, S) in [0, 1] and tumour
    probabilities ``tumour`` (B, 1, h, w) in [0, 1] at any resolution: log(tumour mean / tissue
    mean), tumour standard deviation / tumour mean, log(ring mean / tissue mean), log(tumour area
    share). Tissue: pixels above ``floor`` weighted by how surely they are not tumour."""
    size = min(size, images.shape[-1])
    x = F.adaptive_avg_pool2d(images.float(), size)
    p = F.interpolate(tumour.float(), size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    lit = (x > floor).float()
    tumour_mean = _weighted_mean(x, p)
    tissue_mean = _weighted_mean(x, lit * (1 - p))
    spread = _weighted_mean((x - tumour_mean.view(-1, 1, 1, 1)) ** 2, p).sqrt()
    ring = (F.max_pool2d(p, 2 * RING_PIXELS + 1, 1, RING_PIXELS) - p).clamp_min(0) * lit
    ring_mean = _weighted_mean(x, ring)
    return torch.stack([torch.log((tumour_mean + EPS) / (tissue_mean + EPS)),
                        spread / (tumour_mean + EPS),
                        torch.log((ring_mean + EPS) / (tissue_mean + EPS)),
                        torch.log(p.mean((1, 2, 3)) + EPS)], dim=1)


class TumourLevelsExpert(nn.Module):
    """Class logits (B, classes) from ``tumour_level_features`` of the slice and its predicted tumour
    (mask logits, detached): standardised by batch norm, then a one-hidden-layer perceptron."""

    def __init__(self, num_classes, hidden=HIDDEN):
        super().__init__()
        self.norm = nn.BatchNorm1d(NUM_LEVELS, affine=False)
        self.classify = nn.Sequential(nn.Linear(NUM_LEVELS, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, num_classes))

    def forward(self, images, mask_logits):
        features = tumour_level_features(images, torch.sigmoid(mask_logits.detach().float()))
        return self.classify(self.norm(features)).float()
