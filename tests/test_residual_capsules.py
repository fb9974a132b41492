"""The residual capsule classifier (the default) and the ResNet18 baseline: shapes at every size,
routing that is not saturated, the training-only mask head, rebuilding from a checkpoint."""
import pytest
import torch

from capsule_classifier.network import ResNetClassifier, count_parameters, make_model, model_from_config
from capsule_classifier.residual_capsules import (CROP_LIMITS, ClassCapsules, ResidualCapsuleClassifier,
                                                  tumour_window)


@pytest.mark.parametrize("size, stem_convs", [(64, 1), (128, 2), (256, 3), (512, 4)])
def test_stem_follows_the_image_size(size, stem_convs):
    model = make_model("capsule", image_size=size, preset="residual", stem_channels=4, widths=(4, 8, 8, 8))
    convs = [m for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == stem_convs
    with torch.no_grad():
        logits, mask_logits = model.eval().forward_with_mask(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 3) and mask_logits.shape == (2, 1, 8, 8)   # third stage of a 32 px trunk
    assert ((logits >= 0) & (logits <= model.logit_scale)).all()          # scaled capsule lengths


def test_class_capsules_are_not_saturated_at_the_start():
    """Without dividing the summed predictions, hundreds of primary capsules squash every class
    capsule to length ~1 and the classifier cannot learn (seen in training); with it they differ."""
    torch.manual_seed(0)
    layer = ClassCapsules(types=16, in_dim=8, classes=3, out_dim=16)
    primary = torch.nn.functional.normalize(torch.randn(4, 64, 16, 8), dim=-1) * 0.7
    lengths = layer(primary).norm(dim=-1)
    assert lengths.max() < 0.9 and lengths.std() > 0.01


def test_the_class_whose_predictions_agree_gets_the_longer_capsule():
    layer = ClassCapsules(types=1, in_dim=4, classes=2, out_dim=4)
    both_to_first = torch.zeros(4, 4)
    both_to_first[0, 0] = both_to_first[0, 1] = 1.0
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.eye(4), both_to_first])[None])
    primary = torch.zeros(1, 32, 1, 4)
    primary[:, ::2, 0, 0] = 0.5                # half the capsules point one way, half another:
    primary[:, 1::2, 0, 1] = 0.5               # class 0 keeps them apart, class 1 maps both to one
    lengths = layer(primary).norm(dim=-1)[0]
    assert lengths[1] > 1.3 * lengths[0]


def test_mask_head_is_optional_and_trains_the_trunk():
    model = ResidualCapsuleClassifier(image_size=64, stem_channels=4, widths=(4, 8, 8, 8))
    logits, mask_logits = model.forward_with_mask(torch.rand(2, 1, 64, 64))
    mask_logits.sum().backward()
    assert model.stages[0].body[0].weight.grad.abs().sum() > 0
    bare = ResidualCapsuleClassifier(image_size=64, stem_channels=4, widths=(4, 8, 8, 8), mask_head=False)
    assert count_parameters(bare)[0] < count_parameters(model)[0]
    with pytest.raises(RuntimeError, match="mask head"):
        bare.forward_with_mask(torch.rand(2, 1, 64, 64))


def test_tumour_window_centres_on_the_predicted_tumour_and_follows_its_size():
    logits = torch.full((2, 1, 8, 8), -10.0)
    logits[0, 0, 1:3, 5:7] = 10.0          # small tumour, upper right
    logits[1, 0, 2:8, 0:6] = 10.0          # large tumour, lower left
    theta = tumour_window(logits)
    # cell centres of an 8-cell axis lie at -7/8, -5/8, ..., 7/8
    torch.testing.assert_close(theta[0, :, 2], torch.tensor([0.5, -0.5]), atol=0.02, rtol=0)
    torch.testing.assert_close(theta[1, :, 2], torch.tensor([-0.25, 0.25]), atol=0.02, rtol=0)
    small, large = theta[0, 0, 0].item(), theta[1, 0, 0].item()
    assert CROP_LIMITS[0] <= small < large <= CROP_LIMITS[1]
    assert theta[0, 0, 0] == theta[0, 1, 1] and theta[0, 0, 1] == 0


def test_tumour_crop_adds_a_second_view_and_needs_the_mask_head():
    model = ResidualCapsuleClassifier(image_size=128, stem_channels=4, widths=(4, 8, 8, 8), tumour_crop=True)
    assert model.crop_branch.config["image_size"] == 32
    x = torch.rand(2, 1, 128, 128)
    logits, mask_logits = model.forward_with_mask(x)
    assert logits.shape == (2, 3) and mask_logits.shape == (2, 1, 8, 8)
    assert model.embed(x).shape == (2, 3 * 2 * model.config["class_dim"])
    logits.sum().backward()
    assert model.crop_branch.stages[0].body[0].weight.grad.abs().sum() > 0
    assert model.mask_head.weight.grad is None      # the window's position passes no gradient
    rebuilt = model_from_config("capsule", model.config)
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="mask head"):
        ResidualCapsuleClassifier(image_size=128, mask_head=False, tumour_crop=True)


