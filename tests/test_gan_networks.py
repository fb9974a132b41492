"""GAN networks: shapes follow the image size, the latent vector and the class change the output."""
import pytest
import torch

from generative_model.networks import (PatchDiscriminator, UNetGenerator, build_networks,
                                       receptive_field, unet_depth)


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("mode", ["inject", "study"])
def test_shapes_follow_image_size(size, mode):
    generator, discriminator = build_networks(size, 4, 4, 100, mode, "batch", 0)
    mask = torch.zeros(2, 1, size, size)
    image = generator(mask, torch.randn(2, 100))
    assert image.shape == (2, 1, size, size)
    assert image.abs().max() <= 1
    assert len(generator.down) == unet_depth(size)
    logits = discriminator(mask, image)
    # 70x70 PatchGAN: three stride-2 convolutions, then two stride-1 4x4 ones
    assert logits.shape == (2, 1, size // 8 - 2, size // 8 - 2)


def test_patchgan_receptive_field_is_70():
    assert receptive_field(PatchDiscriminator(ndf=4)) == 70


def test_study_latent_is_a_full_plane_and_inject_is_small():
    study = UNetGenerator(128, 4, latent_mode="study")
    inject = UNetGenerator(128, 4, latent_mode="inject")
    assert study.latent_plane.weight.shape == (128 * 128, 100)
    assert inject.latent_plane.weight.numel() < 100 * 100


@pytest.mark.parametrize("mode", ["inject", "study"])
def test_different_latent_gives_different_image(mode):
    torch.manual_seed(0)
    generator = UNetGenerator(64, 8, latent_mode=mode).eval()
    mask = (torch.rand(1, 1, 64, 64) > 0.9).float() * 2 - 1
    z1, z2 = torch.randn(2, 1, 100)
    with torch.no_grad():
        a, again, b = generator(mask, z1), generator(mask, z1), generator(mask, z2)
    assert torch.equal(a, again)
    assert (a - b).abs().mean() > 1e-4


def test_class_planes_change_the_output():
    torch.manual_seed(0)
    generator = UNetGenerator(64, 8, num_classes=3, norm="instance").eval()
    mask, z = torch.zeros(2, 1, 64, 64), torch.randn(1, 100).repeat(2, 1)
    with torch.no_grad():
        out = generator(mask, z, torch.tensor([0, 2]))
    assert (out[0] - out[1]).abs().mean() > 1e-5
    discriminator = PatchDiscriminator(ndf=4, num_classes=3, norm="instance")
    assert discriminator(mask, out, torch.tensor([0, 2])).shape == (2, 1, 6, 6)


def test_initialisation_is_normal_002():
    generator = UNetGenerator(64, 16)
    weights = torch.cat([m.weight.flatten() for m in generator.modules()
                         if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert abs(weights.mean().item()) < 0.002


def test_bad_size_and_mode_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        UNetGenerator(100, 4)
    with pytest.raises(ValueError, match="latent_mode"):
        UNetGenerator(64, 4, latent_mode="nope")
    with pytest.raises(ValueError, match="norm"):
        UNetGenerator(64, 4, norm="layer")


def test_learning_rate_is_constant_then_decays_linearly():
    from generative_model.settings import GanSettings
    from generative_model.trainer import learning_rate
    settings = GanSettings(epochs=6, decay_start=0.5, lr=2e-4)
    rates = [learning_rate(epoch, settings) / 2e-4 for epoch in range(6)]
    assert rates == pytest.approx([1, 1, 1, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("upsample,mask_norm", [("resize", False), ("transpose", True), ("resize", True)])
def test_artefact_options_keep_shapes_and_rebuild_from_config(upsample, mask_norm):
    generator = UNetGenerator(64, 4, num_classes=3, upsample=upsample, mask_norm=mask_norm).eval()
    mask, z, labels = torch.rand(2, 1, 64, 64) * 2 - 1, torch.randn(2, 100), torch.tensor([0, 2])
    out = generator(mask, z, labels)
    assert out.shape == (2, 1, 64, 64) and out.abs().max() <= 1
    rebuilt = UNetGenerator(**generator.config).eval()
    rebuilt.load_state_dict(generator.state_dict())
    torch.testing.assert_close(rebuilt(mask, z, labels), out)
    has = {type(m).__name__ for m in generator.modules()}
    assert ("ConvTranspose2d" in has) == (upsample == "transpose") and ("MaskNorm" in has) == mask_norm


def test_mask_norm_lets_the_mask_reach_every_decoder_level():
    from generative_model.networks import MaskNorm
    norm = MaskNorm("instance", 8, 1)
    x = torch.randn(2, 8, 16, 16)
    blank, drawn = torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
    drawn[:, :, 20:40, 20:40] = 1
    assert not torch.allclose(norm(x, blank), norm(x, drawn))


def test_area_mask_resize_keeps_a_thin_outline_that_nearest_loses():
    from generative_model.networks import MaskNorm
    x = torch.randn(1, 8, 16, 16)
    blank, outline = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    outline[:, :, 10:50, 33] = 1                   # a 1-px line on a column nearest resizing skips
    nearest, area = MaskNorm("instance", 8, 1).eval(), MaskNorm("instance", 8, 1, resize="area").eval()
    area.load_state_dict(nearest.state_dict())
    torch.testing.assert_close(nearest(x, blank), nearest(x, outline))   # the outline vanished
    assert not torch.allclose(area(x, blank), area(x, outline))
    generator = UNetGenerator(64, 4, mask_norm=True, upsample="resize", mask_resize="area")
    assert UNetGenerator(**generator.config).config["mask_resize"] == "area"
    with pytest.raises(ValueError, match="mask_resize"):
        MaskNorm("batch", 8, 1, resize="bicubic")


def test_spectral_norm_and_discriminator_features():
    discriminator = PatchDiscriminator(ndf=4, spectral_norm=True)
    mask, image = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    logits, activations = discriminator(mask, image, features=True)
    torch.testing.assert_close(logits, discriminator(mask, image))
    assert len(activations) == 4 and receptive_field(discriminator) == 70
    convs = [m for m in discriminator.model if isinstance(m, torch.nn.Conv2d)]
    assert all(hasattr(c, "parametrizations") for c in convs)
    rebuilt = PatchDiscriminator(**discriminator.config)
    rebuilt.load_state_dict(discriminator.state_dict())


def test_noise_inputs_start_silent_then_vary_the_slice_reproducibly():
    torch.manual_seed(0)
    generator = UNetGenerator(64, 4, num_classes=3, upsample="resize", mask_norm=True, noise_inputs=True).eval()
    mask, z, labels = torch.rand(2, 1, 64, 64) * 2 - 1, torch.randn(2, 100), torch.tensor([0, 2])
    seeded = lambda seed: torch.Generator().manual_seed(seed)   # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(generator(mask, z, labels, seeded(1)), generator(mask, z, labels, seeded(2)))
        for strength in generator.noise_strength:          # zero at the start, as StyleGAN's
            assert not strength.any()
            strength.fill_(0.5)
        one, again, other = (generator(mask, z, labels, seeded(s)) for s in (1, 1, 2))
    torch.testing.assert_close(one, again)
    assert (one - other).abs().mean() > 1e-3
    assert len(generator.noise_strength) == 5 and generator.config["noise_inputs"]   # every level but the output
    rebuilt = UNetGenerator(**generator.config).eval()
    rebuilt.load_state_dict(generator.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(mask, z, labels, seeded(1)), one)
    assert "noise_inputs" not in UNetGenerator(64, 4).config          # older checkpoints' configs unchanged


def test_output_upsample_changes_only_the_last_doubling():
    def modes(generator):
        return [m.mode for m in generator.modules() if isinstance(m, torch.nn.Upsample)]
    generator = UNetGenerator(64, 4, upsample="bilinear", output_upsample="resize")
    assert modes(generator) == ["bilinear"] * 5 + ["nearest"]        # 6 doublings at 64 px, the output's last
    assert modes(UNetGenerator(**generator.config)) == modes(generator)
    assert modes(UNetGenerator(64, 4, upsample="resize", output_upsample="bilinear")) == ["nearest"] * 5 + ["bilinear"]
    assert "output_upsample" not in UNetGenerator(64, 4, upsample="bilinear").config   # older configs unchanged
    assert "output_upsample" not in UNetGenerator(64, 4, upsample="resize", output_upsample="resize").config
    from generative_model.settings import GanSettings
    from generative_model.trainer import networks_of
    built, _ = networks_of(GanSettings(image_size=64, ngf=4, ndf=4, upsample="bilinear", output_upsample="resize"))
    assert modes(built) == modes(generator)                          # the flag reaches train.py's networks
    with pytest.raises(ValueError, match="output_upsample"):
        UNetGenerator(64, 4, output_upsample="lanczos")


@pytest.mark.parametrize("smooth", ["bilinear", "bicubic"])
def test_smooth_upsampling_and_blurred_discriminator_rebuild_from_config(smooth):
    generator = UNetGenerator(64, 4, upsample=smooth).eval()
    assert [m.mode for m in generator.modules() if isinstance(m, torch.nn.Upsample)] == [smooth] * 6
    mask, z = torch.rand(2, 1, 64, 64) * 2 - 1, torch.randn(2, 100)
    rebuilt = UNetGenerator(**generator.config).eval()
    rebuilt.load_state_dict(generator.state_dict())
    torch.testing.assert_close(rebuilt(mask, z), generator(mask, z))
    critic = PatchDiscriminator(8, blur_downsampling=True, spectral_norm=True).eval()
    assert sum(type(m).__name__ == "Blur" for m in critic.modules()) == 3      # before the three stride-2 convs
    mask, image = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    logits = critic(mask, image)
    rebuilt = PatchDiscriminator(**critic.config).eval()
    rebuilt.load_state_dict(critic.state_dict())
    assert logits.shape == PatchDiscriminator(8)(mask, image).shape
    torch.testing.assert_close(rebuilt(mask, image), logits)
    from generative_model.networks import Blur
    flat = torch.full((1, 2, 8, 8), 0.3)
    torch.testing.assert_close(Blur(2)(flat), flat)                         # a low-pass: flat stays flat
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    assert Blur(1)(checker.view(1, 1, 8, 8))[..., 1:-1, 1:-1].abs().max() < 1e-6   # and the finest grid vanishes


def test_sharp_stem_sees_the_finest_grid_that_the_blurred_input_hides():
    from generative_model.networks import Blur
    blurred = PatchDiscriminator(8, num_classes=3, blur_downsampling=True, spectral_norm=True).eval()
    sharp = PatchDiscriminator(8, num_classes=3, blur_downsampling=True, spectral_norm=True, sharp_stem=True).eval()
    first = sharp.model[0]
    assert isinstance(first, torch.nn.Conv2d) and first.stride == (1, 1)       # no blur before it, no stride
    assert isinstance(sharp.model[2], Blur) and sharp.model[2].stride == 2     # then a BlurPool
    mask, image, labels = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64), torch.tensor([0, 2])
    assert sharp(mask, image, labels).shape == blurred(mask, image, labels).shape == (2, 1, 6, 6)
    assert receptive_field(sharp) == receptive_field(blurred) - 1 == 83         # 70 px plus the blurs' reach
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 0.2 - 0.1).expand(2, 1, 64, 64)
    torch.testing.assert_close(blurred(mask, image + checker, labels), blurred(mask, image, labels))
    assert (sharp(mask, image + checker, labels) - sharp(mask, image, labels)).abs().max() > 1e-4
    rebuilt = PatchDiscriminator(**sharp.config).eval()
    rebuilt.load_state_dict(sharp.state_dict())
    torch.testing.assert_close(rebuilt(mask, image, labels), sharp(mask, image, labels))
    assert "sharp_stem" not in blurred.config                                  # older configs unchanged
    with pytest.raises(ValueError, match="blur_downsampling"):
        PatchDiscriminator(8, sharp_stem=True)


def test_pixel_critic_judges_every_pixel_and_leaves_feature_matching_to_the_patchgan():
    critic = PatchDiscriminator(8, num_classes=3, spectral_norm=True, pixel_critic=True).eval()
    mask, image, labels = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64), torch.tensor([0, 2])
    patch, pixel = critic(mask, image, labels)
    assert pixel.shape == (2, 1, 64, 64) and patch.shape == (2, 1, 6, 6)
    (logits, activations) = critic(mask, image, labels, features=True)
    torch.testing.assert_close(logits[1], pixel)
    assert len(activations) == 4                                  # the PatchGAN's layers only
    for ours, theirs in zip(critic.patch_features(mask, image, labels), activations):
        torch.testing.assert_close(ours, theirs)
    # a change of one pixel reaches only the pixel logits within the 7 x 7 field around it
    moved = image.clone()
    moved[:, :, 30, 30] += 1.0
    changed = (critic(mask, moved, labels)[1] - pixel).abs()[0, 0] > 0
    rows, cols = changed.nonzero(as_tuple=True)
    assert changed.any() and rows.min() >= 27 and rows.max() <= 33 and cols.min() >= 27 and cols.max() <= 33
    rebuilt = PatchDiscriminator(**critic.config).eval()
    rebuilt.load_state_dict(critic.state_dict())
    torch.testing.assert_close(rebuilt(mask, image, labels)[1], pixel)
    assert "pixel_critic" not in PatchDiscriminator(8).config     # older checkpoints' configs unchanged


def test_full_res_head_adds_convolutions_at_full_resolution_and_rebuilds_from_config():
    def full_res_convs(generator, size):
        sizes = []
        hooks = [m.register_forward_hook(lambda module, args, out: sizes.append(out.shape[-1]))
                 for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            out = generator(mask, z, labels)
        for hook in hooks:
            hook.remove()
        assert out.shape == (2, 1, size, size) and out.abs().max() <= 1
        return sizes.count(size)
    mask, z, labels = torch.rand(2, 1, 64, 64) * 2 - 1, torch.randn(2, 100), torch.tensor([0, 2])
    plain = UNetGenerator(64, 4, num_classes=3, upsample="bilinear", mask_norm=True).eval()
    headed = UNetGenerator(64, 4, num_classes=3, upsample="bilinear", mask_norm=True, full_res_convs=2).eval()
    assert full_res_convs(plain, 64) == 1            # pix2pix: the last doubling's convolution draws the image
    assert full_res_convs(headed, 64) == 4           # that one, the two of the head, the output convolution
    assert headed.config["full_res_convs"] == 2 and "full_res_convs" not in plain.config   # older configs unchanged
    rebuilt = UNetGenerator(**headed.config).eval()
    rebuilt.load_state_dict(headed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(mask, z, labels), headed(mask, z, labels))
        # the head sees the input planes as given, negative values included: with the U-Net's own
        # path silenced, a mask moved from -1 to -0.5 in one corner still moves the output there
        silence = headed.up[-1].register_forward_hook(lambda module, args, out: torch.zeros_like(out))
        dark, lighter = -torch.ones(2, 1, 64, 64), -torch.ones(2, 1, 64, 64)
        lighter[:, :, :8, :8] = -0.5
        moved = (headed(lighter, z, labels) - headed(dark, z, labels)).abs()
        silence.remove()
        assert moved[:, :, :6, :6].mean() > 1e-4 and moved[:, :, 20:, 20:].max() < 1e-6
    from generative_model.settings import GanSettings
    from generative_model.trainer import networks_of
    built, _ = networks_of(GanSettings(image_size=64, ngf=4, ndf=4, full_res_convs=3))
    assert built.config["full_res_convs"] == 3 and len(built.head) == 3     # the flag reaches train.py's networks
    with pytest.raises(ValueError, match="full_res_convs"):
        UNetGenerator(64, 4, full_res_convs=-1)


def test_a_multi_scale_critic_judges_the_pair_at_every_halving():
    from generative_model.networks import MultiScaleDiscriminator
    torch.manual_seed(0)
    critic = MultiScaleDiscriminator(3, ndf=4, num_classes=3, spectral_norm=True).eval()
    mask, image, labels = torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128), torch.tensor([0, 2])
    logits, activations = critic(mask, image, labels, features=True)
    single = PatchDiscriminator(ndf=4, num_classes=3)
    assert [m.shape[-1] for m in logits] == [single(mask, image, labels).shape[-1],
                                            single(mask[..., :64, :64], image[..., :64, :64], labels).shape[-1],
                                            single(mask[..., :32, :32], image[..., :32, :32], labels).shape[-1]]
    assert len(activations) == 3 * 4 and len(critic.patch_features(mask, image, labels)) == 12
    # the k-th critic judges the pair averaged down k times, with its own weights
    shrink = critic.shrink
    assert torch.allclose(logits[0], critic.critics[0](mask, image, labels))
    assert torch.allclose(logits[2], critic.critics[2](shrink(shrink(mask)), shrink(shrink(image)), labels))
    assert not torch.allclose(logits[1], critic.critics[2](shrink(mask), shrink(image), labels))
    assert critic.config["critic_scales"] == 3 and critic.config["ndf"] == 4
    with pytest.raises(ValueError, match="at least 2"):
        MultiScaleDiscriminator(1, ndf=4)
    with pytest.raises(ValueError, match="critic_scales must be at least 1"):
        build_networks(64, 4, 4, 8, "inject", "batch", 0, critic_scales=0)
    _, two = build_networks(64, 4, 4, 8, "inject", "batch", 0, critic_scales=2)
    assert isinstance(two, MultiScaleDiscriminator)
