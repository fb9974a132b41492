"""Benchmark of the GAN stage: training-step throughput and generation speed.

    python bench/bench_gan.py --sizes=128 --steps=20 --generation=False
    python bench/bench_gan.py --sizes=128,256,512 --steps=5 --ngf=64 --ndf=64
    python bench/bench_gan.py --train=False --masks=data/masks_aug_128.h5 --run=checkpoints/gan/gan_128

1. Training step (generator + discriminator forward, backward and Adam step, as train.py does it)
   at each size, for train.py's defaults (one class-conditional model, bilinear upsampling and two
   full-resolution convolutions, mask norm, spectral norm, feature matching) and the study's
   generator and loss (per class, transposed convolutions, none of those), side by side in one
   process: real slices per second (what sets the epoch time; with the diversity term each slice
   is generated twice) and peak memory (CUDA: max allocated; CPU: growth of the peak resident set
   size, so only the first, largest-so-far measurement is meaningful).
2. Generation: generate.py's synthesis (masks file in, dataset file out, end to end) against the
   generator's bare batched forward pass over the same masks already in memory, in the same run.
   Target: end to end >= 80% of the bare forward pass. Without --run, untrained generators of the
   given width stand in (same cost). Results are printed and written as JSON under bench/results/.
"""
from pathlib import Path

# ----------------------------------------------------------------------------- flags
sizes = [128, 256, 512]          # training-step benchmark sizes
steps = 5                        # timed steps per size (after one warm-up step)
variants = ["defaults", "study"]  # train.py's defaults and the study's generator and loss (see VARIANTS)
batch_size = 4
ngf = 16                         # train.py's defaults; 64 / 64 = pix2pix's widths
ndf = 32
latent_mode = "inject"
diversity_weight = 20.0          # as train.py: each mask with two latents (2x generator work); a variant
                                 # that sets its own (latent_encoder: 0) overrides it
train = True                     # run the training-step benchmark
generation = True                # run the generation benchmark
masks = ""                       # augmented-mask file for the generation benchmark ("" = make one)
run = ""                         # trained GAN run folder (<model_dir>/<run_name>); "" = untrained
per_class = 200                  # slices per class in the generation benchmark
gen_image_size = 128             # size of the made-up masks when masks = ""
gen_batch_size = 64
compression = "gzip"             # of the synthetic file: "gzip", "lzf" or "none"
device = "auto"
threads = 2
out = "bench/results/bench_gan.json"
# -----------------------------------------------------------------------------


PREVIOUS_DEFAULT = dict(upsample="resize", full_res_convs=0)   # train.py's defaults before the sixteenth session
VARIANTS = {   # changes to train.py's defaults (those measured against the previous default start from it)
    "defaults": {},
    "previous_default": PREVIOUS_DEFAULT,
    "study": dict(conditional=False, upsample="transpose", full_res_convs=0, mask_norm=False, spectral_norm=False,
                  feature_matching_weight=0.0),
    "pixel_critic": dict(PREVIOUS_DEFAULT, pixel_critic=True),      # + the full-resolution stride-free critic
    "blur_sharp_stem": dict(PREVIOUS_DEFAULT, blur_downsampling=True, sharp_stem=True),   # anti-aliased critic
    "bilinear": dict(PREVIOUS_DEFAULT, upsample="bilinear"),        # bilinear resizing in every decoder level
    "bilinear_nearest_output": dict(PREVIOUS_DEFAULT, upsample="bilinear", output_upsample="resize"),  # but the last
    "bicubic": dict(PREVIOUS_DEFAULT, upsample="bicubic"),          # bicubic resizing in every decoder level
    "bilinear_head2": dict(upsample="bilinear", full_res_convs=2),  # the defaults since the sixteenth session
    "tumour_l1": dict(tumour_l1_weight=20.0),                       # tumour pixels weigh 21x in the L1 term
    "latent_encoder": dict(latent_encoder=True, diversity_weight=0.0, kl_weight=0.01,   # BicycleGAN (23rd session)
                           drawn_feature_matching=True),
}


def peak_memory_reset(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device, rss_before):
    import resource

    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before, 0.0)


