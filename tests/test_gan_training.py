"""GAN training and synthesis on the tiny blob dataset: outputs, resume, generate, checkpoints."""
import csv
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from preprocess.checkpoint_io import CheckpointError, load_checkpoint_file as load_checkpoint, save_checkpoint
from generative_model.synthesis import synthesize
from generative_model.settings import GanSettings
from generative_model.trainer import train_models
from preprocess.dataset import CLASS_NAMES, DatasetWriter, read_attrs, read_column, read_images

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = dict(image_size=64, epochs=1, batch_size=4, ngf=4, ndf=4, pool_size=4, diversity_weight=1.0, conditional=False,
            device="cpu")


@pytest.fixture(scope="module")
def trained_run(blob_dataset, tmp_path_factory):
    """One tiny epoch of the three per-class models on the blob dataset."""
    model_dir = tmp_path_factory.mktemp("gan")
    train_models(blob_dataset, model_dir, "tiny", GanSettings(**TINY))
    return model_dir / "tiny"


@pytest.fixture(scope="module")
def masks_file(blob_dataset, tmp_path_factory):
    """An augmented-mask file made from the blob dataset's masks."""
    path = tmp_path_factory.mktemp("masks") / "masks_64.h5"
    with h5py.File(blob_dataset, "r") as f:
        columns = {name: f[name][()] for name in ("conditions", "tumor_masks", "labels")}
    columns["source_ids"] = read_column(blob_dataset, "source_ids")
    with DatasetWriter(path, image_size=64, fields=tuple(columns)) as out:
        out.append(**columns)
    return path


def test_one_epoch_writes_checkpoint_grid_and_losses(trained_run):
    for name in CLASS_NAMES:
        folder = trained_run / name
        assert (folder / "checkpoint.pt").exists()
        assert (folder / "samples" / "epoch_001.png").exists()
        assert (folder / "losses.png").exists()
        rows = list(csv.DictReader(open(folder / "losses.csv")))
        assert len(rows) == 1 and rows[0]["epoch"] == "1"
        assert np.isfinite([float(rows[0][k]) for k in ("loss_d", "loss_g_gan", "loss_g_l1", "loss_diversity")]).all()
    assert (trained_run / "run.json").exists()


def test_grid_has_mask_real_and_three_fakes(trained_run):
    from PIL import Image
    grid = np.array(Image.open(trained_run / "glioma" / "samples" / "epoch_001.png"))
    assert grid.shape == (4 * 64 + 3 * 2, 5 * 64 + 4 * 2)


def test_resume_continues_and_refuses_to_overwrite(blob_dataset, tmp_path):
    settings = GanSettings(**TINY)
    train_models(blob_dataset, tmp_path, "r", settings, classes=["pituitary"])
    with pytest.raises(FileExistsError, match="resume"):
        train_models(blob_dataset, tmp_path, "r", settings, classes=["pituitary"])
    before = load_checkpoint(tmp_path / "r" / "pituitary" / "checkpoint.pt")
    settings.epochs = 2
    train_models(blob_dataset, tmp_path, "r", settings, classes=["pituitary"], resume=True)
    after = load_checkpoint(tmp_path / "r" / "pituitary" / "checkpoint.pt")
    assert after["epoch"] == 2 and len(after["history"]) == 2
    assert after["history"][0] == before["history"][0]
    key = next(k for k in after["generator"] if k.startswith("up.0.") and k.endswith("weight"))
    assert not torch.equal(after["generator"][key], before["generator"][key])
    assert (tmp_path / "r" / "pituitary" / "samples" / "epoch_002.png").exists()


