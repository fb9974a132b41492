"""The residual capsule classifier: a small residual convolutional trunk, primary capsules and
class capsules with dynamic routing, plus an optional tumour-mask head used only in training.

    stem       3x3 convolutions with stride 2 (batch norm, ReLU) down to ``stem_target`` px
               (32 px: three at 256 px, four at 512 px, two at 128 px), so every size below
               follows the image size
    trunk      one residual basic block per stage (3x3, batch norm, ReLU), ``widths`` channels,
               every stage after the first halves the map (4 x 4 at the end from a 32 px stem)
    primary    1x1 convolution into ``primary_types`` capsule types of ``primary_dim`` dimensions
               at every position of the last map, squashed
    class      one capsule of ``class_dim`` dimensions per class, reached from every primary
               capsule by dynamic routing (3 iterations); the transformation matrices are shared
               over positions (one per primary type), so the layer sees the same weights wherever
               the tumour lies
    logits     ``logit_scale`` x capsule length (a length in [0, 1) is the class evidence, as in
               CapsNet; the scale lets cross-entropy train it)
    mask head  (training only) a 1x1 convolution on the third stage (8 x 8 from a 32 px stem)
               predicting the tumour mask, so the trunk learns where the tumour is; prediction
               never needs a mask
    tumour crop (option ``tumour_crop``) a second, identical network looks at a window of the
               slice centred on the tumour the mask head predicts (sized from its predicted area,
               sampled at a quarter of the image size) and adds its class logits: the decision
               then rests on the tumour and its surroundings, not only on the whole slice
    tumour levels (option ``tumour_levels``) the mask head predicts at the first stage's resolution
               (32 x 32: its third-stage logits upsampled plus a 1x1 convolution of the first
               stage), and an expert reads the tumour's brightness against the tissue from it
               (capsule_classifier/tumour_levels.py); its logits, trained with their own
               cross-entropy, are added to the capsules'

Why not the compact study network: on patients from other stretches of the figshare numbering it
scored 0.68-0.70 where a ResNet18 scored 0.85 with the same recipe (see the README). Our
reading: its 4x4 stride-2 capsule convolutions with a squash after each are a shallow, weakly
non-linear trunk; this one keeps capsules where they carry the study's idea (part-whole
routing into class capsules) and uses a residual trunk for features.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from capsule_classifier.network import dynamic_routing, squash
from capsule_classifier.tumour_levels import TumourLevelsExpert

STEM_TARGET = 32      # the trunk starts at 32 x 32 whatever the image size (64 costs twice as much)
CROP_MARGIN = 2.5     # the tumour window's side is this many times the side of the predicted tumour
CROP_LIMITS = (0.25, 0.75)   # ... and between these fractions of the slice's side


def tumour_window(mask_logits, margin=CROP_MARGIN, limits=CROP_LIMITS):
    """Affine parameters (B, 2, 3) for ``F.affine_grid`` of a square window on the predicted tumour.

    The centre is the softmax-weighted mean position of the mask logits (a soft arg-max, so a
    faint prediction still points somewhere), the side ``margin`` times the square root of the
    predicted tumour area, clamped to ``limits`` of the slice. No gradient flows through it.
    """
    logits = mask_logits.detach().float().flatten(1)                       # (B, h*w)
    h, w = mask_logits.shape[-2:]
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=logits.device)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=logits.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    weights = torch.softmax(logits, dim=1)
    centre_x = (weights * grid_x.flatten()).sum(1)
    centre_y = (weights * grid_y.flatten()).sum(1)
    area = torch.sigmoid(logits).mean(1)                                   # fraction of the slice
    side = (margin * area.sqrt()).clamp(*limits)                           # fraction of the side
    theta = torch.zeros(len(logits), 2, 3, device=logits.device)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = centre_x
    theta[:, 1, 2] = centre_y
    return theta


def crop_size(image_size):
    """Pixels of the tumour window: a quarter of the image size, a multiple of 16, at least 32."""
    return max(STEM_TARGET, image_size // 4 // 16 * 16)


class BasicBlock(nn.Module):
    """Residual block: two 3x3 convolutions with batch norm; a 1x1 shortcut when the shape changes."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ClassCapsules(nn.Module):
    """Primary capsules (B, N, types, in_dim) -> class capsules (B, classes, out_dim) by routing.

    One transformation matrix per (primary type, class), shared over the N positions. The
    predictions are divided by sqrt(N * types): summed over hundreds of inputs they would otherwise
    squash every class capsule to length ~1 and leave nothing to learn from, whereas scaled this
    way predictions that agree give a long capsule and predictions that do not a short one.
    """

    def __init__(self, types, in_dim, classes, out_dim, iterations=3):
        super().__init__()
        self.iterations = iterations
        self.weight = nn.Parameter(torch.randn(types, classes, out_dim, in_dim) / math.sqrt(in_dim))

    def forward(self, primary):
        batch, positions, types, _ = primary.shape
        # predictions of every primary capsule for every class: (B, N*types, classes, out_dim)
        u_hat = torch.einsum("tcoi,bnti->bntco", self.weight, primary)
        u_hat = u_hat.reshape(batch, positions * types, *u_hat.shape[-2:]) / math.sqrt(positions * types)
        return dynamic_routing(u_hat[..., None, None], self.iterations)[..., 0, 0]


