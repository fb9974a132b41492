"""Batch augmentation on the training device: flips, small affine warps, the study's rotations.

Everything works on a whole batch tensor (B, 1, S, S) at once with ``affine_grid`` /
``grid_sample``, drawing its random numbers from an explicit ``torch.Generator`` (so a resumed run
draws the same numbers as an uninterrupted one).

Modes:
  ``"affine"``  random left-right and up-down flips (up-down ones optional: ``vertical_flips``),
                rotation +-15 degrees, scale +-10 %, shift +-8 %
  ``"mri"``     ``"affine"`` plus intensity changes between scanners and patients: a random gamma
                (x ** g, g in [e^-0.4, e^0.4]) and contrast (x 0.9-1.1), clipped to [0, 1]
  ``"scanner"`` ``"mri"`` plus what differs between scanners and acquisitions: a smooth
                multiplicative bias field (log-gain from a 4 x 4 grid of N(0, 0.2^2), bicubic),
                a random blur (Gaussian, sigma up to 0.5 % of the image side: resolution and
                reconstruction filters) and noise (Gaussian, std up to 0.03), clipped to [0, 1]
  ``"study"``   the study's rotated copies: each sample appears 4 times, rotated by 0/90/180/270
                degrees, plus random flips (the batch grows 4x)
  ``"none"``    no change

Separately, ``paste_tumours`` (``--tumour_paste``, ``--paste_at``): a tumour of one slice, with a
margin, pasted into another slice, where it sat in its own (the default), over that slice's
tumour, or either of the two by a coin per paste, so that class and surroundings (imaging plane,
skull shape, scanner) stop going together; the labels are shared by how much of each tumour shows.
The donor is any slice of the batch or (``--paste_donor=other_class``) one of another class; with
``--paste_levels=matched`` the patch is scaled to its new slice's tissue level and pasted before the
intensity changes, which then treat the whole slice alike.
"""
import math

import torch
import torch.nn.functional as F

from preprocess.intensity import TISSUE_FLOOR, tissue_mask

MODES = ("affine", "mri", "scanner", "study", "none")
MAX_ROTATION_DEG = 15.0
MAX_SCALE = 0.10
MAX_SHIFT = 0.08
MAX_LOG_GAMMA = 0.4
MAX_CONTRAST = 0.10
STUDY_ROTATIONS = 4
BIAS_GRID = 4             # the bias field's control points per side
BIAS_LOG_STD = 0.2        # std of its log-gain at the control points
MAX_BLUR_FRACTION = 0.005  # largest blur sigma, as a fraction of the image side (1.3 px at 256 px)
MAX_NOISE_STD = 0.03      # largest noise std on [0, 1] intensities
PASTE_MARGIN = 1 / 32     # a pasted tumour brings this share of the image side around it (8 px at 256)
PASTE_FEATHER = 1 / 64    # and blends into its new surroundings over this share
PASTE_COARSE = 4          # the patch's margin and edge are drawn at 1/4 of the resolution (at least
                          # one coarse pixel each when > 0)
PASTE_PLACES = ("host", "donor", "either")  # where a pasted tumour lands (paste_tumours' ``at``)
PASTE_DONORS = ("any", "other_class")      # which slices may give their tumour (paste_tumours' ``donors``)
PASTE_LEVELS = ("raw", "matched")          # pasted as it is after the intensity changes, or before them and
                                           # scaled to its new slice's tissue level (engine.train_epoch)
LEVEL_SCALE_LIMITS = (0.5, 2.0)   # a pasted patch is scaled by at most this much to match its new slice


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_flips(images, generator, vertical=True):
    """Flip each image left-right and (when ``vertical``) up-down with probability 1/2 each."""
    n = images.shape[0]
    lr = torch.rand(n, generator=generator, device=images.device) < 0.5
    ud = torch.rand(n, generator=generator, device=images.device) < 0.5   # drawn either way: same stream
    images = torch.where(lr.view(-1, 1, 1, 1), images.flip(-1), images)
    return torch.where(ud.view(-1, 1, 1, 1), images.flip(-2), images) if vertical else images


