"""The conditional GAN's networks: a pix2pix U-Net generator with a latent input, a PatchGAN critic.

Generator: condition mask (B, 1, S, S) in [-1, 1] plus a latent vector z (B, latent_dim) ->
image (B, 1, S, S) in [-1, 1] (tanh). The U-Net halves the resolution down to 1 x 1, so its depth
is log2(S) (7 at 128 px, 9 at 512 px, as the study ran), with skip connections at every level.

The latent vector enters in one of two forms (``latent_mode``):

* ``"study"``: a fully connected layer maps z to one S x S plane, concatenated with the mask
  (the study's form; 100 x S*S weights, 26M at 512 px).
* ``"inject"`` (default): a fully connected layer maps z to a small 8 x 8 plane that is upsampled
  to S x S and concatenated with the mask, and z is also fed to every decoder level as a few
  constant feature planes. This costs a few thousand weights at any size and gives the noise a
  direct path to every resolution, which the U-Net's skip connections otherwise let it bypass.

With ``num_classes`` > 0 the class enters as one-hot planes (class-conditional model); both
networks then take the labels as an extra argument.

Options against the artefacts of the study's generator (each off by default in the classes, so
old checkpoints load unchanged; ``train.py`` picks the defaults):

* ``upsample="resize"``: nearest-neighbour upsampling then a 3x3 convolution instead of 4x4
  stride-2 transposed convolutions, whose uneven kernel overlap paints checkerboards
  (Odena et al. 2016); ``"bilinear"``: the same with bilinear upsampling (no 2 x 2 blocks);
  ``"bicubic"``: with bicubic upsampling. As filters after zero insertion, nearest ([1, 1]) passes
  much of the band between half and all of the new Nyquist frequency, where the coarse grid's
  spectral images lie (the lattice): 59 %, 38 % and 16 % at 0.6, 0.75 and 0.9 of it; bilinear 20 %,
  6 % and 0.4 %; bicubic 23 %, 1 % and 2.5 % (about as much rejection as bilinear). At a quarter of
  it, inside the band that carries detail, they keep 92 %, 79 % and 98.5 %: bicubic rejects the
  images about as bilinear does, without its blur (and overshoots by up to 1.6 %);
  ``output_upsample`` sets the last doubling (to full resolution) apart from the others;
* ``mask_norm=True``: every decoder level is normalised without a learned scale and then scaled
  and shifted per pixel by maps computed from the condition mask (and class planes) at that
  level's size, SPADE-style (Park et al. 2019), so the mask shapes every scale, not only the input;
  ``mask_resize="area"`` averages the mask down to each level instead of picking every n-th pixel
  (SPADE's nearest resizing suits filled label maps; a 1-px outline sampled that way breaks up or
  vanishes at the coarse levels);
* ``full_res_convs=N``: N more 3x3 convolutions at full resolution after the last doubling, each
  seeing the generator's input planes (mask, latent plane, class planes) again, before the output
  convolution. In pix2pix's U-Net the last doubling's one convolution draws the image, so every
  output pixel is a fixed linear mix of the half-resolution features that depends on where it
  sits in its 2 x 2 block (a 2-px pattern with nearest resizing), and with smooth resizing only
  that one linear convolution draws the finest scale. The head adds shift-invariant nonlinear
  layers at full resolution (as pix2pixHD's and SPADE's generators end); the mask reaches them through the
  concatenation, so they use plain batch (or instance) norm, not mask norm. With 0 (the default)
  the network is pix2pix's;
* ``noise_inputs=True``: after every decoder level but the last, one map of Gaussian noise per
  sample, added to each channel with a learned per-channel strength that starts at zero (as
  StyleGAN's noise inputs, Karras et al. 2019): a spatial source of randomness for texture where
  the outline says nothing. Measured at 128 px (generative_model/RESULTS.md) the generator left
  it nearly unused and the lattice stayed. Pass a seeded ``torch.Generator`` as
  ``noise_generator`` for reproducible slices;
* ``blur_downsampling=True`` (discriminator): a fixed [1, 2, 1] x [1, 2, 1] / 16 blur before
  every stride-2 convolution (anti-aliased downsampling, Zhang 2019). A strided critic sees each
  pixel through a pattern that repeats every 2^k pixels, so its gradients might reward a generator
  for texture on that grid (measured: it removes the lattice, but the slices get much softer);
* ``sharp_stem=True`` (discriminator, with ``blur_downsampling``): the first convolution runs at
  stride 1 on the unblurred pair (3x3) and its output is blurred and subsampled (a BlurPool, as
  Zhang 2019 places it: after the convolution, not before), so the critic still sees the finest
  detail while every downsampling stays blurred (the blur before the input made slices soft).
  Measured with the sharp stem at 128 px: the lattice came back by epoch 6, so the blur works by
  hiding the finest scale from the critic;
* ``pixel_critic=True`` (discriminator): a second critic beside the PatchGAN that runs at full
  resolution without strides (three 3x3 convolutions of ndf / 4 channels, a 7 x 7 field, one
  logit per pixel), so fine texture is judged on no grid and its gradients repeat nowhere. The
  discriminator then returns both logit maps (a list); the GAN losses sum over them, and feature
  matching uses the PatchGAN's layers only (measured alone, judged by eye in a run stopped at
  epoch 5: the lattice came back);
* ``critic_scales=N`` (discriminator, N > 1): pix2pixHD's multi-scale critic (Wang et al. 2018), N PatchGANs of
  the same design, the k-th judging the (mask, image) pair averaged down k times by 2, so their 70-px fields cover
  70, 140, 280 ... px of the slice: the coarse ones judge the layout of the whole brain, the first the texture.
  Their logit maps are returned as one list (the GAN losses sum over it) and their activations as one list
  (feature matching averages over all of them); with ``pixel_critic`` each scale has its own pixel critic;
* ``spectral_norm=True`` (discriminator): spectral normalisation of every convolution (Miyato et
  al. 2018), which keeps the critic's gradients tame; ``PatchDiscriminator(..., features=True)``
  also returns its intermediate activations for pix2pixHD's feature-matching loss.

Latent encoder (training only, ``train.py --latent_encoder=True``): a small strided network from a
real slice to the mean and log-variance of a Gaussian over the latent vector (BicycleGAN's encoder,
Zhu et al. 2017), so that the latent which pays the L1 term is the one that explains its real slice.

Discriminator: pix2pix's 70 x 70 PatchGAN over the (mask, image) pair (plus class planes), giving
one real/fake logit per overlapping 70 x 70 patch (the blurs of ``blur_downsampling`` widen the
field to 84 px, 83 with ``sharp_stem``). Weights start from Normal(0, 0.02).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

LATENT_MODES = ("inject", "study")
NORMS = ("batch", "instance")
UPSAMPLES = ("transpose", "resize", "bilinear", "bicubic")
MASK_NORM_HIDDEN = 32   # channels of the small network that turns the mask into scale and shift maps
SEED_PLANE = 8          # side of the small latent plane of the "inject" mode
MASK_RESIZES = ("nearest", "area")   # how MaskNorm brings the condition to a coarser level (see MaskNorm)
INJECT_CHANNELS = 4     # latent feature planes added to each decoder level in "inject" mode
PIXEL_CRITIC_SHARE = 4  # the pixel critic is ndf / 4 channels wide (8 at the CPU default ndf 32)
MIN_CRITIC_INPUT = 32   # smallest side a PatchGAN (three strides, two 4x4 stride-1 convolutions) still maps


def norm_layer(norm, channels):
    """Batch norm (learned scale) or instance norm (none, as pix2pix)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def upsampling(in_channels, out_channels, mode, bias=True):
    """Double the resolution: a 4x4 stride-2 transposed convolution, or resize (nearest, bilinear or
    bicubic) + 3x3 convolution."""
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias)
    if mode in ("resize", "bilinear", "bicubic"):
        resize = nn.Upsample(scale_factor=2, mode="nearest") if mode == "resize" else \
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False)
        return nn.Sequential(resize, nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=bias))
    raise ValueError(f"upsample must be one of {UPSAMPLES}, got {mode!r}")