def bench_train_step(size, settings, device, n_steps):
    """Images per second and peak memory of train_step at one image size."""
    import dataclasses
    import resource
    import time

    import torch

    from generative_model.image_pool import ImagePool
    from generative_model.trainer import (encoder_of, gan_criterion, gan_optimisers, l1_pixel_weights,
                                          networks_of, train_step)

    torch.manual_seed(0)
    settings = dataclasses.replace(settings, image_size=size)
    generator, discriminator = networks_of(settings)
    encoder = encoder_of(settings)       # None unless the variant trains one
    generator.to(device)
    discriminator.to(device)
    if encoder is not None:
        encoder.to(device)
    opt_g, opt_d = gan_optimisers(generator, discriminator, encoder, settings)     # train.py's lr and beta1
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    mask = (torch.rand(settings.batch_size, 1, size, size, device=device) > 0.97).float() * 2 - 1
    real = torch.rand(settings.batch_size, 1, size, size, device=device) * 2 - 1
    labels = torch.arange(settings.batch_size, device=device) % 3
    tumour = {"tumor_masks": torch.zeros(settings.batch_size, 1, size, size)}
    tumour["tumor_masks"][..., size // 3:size // 2, size // 3:size // 2] = 1     # a made-up tumour
    parts = dict(generator=generator, discriminator=discriminator, opt_g=opt_g, opt_d=opt_d, scaler=scaler,
                 pool=ImagePool(settings.pool_size), criterion=gan_criterion(settings.gan_loss),
                 settings=settings, use_amp=use_amp, encoder=encoder,
                 l1_weights=l1_pixel_weights(tumour, settings.tumour_l1_weight, device))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_step(mask, real, labels, **parts)  # warm-up
    peak_memory_reset(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n_steps):
        train_step(mask, real, labels, **parts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    images = n_steps * settings.batch_size
    return {"image_size": size, "conditional": settings.conditional, "upsample": settings.upsample,
            "mask_norm": settings.mask_norm, "spectral_norm": settings.spectral_norm,
            "feature_matching_weight": settings.feature_matching_weight, "ngf": settings.ngf, "ndf": settings.ndf, "batch_size": settings.batch_size,
            "diversity_weight": settings.diversity_weight, "tumour_l1_weight": settings.tumour_l1_weight,
            "latent_encoder": settings.latent_encoder, "steps": n_steps,
            "images_per_s": round(images / seconds, 2), "seconds_per_step": round(seconds / n_steps, 3),
            "peak_memory_mib": round(peak_memory_mib(device, rss_before), 1),
            "generator_params": sum(p.numel() for p in generator.parameters()),
            "discriminator_params": sum(p.numel() for p in discriminator.parameters()),
            "generator_config": generator.config, "discriminator_config": discriminator.config}


def bench_generation(masks_path, run_dir, device, work_dir):
    """generate.py end to end vs the bare batched forward pass, same masks, same batch size."""
    import time

    import h5py
    import numpy as np
    import torch

    from generative_model.synthesis import synthesize

    if not run_dir:
        run_dir = make_untrained_run(Path(work_dir) / "untrained", gen_image_size, ngf, latent_mode)
    if not masks_path:
        masks_path = Path(work_dir) / "masks.h5"
        write_benchmark_masks(masks_path, gen_image_size, per_class)
    out_path = Path(work_dir) / "synthetic.h5"

    started = time.perf_counter()
    summary = synthesize(run_dir, masks_path, out_path, per_class=per_class, batch_size=gen_batch_size,
                         seed=0, device=device, progress=False, compression=compression)
    end_to_end = time.perf_counter() - started

    from generative_model.saved_runs import load_generators
    generators, _ = load_generators(run_dir, device)
    generator = next(iter(generators.values()))
    total = summary["slices"]
    with h5py.File(masks_path, "r") as f:
        conditions = f["conditions"][:min(total, len(f["conditions"]))]
    conditions = np.resize(conditions, (total,) + conditions.shape[1:])
    masks_t = torch.from_numpy(conditions).to(device, torch.float32)[:, None] * 2 - 1
    z = torch.randn(total, generator.latent_dim, device=device)
    labels = torch.zeros(total, dtype=torch.long, device=device)
    use_amp = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, enabled=use_amp):
        generator(masks_t[:gen_batch_size], z[:gen_batch_size], labels[:gen_batch_size])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, total, gen_batch_size):
            part = slice(start, start + gen_batch_size)
            generator(masks_t[part], z[part], labels[part]).float().cpu()
        bare = time.perf_counter() - started
    return {"slices": total, "batch_size": gen_batch_size, "image_size": summary["image_size"],
            "end_to_end_s": round(end_to_end, 3), "end_to_end_slices_per_s": round(total / end_to_end, 2),
            "bare_forward_s": round(bare, 3), "bare_forward_slices_per_s": round(total / bare, 2),
            "end_to_end_vs_bare": round(bare / end_to_end, 3), "target": 0.8, "compression": compression, "run": str(run_dir),
            "masks": str(masks_path)}


