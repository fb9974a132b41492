"""The classifiers: the study's convolutional capsule network and the ResNet50 baseline.

``CapsuleClassifier()`` with its defaults is the study's network at 512 px (3,827,660 parameters):

    conv 5x5 (1->1) + LeakyReLU
    4 convolutional capsule layers, kernel 4, stride 2, padding 1: 64, 128, 256, 512 channels,
      batch norm, dynamic routing (3 iterations), squash
    conv 4x4 (512->1) + LeakyReLU, flattened: (S/16 - 3)^2 features (841 at 512 px)
    fully connected n -> n -> n/2 -> 3, LeakyReLU(0.2), dropout 0.4

The keyword arguments change it for small inputs on a CPU (see ``CAPSULE_PRESETS``):
``stem_stride`` / ``stem_channels`` downsample in a wider first convolution (``"auto"``: down to
64 x 64, so that the capsule layers see the same map sizes at any image size), ``width`` scales the
capsule channels, ``refine_blocks`` adds residual 3x3 convolutions after each capsule layer,
``head="pool"`` replaces the 512->1 squeeze by global average and max pooling of the capsule
vectors (so that the classifier keeps every channel at any image size), and ``scaled_norm``
starts the capsule batch-norm scales at 1/sqrt(D) so that squash is not saturated.

The network outputs logits; the study's LogSoftmax is folded into the cross-entropy loss.
``embed(x)`` returns the penultimate features (for t-SNE) and ``forward = final(embed(x))``.
"""
import os

import torch
from torch import nn

SQUASH_EPS = 1e-8
STEM_TARGET_SIZE = 64     # stem_stride="auto": the capsule layers start at 64 x 64
CAPSULE_PRESETS = {
    # the study's network, exactly
    "study": {},
    # CPU-friendly: 16-channel stem down to 64 x 64 whatever the image size (stride 4 at 256 px),
    # half the channels, one residual 3x3 refinement per capsule layer, pooled head
    "compact": {"stem_stride": "auto", "width": 32, "head": "pool", "stem_channels": 16,
                "refine_blocks": 1},
}


# the residual preset (capsule_classifier.residual_capsules) is built separately; these options of
# the study network must keep their defaults with it
STUDY_NETWORK_DEFAULTS = {"routing": "fast", "capsule_types": 1, "scaled_norm": False}
RESNET_NAMES = {"resnet": 50, "resnet50": 50, "resnet18": 18}
RESNET_DEPTHS = (18, 50)


def squash(s, dim):
    """Capsule non-linearity: keeps the direction of ``s``, maps its length into [0, 1)."""
    norm2 = (s * s).sum(dim=dim, keepdim=True)
    return s * (norm2 / (1.0 + norm2) / torch.sqrt(norm2 + SQUASH_EPS))


def _scale_to_unit_length(bn, dim):
    """Start batch norm's scale at 1/sqrt(dim): a normalised D-vector then has length about 1, where
    squash still distinguishes short from long capsules (at the default scale its length is about
    sqrt(D) and squash maps every capsule to length ~1)."""
    nn.init.constant_(bn.weight, dim ** -0.5)


def dynamic_routing(u_hat, iterations):
    """Routing by agreement over predictions ``u_hat`` of shape (B, in_caps, out_caps, D, H, W).

    Returns the output capsules (B, out_caps, D, H, W). The coupling logits are kept per sample and
    pixel; intermediate iterations see detached predictions, only the last one is differentiated.
    """
    detached = u_hat.detach()
    logits = u_hat.new_zeros(u_hat.shape[:3] + (1,) + u_hat.shape[4:])
    for iteration in range(iterations):
        coupling = torch.softmax(logits, dim=2)
        last = iteration == iterations - 1
        s = (coupling * (u_hat if last else detached)).sum(dim=1)
        v = squash(s, dim=2)
        if not last:
            logits = logits + (detached * v.unsqueeze(1)).sum(dim=3, keepdim=True)
    return v