class MaskNorm(nn.Module):
    """SPADE-style normalisation: parameter-free batch or instance norm, then a per-pixel scale and
    shift predicted from the condition (mask and class planes) resized to the features' size."""

    def __init__(self, norm, channels, condition_channels, hidden=MASK_NORM_HIDDEN, resize="nearest"):
        super().__init__()
        if resize not in MASK_RESIZES:
            raise ValueError(f"mask_resize must be one of {MASK_RESIZES}, got {resize!r}")
        self.resize = resize
        if norm == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=False)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        else:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.shared = nn.Sequential(nn.Conv2d(condition_channels, hidden, 3, 1, 1), nn.ReLU())
        self.scale = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.shift = nn.Conv2d(hidden, channels, 3, 1, 1)

    def forward(self, x, condition):
        condition = F.interpolate(condition, size=x.shape[-2:], mode=self.resize)
        hidden = self.shared(condition.to(x.dtype))
        return self.norm(x) * (1 + self.scale(hidden)) + self.shift(hidden)


def unet_depth(image_size):
    """Number of stride-2 levels that take a power-of-two image of this size down to 1 x 1."""
    depth = int(round(math.log2(image_size))) if image_size > 0 else 0
    if image_size < 16 or 2 ** depth != image_size:
        raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
    return depth