def test_generate_writes_counts_labels_layout_and_pickle(trained_run, masks_file, tmp_path):
    out, pkl = tmp_path / "synthetic.h5", tmp_path / "synthetic.pkl"
    summary = synthesize(trained_run, masks_file, out, per_class=17, batch_size=5, seed=3,
                         device="cpu", progress=False, pickle_out=pkl)
    assert summary["slices"] == 51
    labels = read_column(out, "labels")
    assert np.bincount(labels).tolist() == [17, 17, 17]
    attrs = read_attrs(out)
    assert attrs["synthetic"] is True and attrs["image_size"] == 64
    with h5py.File(out, "r") as f:
        assert set(f) == {"images", "labels", "patient_ids", "source_ids", "conditions", "tumor_masks"}
        assert f["images"].dtype == np.float16 and f["images"].shape == (51, 64, 64)
    images = read_images(out)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    patients = read_column(out, "patient_ids")
    assert patients[0] == "synthetic-meningioma-0" and patients[-1] == "synthetic-pituitary-16"
    # each synthetic slice keeps the mask it was made from, and that mask has the slice's class
    mask_labels = read_column(masks_file, "labels")
    mask_sources = list(read_column(masks_file, "source_ids"))
    for source, label in zip(read_column(out, "source_ids"), labels):
        assert mask_labels[mask_sources.index(source)] == label
    items = pickle.load(open(pkl, "rb"))
    assert len(items) == 51 and items[0][0].shape == (64, 64) and items[-1][1] == 2


def test_generate_is_deterministic_given_the_seed(trained_run, masks_file, tmp_path):
    paths = [tmp_path / f"s{i}.h5" for i in range(3)]
    for path, seed, batch in zip(paths, (1, 1, 2), (4, 4, 4)):
        synthesize(trained_run, masks_file, path, per_class=6, batch_size=batch, seed=seed,
                   device="cpu", progress=False)
    first, same, other = (read_images(p) for p in paths)
    assert np.array_equal(first, same)
    assert not np.array_equal(first, other)