def make_untrained_run(run_dir, size, width, mode):
    """A run folder with an untrained generator of train.py's defaults (same cost as a trained one)."""
    import torch

    from generative_model.saved_runs import CHECKPOINT, CONDITIONAL_FOLDER, write_run_index
    from generative_model.settings import GanSettings
    from generative_model.trainer import networks_of
    from preprocess.checkpoint_io import save_checkpoint
    torch.manual_seed(0)
    settings = GanSettings(image_size=size, ngf=width, latent_mode=mode)
    generator, _ = networks_of(settings)
    folder = CONDITIONAL_FOLDER if settings.conditional else "meningioma"
    save_checkpoint({"generator": generator.state_dict(), "generator_config": generator.config},
                    Path(run_dir) / folder / CHECKPOINT)
    write_run_index(run_dir, {folder: f"{folder}/{CHECKPOINT}"}, settings.conditional, size,
                    note="untrained, for benchmarking")
    return run_dir


def write_benchmark_masks(path, size, count_per_class):
    """A made-up augmented-mask file: rings and discs, count_per_class of each class."""
    import numpy as np

    from preprocess.dataset import DatasetWriter
    yy, xx = np.mgrid[:size, :size] / size
    rng = np.random.default_rng(0)
    n = 3 * count_per_class
    with DatasetWriter(path, image_size=size, fields=("conditions", "tumor_masks", "labels", "source_ids")) as w:
        for start in range(0, n, 256):
            count = min(256, n - start)
            centres = rng.uniform(0.3, 0.7, (count, 2))
            discs = np.hypot(yy - centres[:, :1, None], xx - centres[:, 1:, None]) < 0.08
            ring = np.abs(np.hypot(yy - 0.5, xx - 0.5) - 0.42) < 0.01
            w.append(conditions=discs ^ np.roll(discs, 1, axis=1) | ring, tumor_masks=discs,
                     labels=np.arange(start, start + count) % 3, source_ids=[str(i) for i in range(count)])


if __name__ == "__main__":
    import json
    import os
    import platform
    import tempfile

    import torch

    from generative_model.settings import GanSettings
    from preprocess.devices import resolve_device
    from preprocess.flags import apply_cli_flags

    flags = apply_cli_flags(globals())
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "flags": flags, "train_step": [], "generation": None}
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown --variants {unknown}; known: {list(VARIANTS)}")
    for size in sizes if train else ():
        for name in variants:
            settings = GanSettings(**{**dict(batch_size=batch_size, ngf=ngf, ndf=ndf, latent_mode=latent_mode,
                                             diversity_weight=diversity_weight), **VARIANTS[name]})
            row = {"variant": name, **bench_train_step(size, settings, dev, steps)}
            report["train_step"].append(row)
            print(f"train step {name:>23s} {size:4d} px ngf {ngf} ndf {ndf} batch {batch_size}: "
                  f"{row['images_per_s']:8.2f} images/s, {row['seconds_per_step']:.3f} s/step, "
                  f"peak memory {row['peak_memory_mib']:.0f} MiB", flush=True)
    if generation:
        with tempfile.TemporaryDirectory() as work:
            result = bench_generation(masks, run, dev, work)
        report["generation"] = result
        print(f"generation {result['slices']} slices at {result['image_size']} px: end to end "
              f"{result['end_to_end_slices_per_s']:.1f} slices/s, bare forward "
              f"{result['bare_forward_slices_per_s']:.1f} slices/s -> "
              f"{100 * result['end_to_end_vs_bare']:.0f}% (target >= 80%)")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    print(f"wrote {out}")