def class_planes(labels, num_classes, size):
    """One-hot class planes (B, num_classes, size, size) for class-conditional models."""
    one_hot = F.one_hot(labels.long(), num_classes).to(torch.float32)
    return one_hot[:, :, None, None].expand(-1, -1, size, size)


class UNetGenerator(nn.Module):
    """pix2pix U-Net from a condition mask and a latent vector to a one-channel image."""

    def __init__(self, image_size=128, ngf=64, latent_dim=100, latent_mode="inject",
                 norm="batch", num_classes=0, upsample="transpose", mask_norm=False, mask_resize="nearest",
                 noise_inputs=False, output_upsample="", full_res_convs=0):
        super().__init__()
        if latent_mode not in LATENT_MODES:
            raise ValueError(f"latent_mode must be one of {LATENT_MODES}, got {latent_mode!r}")
        self.config = dict(image_size=image_size, ngf=ngf, latent_dim=latent_dim,
                           latent_mode=latent_mode, norm=norm, num_classes=num_classes,
                           upsample=upsample, mask_norm=mask_norm, mask_resize=mask_resize)
        if noise_inputs:              # only when on, so configs of older checkpoints stay as they were
            self.config["noise_inputs"] = True
        if output_upsample and output_upsample not in UPSAMPLES:
            raise ValueError(f"output_upsample must be one of {UPSAMPLES} or empty, got {output_upsample!r}")
        if output_upsample == upsample:
            output_upsample = ""      # the same network; stored only when it differs, as older configs lack it
        if output_upsample:
            self.config["output_upsample"] = output_upsample
        if full_res_convs < 0:
            raise ValueError(f"full_res_convs must be >= 0, got {full_res_convs}")
        if full_res_convs:            # only when on, so configs of older checkpoints stay as they were
            self.config["full_res_convs"] = full_res_convs
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.latent_mode = latent_mode
        self.num_classes = num_classes
        depth = unet_depth(image_size)
        widths = [ngf * min(2 ** level, 8) for level in range(depth)]
        use_bias = norm == "instance"
        inject = INJECT_CHANNELS if latent_mode == "inject" else 0

        self.plane_side = image_size if latent_mode == "study" else SEED_PLANE
        self.latent_plane = nn.Linear(latent_dim, self.plane_side ** 2)
        self.latent_levels = nn.ModuleList(
            [nn.Linear(latent_dim, inject) for _ in range(depth)] if inject else [])

        self.down = nn.ModuleList()
        in_channels = 2 + num_classes
        for level, width in enumerate(widths):
            layers = [] if level == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(in_channels, width, 4, 2, 1, bias=use_bias or level in (0, depth - 1)))
            if 0 < level < depth - 1:
                layers.append(norm_layer(norm, width))
            self.down.append(nn.Sequential(*layers))
            in_channels = width

        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = 0 if level == depth - 1 else widths[level]
            in_channels = widths[level] + skip + inject
            if level == 0 and not full_res_convs:
                layers = [nn.ReLU(), upsampling(in_channels, 1, output_upsample or upsample), nn.Tanh()]
            elif level == 0:          # the last doubling gives ngf feature planes; the head draws the image
                layers = [nn.ReLU(), upsampling(in_channels, ngf, output_upsample or upsample, bias=use_bias),
                          norm_layer(norm, ngf)]
            else:
                out = widths[level - 1]
                layers = [nn.ReLU(), upsampling(in_channels, out, upsample, bias=use_bias),
                          MaskNorm(norm, out, 1 + num_classes, resize=mask_resize) if mask_norm
                          else norm_layer(norm, out)]
            self.up.append(nn.Sequential(*layers))
        # the full-resolution head: each convolution sees the rectified features and the input planes
        # as the encoder saw them (not rectified); the output convolution draws the image
        self.head = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(ngf + 2 + num_classes, ngf, 3, 1, 1, bias=use_bias),
                           norm_layer(norm, ngf)) for _ in range(full_res_convs)])
        self.head_output = nn.Sequential(nn.ReLU(), nn.Conv2d(ngf, 1, 3, 1, 1), nn.Tanh()) \
            if full_res_convs else None
        # per decoder level but the output one: the strength of its noise map in each channel
        self.noise_strength = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, widths[level - 1], 1, 1)) for level in reversed(range(1, depth))]
            if noise_inputs else [])
        init_weights(self)

    def forward(self, mask, z, labels=None, noise_generator=None):
        batch, size = mask.shape[0], self.image_size
        if mask.shape[-2:] != (size, size):
            raise ValueError(f"generator built for {size} px got masks of {tuple(mask.shape[-2:])}")
        plane = self.latent_plane(z).view(batch, 1, self.plane_side, self.plane_side)
        if self.plane_side != size:
            plane = F.interpolate(plane, size=(size, size), mode="bilinear", align_corners=False)
        inputs = [mask, plane.to(mask.dtype)]
        if self.num_classes:
            inputs.append(class_planes(labels, self.num_classes, size).to(mask.dtype))
        x = given = torch.cat(inputs, 1)
        condition = torch.cat([inputs[0], *inputs[2:]], 1)     # mask and class planes, for MaskNorm
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        depth = len(self.down)
        for step, block in enumerate(self.up):
            level = depth - 1 - step
            parts = [x] if step == 0 else [x, skips[level]]
            if self.latent_levels:
                side = x.shape[-1]
                code = self.latent_levels[level](z)[:, :, None, None].expand(-1, -1, side, side)
                parts.append(code.to(x.dtype))
            x = torch.cat(parts, 1)
            for layer in block:
                x = layer(x, condition) if isinstance(layer, MaskNorm) else layer(x)
            if step < len(self.noise_strength):
                noise = torch.randn((batch, 1) + tuple(x.shape[-2:]), generator=noise_generator,
                                    device=x.device, dtype=torch.float32)
                x = x + self.noise_strength[step].to(x.dtype) * noise.to(x.dtype)
        for layer in self.head:
            x = layer(torch.cat([F.relu(x), given.to(x.dtype)], 1))
        return x if self.head_output is None else self.head_output(x)