def test_checkpoints_load_restricted_and_refuse_objects(trained_run, tmp_path):
    state = torch.load(trained_run / "glioma" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["generator_config"]["image_size"] == 64
    evil = tmp_path / "evil.pt"
    save_checkpoint({"generator": {}, "payload": CheckpointError("an arbitrary object")}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)


def test_command_line_train_and_generate(blob_dataset, masks_file, tmp_path):
    run = [sys.executable, str(ROOT / "generative_model" / "train.py"), f"--dataset={blob_dataset}",
           "--image_size=64", "--epochs=1", f"--model_dir={tmp_path}", "--run_name=cli", "--ngf=4",
           "--ndf=4", "--batch_size=6", "--classes=glioma", "--conditional=False", "--device=cpu"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli" / "glioma" / "checkpoint.pt").exists()
    out = tmp_path / "cli.h5"
    gen = [sys.executable, str(ROOT / "generative_model" / "generate.py"), f"--model_dir={tmp_path}",
           "--run_name=cli", f"--masks={masks_file}", "--per_class=7", f"--out={out}", "--device=cpu"]
    done = subprocess.run(gen, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_column(out, "labels").tolist() == [1] * 7
    bad = subprocess.run(run[:2] + ["--dataset=missing.h5"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "missing.h5" in bad.stderr


def test_mask_batches_read_in_any_order_with_repeats(masks_file):
    from generative_model.synthesis import read_mask_batch
    rows = np.array([7, 3, 4, 5, 3, 30])
    with h5py.File(masks_file, "r") as f:
        batch = read_mask_batch(f, rows, ["conditions", "tumor_masks"])
        for name in ("conditions", "tumor_masks"):
            assert np.array_equal(batch[name], np.stack([f[name][r] for r in rows]))


def test_evaluation_measures_diversity_histograms_and_grid(trained_run, masks_file, blob_dataset, tmp_path):
    from generative_model.evaluation import comparison_grid, histogram_distances, latent_diversity
    diversity = latent_diversity(trained_run, masks_file, n_masks=2, n_latents=3, device="cpu")
    assert set(diversity) == set(CLASS_NAMES)
    assert all(0 < d["pairwise_l1"] < 1 and -1 <= d["pairwise_ssim"] < 1 for d in diversity.values())
    out = tmp_path / "s.h5"
    synthesize(trained_run, masks_file, out, per_class=4, batch_size=4, device="cpu", progress=False)
    distances = histogram_distances(blob_dataset, out)
    assert all(0 < d["total_variation"] <= 1 for d in distances.values())
    same = histogram_distances(blob_dataset, blob_dataset)
    assert all(d["total_variation"] == 0 and d["wasserstein"] == 0 for d in same.values())
    comparison_grid(blob_dataset, out, tmp_path / "grid.png", per_class=2)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_generate_splits_a_total_evenly(trained_run, masks_file, tmp_path):
    summary = synthesize(trained_run, masks_file, tmp_path / "t.h5", total=10, batch_size=4,
                         device="cpu", progress=False)
    assert summary["per_class"] == [4, 3, 3]
    assert np.bincount(read_column(tmp_path / "t.h5", "labels")).tolist() == [4, 3, 3]


def test_the_spectrum_term_pushes_a_faint_lattice_out_and_ignores_where_things_are():
    from generative_model.trainer import spectrum_l1
    rows = torch.linspace(-1, 1, 64)
    smooth = (torch.outer(rows, rows) * 0.8).expand(2, 1, 64, 64).contiguous()
    lattice = torch.zeros(64, 64)
    lattice[::4, :] = lattice[:, ::4] = 0.03                          # faint lines every 4 px
    moved = torch.roll(smooth, shifts=(5, 9), dims=(-2, -1))      # the same content elsewhere
    assert spectrum_l1(smooth, smooth) == 0
    assert spectrum_l1(moved, smooth) < 1e-4 < (moved - smooth).abs().mean()   # amplitudes ignore position
    latticed = (smooth + lattice).requires_grad_(True)
    loss = spectrum_l1(latticed, smooth)
    loss.backward()
    assert loss > 0.01 and (latticed.grad * lattice).sum() > 0     # the gradient points along it: a step down removes it


def test_artefact_options_train_resume_and_generate(blob_dataset, masks_file, tmp_path):
    options = dict(TINY, upsample="resize", mask_norm=True, spectral_norm=True, feature_matching_weight=10.0,
                   conditional=True, noise_inputs=True, diversity_grid=8, pixel_critic=True, spectrum_weight=1.0,
                   full_res_convs=1, tumour_l1_weight=5.0, l1_scale=2, critic_scales=2)
    train_models(blob_dataset, tmp_path, "new", GanSettings(**options))
    folder = tmp_path / "new" / "all"
    rows = list(csv.DictReader(open(folder / "losses.csv")))
    assert float(rows[0]["loss_feature_matching"]) > 0 and float(rows[0]["loss_spectrum"]) > 0
    with pytest.raises(ValueError, match="blur_downsampling.*sharp_stem"):    # no weights differ, the flags do
        train_models(blob_dataset, tmp_path, "new", GanSettings(**{**options, "epochs": 2, "blur_downsampling": True,
                                                                   "sharp_stem": True}), resume=True)
    with pytest.raises(ValueError, match="full_res_convs"):    # a head of another depth is another generator
        train_models(blob_dataset, tmp_path, "new", GanSettings(**{**options, "epochs": 2, "full_res_convs": 2}),
                     resume=True)
    train_models(blob_dataset, tmp_path, "new", GanSettings(**{**options, "epochs": 2}), resume=True)
    assert len(list(csv.DictReader(open(folder / "losses.csv")))) == 2
    summary = synthesize(tmp_path / "new", masks_file, tmp_path / "s.h5", per_class=2, batch_size=4,
                         device="cpu", progress=False)
    assert summary["per_class"] == [2, 2, 2]
    state = load_checkpoint(folder / "checkpoint.pt")
    assert state["generator_config"]["upsample"] == "resize" and state["generator_config"]["noise_inputs"]
    assert state["generator_config"]["full_res_convs"] == 1
    assert state["discriminator_config"]["pixel_critic"] and state["discriminator_config"]["critic_scales"] == 2
    again = synthesize(tmp_path / "new", masks_file, tmp_path / "s2.h5", per_class=2, batch_size=4,
                       device="cpu", progress=False)
    assert np.array_equal(read_images(tmp_path / "s.h5"), read_images(again["out"]))   # seeded noise maps


def test_tensorboard_logs_beside_the_csv(trained_run, holdout_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for folder, tag in ((trained_run / "glioma", "loss/g_l1"), (holdout_run[0], "accuracy/validation")):
        events = list(folder.glob("events.out.tfevents.*"))
        assert events, list(folder.iterdir())
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        assert tag in accumulator.Tags()["scalars"]
    assert accumulator.Scalars("accuracy/validation")[-1].step == 2
    images = EventAccumulator(str(holdout_run[0]), size_guidance={"images": 0})
    images.Reload()
    assert "confusion_validation" in images.Tags()["images"]


def test_best_of_two_l1_needs_the_two_latents_of_the_diversity_term(blob_dataset, tmp_path):
    settings = GanSettings(**{**TINY, "diversity_weight": 0.0, "l1_best_of_two": True})
    with pytest.raises(ValueError, match="diversity_weight"):
        train_models(blob_dataset, tmp_path, "refused", settings)
    assert not (tmp_path / "refused").exists()


def test_sharp_stem_without_the_blur_is_refused_before_anything_is_written(blob_dataset, tmp_path):
    with pytest.raises(ValueError, match="--sharp_stem=True .* --blur_downsampling=True"):
        train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "sharp_stem": True}))
    assert not (tmp_path / "refused").exists()


def test_best_of_two_l1_counts_only_the_closer_fake_per_mask():
    from generative_model.trainer import reconstruction_l1
    real = torch.zeros(4, 1, 4, 4)                      # masks A, B, then A, B again (batch.repeat(2))
    fake = torch.tensor([0.5, 0.2, 0.9, 0.1]).view(4, 1, 1, 1).expand(4, 1, 4, 4)
    assert reconstruction_l1(fake, real) == pytest.approx((0.5 + 0.2 + 0.9 + 0.1) / 4)
    # A: min(0.5, 0.9), B: min(0.2, 0.1); pairing neighbours instead would give (0.2 + 0.1) / 2
    assert reconstruction_l1(fake, real, best_of_two=True) == pytest.approx((0.5 + 0.1) / 2)


def test_a_coarse_l1_scale_ignores_the_pattern_inside_a_cell_but_not_its_brightness():
    from generative_model.trainer import reconstruction_l1
    real = torch.zeros(2, 1, 8, 8)
    checker = (torch.arange(8).view(8, 1) + torch.arange(8)) % 2 * 2.0 - 1.0   # +-1, mean 0 in every 2x2 cell
    fake = checker.expand(2, 1, 8, 8)
    assert reconstruction_l1(fake, real) == pytest.approx(1.0)
    assert reconstruction_l1(fake, real, scale=2) == pytest.approx(0.0)
    assert reconstruction_l1(fake + 0.25, real, scale=4) == pytest.approx(0.25)
    weights = torch.ones(2, 1, 8, 8)
    weights[:, :, :4, :4] = 3.0                          # one 4x4 cell of four weighs 3
    assert reconstruction_l1(torch.ones(2, 1, 8, 8), real, weights=weights, scale=4) == pytest.approx((3 + 1 + 1 + 1) / 4)


def test_a_critic_scale_that_halves_the_pair_too_far_is_refused(blob_dataset, tmp_path):
    for scales in (0, 3):     # 64 px halved twice: 16 px, under the PatchGAN's 32
        with pytest.raises(ValueError, match=f"--critic_scales={scales}: .* 64-px pair"):
            train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "critic_scales": scales}))
    assert not (tmp_path / "refused").exists()


