"""Training of the conditional GAN: one model per class (the study) or one class-conditional model.

Each model lives in its own folder (``<model_dir>/<run_name>/<class name>/`` or ``.../all/``):

    checkpoint.pt      generator, discriminator, optimisers, epoch, loss history, settings
                       (and ``generator_ema``, the averaged generator, with --generator_ema > 0;
                       ``encoder``, the latent encoder, with --latent_encoder=True)
    losses.csv         per-epoch mean losses, learning rate and seconds
    losses.png         the same as curves
    samples/epoch_NNN.png   mask | real | three fakes from different latent vectors, 4 rows

and ``<model_dir>/<run_name>/run.json`` lists the models, for ``generate.py``.
Intensities stay floating point throughout: the dataset's float16 [0, 1] slices map to [-1, 1].
"""
import dataclasses
import functools
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from generative_model.figures import save_image_grid, write_loss_table
from generative_model.image_pool import ImagePool
from generative_model.networks import MIN_CRITIC_INPUT, LatentEncoder, build_networks
from generative_model.saved_runs import CHECKPOINT, CONDITIONAL_FOLDER, models_already_in, write_run_index
from generative_model.spectrum import AMPLITUDE_FLOOR, log_amplitude
from preprocess import distributed
from preprocess.checkpoint_io import load_checkpoint_file, save_checkpoint
from preprocess.devices import resolve_device
from preprocess.dataset import CLASS_NAMES, SliceDataset, has_field, read_attrs, read_column
from preprocess.tensorboard_log import log_scalars, tensorboard_writer
from preprocess.weight_average import exponential_average

GRID_ROWS = 4
GRID_FAKES = 3
DIVERSITY_CAP = 0.2  # mode-seeking term stops rewarding beyond this image/latent distance ratio


def learning_rate(epoch, settings):
    """Constant for the first ``decay_start`` of the epochs, then linear decay towards zero.

    ``epoch`` counts from 0; with n decaying epochs they run at n/(n+1), ..., 1/(n+1) of ``lr``.
    """
    constant = int(round(settings.epochs * settings.decay_start))
    if epoch < constant:
        return settings.lr
    remaining = settings.epochs - constant
    return settings.lr * (1.0 - (epoch - constant + 1) / (remaining + 1))


def gan_criterion(kind):
    """Loss of discriminator logits (one map, or a list of maps summed over: with the pixel critic
    the adversarial term thus weighs about twice as much against L1 and feature matching) against
    an all-real or all-fake target."""
    if kind not in ("vanilla", "lsgan"):
        raise ValueError(f"gan_loss must be 'vanilla' or 'lsgan', got {kind!r}")
    one_map = F.binary_cross_entropy_with_logits if kind == "vanilla" else F.mse_loss

    def loss(logits, real):
        maps = logits if isinstance(logits, (list, tuple)) else [logits]
        return sum(one_map(m, torch.full_like(m, float(real))) for m in maps)
    return loss


def to_model_range(batch, device):
    """Dataset batch -> (mask, image, label) tensors on the device, mask and image in [-1, 1]."""
    mask = batch["conditions"].to(device, torch.float32) * 2 - 1
    image = batch["images"].to(device, torch.float32) * 2 - 1
    return mask, image, batch["labels"].to(device)


def l1_pixel_weights(batch, tumour_weight, device):
    """Per-pixel weights of the L1 term: 1, plus ``tumour_weight`` inside the tumour (the batch's
    ``tumor_masks``); None when ``tumour_weight`` is 0 (every pixel alike)."""
    if tumour_weight <= 0:
        return None
    return 1 + tumour_weight * (batch["tumor_masks"].to(device, torch.float32) > 0.5)


