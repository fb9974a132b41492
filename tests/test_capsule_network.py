"""The capsule classifier and ResNet50 builders: sizes, routing paths, weights loading."""
import numpy as np
import pytest
import torch

from capsule_classifier.network import (CapsuleClassifier, ConvCapsuleLayer, ResNetClassifier,
                                        count_parameters, make_model)


def test_study_network_has_the_papers_parameter_count():
    model = CapsuleClassifier(image_size=512)
    assert count_parameters(model) == (3_827_660, 3_827_660)
    assert model.fc[0].in_features == 841 and model.fc[3].out_features == 420


@pytest.mark.parametrize("size", [64, 128, 512])
def test_study_network_output_shape(size):
    torch.manual_seed(0)
    model = CapsuleClassifier(image_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(1 if size == 512 else 2, 1, size, size))
    assert out.shape == (1 if size == 512 else 2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [64, 128])
def test_compact_preset_output_and_embedding(size):
    model = make_model("capsule", image_size=size, preset="compact").eval()
    x = torch.rand(3, 1, size, size)
    with torch.no_grad():
        assert model(x).shape == (3, 3)
        assert model.embed(x).shape[0] == 3


@pytest.mark.parametrize("size, stride, kernel", [(64, 1, 5), (128, 2, 5), (256, 4, 5), (512, 8, 9)])
def test_compact_stem_brings_every_size_to_64_pixels(size, stride, kernel):
    model = make_model("capsule", image_size=size, preset="compact")
    conv = model.stem[0]
    assert model.config["stem_stride"] == stride and conv.kernel_size == (kernel, kernel)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == 64


def test_fast_routing_equals_general_routing_outputs_and_gradients():
    torch.manual_seed(0)
    fast = ConvCapsuleLayer(1, 1, 8, 16, routing="fast")
    general = ConvCapsuleLayer(1, 1, 8, 16, routing="general")
    general.load_state_dict(fast.state_dict())
    x = torch.randn(3, 1, 8, 16, 16)
    x_fast, x_general = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fast, out_general = fast(x_fast), general(x_general)
    assert out_fast.shape == (3, 1, 16, 8, 8)
    torch.testing.assert_close(out_fast, out_general, rtol=1e-6, atol=1e-6)
    out_fast.pow(2).sum().backward()
    out_general.pow(2).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_general.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.conv.weight.grad, general.conv.weight.grad, rtol=1e-5, atol=1e-6)


def test_whole_network_fast_equals_general():
    torch.manual_seed(1)
    fast = CapsuleClassifier(image_size=64, routing="fast").eval()
    general = CapsuleClassifier(image_size=64, routing="general").eval()
    general.load_state_dict(fast.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), general(x))


def test_general_routing_with_several_capsule_types():
    torch.manual_seed(0)
    layer = ConvCapsuleLayer(2, 3, 4, 6, routing="general")
    out = layer(torch.randn(2, 2, 4, 8, 8))
    assert out.shape == (2, 3, 6, 4, 4)
    lengths = out.norm(dim=2)
    assert (lengths < 1).all() and (lengths >= 0).all()      # squashed capsules
    model = CapsuleClassifier(image_size=64, capsule_types=2, routing="general", width=8)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_resnet50_head_channels_and_freezing():
    model = make_model("resnet50", freeze_children=8)
    assert model.backbone.conv1.in_channels == 1
    assert [m.out_features for m in model.head if hasattr(m, "out_features")] == [2048, 2048]
    assert model.final.out_features == 3
    frozen = [all(not p.requires_grad for p in c.parameters()) for c in model.backbone.children()]
    assert all(frozen[:8]) and model.final.weight.requires_grad
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 3)


def test_resnet50_loads_a_local_imagenet_file(tmp_path):
    from torchvision.models import resnet50
    torch.manual_seed(0)
    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = make_model("resnet50", pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_resnet50_says_what_to_do_without_network_or_file(monkeypatch, tmp_path):
    from torchvision.models import ResNet50_Weights

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="--pretrained=/path/to/"):
        make_model("resnet50", pretrained="imagenet")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        make_model("resnet50", pretrained=str(tmp_path / "missing.pth"))


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        make_model("vgg")
    assert isinstance(make_model("resnet"), ResNetClassifier)


def test_scaled_norm_keeps_squash_out_of_saturation():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 32, 32)
    lengths = {}
    for scaled in (False, True):
        layer = ConvCapsuleLayer(1, 1, 8, 64, scaled_norm=scaled).train()
        lengths[scaled] = layer(x).norm(dim=2).mean().item()
    assert lengths[False] > 0.95 and 0.3 < lengths[True] < 0.8


@pytest.mark.parametrize("vertical", [True, False])
def test_flip_averaged_prediction_is_the_mean_over_the_trained_flips(vertical):
    from capsule_classifier.engine import predict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))   # sees orientation
    images, cpu = torch.rand(5, 8, 8), torch.device("cpu")
    views = [images, images.flip(-1)] + ([images.flip(-2), images.flip(-1).flip(-2)] if vertical else [])
    expected = sum(predict(model, v, cpu) for v in views) / len(views)
    averaged = predict(model, images, cpu, flips=True, vertical_flips=vertical)
    assert averaged.shape == (5, 3)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged, predict(model, images, cpu))


def test_warped_prediction_averages_rotated_and_scaled_views_within_the_training_range():
    from capsule_classifier.augment import MAX_ROTATION_DEG, MAX_SCALE, fixed_affine
    from capsule_classifier.engine import TEST_TIME_WARPS, predict

    assert (1.0, 0.0) in TEST_TIME_WARPS and len(set(TEST_TIME_WARPS)) == len(TEST_TIME_WARPS) > 1
    for scale, degrees in TEST_TIME_WARPS:      # views the training augmentation could have shown
        assert abs(scale - 1) <= MAX_SCALE + 1e-9 and abs(degrees) <= MAX_ROTATION_DEG
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3))
    images, cpu = torch.rand(5, 16, 16), torch.device("cpu")
    x = images.unsqueeze(1)
    warped = [fixed_affine(x, s, d).squeeze(1) for s, d in TEST_TIME_WARPS]
    expected = sum(predict(model, w, cpu, flips=True, vertical_flips=False) for w in warped) / len(warped)
    averaged = predict(model, images, cpu, flips=True, vertical_flips=False, warps=True)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged, predict(model, images, cpu, flips=True, vertical_flips=False), atol=1e-4)
    # the warp itself: no change at (1, 0); a quarter turn moves a corner pixel to the next corner
    np.testing.assert_allclose(fixed_affine(x, 1.0, 0.0), x, atol=1e-6)
    dot = torch.zeros(1, 1, 16, 16)
    dot[0, 0, 2, 2] = 1
    turned = fixed_affine(dot, 1.0, 90.0)[0, 0]
    assert turned[2, 2] < 0.01 and turned.max() > 0.99
    shrunk = fixed_affine(torch.ones(1, 1, 16, 16), 0.5, 0.0)[0, 0]   # scaled about the centre, zero fill
    assert shrunk[8, 8] == 1 and shrunk[0, 0] == 0
