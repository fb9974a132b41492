"""The class-conditional stretch adversary: gradient reversal, the loss restricted to the stretches of
the slice's class, training beside the model, exact resume, refusals."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from capsule_classifier import stretch_adversary
from capsule_classifier.checkpoint import load_checkpoint
from capsule_classifier.data import load_sources
from capsule_classifier.engine import TrainConfig, fit
from capsule_classifier.experiment import Experiment, run_experiment
from capsule_classifier.network import make_model
from capsule_classifier.stretch_adversary import (StretchAdversary, reversal_strength, reverse_gradient,
                                                   training_stretches)

SMALL = {"widths": (8, 8, 16, 16), "stem_channels": 4}


def test_the_reversal_flips_and_scales_the_gradient_only():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.25 * torch.arange(3.0).expand(4, 3))
    assert reversal_strength(0) == 0 and 0.99 < reversal_strength(1) <= 1
    assert reversal_strength(0.2) < reversal_strength(0.5)


def test_the_loss_counts_only_the_stretches_that_hold_the_slice_class():
    counts = np.array([[3, 1, 0], [0, 0, 2]])     # class 0 lies in stretches 0 and 1, class 1 in stretch 2
    adversary = StretchAdversary(8, counts)
    logits = torch.tensor([[0.0, 0.0, 50.0], [3.0, -2.0, 0.0]])
    loss = adversary.loss(logits, torch.tensor([0, 2]), torch.tensor([0, 1]))
    # slice 0: stretch 2 is not its class's, so its large logit is ignored (log 2); slice 1: one stretch, 0
    assert loss.item() == pytest.approx(np.log(2) / 2)
    # a head that knows the class only: the entropy of the stretch given the class, over the 6 slices
    assert adversary.blind_loss == pytest.approx((3 * np.log(4 / 3) + np.log(4)) / 6)
    assert adversary.epoch_loss() == pytest.approx(loss.item()) and adversary.epoch_loss() is None


def test_the_map_head_predicts_the_stretch_at_every_position():
    adversary = StretchAdversary(4, np.array([[3, 1, 0], [0, 0, 2]]), reads="map")
    logits = adversary(torch.randn(2, 4, 3, 3), 1.0)
    assert logits.shape == (2, 3, 3, 3)                              # (slices, stretches, h, w)
    stretches, labels = torch.tensor([1, 2]), torch.tensor([0, 1])
    loss = adversary.loss(logits, stretches, labels)
    by_position = [adversary.loss(logits[:, :, y, x], stretches, labels) for y in range(3) for x in range(3)]
    assert loss.item() == pytest.approx(torch.stack(by_position).mean().item(), rel=1e-5)
    assert np.isfinite(loss.item())                                 # other classes' stretches masked, not NaN
    with pytest.raises(ValueError, match="stretch_adversary_reads"):
        StretchAdversary(4, np.ones((1, 2)), reads="max")


def test_the_trunk_gets_the_reversed_gradient_and_the_head_the_plain_one():
    adversary = StretchAdversary(4, np.ones((1, 3)))
    features = torch.randn(6, 4, 2, 2, requires_grad=True)
    stretches, labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(6, dtype=torch.long)
    adversary.loss(adversary(features, 0.0), stretches, labels).backward()
    assert features.grad.abs().sum() == 0                           # strength 0: the trunk is untouched
    assert adversary.head[0].weight.grad.abs().sum() > 0            # while the head learns
    head_grad = adversary.head[0].weight.grad.clone()
    adversary.zero_grad()
    features.grad = None
    plain = features.detach().clone().requires_grad_(True)
    adversary.loss(adversary.head(plain.mean((-2, -1))), stretches, labels).backward()
    adversary.zero_grad()
    adversary.loss(adversary(features, 0.5), stretches, labels).backward()
    assert torch.allclose(features.grad, -0.5 * plain.grad, atol=1e-6)
    assert torch.allclose(adversary.head[0].weight.grad, head_grad, atol=1e-6)


@pytest.fixture
def small_stretches(monkeypatch):
    """Stretches of 6 slices, so that the 36-slice blob dataset holds six of them."""
    cut = stretch_adversary.stretch_ids
    monkeypatch.setattr(stretch_adversary, "stretch_ids", lambda patients, sources: cut(patients, sources, 6))


def test_training_with_the_adversary_logs_it_resumes_exactly_and_leaves_the_model_alone(
        blob_dataset, tmp_path, small_stretches):
    data = load_sources([blob_dataset])
    config = TrainConfig(epochs=2, batch_size=8, stretch_adversary=0.3)
    cpu = torch.device("cpu")

    def fresh():
        torch.manual_seed(0)
        return make_model("capsule", image_size=64, preset="residual", mask_head=False, **SMALL)

    said = []
    fit(fresh(), "capsule", data, None, config, str(tmp_path / "whole"), cpu, log=said.append)
    record = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert all(row["stretch_loss"] > 0 for row in record["history"])
    assert any("stretch loss" in line and "blind" in line for line in said)
    assert {"head.0.weight", "head.2.weight"} <= set(record["adversary_state_dict"])

    def interrupt(epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(fresh(), "capsule", data, None, config, str(tmp_path / "cut"), cpu, on_epoch_end=interrupt,
            log=lambda *a: None)
    with pytest.raises(ValueError, match=r"--stretch_adversary=0.0 \(the run used 0.3\)"):
        fit(fresh(), "capsule", data, None, TrainConfig(epochs=2, batch_size=8), str(tmp_path / "cut"), cpu,
            resume=True, log=lambda *a: None)
    fit(fresh(), "capsule", data, None, config, str(tmp_path / "cut"), cpu, resume=True, log=lambda *a: None)
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    for name in ("state_dict", "adversary_state_dict"):
        assert all(torch.equal(record[name][k], resumed[name][k]) for k in record[name]), name
    fit(fresh(), "capsule", data, None, TrainConfig(epochs=2, batch_size=8), str(tmp_path / "plain"), cpu,
        log=lambda *a: None)
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")["state_dict"]
    assert set(record["state_dict"]) == set(plain)                  # the model holds no head: prediction unchanged
    assert not all(torch.equal(record["state_dict"][k], plain[k]) for k in plain)    # the trunk felt it


def test_the_adversary_is_refused_where_it_cannot_work(blob_dataset, tmp_path):
    common = dict(model_dir=str(tmp_path), cross_validation=False, device="cpu")
    config = TrainConfig(epochs=1, batch_size=8, stretch_adversary=0.3)
    with pytest.raises(ValueError, match="residual capsule network"):
        run_experiment(Experiment(run_name="compact", data_path=[str(blob_dataset)], capsule_preset="compact",
                                  capsule_options={"width": 8}, config=config, **common), log=lambda *a: None)
    with pytest.raises(ValueError, match="0 \\(off\\) or a positive weight"):
        run_experiment(Experiment(run_name="negative", data_path=[str(blob_dataset)], capsule_options=SMALL,
                                  config=TrainConfig(epochs=1, batch_size=8, stretch_adversary=-1.0), **common),
                       log=lambda *a: None)
    with pytest.raises(ValueError, match="nothing to tell apart"):       # 36 slices: a single stretch
        run_experiment(Experiment(run_name="small", data_path=[str(blob_dataset)], capsule_options=SMALL,
                                  config=config, **common), log=lambda *a: None)
    unnumbered = SimpleNamespace(labels=np.array([0, 1]), patient_ids=np.array(["a", "b"]),
                                 source_ids=np.array(["slice_a", "slice_b"]))
    with pytest.raises(ValueError, match="--stretch_adversary needs figshare-numbered slices"):
        training_stretches(unnumbered)


def test_the_feature_hook_goes_however_the_epoch_ends():
    from capsule_classifier.engine import capture_output
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        with capture_output(layer) as captured:
            layer(torch.ones(1, 2))
            assert captured["output"].shape == (1, 2)
            raise RuntimeError("interrupted")
    assert not layer._forward_hooks


def test_the_adversary_trains_with_the_study_augmentation_rotated_copies(blob_dataset, tmp_path, small_stretches):
    config = TrainConfig(epochs=1, batch_size=8, stretch_adversary=0.3, augmentation="study", tumour_paste=0,
                         stretch_adversary_reads="map")
    torch.manual_seed(0)
    model = make_model("capsule", image_size=64, preset="residual", **SMALL)
    history, _ = fit(model, "capsule", load_sources([blob_dataset]), None, config, str(tmp_path / "study"),
                     torch.device("cpu"), log=lambda *a: None)
    assert history[0]["stretch_loss"] > 0 and not model.stages[-1]._forward_hooks


def test_what_the_head_reads_must_match_on_resume_only_when_both_runs_have_a_head():
    from dataclasses import asdict

    from capsule_classifier.engine import check_resumable
    saved = {"train_config": asdict(TrainConfig(stretch_adversary=0.3))}           # saved before the option: "mean"
    del saved["train_config"]["stretch_adversary_reads"]
    check_resumable(saved, TrainConfig(stretch_adversary=0.3), None, "older_run")
    with pytest.raises(ValueError, match=r"--stretch_adversary_reads='map' \(the run used 'mean'\)"):
        check_resumable(saved, TrainConfig(stretch_adversary=0.3, stretch_adversary_reads="map"), None, "older_run")
    plain = {"train_config": asdict(TrainConfig())}
    check_resumable(plain, TrainConfig(stretch_adversary_reads="map"), None, "plain_run")      # moot without a head
    with pytest.raises(ValueError, match="stretch_adversary_reads"):
        run_experiment(Experiment(run_name="bad", data_path=["unused.h5"], device="cpu",
                                  config=TrainConfig(stretch_adversary_reads="max")), log=lambda *a: None)