def test_an_l1_scale_that_does_not_divide_the_image_is_refused(blob_dataset, tmp_path):
    for scale in (0, 3):
        with pytest.raises(ValueError, match=f"--l1_scale={scale}: .* divides image_size \\(64\\)"):
            train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "l1_scale": scale}))
    assert not (tmp_path / "refused").exists()


def test_tumour_pixels_weigh_more_in_the_l1_term_when_asked():
    from generative_model.trainer import l1_pixel_weights, reconstruction_l1
    tumour = torch.zeros(2, 1, 4, 4)
    tumour[:, :, :2, :2] = 1                            # a quarter of each slice
    batch = {"tumor_masks": tumour}
    assert l1_pixel_weights(batch, 0.0, "cpu") is None
    weights = l1_pixel_weights(batch, 3.0, "cpu")
    assert weights.shape == (2, 1, 4, 4) and weights.max() == 4 and weights.min() == 1
    fake, real = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert reconstruction_l1(fake, real, weights=weights) == pytest.approx(0.75 * 1 + 0.25 * 4)
    assert reconstruction_l1(fake, real) == pytest.approx(1.0)


def test_the_train_step_hands_the_pixel_weights_to_the_l1_term():
    from generative_model.image_pool import ImagePool
    from generative_model.trainer import gan_criterion, networks_of, train_step
    settings = GanSettings(**{**TINY, "image_size": 32, "pool_size": 0})
    mask = torch.ones(2, 1, 32, 32)
    real = torch.zeros(2, 1, 32, 32)

    def l1_of_one_step(weights):
        torch.manual_seed(0)
        generator, discriminator = networks_of(settings)
        opts = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in (generator, discriminator)]
        torch.manual_seed(1)                            # the same latents in both calls
        return train_step(mask, real, torch.zeros(2, dtype=torch.long), generator, discriminator, *opts,
                          scaler=torch.amp.GradScaler("cuda", enabled=False), pool=ImagePool(0),
                          criterion=gan_criterion("lsgan"), settings=settings, use_amp=False,
                          l1_weights=weights)["loss_g_l1"]
    assert l1_of_one_step(3 * torch.ones(2, 1, 32, 32)) == pytest.approx(3 * l1_of_one_step(None), rel=1e-5)