class ConvCapsuleLayer(nn.Module):
    """Convolutional capsule layer: (B, in_caps, in_dim, H, W) -> (B, out_caps, out_dim, H', W').

    Every input capsule type is convolved into predictions for every output type (shared weights
    across input types, as in CapsPix2Pix), batch-normalised, then routed. ``routing="fast"`` uses
    the closed form when there is one output type: the coupling coefficients are then all exactly 1,
    so routing reduces to squashing the sum of the predictions. ``routing="general"`` always runs
    the loop (the two give the same result; the tests check it).
    """

    def __init__(self, in_caps, out_caps, in_dim, out_dim, kernel=4, stride=2, padding=1,
                 iterations=3, routing="fast", scaled_norm=False):
        super().__init__()
        if routing not in ("fast", "general"):
            raise ValueError(f"routing must be 'fast' or 'general', got {routing!r}")
        self.in_caps, self.out_caps, self.in_dim, self.out_dim = in_caps, out_caps, in_dim, out_dim
        self.iterations = iterations
        self.routing = routing
        self.conv = nn.Conv2d(in_dim, out_caps * out_dim, kernel, stride, padding)
        self.bn = nn.BatchNorm2d(in_caps * out_caps * out_dim)
        if scaled_norm:
            _scale_to_unit_length(self.bn, out_dim)

    def forward(self, x):
        batch, _, _, height, width = x.shape
        u_hat = self.conv(x.reshape(batch * self.in_caps, self.in_dim, height, width))
        h, w = u_hat.shape[-2:]
        u_hat = self.bn(u_hat.reshape(batch, self.in_caps * self.out_caps * self.out_dim, h, w))
        if self.routing == "fast" and self.out_caps == 1:
            s = u_hat.reshape(batch, self.in_caps, self.out_dim, h, w).sum(dim=1, keepdim=True)
            return squash(s, dim=2)
        u_hat = u_hat.reshape(batch, self.in_caps, self.out_caps, self.out_dim, h, w)
        return dynamic_routing(u_hat, self.iterations)


class CapsuleRefine(nn.Module):
    """Residual 3x3 convolution on capsule maps (B, T, D, H, W), squashed again: more depth per
    resolution for small inputs (not part of the study's network)."""

    def __init__(self, dim, scaled_norm=False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                                  nn.LeakyReLU(0.2))
        if scaled_norm:
            _scale_to_unit_length(self.body[1], dim)

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(shape[0] * shape[1], shape[2], shape[3], shape[4])
        return squash(flat + self.body(flat), dim=1).reshape(shape)