def test_rebuilt_from_its_config_gives_the_same_outputs():
    torch.manual_seed(0)
    model = make_model("capsule", image_size=128, preset="residual", widths=(8, 8, 16, 16)).eval()
    rebuilt = model_from_config("capsule", model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), rebuilt(x))
        assert model.embed(x).shape == (2, 3 * model.config["class_dim"])


def test_study_network_options_are_refused_with_the_residual_preset():
    with pytest.raises(ValueError, match="capsule_types"):
        make_model("capsule", image_size=64, preset="residual", capsule_types=4)
    make_model("capsule", image_size=64, preset="residual", routing="fast", capsule_types=1)  # defaults pass
    with pytest.raises(ValueError, match="multiple of 16"):
        make_model("capsule", image_size=72, preset="residual")


def test_resnet18_baseline():
    model = make_model("resnet18").eval()
    assert isinstance(model, ResNetClassifier) and model.config["depth"] == 18
    assert model.final.in_features == 512 and 11_000_000 < count_parameters(model)[0] < 12_500_000
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)
    assert model_from_config("resnet18", model.config).config["depth"] == 18
    assert model_from_config("resnet50", {"num_classes": 3, "dropout": 0.4}).config["depth"] == 50  # old
    with pytest.raises(ValueError, match="ResNet50 only"):
        make_model("resnet18", pretrained="imagenet")


def test_tumour_level_features_read_brightness_against_the_tissue():
    from capsule_classifier.tumour_levels import NUM_LEVELS, tumour_level_features
    images = torch.zeros(2, 1, 64, 64)
    images[:, :, 8:56, 8:56] = 0.4                             # tissue on a black background
    tumour = torch.zeros(2, 1, 64, 64)
    tumour[:, :, 24:40, 24:40] = 1                             # 256 of 4,096 pixels
    images[0][tumour[0] > 0] = 0.8                             # bright tumour (twice the tissue)
    images[1][tumour[1] > 0] = 0.4                             # tumour as bright as the tissue
    features = tumour_level_features(images, tumour)
    assert features.shape == (2, NUM_LEVELS)
    torch.testing.assert_close(features[:, 0], torch.log(torch.tensor([0.801 / 0.401, 1.0])), atol=0.01, rtol=0)
    torch.testing.assert_close(features[:, 1], torch.zeros(2), atol=1e-3, rtol=0)   # uniform inside
    torch.testing.assert_close(features[:, 2], torch.zeros(2), atol=0.01, rtol=0)   # ring = tissue
    torch.testing.assert_close(features[:, 3], torch.log(torch.tensor([256 / 4096 + 1e-3] * 2)), atol=1e-3, rtol=0)
    # ratios: a global contrast change leaves them; the same tumour probabilities at a coarser grid agree
    torch.testing.assert_close(tumour_level_features(images * 0.5, tumour)[:, :3], features[:, :3], atol=0.01, rtol=0)
    coarse = torch.nn.functional.avg_pool2d(tumour, 4)
    assert (tumour_level_features(images, coarse)[:, 0] - features[:, 0]).abs().max() < 0.1


def test_tumour_levels_add_an_expert_trained_by_its_own_logits():
    torch.manual_seed(0)
    model = ResidualCapsuleClassifier(image_size=128, stem_channels=4, widths=(4, 8, 8, 8), tumour_levels=True)
    x = torch.rand(4, 1, 128, 128)
    logits, mask_logits, levels_logits = model.forward_with_mask(x)
    assert logits.shape == levels_logits.shape == (4, 3)
    assert mask_logits.shape == (4, 1, 32, 32)                 # the first stage's resolution
    (logits.sum() + levels_logits.sum() + mask_logits.sum()).backward()
    assert model.levels_expert.classify[0].weight.grad.abs().sum() > 0
    assert model.fine_mask.weight.grad.abs().sum() > 0
    model.zero_grad()
    levels_logits = model.forward_with_mask(x)[2]
    levels_logits.sum().backward()                             # the expert reads a detached mask
    assert model.fine_mask.weight.grad is None and model.stages[0].body[0].weight.grad is None
    model.eval()
    with torch.no_grad():
        capsules, _, expert = model._outputs(x)
        torch.testing.assert_close(model(x), model.logit_scale * capsules.norm(dim=-1) + expert)
    rebuilt = model_from_config("capsule", model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), model(x))
    with pytest.raises(ValueError, match="mask head"):
        ResidualCapsuleClassifier(image_size=128, mask_head=False, tumour_levels=True)