def test_the_tumour_weight_needs_tumour_masks_in_the_dataset(tmp_path):
    path = tmp_path / "no_tumours_64.h5"
    with DatasetWriter(path, image_size=64, fields=("images", "conditions", "labels")) as out:
        out.append(images=np.zeros((4, 64, 64), np.float32), conditions=np.zeros((4, 64, 64), np.uint8),
                   labels=np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="no_tumours_64.h5: no field 'tumor_masks'"):
        train_models(path, tmp_path, "refused", GanSettings(**{**TINY, "tumour_l1_weight": 2.0}))
    with pytest.raises(ValueError, match="--tumour_l1_weight=nan"):
        train_models(path, tmp_path, "refused", GanSettings(**{**TINY, "tumour_l1_weight": float("nan")}))
    assert not (tmp_path / "refused").exists()


def test_a_dataset_without_conditions_is_refused_before_a_run_folder_is_made(tmp_path):
    path = tmp_path / "no_conditions_64.h5"
    with DatasetWriter(path, image_size=64, fields=("images", "labels")) as out:
        out.append(images=np.zeros((4, 64, 64), np.float32), labels=np.array([0, 1, 2, 0]))
    with pytest.raises(KeyError, match="no_conditions_64.h5: missing fields \\['conditions'\\]"):
        train_models(path, tmp_path, "refused", GanSettings(**TINY))
    assert not (tmp_path / "refused").exists()


def test_mode_seeking_on_a_coarse_grid_pays_for_regions_not_speckle():
    from generative_model.trainer import mode_seeking_distance
    speckle = torch.ones(2, 1, 16, 16)
    speckle[..., ::2, ::2] = -1                         # a pixel pattern and its inverse
    speckle[..., 1::2, 1::2] = -1
    assert mode_seeking_distance(speckle[:1], -speckle[1:]) == pytest.approx(2.0)
    assert mode_seeking_distance(speckle[:1], -speckle[1:], grid=4) == pytest.approx(0.0)
    brighter = torch.zeros(1, 1, 16, 16)
    brighter[..., :8, :] = 0.5                          # the upper half brighter: a change of a region
    assert mode_seeking_distance(brighter, torch.zeros_like(brighter), grid=4) == pytest.approx(0.25)