def random_affine(images, generator, max_rotation_deg=MAX_ROTATION_DEG, max_scale=MAX_SCALE,
                  max_shift=MAX_SHIFT):
    """Rotate, scale and shift every image by its own small random amount (bilinear, zero fill)."""
    n, device = images.shape[0], images.device
    angle = _uniform(n, -max_rotation_deg, max_rotation_deg, generator, device) * (math.pi / 180)
    scale = _uniform(n, 1 - max_scale, 1 + max_scale, generator, device)
    shift = _uniform(2 * n, -2 * max_shift, 2 * max_shift, generator, device).view(n, 2)
    return _warp(images, _affine_theta(angle, scale, shift))


def fixed_affine(images, scale, degrees):
    """Every image of a stack (B, C, S, S) rotated by ``degrees`` and scaled by ``scale`` about its
    centre (bilinear, zero fill): the warp of ``random_affine`` with fixed amounts, no shift."""
    n, device = images.shape[0], images.device
    angle = torch.full((n,), math.radians(degrees), device=device)
    return _warp(images, _affine_theta(angle, torch.full((n,), float(scale), device=device),
                                       torch.zeros(n, 2, device=device)))


def _affine_theta(angle, scale, shift):
    """Affine maps (B, 2, 3) in grid coordinates: rotation by ``angle`` (radians), scaling by
    ``scale`` and a ``shift`` (B, 2), one per image."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def _warp(images, theta):
    """Every image of a stack (B, C, S, S) through its own affine map (B, 2, 3) in grid coordinates
    (bilinear, zero fill)."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_intensity(images, generator, max_log_gamma=MAX_LOG_GAMMA, max_contrast=MAX_CONTRAST):
    """Per image: a random gamma curve and contrast factor on [0, 1] intensities (black stays black)."""
    n, device = images.shape[0], images.device
    gamma = torch.exp(_uniform(n, -max_log_gamma, max_log_gamma, generator, device)).view(-1, 1, 1, 1)
    contrast = _uniform(n, 1 - max_contrast, 1 + max_contrast, generator, device).view(-1, 1, 1, 1)
    return (images.clamp(0, 1).pow(gamma.to(images.dtype)) * contrast.to(images.dtype)).clamp(0, 1)


def random_bias_field(images, generator, grid=BIAS_GRID, log_std=BIAS_LOG_STD):
    """Multiply each image by its own smooth gain field, exp of a bicubically upsampled random grid."""
    n, device = images.shape[0], images.device
    log_gain = torch.randn(n, 1, grid, grid, generator=generator, device=device) * log_std
    gain = torch.exp(F.interpolate(log_gain, size=images.shape[-2:], mode="bicubic", align_corners=True))
    return (images * gain.to(images.dtype)).clamp(0, 1)


def random_blur(images, generator, max_fraction=MAX_BLUR_FRACTION):
    """Blur each image with its own Gaussian (sigma uniform in [0, max_fraction x side])."""
    n, device, side = images.shape[0], images.device, images.shape[-1]
    max_sigma = max_fraction * side
    radius = max(1, math.ceil(3 * max_sigma))
    sigma = _uniform(n, 0.0, max_sigma, generator, device).clamp_min(1e-3).view(n, 1)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32).view(1, -1)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(images.dtype)        # (n, 2r + 1)
    x = images.transpose(0, 1)                                              # (1, n, S, S): one group per image
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(n, 1, 1, -1), groups=n)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(n, 1, -1, 1), groups=n)
    return x.transpose(0, 1)


def random_noise(images, generator, max_std=MAX_NOISE_STD):
    """Add Gaussian noise of a random std (uniform in [0, max_std]) per image, clipped to [0, 1]."""
    n, device = images.shape[0], images.device
    std = _uniform(n, 0.0, max_std, generator, device).view(-1, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, device=device) * std
    return (images + noise.to(images.dtype)).clamp(0, 1)


def rotated_copies(images, labels, copies=STUDY_ROTATIONS):
    """The study's augmentation: each sample followed by its rotations by k * 360/copies degrees."""
    rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in range(copies)]
    images = torch.stack(rotated, dim=1).flatten(0, 1)
    return images, labels.repeat_interleave(copies)


def augment_batch(images, labels, mode, generator, vertical_flips=True, masks=None):
    """Augmented (images, labels, masks) for one training batch on the batch's device: its
    geometry (``augment_geometry``), then its intensities (``augment_intensity``).

    ``masks`` (B, 1, S, S) tumour masks, or None, go through the same flips, warps and rotations
    as their images (bilinear, so warped edges become fractions) and never through intensity
    changes. ``vertical_flips=False`` flips left-right only (in ``"study"`` mode the 180 degree
    copies still turn images upside down)."""
    images, labels, masks = augment_geometry(images, labels, mode, generator, vertical_flips, masks)
    return augment_intensity(images, mode, generator), labels, masks