class ResidualCapsuleClassifier(nn.Module):
    """Residual trunk + primary capsules + routed class capsules (see the module docstring)."""

    def __init__(self, image_size=256, num_classes=3, widths=(32, 64, 128, 256), stem_channels=24,
                 stem_target=STEM_TARGET, primary_types=16, primary_dim=8, class_dim=16,
                 routing_iterations=3, logit_scale=10.0, mask_head=True, tumour_crop=False,
                 tumour_levels=False, architecture="residual"):
        super().__init__()
        if architecture != "residual":
            raise ValueError(f"architecture must be 'residual', got {architecture!r}")
        widths = tuple(int(w) for w in widths)
        if image_size < stem_target or image_size % 16:
            raise ValueError(f"image_size {image_size}: the residual capsule classifier needs a "
                             f"multiple of 16 of at least {stem_target} px")
        self.config = dict(image_size=image_size, num_classes=num_classes, widths=list(widths),
                           stem_channels=stem_channels, stem_target=stem_target,
                           primary_types=primary_types, primary_dim=primary_dim, class_dim=class_dim,
                           routing_iterations=routing_iterations, logit_scale=logit_scale,
                           mask_head=mask_head, tumour_crop=tumour_crop, tumour_levels=tumour_levels,
                           architecture="residual")
        for option, wanted in (("tumour_crop", tumour_crop), ("tumour_levels", tumour_levels)):
            if wanted and not mask_head:
                raise ValueError(f"{option} needs the mask head (mask_head=True, a mask loss weight > 0)")
        stem, channels = [], 1
        for _ in range(max(0, round(math.log2(image_size / stem_target)))):
            stem += [nn.Conv2d(channels, stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_channels),
                     nn.ReLU(inplace=True)]
            channels = stem_channels
        self.stem = nn.Sequential(*stem) if stem else nn.Identity()
        stages = []
        for k, width in enumerate(widths):
            stages.append(BasicBlock(channels, width, 1 if k == 0 else 2))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.primary = nn.Conv2d(channels, primary_types * primary_dim, 1)
        self.primary_types, self.primary_dim = primary_types, primary_dim
        self.class_capsules = ClassCapsules(primary_types, primary_dim, num_classes, class_dim,
                                            routing_iterations)
        self.logit_scale = logit_scale
        # the mask head reads the third stage (8 x 8 from a 32 px stem)
        self.mask_stage = min(len(widths) - 1, 2)
        self.mask_head = nn.Conv2d(widths[self.mask_stage], 1, 1) if mask_head else None
        # tumour levels: a finer mask (first stage) and the brightness expert reading it
        self.fine_mask = nn.Conv2d(widths[0], 1, 1) if tumour_levels else None
        self.levels_expert = TumourLevelsExpert(num_classes) if tumour_levels else None
        self.crop_branch = None
        if tumour_crop:
            self.crop_branch = ResidualCapsuleClassifier(
                crop_size(image_size), num_classes, widths, stem_channels, stem_target, primary_types,
                primary_dim, class_dim, routing_iterations, logit_scale, mask_head=False)

    def _features(self, x):
        x = self.stem(x)
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(x)
        return x, taps

    def _classify(self, features):
        primary = self.primary(features)                      # (B, types*dim, h, w)
        batch, _, h, w = primary.shape
        primary = primary.reshape(batch, self.primary_types, self.primary_dim, h * w).permute(0, 3, 1, 2)
        return self.class_capsules(squash(primary, dim=-1))   # (B, classes, class_dim)

    def _mask_logits(self, taps):
        """The mask head's logits: third stage (8 x 8 from a 32 px stem), or with tumour levels the
        first stage's resolution (the third stage's logits upsampled plus the first stage's)."""
        logits = self.mask_head(taps[self.mask_stage])
        if self.fine_mask is not None:
            logits = F.interpolate(logits, size=taps[0].shape[-2:], mode="bilinear",
                                   align_corners=False) + self.fine_mask(taps[0])
        return logits

    def _outputs(self, x, with_mask=False):
        """(class capsules, mask logits or None, tumour-levels logits or None); with the tumour crop
        the capsules of both views are concatenated along the class-capsule dimension. The mask
        head runs only when its output is needed (training, to place the tumour window, or for the
        tumour levels)."""
        features, taps = self._features(x)
        capsules = self._classify(features)
        needs_mask = self.mask_head is not None and (
            with_mask or self.crop_branch is not None or self.levels_expert is not None)
        mask_logits = self._mask_logits(taps) if needs_mask else None
        levels_logits = self.levels_expert(x, mask_logits) if self.levels_expert is not None else None
        if self.crop_branch is not None:
            theta = tumour_window(mask_logits)
            size = self.crop_branch.config["image_size"]
            grid = F.affine_grid(theta, (len(x), 1, size, size), align_corners=False)
            window = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
            crop_capsules = self.crop_branch._classify(self.crop_branch._features(window)[0])
            capsules = torch.cat([capsules, crop_capsules], dim=-1)
        return capsules, mask_logits, levels_logits

    def _logits(self, capsules, levels_logits=None):
        """``logit_scale`` x capsule length; with the tumour crop, the sum over both views; with
        tumour levels, plus the expert's logits."""
        if self.crop_branch is None:
            logits = self.logit_scale * capsules.norm(dim=-1)
        else:
            whole, window = capsules.split(capsules.shape[-1] // 2, dim=-1)
            logits = self.logit_scale * (whole.norm(dim=-1) + window.norm(dim=-1))
        return logits if levels_logits is None else logits + levels_logits

    def embed(self, x):
        """The class capsules, flattened (B, classes * class_dim, twice that with the tumour crop):
        the penultimate features."""
        return self._outputs(x)[0].flatten(1)

    def forward(self, x, with_mask=False):
        """Class logits; with ``with_mask`` (training) also the tumour-mask logits of the third stage
        (8 x 8 from a 32 px stem; 32 x 32 with tumour levels) and, with tumour levels, the expert's
        own logits, which training gives their own loss. Through ``forward`` so that
        DistributedDataParallel sees it."""
        if with_mask and self.mask_head is None:
            raise RuntimeError("this model was built without a mask head (mask_head=False)")
        capsules, mask_logits, levels_logits = self._outputs(x, with_mask=with_mask)
        logits = self._logits(capsules, levels_logits)
        if not with_mask:
            return logits
        return (logits, mask_logits) if levels_logits is None else (logits, mask_logits, levels_logits)

    def forward_with_mask(self, x):
        """(class logits, tumour-mask logits[, tumour-levels logits]); training only."""
        return self(x, with_mask=True)