class CapsuleClassifier(nn.Module):
    """The study's capsule classifier; the defaults reproduce it at 512 px (see module doc)."""

    def __init__(self, image_size=512, num_classes=3, width=64, stem_stride=1, head="squeeze",
                 routing="fast", routing_iterations=3, capsule_types=1, dropout=0.4,
                 stem_channels=1, refine_blocks=0, scaled_norm=False):
        super().__init__()
        if stem_stride == "auto":
            stem_stride = max(1, image_size // STEM_TARGET_SIZE)
        if head not in ("squeeze", "pool"):
            raise ValueError(f"head must be 'squeeze' or 'pool', got {head!r}")
        self.config = dict(image_size=image_size, num_classes=num_classes, width=width,
                           stem_stride=stem_stride, head=head, routing=routing,
                           routing_iterations=routing_iterations, capsule_types=capsule_types,
                           dropout=dropout, stem_channels=stem_channels, refine_blocks=refine_blocks,
                           scaled_norm=scaled_norm)
        kernel = max(5, stem_stride + 1) | 1      # the study's 5x5; wider when the stride would skip pixels
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem_channels, kernel, stride=stem_stride, padding=kernel // 2), nn.LeakyReLU())
        dims = [stem_channels] + [width * 2 ** k for k in range(4)]
        types = [1] + [capsule_types] * 3 + [1]
        stages = []
        for k in range(4):
            stages.append(ConvCapsuleLayer(types[k], types[k + 1], dims[k], dims[k + 1],
                                           iterations=routing_iterations, routing=routing,
                                           scaled_norm=scaled_norm))
            stages.extend(CapsuleRefine(dims[k + 1], scaled_norm) for _ in range(refine_blocks))
        self.capsules = nn.Sequential(*stages)
        side = -(-image_size // stem_stride) // 16
        self.head = head
        if head == "squeeze":
            if side < 4:
                raise ValueError(f"image_size {image_size} is too small for the squeeze head "
                                 f"(needs at least {64 * stem_stride} px)")
            self.squeeze = nn.Sequential(nn.Conv2d(dims[-1], 1, 4), nn.LeakyReLU())
            features = (side - 3) ** 2
        else:
            features = 2 * dims[-1]
        hidden = max(features // 2, 1)
        self.fc = nn.Sequential(
            nn.Linear(features, features), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(features, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.final = nn.Linear(hidden, num_classes)

    def embed(self, x):
        """Penultimate features (B, n/2) of images (B, 1, S, S)."""
        x = self.stem(x).unsqueeze(1)
        x = self.capsules(x).squeeze(1)          # one output capsule type: (B, D, h, w)
        if self.head == "squeeze":
            x = self.squeeze(x).flatten(1)
        else:
            x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.fc(x)

    def forward(self, x):
        return self.final(self.embed(x))


class ResNetClassifier(nn.Module):
    """torchvision ResNet50 (or ResNet18: ``depth=18``, the CPU baseline) on one-channel input with
    the study's head n -> n -> n -> 3 (n = 2048 for ResNet50, 512 for ResNet18)."""

    def __init__(self, num_classes=3, dropout=0.4, depth=50):
        super().__init__()
        import torchvision.models
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth!r}")
        self.config = dict(num_classes=num_classes, dropout=dropout, depth=depth)
        self.depth = depth
        self.backbone = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        features = self.backbone.fc.in_features
        self.backbone.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(features, features), nn.LeakyReLU(0.2), nn.Dropout(dropout),
            nn.Linear(features, features), nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.final = nn.Linear(features, num_classes)

    def embed(self, x):
        return self.head(self.backbone(x))

    def forward(self, x):
        return self.final(self.embed(x))

    def freeze_children(self, count):
        """Stop training the first ``count`` children of the ResNet (the study froze 8)."""
        for child in list(self.backbone.children())[:count]:
            for parameter in child.parameters():
                parameter.requires_grad_(False)

    def load_imagenet(self, source):
        """Load ImageNet weights: ``"imagenet"`` (torchvision download) or a local file path.

        The RGB kernels of the first convolution are summed into one grey channel.
        """
        if self.depth != 50:
            raise ValueError("ImageNet weights are supported for ResNet50 only")
        state = _imagenet_state_dict(source)
        conv1 = state.get("conv1.weight")
        if conv1 is None:
            raise ValueError(f"{source}: not a torchvision ResNet50 state dict (no conv1.weight)")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True) if conv1.shape[1] == 3 else conv1
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ValueError(f"{source}: weights do not fit ResNet50 "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def _imagenet_state_dict(source):
    if source != "imagenet":
        if not os.path.isfile(source):
            raise FileNotFoundError(f"ImageNet weights file {source} does not exist")
        state = torch.load(source, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    from torchvision.models import ResNet50_Weights
    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        return weights.get_state_dict(progress=True)
    except Exception as error:  # no network, proxy, certificate: all mean "not downloadable here"
        raise RuntimeError(
            f"could not download the ImageNet ResNet50 weights ({type(error).__name__}: {error}). "
            f"Download {weights.url} on a machine with network access and pass the file with "
            f"--pretrained=/path/to/{os.path.basename(weights.url)}, or train from scratch with "
            f"--pretrained=none") from None


def _residual_capsules(image_size, num_classes, capsule_options):
    """The residual preset: options of the study network must keep their defaults."""
    from capsule_classifier.residual_capsules import ResidualCapsuleClassifier
    options = dict(capsule_options)
    for key, default in STUDY_NETWORK_DEFAULTS.items():
        if options.pop(key, default) != default:
            raise ValueError(f"--{key} applies to the study and compact capsule presets, "
                             f"not to capsule_preset=residual")
    return ResidualCapsuleClassifier(image_size=image_size, num_classes=num_classes, **options)


def make_model(name, image_size=512, num_classes=3, preset="study", freeze_children=0,
               pretrained="none", **capsule_options):
    """Build a classifier by name: ``capsule`` (``preset`` + ``capsule_options``), ``resnet50``
    (alias ``resnet``) or ``resnet18``.

    ``pretrained`` (ResNet50 only): ``"none"``, ``"imagenet"`` or a path to a torchvision ResNet50
    weights file. ``freeze_children`` freezes the first children of the ResNet.
    """
    if name == "capsule":
        if preset == "residual":
            return _residual_capsules(image_size, num_classes, capsule_options)
        if preset not in CAPSULE_PRESETS:
            raise ValueError(f"unknown capsule preset {preset!r}; known: "
                             f"{sorted(CAPSULE_PRESETS) + ['residual']}")
        options = {**CAPSULE_PRESETS[preset], **capsule_options}
        return CapsuleClassifier(image_size=image_size, num_classes=num_classes, **options)
    if name in RESNET_NAMES:
        model = ResNetClassifier(num_classes=num_classes, depth=RESNET_NAMES[name], **capsule_options)
        if pretrained and pretrained != "none":
            model.load_imagenet(pretrained)
        if freeze_children:
            model.freeze_children(freeze_children)
        return model
    raise ValueError(f"unknown model {name!r}: use 'capsule', 'resnet18' or 'resnet50'")


def model_from_config(name, config):
    """Rebuild an (untrained) model from the ``config`` a checkpoint stores."""
    if name == "capsule":
        if config.get("architecture") == "residual":
            from capsule_classifier.residual_capsules import ResidualCapsuleClassifier
            return ResidualCapsuleClassifier(**config)
        return CapsuleClassifier(**config)
    return ResNetClassifier(**config)


def count_parameters(model):
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