def augment_geometry(images, labels, mode, generator, vertical_flips=True, masks=None):
    """The flips, warps and rotations of ``augment_batch`` alone: (images, labels, masks)."""
    if mode not in MODES:
        raise ValueError(f"unknown augmentation {mode!r}; use one of {MODES}")
    if mode == "none":
        return images, labels, masks
    stack = images if masks is None else torch.cat([images, masks.to(images.dtype)], dim=1)
    if mode == "study":
        stack, labels = rotated_copies(stack, labels)
        stack = random_flips(stack, generator, vertical_flips)
    else:
        stack = random_affine(random_flips(stack, generator, vertical_flips), generator)
    return (stack, labels, None) if masks is None else (stack[:, :1], labels, stack[:, 1:])


def augment_intensity(images, mode, generator):
    """The intensity changes of ``augment_batch`` alone: gamma and contrast (``"mri"``), and a bias
    field, blur and noise after them (``"scanner"``); the other modes change no intensity."""
    if mode in ("mri", "scanner"):
        images = random_intensity(images, generator)
    if mode == "scanner":
        images = random_noise(random_blur(random_bias_field(images, generator), generator), generator)
    return images


def _translate(stack, shift_yx):
    """Shift every image of a stack (B, C, S, S) by its own (dy, dx) in pixels (bilinear, zero fill)."""
    n, side = stack.shape[0], stack.shape[-1]
    theta = torch.zeros(n, 2, 3, device=stack.device, dtype=stack.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -shift_yx[:, 1] * (2 / side)          # grid x: output pixel p samples p - shift
    theta[:, 1, 2] = -shift_yx[:, 0] * (2 / side)
    return _warp(stack, theta)


def _donors(n, labels, donors, has_tumour, generator, device):
    """Each of the ``n`` slices' donor index: a random permutation of the batch (``donors="any"``), or
    for each slice a random slice of another class with a tumour (``"other_class"``; ``labels`` (n,),
    ``has_tumour`` (n,) bool; drawn with replacement; a slice whose batch holds no such slice draws
    itself, i.e. gets nothing pasted)."""
    if donors == "any":
        return torch.randperm(n, generator=generator, device=device)
    labels = torch.as_tensor(labels, device=device).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"paste_tumours: {len(labels)} labels for a batch of {n} slices")
    unfit = (labels.view(-1, 1) == labels.view(1, -1)) | ~has_tumour.view(1, -1)
    scores = torch.rand(n, n, generator=generator, device=device).masked_fill(unfit, -1.0)
    return torch.where((~unfit).any(1), scores.argmax(1), torch.arange(n, device=device))


def tissue_levels(images, tumour, floor=TISSUE_FLOOR):
    """Each slice's tissue level (B,): the median of its ``tissue_mask`` pixels (``tumour`` (B, 1, S, S),
    1 inside); NaN where a slice has no such pixel."""
    values = images.detach().flatten(1).float()
    tissue = tissue_mask(values, tumour.flatten(1), floor)
    return torch.nanmedian(torch.where(tissue, values, torch.full_like(values, float("nan"))), dim=1).values