def test_class_diversity_weights_weigh_each_class_by_its_own_capped_ratio():
    from generative_model.trainer import DIVERSITY_CAP, mode_seeking_distance, mode_seeking_loss
    fake_a = torch.zeros(4, 1, 8, 8)
    fake_b = torch.zeros(4, 1, 8, 8)
    for index, difference in enumerate((0.1, 0.7, 0.12, 0.0)):
        fake_b[index] = difference
    z_a, z_b = torch.zeros(4, 3), torch.ones(4, 3)      # latent distance 1 for every slice
    labels = torch.tensor([0, 0, 1, 2])                 # meningioma, meningioma, glioma, pituitary
    one_weight = GanSettings(**{**TINY, "diversity_weight": 20.0})
    weighted, term = mode_seeking_loss(fake_a, fake_b, z_a, z_b, labels, one_weight)
    before = -torch.clamp(mode_seeking_distance(fake_a, fake_b) / (z_a - z_b).abs().mean(), max=DIVERSITY_CAP)
    assert torch.equal(term, before) and torch.equal(weighted, 20.0 * before)   # the batch's one ratio, as before
    assert float(weighted) == pytest.approx(-20 * DIVERSITY_CAP)                # (0.8 + 0.12) / 4 over the cap
    by_class = GanSettings(**{**TINY, "diversity_weight": 20.0, "diversity_class_weights": "meningioma=30"})
    weighted, term = mode_seeking_loss(fake_a, fake_b, z_a, z_b, labels, by_class)
    # meningioma: half the batch, its mean ratio 0.4 capped at 0.2, weight 30 (capping each slice would give 0.15);
    # glioma: a quarter, ratio 0.12, the other classes' weight 20; pituitary: ratio 0
    assert float(term) == pytest.approx(-(0.5 * DIVERSITY_CAP + 0.25 * 0.12))
    assert float(weighted) == pytest.approx(-(30 * 0.5 * DIVERSITY_CAP + 20 * 0.25 * 0.12))


def test_class_diversity_weights_that_name_no_class_or_lack_the_two_latents_are_refused(blob_dataset, tmp_path):
    for text in ("meningiomas=30", "meningioma", "glioma=-1", "pituitary=nan", "glioma=inf", "glioma=10,",
                 "meningioma=30,meningioma=10"):
        settings = GanSettings(**{**TINY, "diversity_class_weights": text})
        with pytest.raises(ValueError, match="--diversity_class_weights=.*must be class=weight"):
            train_models(blob_dataset, tmp_path, "refused", settings)
    settings = GanSettings(**{**TINY, "diversity_weight": 0.0, "diversity_class_weights": "glioma=10"})
    with pytest.raises(ValueError, match="needs --diversity_weight > 0"):
        train_models(blob_dataset, tmp_path, "refused", settings)
    assert not (tmp_path / "refused").exists()


def test_diversity_grid_outside_the_image_is_refused(blob_dataset, tmp_path):
    with pytest.raises(ValueError, match="diversity_grid"):
        train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "diversity_grid": 65}))


def test_gan_losses_sum_over_the_critics_maps():
    from generative_model.trainer import gan_criterion
    patch, pixel = torch.full((2, 1, 6, 6), 0.5), torch.zeros(2, 1, 64, 64)
    for kind in ("lsgan", "vanilla"):
        criterion = gan_criterion(kind)
        torch.testing.assert_close(criterion([patch, pixel], True), criterion(patch, True) + criterion(pixel, True))
    assert float(gan_criterion("lsgan")([patch, pixel], True)) == pytest.approx(0.25 + 1.0)


def test_loss_table_keeps_a_loss_that_a_resumed_run_added(tmp_path):
    from generative_model.figures import write_loss_table
    history = [{"epoch": 1, "loss_d": 0.5}, {"epoch": 2, "loss_d": 0.4, "loss_spectrum": 0.9}]
    write_loss_table(history, tmp_path / "losses.csv", tmp_path / "losses.png")
    rows = list(csv.DictReader(open(tmp_path / "losses.csv")))
    assert [row["loss_spectrum"] for row in rows] == ["", "0.9"] and (tmp_path / "losses.png").is_file()