def train_models(dataset, model_dir, run_name, settings, classes=CLASS_NAMES, resume=False,
                 created_with=None):
    """Train the per-class models (or the one class-conditional model); returns their summaries."""
    for flag in ("epochs", "batch_size", "ngf", "ndf", "latent_dim"):
        if getattr(settings, flag) < 1:
            raise ValueError(f"--{flag}={getattr(settings, flag)}: must be at least 1")
    if settings.diversity_grid < 0 or settings.diversity_grid > settings.image_size:
        raise ValueError(f"--diversity_grid={settings.diversity_grid}: must be 0 (pixel by pixel) "
                         f"or 1..image_size ({settings.image_size})")
    if settings.l1_scale < 1 or settings.image_size % settings.l1_scale:
        raise ValueError(f"--l1_scale={settings.l1_scale}: must be a whole number >= 1 that divides "
                         f"image_size ({settings.image_size})")
    if settings.l1_best_of_two and settings.diversity_weight <= 0:
        raise ValueError("--l1_best_of_two=True needs --diversity_weight > 0 (the two latents per mask it chooses from)")
    if settings.critic_scales < 1 or settings.image_size / 2 ** (settings.critic_scales - 1) < MIN_CRITIC_INPUT:
        raise ValueError(f"--critic_scales={settings.critic_scales}: must be at least 1, and the coarsest critic "
                         f"needs the {settings.image_size}-px pair halved no further than {MIN_CRITIC_INPUT} px")
    if class_diversity_weights(settings) is not None and settings.diversity_weight <= 0:
        raise ValueError(f"--diversity_class_weights={settings.diversity_class_weights!r} needs --diversity_weight "
                         f"> 0 (it sets the other classes' weight and turns on the two latents per mask)")
    if settings.latent_encoder and settings.diversity_weight > 0:
        raise ValueError("--latent_encoder=True pins the first latent's slice to the real one by L1, so a "
                         "mode-seeking term would push the drawn latent's slice away from it (and reach the "
                         "encoder); pass --diversity_weight=0")
    if settings.drawn_feature_matching and not settings.latent_encoder:
        raise ValueError("--drawn_feature_matching=True needs --latent_encoder=True (without the encoder every "
                         "fake pays feature matching already)")
    for flag in ("kl_weight", "latent_regression_weight"):
        if not 0.0 <= getattr(settings, flag) < float("inf"):
            raise ValueError(f"--{flag}={getattr(settings, flag)}: must be 0 (off) or a positive number")
    if settings.sharp_stem and not settings.blur_downsampling:
        raise ValueError("--sharp_stem=True replaces the blur before the critic's first stride, so it needs "
                         "--blur_downsampling=True")
    if not 0.0 <= settings.generator_ema < 1.0:
        raise ValueError(f"--generator_ema={settings.generator_ema}: must be 0 (off) or a decay in (0, 1)")
    if not 0.0 <= settings.tumour_l1_weight < float("inf"):
        raise ValueError(f"--tumour_l1_weight={settings.tumour_l1_weight}: must be 0 (off) or a positive number")
    if settings.tumour_l1_weight > 0 and not has_field(dataset, "tumor_masks"):
        raise ValueError(f"{dataset}: no field 'tumor_masks', which --tumour_l1_weight="
                         f"{settings.tumour_l1_weight} needs (preprocess/prepare_dataset.py writes it from the .mat "
                         f"files' tumorMask); pass --tumour_l1_weight=0")
    attrs = read_attrs(dataset)
    if int(attrs.get("image_size", -1)) != settings.image_size:
        raise ValueError(f"{dataset}: holds {attrs.get('image_size')} px slices, "
                         f"but image_size is {settings.image_size}")
    labels = read_column(dataset, "labels")
    unknown = [name for name in classes if name not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; known: {list(CLASS_NAMES)}")
    wanted = [CLASS_NAMES.index(name) for name in classes]
    run_dir = os.path.join(model_dir, run_name)
    if settings.conditional:
        jobs = [(CONDITIONAL_FOLDER, np.flatnonzero(np.isin(labels, wanted)))]
    else:
        jobs = [(CLASS_NAMES[c], np.flatnonzero(labels == c)) for c in wanted]
    summaries = {}
    for folder, indices in jobs:
        if len(indices) == 0:
            raise ValueError(f"{dataset}: no slices of class {folder!r} to train on")
        print(f"== {folder}: {len(indices)} slices")
        summaries[folder] = train_one_model(dataset, indices, os.path.join(run_dir, folder),
                                            settings, resume)
        if not distributed.is_main():
            continue
        models = models_already_in(run_dir, settings.conditional)
        models.update({name: os.path.join(name, CHECKPOINT) for name in summaries})
        write_run_index(run_dir, models, settings.conditional, settings.image_size,
                        dataset=os.fspath(dataset), summaries=summaries,
                        settings=dataclasses.asdict(settings), created_with=created_with or {})
    return summaries


def networks_of(settings):
    """The (untrained) generator and discriminator that a GanSettings describes."""
    num_classes = len(CLASS_NAMES) if settings.conditional else 0
    return build_networks(settings.image_size, settings.ngf, settings.ndf, settings.latent_dim,
                          settings.latent_mode, settings.norm, num_classes, settings.upsample,
                          settings.mask_norm, settings.spectral_norm, settings.mask_resize,
                          settings.noise_inputs, settings.blur_downsampling, settings.pixel_critic,
                          settings.sharp_stem, settings.output_upsample, settings.full_res_convs,
                          settings.critic_scales)


def encoder_of(settings):
    """The (untrained) latent encoder of --latent_encoder=True, or None when it is off."""
    if not settings.latent_encoder:
        return None
    return LatentEncoder(settings.image_size, settings.ndf, settings.latent_dim)


def gan_optimisers(generator, discriminator, encoder, settings):
    """(generator's, discriminator's) Adam at the settings' lr and beta1; the latent encoder, when on,
    learns with the generator (BicycleGAN; a second parameter group)."""
    groups = [{"params": generator.parameters()}] + ([{"params": encoder.parameters()}] if encoder is not None else [])
    betas = (settings.beta1, 0.999)
    return (torch.optim.Adam(groups, lr=settings.lr, betas=betas),
            torch.optim.Adam(discriminator.parameters(), lr=settings.lr, betas=betas))


def train_one_model(dataset, indices, out_dir, settings, resume=False):
    """Train one generator/discriminator pair (and the latent encoder, when on) on the given rows of
    the dataset file."""
    device = distributed.setup(resolve_device(settings.device))
    torch.manual_seed(settings.seed)            # the same initial weights in every process
    generator, discriminator = networks_of(settings)
    encoder = encoder_of(settings)
    trained = {"generator": generator, "discriminator": discriminator}
    if encoder is not None:
        trained["encoder"] = encoder
    for network in trained.values():
        network.to(device)
    print(f"generator {_millions(generator)}M parameters ({settings.latent_mode} latent, ngf {settings.ngf}, "
          f"{settings.upsample} upsampling"
          f"{f' ({settings.output_upsample} at the output)' if settings.output_upsample else ''}"
          f"{f', {settings.full_res_convs} full-resolution convolutions' if settings.full_res_convs else ''}"
          f"{', mask norm' if settings.mask_norm else ''}), "
          f"discriminator {_millions(discriminator)}M (ndf {settings.ndf}"
          f"{', spectral norm' if settings.spectral_norm else ''}"
          f"{', blurred downsampling' if settings.blur_downsampling else ''}"
          f"{', sharp stem' if settings.sharp_stem else ''}"
          f"{', full-resolution pixel critic' if settings.pixel_critic else ''}"
          f"{f', {settings.critic_scales} scales' if settings.critic_scales > 1 else ''}), {settings.norm} norm, "
          f"{f'latent encoder {_millions(encoder)}M, ' if encoder is not None else ''}on {device}")
    opt_g, opt_d = gan_optimisers(generator, discriminator, encoder, settings)
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    average = exponential_average(generator, settings.generator_ema)   # None when off

    fields = ("images", "conditions", "labels") + (("tumor_masks",) if settings.tumour_l1_weight > 0 else ())
    data = SliceDataset(dataset, fields=fields, indices=np.sort(indices))   # a missing field: before any folder
    os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    history, start_epoch = [], 0
    if resume and os.path.exists(checkpoint_path):
        state = load_checkpoint_file(checkpoint_path)
        if ("encoder" in state) != (encoder is not None):
            raise ValueError(f"{checkpoint_path}: trained with --latent_encoder={'encoder' in state}, now "
                             f"{settings.latent_encoder}; resume with the same value")
        for name, network in trained.items():
            saved = state.get(f"{name}_config", network.config)
            changed = sorted(key for key in set(saved) | set(network.config)
                             if saved.get(key) != network.config.get(key))
            if changed:   # e.g. the discriminator's blur has no weights, so load_state_dict would not notice
                raise ValueError(f"{checkpoint_path}: its {name} was built with "
                                 f"{ {k: saved.get(k) for k in changed} }, these settings give "
                                 f"{ {k: network.config.get(k) for k in changed} }; resume with the same flags"
                                 f" (None: that option off, e.g. --full_res_convs=0)")
        saved_ema = state.get("settings", {}).get("generator_ema", 0.0)
        if saved_ema != settings.generator_ema:     # an average cannot be added or dropped halfway
            raise ValueError(f"{checkpoint_path}: trained with --generator_ema={saved_ema}, now "
                             f"{settings.generator_ema}; resume with the same value")
        for name, network in trained.items():
            network.load_state_dict(state[name])
        if average is not None:
            average.module.load_state_dict(state["generator_ema"])
            average.n_averaged.fill_(state["generator_ema_updates"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        history, start_epoch = state["history"], state["epoch"]
        print(f"resumed {checkpoint_path} after epoch {start_epoch}")
    elif os.path.exists(checkpoint_path):
        raise FileExistsError(f"{checkpoint_path} exists; pass --resume=True to continue it "
                              f"or choose another run_name")

    shuffle_rng = torch.Generator().manual_seed(settings.seed)
    sampler = None
    if distributed.is_distributed():   # torchrun: each process a share of every global batch
        sampler = DistributedSampler(data, shuffle=True, seed=settings.seed, drop_last=True)
        torch.manual_seed(settings.seed + 1009 * distributed.rank())      # its own latent vectors
    loader = DataLoader(data, batch_size=max(1, settings.batch_size // distributed.world_size()),
                        shuffle=sampler is None, sampler=sampler, drop_last=len(data) > settings.batch_size,
                        num_workers=settings.num_workers, generator=shuffle_rng if sampler is None else None)
    grid_batch = _grid_examples(data, device)
    grid_z = torch.randn(GRID_FAKES, settings.latent_dim,
                         generator=torch.Generator().manual_seed(settings.seed + 1)).to(device)
    pool = ImagePool(settings.pool_size)
    criterion = gan_criterion(settings.gan_loss)
    steps = dict(generator=generator, discriminator=discriminator, encoder=encoder, opt_g=opt_g, opt_d=opt_d,
                 scaler=scaler, pool=pool, criterion=criterion, settings=settings, use_amp=use_amp)

    writer = tensorboard_writer(out_dir, start_epoch) if distributed.is_main() else None
    for epoch in range(start_epoch, settings.epochs):
        lr = learning_rate(epoch, settings)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        shuffle_rng.manual_seed(settings.seed * 100003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        sums = {}
        bar = tqdm(loader, desc=f"{os.path.basename(out_dir)} epoch {epoch + 1}/{settings.epochs}",
                   unit="batch", dynamic_ncols=True, **distributed.progress_bar_options())
        for batch in bar:
            losses = train_step(*to_model_range(batch, device), **steps,
                                l1_weights=l1_pixel_weights(batch, settings.tumour_l1_weight, device))
            if average is not None:
                average.update_parameters(generator)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix({name[5:]: f"{value:.3f}" for name, value in losses.items()})
        names = sorted(sums)
        totals = distributed.sum_over_processes([sums[n] for n in names] + [len(loader)], device)
        row = {"epoch": epoch + 1, "lr": lr, "seconds": round(time.perf_counter() - started, 2)}
        row.update({name: value / max(totals[-1], 1) for name, value in zip(names, totals)})
        history.append(row)
        if not distributed.is_main():
            distributed.barrier()       # rank 0 writes the epoch's files
            continue
        tiles = sample_grid(generator if average is None else average.module, grid_batch, grid_z)
        grid_path = os.path.join(out_dir, "samples", f"epoch_{epoch + 1:03d}.png")
        save_image_grid(tiles, grid_path)
        log_scalars(writer, epoch + 1, {f"loss/{name[5:]}": row[name] for name in row if name.startswith("loss_")}
                    | {"learning_rate": lr, "seconds": row["seconds"]})
        if writer is not None:
            writer.add_image("samples (mask | real | fakes)", np.asarray(Image.open(grid_path).convert("L"))[None],
                             epoch + 1)
        write_loss_table(history, os.path.join(out_dir, "losses.csv"), os.path.join(out_dir, "losses.png"))
        averaged = {} if average is None else {"generator_ema": average.module.state_dict(),
                                                "generator_ema_updates": int(average.n_averaged)}
        save_checkpoint({**{name: network.state_dict() for name, network in trained.items()},
                         **{f"{name}_config": network.config for name, network in trained.items()},
                         "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict(),
                         "rng": torch.get_rng_state(), "epoch": epoch + 1, "history": history,
                         "settings": dataclasses.asdict(settings), "class_names": list(CLASS_NAMES),
                         "intensity": "tanh output in [-1, 1] = dataset intensity [0, 1] * 2 - 1", **averaged},
                        checkpoint_path)
        print(f"{os.path.basename(out_dir)} epoch {epoch + 1}: " +
              ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        distributed.barrier()
    if writer is not None:
        writer.close()
    return {"epochs": len(history), "slices": len(data), "checkpoint": checkpoint_path,
            "last": history[-1] if history else None}


def _millions(module):
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def feature_matching(fake_features, real_features):
    """pix2pixHD's feature-matching loss: mean L1 between the discriminator's activations on the
    fake and on the real pair, averaged over its layers."""
    return sum(F.l1_loss(fake.float(), real.float()) for fake, real in zip(fake_features, real_features)) \
        / len(fake_features)


def mode_seeking_distance(fake_a, fake_b, grid=0, per_slice=False):
    """Mean absolute difference of the two fakes of each mask that the mode-seeking term rewards
    (over the batch, or one per slice with ``per_slice``).

    ``grid`` > 0 first averages both down to grid x grid cells, so only changes of larger regions
    count: at the pixel level the cheapest way to differ is speckle that moves with the latent."""
    fake_a, fake_b = fake_a.float(), fake_b.float()
    if grid > 0:
        fake_a, fake_b = F.adaptive_avg_pool2d(fake_a, grid), F.adaptive_avg_pool2d(fake_b, grid)
    difference = (fake_a - fake_b).abs()
    return difference.flatten(1).mean(1) if per_slice else difference.mean()


def class_diversity_weights(settings):
    """The mode-seeking weight of every class (indexed as CLASS_NAMES) from --diversity_class_weights
    ("meningioma=30,glioma=10"; unnamed classes keep --diversity_weight), or None when it is empty
    (one weight for every slice). Raises ValueError naming the flag for a malformed entry."""
    return _parsed_class_weights(settings.diversity_class_weights, float(settings.diversity_weight))


@functools.lru_cache(maxsize=8)
def _parsed_class_weights(text, other_weight):
    """class_diversity_weights for one flag value, read once (train_step asks every step)."""
    if not text.strip():
        return None
    weights = [other_weight] * len(CLASS_NAMES)
    named = set()
    for entry in text.split(","):
        name, _, value = (part.strip() for part in entry.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if name not in CLASS_NAMES or name in named or not 0.0 <= weight < float("inf"):
            raise ValueError(f"--diversity_class_weights={text!r}: {entry!r} must be "
                             f"class=weight with a class of {list(CLASS_NAMES)} named once and a weight >= 0")
        named.add(name)
        weights[CLASS_NAMES.index(name)] = weight
    return tuple(weights)


def mode_seeking_loss(fake_a, fake_b, z_a, z_b, labels, settings):
    """(the generator's mode-seeking term with its weights, the unweighted term to log) for two fakes
    per mask from latents ``z_a`` and ``z_b``: minus min(image distance / latent distance, cap).
    With --diversity_class_weights each class in the batch has its own ratio, cap and weight, counted
    by its share of the batch; otherwise one ratio over the batch times --diversity_weight."""
    by_class = class_diversity_weights(settings)
    if by_class is None:
        ratio = (mode_seeking_distance(fake_a, fake_b, settings.diversity_grid) / (z_a - z_b).abs().mean())
        term = -torch.clamp(ratio, max=DIVERSITY_CAP)
        return settings.diversity_weight * term, term
    # per-class sums by label (no loop over the classes, no device-to-host copy of the labels)
    distances = mode_seeking_distance(fake_a, fake_b, settings.diversity_grid, per_slice=True)
    latent_distances = (z_a - z_b).float().abs().mean(1)
    slices = torch.zeros(len(CLASS_NAMES), device=labels.device).index_add_(0, labels, torch.ones_like(distances))
    ratios = (torch.zeros_like(slices).index_add_(0, labels, distances) /
              torch.zeros_like(slices).index_add_(0, labels, latent_distances).clamp_min(1e-12))
    class_terms = -(slices / len(labels)) * torch.clamp(ratios, max=DIVERSITY_CAP)   # 0 for absent classes
    weights = torch.tensor(by_class, device=labels.device)
    return (weights * class_terms).sum(), class_terms.sum()


def reconstruction_l1(fake, real, best_of_two=False, weights=None, scale=1):
    """L1 distance to the real slice. ``best_of_two``: the batch holds every mask twice (two latent
    vectors, first and second half); per mask only the closer fake counts, as in best-of-many
    sample losses, so the L1 term no longer pulls both latents to the same average slice.
    ``weights``: per-pixel weights (broadcast to the slices; e.g. ``l1_pixel_weights``), None = 1.
    ``scale`` > 1: fake and real are first averaged over scale x scale cells (weights too), so the
    term asks for the right brightness per cell and leaves the pattern inside it to the critic."""
    fake, real = fake.float(), real.float()
    if scale > 1:
        fake, real = F.avg_pool2d(fake, scale), F.avg_pool2d(real, scale)
        weights = None if weights is None else F.avg_pool2d(weights.float(), scale)  # a cell's mean weight
    distance = (fake - real).abs()
    if weights is not None:
        distance = distance * weights
    per_slice = distance.flatten(1).mean(1)
    if best_of_two:
        half = len(per_slice) // 2
        per_slice = torch.minimum(per_slice[:half], per_slice[half:])
    return per_slice.mean()


def spectrum_l1(fake, real, floor=AMPLITUDE_FLOOR):
    """Mean L1 between the log amplitude spectra (orthonormal 2-d FFT) of each fake and its real
    slice. A periodic pattern (a lattice) is a few sharp peaks in the spectrum where real slices have
    none, which pixel losses barely see and this term does (after Durall et al., CVPR 2020, "Watch
    your up-convolution"); ``floor`` keeps the log finite where a spectrum is empty."""
    return (log_amplitude(fake, floor) - log_amplitude(real, floor)).abs().mean()


def kl_to_standard_normal(mean, log_variance):
    """KL(N(mean, exp(log_variance)) || N(0, I)), summed over the latent's dimensions, mean over the batch."""
    mean, log_variance = mean.float(), log_variance.float()
    return 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(1).mean()


def latent_regression(encoder, fake, z):
    """Mean |encoder mean of ``fake`` - z| with the encoder's weights held fixed (BicycleGAN's cLR term:
    its gradient reaches the generator only, so the generator must draw each z recognisably)."""
    fixed = {name: weight.detach() for name, weight in encoder.named_parameters()}
    mean, _ = torch.func.functional_call(encoder, fixed, (fake,))
    return (mean.float() - z.float()).abs().mean()


def train_step(mask, real, labels, generator, discriminator, opt_g, opt_d, scaler, pool, criterion,
               settings, use_amp, l1_weights=None, encoder=None):
    """One discriminator and one generator update; returns the losses as floats. ``l1_weights``:
    per-pixel weights of the L1 term (``l1_pixel_weights``; None: every pixel alike). ``encoder``
    (--latent_encoder): the first latent of each mask is encoded from its real slice and only that
    fake pays the terms that compare it with the real slice; the second is drawn from N(0, I)."""
    device_type = mask.device.type
    if settings.diversity_weight > 0 or encoder is not None:
        # two latent vectors per mask: the mode-seeking term rewards different outputs for them, or
        # (latent encoder) the first is encoded from the real slice and the second drawn
        mask, real, labels = mask.repeat(2, 1, 1, 1), real.repeat(2, 1, 1, 1), labels.repeat(2)
        if l1_weights is not None:
            l1_weights = l1_weights.repeat(2, 1, 1, 1)
    half = mask.shape[0] // 2
    paired = slice(None) if encoder is None else slice(0, half)   # the fakes compared with their real slice
    matched = slice(None) if settings.drawn_feature_matching else paired     # ... by the critic's features
    z = torch.randn(mask.shape[0], settings.latent_dim, device=mask.device)
    with torch.autocast(device_type, enabled=use_amp):
        if encoder is not None:
            mean, log_variance = encoder(real[:half])
            encoded = mean.float() + torch.exp(0.5 * log_variance.float()) * z[:half]   # reparameterised
            z = torch.cat([encoded, z[half:]])
        fake = generator(mask, z, labels)

        pair = pool.query(torch.cat([mask, fake.detach()], 1))
        loss_d = 0.5 * (criterion(discriminator(pair[:, :1], pair[:, 1:], labels), False) +
                        criterion(discriminator(mask, real, labels), True))
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    distributed.average_gradients(discriminator)
    scaler.step(opt_d)

    discriminator.requires_grad_(False)  # the generator step needs no discriminator gradients
    with torch.autocast(device_type, enabled=use_amp):
        if settings.feature_matching_weight > 0:
            logits, fake_features = discriminator(mask, fake, labels, features=True)
            with torch.no_grad():
                real_features = discriminator.patch_features(mask[matched], real[matched], labels[matched])
            loss_fm = feature_matching([f[matched] for f in fake_features], real_features)
        else:
            logits = discriminator(mask, fake, labels)
        loss_gan = criterion(logits, True)
        loss_l1 = reconstruction_l1(fake[paired], real[paired], settings.l1_best_of_two,
                                    None if l1_weights is None else l1_weights[paired], settings.l1_scale)
        loss_g = loss_gan + settings.l1_weight * loss_l1
        losses = {"loss_d": loss_d, "loss_g_gan": loss_gan, "loss_g_l1": loss_l1}
        if settings.feature_matching_weight > 0:
            loss_g = loss_g + settings.feature_matching_weight * loss_fm
            losses["loss_feature_matching"] = loss_fm
        if settings.spectrum_weight > 0:
            loss_spectrum = spectrum_l1(fake[paired], real[paired])
            loss_g = loss_g + settings.spectrum_weight * loss_spectrum
            losses["loss_spectrum"] = loss_spectrum
        if settings.diversity_weight > 0:
            half = mask.shape[0] // 2
            weighted, loss_div = mode_seeking_loss(fake[:half], fake[half:], z[:half], z[half:], labels[:half],
                                                   settings)
            loss_g = loss_g + weighted
            losses["loss_diversity"] = loss_div
        if encoder is not None:
            loss_kl = kl_to_standard_normal(mean, log_variance)
            loss_latent = latent_regression(encoder, fake[half:], z[half:])
            loss_g = loss_g + settings.kl_weight * loss_kl + settings.latent_regression_weight * loss_latent
            losses["loss_kl"] = loss_kl
            losses["loss_latent_regression"] = loss_latent
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    distributed.average_gradients(generator)
    if encoder is not None:
        distributed.average_gradients(encoder)
    scaler.step(opt_g)
    scaler.update()
    discriminator.requires_grad_(True)
    return {name: float(value.detach()) for name, value in losses.items()}


def _grid_examples(data, device, rows=GRID_ROWS):
    """A fixed handful of slices, spread over the training set, for the per-epoch sample grid."""
    picks = np.linspace(0, len(data) - 1, min(rows, len(data))).round().astype(int)
    items = [data[int(i)] for i in picks]
    batch = {name: torch.as_tensor(np.stack([item[name] for item in items])) for name in items[0]}
    return to_model_range(batch, device)


@torch.no_grad()
def sample_grid(generator, examples, latents):
    """Rows of mask | real | one fake per latent vector, as arrays in [0, 1]."""
    mask, real, labels = examples
    was_training = generator.training
    generator.eval()
    noise = torch.Generator(device=mask.device).manual_seed(0)   # the same noise maps every epoch
    fakes = [generator(mask, z.expand(len(mask), -1), labels, noise) for z in latents]
    generator.train(was_training)
    to01 = lambda t: ((t.float().cpu().numpy() + 1) / 2)[:, 0]  # noqa: E731
    columns = [to01(mask), to01(real)] + [to01(f) for f in fakes]
    return [[column[r] for column in columns] for r in range(len(mask))]