def paste_tumours(images, masks, probability, generator, at, margin=PASTE_MARGIN, feather=PASTE_FEATHER,
                  labels=None, donors="any", match_levels=False):
    """Paste, into about ``probability`` of the slices of a batch, the tumour of another slice of the
    batch (the donor): where it sits in the donor (``at="donor"``: keeps where in the image a tumour
    lies, e.g. a pituitary tumour's sella), centred on the slice's own tumour (``at="host"``), or
    one of the two by a fair coin per pasted slice (``at="either"``). The donor is drawn by a random
    permutation of the batch (``donors="any"``; a slice that draws itself gets nothing) or among the
    slices of another class that have a tumour (``"other_class"``, needs ``labels`` (B,)), so that every
    pasted slice puts a tumour into surroundings of another class.

    The pasted patch is the donor's tumour dilated by ``margin`` x the image side, its edge blended
    over ``feather`` x the side (both drawn at 1 / ``PASTE_COARSE`` of the resolution and resized:
    the edge is a soft ramp of a few pixels either way). Returns (images, masks, donor index (B,), donor share (B,)): the
    share of the label that goes to the donor, its tumour area over the tumour area that shows
    (donor's plus what the patch leaves of the slice's own); 0 where nothing was pasted (no tumour
    in the slice or in its donor, or the slice drew itself). ``masks`` (B, 1, S, S) become the
    tumours that show, as fractions.

    With ``match_levels`` the donor's patch is first scaled by the ratio of the two slices' tissue
    levels (``tissue_levels``, the ratio limited to ``LEVEL_SCALE_LIMITS``), so that a tumour keeps
    its brightness relative to the tissue around it (slices are normalised one by one, so the same
    tissue can sit at other intensities in another slice)."""
    if at not in PASTE_PLACES:
        raise ValueError(f"paste_tumours: at={at!r}, not one of {', '.join(PASTE_PLACES)}")
    if donors not in PASTE_DONORS or (donors != "any" and labels is None):
        raise ValueError(f"paste_tumours: donors={donors!r}, not one of {', '.join(PASTE_DONORS)} "
                         f"(\"other_class\" needs the labels)")
    n, side, device = images.shape[0], images.shape[-1], images.device
    masks = masks.to(images.dtype)              # soft edges need fractions (uint8 without augmentation)
    tumour = (masks >= 0.5).to(images.dtype)
    area = tumour.sum((-3, -2, -1))
    has_tumour = area > 0
    donor = _donors(n, labels, donors, has_tumour, generator, device)
    chosen = torch.rand(n, generator=generator, device=device) < probability
    chosen &= (donor != torch.arange(n, device=device)) & has_tumour & has_tumour[donor]
    if not chosen.any():
        return images, masks, donor, torch.zeros(n, device=device)
    hosts = chosen.nonzero().flatten()          # the work is done for the chosen slices only
    givers = donor[hosts]
    patch = tumour[givers]
    reach, blend = math.ceil(margin * side / PASTE_COARSE), math.ceil(feather * side / PASTE_COARSE)
    if reach or blend:                          # dilate and soften at a coarser scale: cheap, and
        patch = F.avg_pool2d(patch, PASTE_COARSE, ceil_mode=True)       # the edge is soft anyway
        patch = F.max_pool2d((patch > 0).to(images.dtype), 2 * reach + 1, stride=1, padding=reach)
        patch = F.avg_pool2d(patch, 2 * blend + 1, stride=1, padding=blend, count_include_pad=False)
        patch = F.interpolate(patch, size=images.shape[-2:], mode="bilinear", align_corners=False)
    donor_images = images[givers]
    if match_levels:
        levels = tissue_levels(images, tumour)
        scale = torch.nan_to_num(levels[hosts] / levels[givers], nan=1.0).clamp(*LEVEL_SCALE_LIMITS)
        donor_images = (donor_images * scale.view(-1, 1, 1, 1).to(images.dtype)).clamp(0, 1)
    moved = torch.cat([donor_images, tumour[givers], patch], 1)
    if at != "donor":                           # centred on the slice's own tumour: move it there
        rows = torch.arange(side, device=device, dtype=images.dtype)
        centre = torch.stack([(tumour.sum(-1).squeeze(1) * rows).sum(-1),
                              (tumour.sum(-2).squeeze(1) * rows).sum(-1)], 1) / area.clamp_min(1).view(n, 1)
        shift = centre[hosts] - centre[givers]
        if at == "either":                      # a coin per pasted slice: heads moves, tails stays
            shift = shift * (torch.rand(len(hosts), 1, generator=generator, device=device) < 0.5)
        moved = _translate(moved, shift)
    alpha, donor_tumour = moved[:, 2:3], moved[:, 1:2]
    own_left = tumour[hosts] * (1 - alpha)
    shown = donor_tumour.sum((-3, -2, -1))
    share = torch.zeros(n, device=device, dtype=images.dtype)
    share[hosts] = shown / (shown + own_left.sum((-3, -2, -1))).clamp_min(1e-6)
    images, masks = images.clone(), masks.clone()
    images[hosts] = alpha * moved[:, :1] + (1 - alpha) * images[hosts]
    masks[hosts] = torch.maximum(donor_tumour, masks[hosts] * (1 - alpha))
    return images, masks, donor, share