def test_generator_average_is_kept_resumed_and_used_for_synthesis(blob_dataset, tmp_path, monkeypatch):
    from generative_model.saved_runs import load_generators
    options = dict(TINY, conditional=True, generator_ema=0.9)
    train_models(blob_dataset, tmp_path, "ema", GanSettings(**options))
    state = load_checkpoint(tmp_path / "ema" / "all" / "checkpoint.pt")
    updates = state["generator_ema_updates"]
    assert updates == len(read_column(blob_dataset, "labels")) // TINY["batch_size"] > 1   # one per generator step
    key = next(k for k in state["generator"] if k.startswith("up.0.") and k.endswith("weight"))
    assert not torch.equal(state["generator_ema"][key], state["generator"][key])
    generators, _ = load_generators(tmp_path / "ema")    # synthesis and evaluation use the average
    assert torch.equal(generators["all"].state_dict()[key], state["generator_ema"][key])
    with pytest.raises(ValueError, match="generator_ema"):
        train_models(blob_dataset, tmp_path, "ema", GanSettings(**{**options, "epochs": 2, "generator_ema": 0.0}),
                     resume=True)
    # resumed without training steps the generator stays put, so the restored average must move from
    # its saved value towards it at the ramped rate (a restarted average would start elsewhere)
    monkeypatch.setattr("generative_model.trainer.train_step", lambda *args, **kwargs: {})
    train_models(blob_dataset, tmp_path, "ema", GanSettings(**{**options, "epochs": 2}), resume=True)
    after = load_checkpoint(tmp_path / "ema" / "all" / "checkpoint.pt")
    assert after["generator_ema_updates"] == 2 * updates
    torch.testing.assert_close(after["generator"][key], state["generator"][key])
    kept = float(np.prod([min(0.9, (1 + n) / (10 + n)) for n in range(updates, 2 * updates)]))
    torch.testing.assert_close(after["generator_ema"][key], state["generator"][key] +
                               kept * (state["generator_ema"][key] - state["generator"][key]))
    monkeypatch.undo()
    # a vanishing decay keeps the average on the latest weights: it is updated after every step
    train_models(blob_dataset, tmp_path, "follow", GanSettings(**{**options, "generator_ema": 1e-9}))
    state = load_checkpoint(tmp_path / "follow" / "all" / "checkpoint.pt")
    for name, value in state["generator"].items():
        assert torch.allclose(state["generator_ema"][name].float(), value.float(), atol=1e-6), name
    with pytest.raises(ValueError, match="generator_ema"):
        train_models(blob_dataset, tmp_path, "bad", GanSettings(**{**options, "generator_ema": 1.0}))


def test_a_latent_encoder_trains_resumes_and_a_run_without_it_is_not_resumed(blob_dataset, masks_file, tmp_path):
    options = dict(TINY, conditional=True, latent_encoder=True, diversity_weight=0.0)
    train_models(blob_dataset, tmp_path, "bicycle", GanSettings(**options))
    folder = tmp_path / "bicycle" / "all"
    row = next(csv.DictReader(open(folder / "losses.csv")))
    assert float(row["loss_kl"]) > 0 and float(row["loss_latent_regression"]) > 0
    before = load_checkpoint(folder / "checkpoint.pt")
    assert before["encoder_config"]["latent_dim"] == GanSettings().latent_dim
    with pytest.raises(ValueError, match="--latent_encoder=True, now False"):
        train_models(blob_dataset, tmp_path, "bicycle", GanSettings(**{**options, "epochs": 2, "latent_encoder": False}),
                     resume=True)
    train_models(blob_dataset, tmp_path, "bicycle", GanSettings(**{**options, "epochs": 2}), resume=True)
    after = load_checkpoint(folder / "checkpoint.pt")
    assert after["epoch"] == 2
    assert not torch.equal(after["encoder"]["posterior.weight"], before["encoder"]["posterior.weight"])
    summary = synthesize(tmp_path / "bicycle", masks_file, tmp_path / "s.h5", per_class=2, batch_size=4,
                         device="cpu", progress=False)          # synthesis draws latents; no encoder needed
    assert summary["per_class"] == [2, 2, 2]