class Blur(nn.Module):
    """A fixed [1, 2, 1] x [1, 2, 1] / 16 low-pass filter per channel (reflect padding); with
    ``stride=2`` it also keeps every second pixel (anti-aliased subsampling, a BlurPool)."""

    kernel_size = 3

    def __init__(self, channels, stride=1):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.stride = stride

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.to(x.dtype),
                        stride=self.stride, groups=x.shape[1])


class PatchDiscriminator(nn.Module):
    """70 x 70 PatchGAN over the (mask, image) pair: a map of real/fake logits (with
    ``pixel_critic``, a list: that map and the full-resolution critic's)."""

    def __init__(self, ndf=64, norm="batch", num_classes=0, n_layers=3, spectral_norm=False,
                 blur_downsampling=False, pixel_critic=False, sharp_stem=False):
        super().__init__()
        if sharp_stem and not blur_downsampling:
            raise ValueError("sharp_stem=True replaces the blur before the first stride, so it needs "
                             "blur_downsampling=True")
        self.config = dict(ndf=ndf, norm=norm, num_classes=num_classes, n_layers=n_layers,
                           spectral_norm=spectral_norm)
        for name, on in (("blur_downsampling", blur_downsampling), ("pixel_critic", pixel_critic),
                         ("sharp_stem", sharp_stem)):
            if on:                    # only when on, so configs of older checkpoints stay as they were
                self.config[name] = True
        self.num_classes = num_classes
        use_bias = norm == "instance"
        blur = (lambda channels: [Blur(channels)]) if blur_downsampling else (lambda channels: [])
        if sharp_stem:   # the first convolution sees the unblurred pair at full resolution, then a BlurPool
            layers = [nn.Conv2d(2 + num_classes, ndf, 3, 1, 1), nn.LeakyReLU(0.2), Blur(ndf, stride=2)]
        else:
            layers = blur(2 + num_classes) + [nn.Conv2d(2 + num_classes, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ndf
        for layer in range(1, n_layers + 1):
            out = ndf * min(2 ** layer, 8)
            stride = 2 if layer < n_layers else 1
            layers += (blur(width) if stride == 2 else []) + [
                nn.Conv2d(width, out, 4, stride, 1, bias=use_bias), norm_layer(norm, out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.pixel = None
        if pixel_critic:   # full resolution, stride 1: three 3x3 convolutions, a 7 x 7 field
            width = max(ndf // PIXEL_CRITIC_SHARE, 4)     # full-resolution maps are dear on a CPU
            self.pixel = nn.Sequential(nn.Conv2d(2 + num_classes, width, 3, 1, 1), nn.LeakyReLU(0.2),
                                       nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2),
                                       nn.Conv2d(width, 1, 3, 1, 1))
        init_weights(self)
        if spectral_norm:
            for layer in self.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(layer)

    def _pair(self, mask, image, labels):
        inputs = [mask, image]
        if self.num_classes:
            inputs.append(class_planes(labels, self.num_classes, mask.shape[-1]).to(mask.dtype))
        return torch.cat(inputs, 1)

    def _patch(self, pair, features):
        x, activations = pair, []
        for layer in self.model:
            x = layer(x)
            if features and isinstance(layer, nn.LeakyReLU):
                activations.append(x)
        return x, activations

    def forward(self, mask, image, labels=None, features=False):
        """The logit map (with the pixel critic: [PatchGAN map, pixel map]); with ``features=True``
        also the PatchGAN's activations after every LeakyReLU."""
        pair = self._pair(mask, image, labels)
        x, activations = self._patch(pair, features)
        logits = x if self.pixel is None else [x, self.pixel(pair)]
        return (logits, activations) if features else logits

    def patch_features(self, mask, image, labels=None):
        """The PatchGAN's activations only (feature matching's real side: no logits needed)."""
        return self._patch(self._pair(mask, image, labels), True)[1]


class LatentEncoder(nn.Module):
    """Slice (B, 1, S, S) in [-1, 1] -> (mean, log-variance) of q(z | slice), each (B, latent_dim).

    Stride-2 4x4 convolutions (no normalisation: a batch statistic would tie a slice's code to its
    batch) down to 8 x 8, averaged over the positions, then one linear layer for both outputs."""

    def __init__(self, image_size=128, ndf=32, latent_dim=100):
        super().__init__()
        self.config = dict(image_size=image_size, ndf=ndf, latent_dim=latent_dim)
        levels = unet_depth(image_size) - int(math.log2(SEED_PLANE))
        layers, width = [], 1
        for level in range(levels):
            out = ndf * min(2 ** level, 4)
            layers += [nn.Conv2d(width, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.posterior = nn.Linear(width, 2 * latent_dim)
        init_weights(self)

    def forward(self, image):
        mean, log_variance = self.posterior(self.features(image)).chunk(2, dim=1)
        return mean, log_variance


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchDiscriminators, the k-th on the pair shrunk k times by a 3 x 3 stride-2 average
    (pix2pixHD); the same calls as PatchDiscriminator, with every critic's logit maps in one list."""

    def __init__(self, scales=2, **patch_options):
        super().__init__()
        if scales < 2:
            raise ValueError(f"critic_scales must be at least 2 for a multi-scale critic, got {scales}")
        self.critics = nn.ModuleList([PatchDiscriminator(**patch_options) for _ in range(scales)])
        self.config = dict(self.critics[0].config, critic_scales=scales)

    @staticmethod
    def shrink(x):
        return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)

    def forward(self, mask, image, labels=None, features=False):
        logits, activations = [], []
        for critic in self.critics:
            out = critic(mask, image, labels, features=features)
            maps, layers = out if features else (out, [])
            logits += maps if isinstance(maps, list) else [maps]
            activations += layers
            mask, image = self.shrink(mask), self.shrink(image)
        return (logits, activations) if features else logits

    def patch_features(self, mask, image, labels=None):
        activations = []
        for critic in self.critics:
            activations += critic.patch_features(mask, image, labels)
            mask, image = self.shrink(mask), self.shrink(image)
        return activations


def receptive_field(discriminator):
    """Receptive field in pixels of one output logit of a PatchDiscriminator's PatchGAN map."""
    field = 1
    for layer in reversed([m for m in discriminator.model if isinstance(m, (nn.Conv2d, Blur))]):
        stride, kernel = (layer.stride, layer.kernel_size) if isinstance(layer, Blur) else \
            (layer.stride[0], layer.kernel_size[0])
        field = (field - 1) * stride + kernel
    return field


def init_weights(module, std=0.02):
    """pix2pix initialisation: conv and linear weights ~ N(0, std), norm scales ~ N(1, std)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)


def build_networks(image_size, ngf, ndf, latent_dim, latent_mode, norm, num_classes, upsample="transpose",
                   mask_norm=False, spectral_norm=False, mask_resize="nearest", noise_inputs=False,
                   blur_downsampling=False, pixel_critic=False, sharp_stem=False, output_upsample="",
                   full_res_convs=0, critic_scales=1):
    """The generator and discriminator of one model, from plain settings."""
    generator = UNetGenerator(image_size, ngf, latent_dim, latent_mode, norm, num_classes, upsample, mask_norm,
                              mask_resize, noise_inputs, output_upsample, full_res_convs)
    critic = dict(ndf=ndf, norm=norm, num_classes=num_classes, spectral_norm=spectral_norm,
                  blur_downsampling=blur_downsampling, pixel_critic=pixel_critic, sharp_stem=sharp_stem)
    if critic_scales < 1:
        raise ValueError(f"critic_scales must be at least 1, got {critic_scales}")
    discriminator = PatchDiscriminator(**critic) if critic_scales == 1 else \
        MultiScaleDiscriminator(critic_scales, **critic)
    return generator, discriminator
