"""Where a classifier looks: saliency maps (Grad-CAM, occlusion, LIME through captum) and how much
of each map falls on the tumour.

Grad-CAM reads the last layer whose maps are still at least ``GRADCAM_MIN_SIDE`` pixels wide (the
residual capsule network's third stage, ResNet's ``layer4`` at 256 px, the study network's last
capsule layer), weights its channels by the gradient of the predicted class and upsamples the
positive part to the slice. Occlusion slides a grey patch (an eighth of the slice) over it and
records how much the predicted class loses; LIME fits a linear model on SLIC superpixels.

Checked against the tumour (when the input has masks): ``in_tumour`` is the share of the map's
mass inside the tumour (``tumour_area`` is what a map spread evenly would score), ``in_margin``
the share inside the tumour dilated by a sixteenth of the slice, and ``pointing_hit`` whether the
map's peak lies in that dilated tumour (the pointing game).
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

METHODS = ("gradcam", "occlusion", "lime")
GRADCAM_MIN_SIDE = 8
MARGIN_FRACTION = 1 / 16
LIME_SEGMENTS = 60
LIME_SAMPLES = 200


def _captum():
    try:
        import captum.attr
    except ImportError as error:
        raise RuntimeError("explanations need captum (pip install captum)") from error
    return captum.attr


def gradcam_layer(model, image_size):
    """The last convolutional module whose output is at least GRADCAM_MIN_SIDE pixels wide."""
    sides = {}      # the convolutions that ran, in the order they ran, with their output width
    hooks = [m.register_forward_hook(lambda module, _, output: sides.__setitem__(module, output.shape[-1]))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    chosen = next((m for m, side in reversed(sides.items()) if side >= GRADCAM_MIN_SIDE), None)
    if chosen is None:
        raise ValueError("no convolution with maps of at least 8 px for Grad-CAM")
    return chosen


def saliency(model, images, method="gradcam", layer=None, targets=None):
    """(maps (B, S, S) in [0, 1], predicted classes) for a batch of slices (B, 1, S, S)."""
    attr = _captum()
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    targets = predicted if targets is None else targets
    if method == "gradcam":
        layer = layer or gradcam_layer(model, images.shape[-1])
        maps = attr.LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
        maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    elif method == "occlusion":
        side = max(4, images.shape[-1] // 8)
        maps = attr.Occlusion(model).attribute(images, target=targets, sliding_window_shapes=(1, side, side),
                                               strides=(1, side // 2, side // 2), baselines=0.5)
        maps = maps.clamp_min(0)
    elif method == "lime":
        from skimage.segmentation import slic
        segments = torch.stack([torch.as_tensor(slic(img[0].cpu().numpy(), n_segments=LIME_SEGMENTS,
                                                     channel_axis=None, start_label=0)) for img in images])
        lime = attr.Lime(model)
        maps = torch.cat([lime.attribute(images[k:k + 1], target=targets[k:k + 1],
                                         feature_mask=segments[k:k + 1, None].to(images.device),
                                         n_samples=LIME_SAMPLES, baselines=0.5) for k in range(len(images))])
        maps = maps.clamp_min(0)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    maps = maps[:, 0].detach().float()
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).cpu().numpy(), predicted.cpu().numpy()


def tumour_scores(saliency_map, tumour_mask):
    """in_tumour, in_margin, pointing_hit and tumour_area of one map against one tumour mask."""
    tumour = np.asarray(tumour_mask, bool)
    margin = max(1, int(round(tumour.shape[-1] * MARGIN_FRACTION)))
    dilated = ndimage.binary_dilation(tumour, iterations=margin)
    total = float(saliency_map.sum())
    peak = np.unravel_index(np.argmax(saliency_map), saliency_map.shape)
    return {"in_tumour": float(saliency_map[tumour].sum() / total) if total > 0 else 0.0,
            "in_margin": float(saliency_map[dilated].sum() / total) if total > 0 else 0.0,
            "pointing_hit": bool(dilated[peak]),
            "tumour_area": float(tumour.mean())}


def overlay(path, image, saliency_map, tumour_mask, title):
    """The slice, the map on top of it, and the tumour outline (when known), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    for ax in axes:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
        if tumour_mask is not None and np.any(tumour_mask):
            ax.contour(np.asarray(tumour_mask, float), levels=[0.5], colors="lime", linewidths=0.8)
    axes[1].imshow(saliency_map, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