def test_with_a_latent_encoder_only_the_encoded_fakes_pay_the_paired_terms(monkeypatch):
    from generative_model import trainer
    from generative_model.image_pool import ImagePool
    seen = []
    l1, matching = trainer.reconstruction_l1, trainer.feature_matching
    monkeypatch.setattr(trainer, "reconstruction_l1", lambda fake, real, *rest: seen.append(
        ("l1", len(fake), len(real))) or l1(fake, real, *rest))
    monkeypatch.setattr(trainer, "feature_matching", lambda fake, real: seen.append(
        ("fm", len(fake[0]), len(real[0]))) or matching(fake, real))
    for encoder_on, drawn_matching in ((False, False), (True, False), (True, True)):
        settings = GanSettings(**{**TINY, "image_size": 32, "pool_size": 0, "latent_encoder": encoder_on,
                                  "drawn_feature_matching": drawn_matching})
        generator, discriminator = trainer.networks_of(settings)
        encoder = trainer.encoder_of(settings)
        trainer.train_step(torch.ones(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long),
                           generator, discriminator, torch.optim.Adam(generator.parameters()),
                           torch.optim.Adam(discriminator.parameters()), torch.amp.GradScaler("cuda", enabled=False),
                           ImagePool(0), trainer.gan_criterion("lsgan"), settings, False, encoder=encoder)
    # two latents per mask each time; with the encoder only the first pays L1 (and, unless asked, feature matching)
    assert seen == [("fm", 4, 4), ("l1", 4, 4), ("fm", 2, 2), ("l1", 2, 2), ("fm", 4, 4), ("l1", 2, 2)]


def test_latent_regression_reaches_the_generator_not_the_encoder():
    from generative_model.networks import LatentEncoder
    from generative_model.trainer import kl_to_standard_normal, latent_regression
    encoder = LatentEncoder(image_size=32, ndf=4, latent_dim=8)
    fake = torch.randn(3, 1, 32, 32, requires_grad=True)
    latent_regression(encoder, fake, torch.randn(3, 8)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(weight.grad is None for weight in encoder.parameters())
    assert kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == pytest.approx(0.0)
    assert kl_to_standard_normal(torch.ones(2, 3), torch.zeros(2, 3)) == pytest.approx(1.5)   # 0.5 * 1 per dim


def test_a_latent_encoder_with_mode_seeking_or_drawn_matching_without_an_encoder_is_refused(blob_dataset, tmp_path):
    # (best-of-two L1 needs the mode-seeking term, so it cannot meet the encoder either)
    with pytest.raises(ValueError, match="--latent_encoder=True .* --diversity_weight=0"):
        train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "latent_encoder": True}))
    with pytest.raises(ValueError, match="--drawn_feature_matching=True needs --latent_encoder=True"):
        train_models(blob_dataset, tmp_path, "refused", GanSettings(**{**TINY, "drawn_feature_matching": True}))
    assert not (tmp_path / "refused").exists()


def test_mask_classes_any_draws_every_class_into_masks_of_any_class(blob_dataset, masks_file, trained_run, tmp_path):
    from generative_model.synthesis import plan_class
    labels = read_column(masks_file, "labels")
    own = plan_class(labels, 0, 60, seed=0)
    mixed = plan_class(labels, 0, 60, seed=0, mask_classes="any")
    assert set(labels[own]) == {0}
    assert set(labels[mixed]) == {0, 1, 2}            # 36 masks, 12 per class: 60 draws cycle through all of them
    train_models(blob_dataset, tmp_path, "cond", GanSettings(**dict(TINY, conditional=True)))
    out = tmp_path / "any.h5"
    synthesize(tmp_path / "cond", masks_file, out, per_class=12, batch_size=5, device="cpu", progress=False,
               mask_classes="any")
    slice_labels = read_column(out, "labels")
    assert np.bincount(slice_labels).tolist() == [12, 12, 12]
    mask_sources = list(read_column(masks_file, "source_ids"))
    mask_labels = [labels[mask_sources.index(s)] for s in read_column(out, "source_ids")]
    assert any(m != s for m, s in zip(mask_labels, slice_labels))   # some slices sit in another class's mask
    assert read_attrs(out)["mask_classes"] == "any"
    with pytest.raises(ValueError, match="class-conditional"):      # per-class models draw only their class
        synthesize(trained_run, masks_file, tmp_path / "refused.h5", per_class=2, device="cpu", progress=False,
                   mask_classes="any")
    with pytest.raises(ValueError, match="mask_classes='every'"):
        synthesize(tmp_path / "cond", masks_file, tmp_path / "bad.h5", per_class=2, device="cpu", progress=False,
                   mask_classes="every")
    assert not (tmp_path / "refused.h5").exists() and not (tmp_path / "bad.h5").exists()
