"""Stage 2a: train the conditional GAN (pix2pix U-Net + PatchGAN) on a prepared dataset file.

    python generative_model/train.py --dataset=data/figshare_128.h5 --image_size=128 \
        --model_dir=checkpoints/gan --run_name=gan_128

One class-conditional model under <model_dir>/<run_name>/all/ (the default: synthetic slices of
every class share one generator, so a classifier cannot tell the classes apart by a generator's
own texture), or, with --conditional=False, one model per class (the study) under
<model_dir>/<run_name>/<class>/. Every epoch
writes a sample grid, losses.csv, losses.png and an atomic checkpoint; --resume=True continues.
See generative_model/README.md for the settings we recommend and what they cost.
"""
import sys

# ----------------------------------------------------------------------------- flags
dataset = "data/demo/demo_128.h5" # prepared dataset file (real slices; prepare_dataset.py writes this one)
image_size = 128                  # must match the dataset file
model_dir = "checkpoints/gan"     # outputs go to <model_dir>/<run_name>/
run_name = "gan_128"
classes = ["meningioma", "glioma", "pituitary"]   # the classes to train (per-class: one model each)
conditional = True                # one class-conditional model; False: one model per class (the study)
epochs = 12                       # sized for the 60-minute CPU budget at 128 px (2,350 slices, 2 cores);
                                  # on a GPU use 30 or more
decay_start = 0.5                 # LR constant for this fraction of the epochs, then linear to 0
batch_size = 4                    # real slices per step, over all torchrun processes (each generated
                                  # twice with diversity_weight > 0)
lr = 2e-4                         # Adam, beta1 0.5 (pix2pix)
beta1 = 0.5
gan_loss = "lsgan"                # "vanilla" (BCE, the study/pix2pix) or "lsgan"
l1_weight = 100.0                 # lambda of the L1 term (study 0.1, pix2pix 100)
tumour_l1_weight = 0.0            # > 0: each tumour pixel counts 1 + this in the L1 term (the dataset's
                                  # tumor_masks; 20 measured, not adopted: generative_model/RESULTS.md)
diversity_weight = 20.0           # mode-seeking term (0 = off); each mask then gets 2 latents
diversity_class_weights = ""      # e.g. "meningioma=30" or "meningioma=30,glioma=10": those classes' own
                                  # mode-seeking weights (the others keep diversity_weight); each class's
                                  # term is then capped on its own. "" = one weight for every slice
diversity_grid = 0                # > 0: the mode-seeking term compares the 2 fakes averaged down to
                                  # grid x grid cells (speckle no longer pays); 0: pixel by pixel
l1_best_of_two = False            # True: of the 2 fakes per mask, only the closer one pays the L1
                                  # term, so the other is free to differ (needs diversity_weight > 0)
l1_scale = 1                      # > 1: the L1 term compares fake and real slice averaged over cells of
                                  # l1_scale x l1_scale px (4 at 128 px: 32 x 32 cells), so it holds the
                                  # layout and leaves the pattern inside a cell to the critic and the
                                  # mode-seeking term (1 = pixel by pixel). Note the units: l1_scale is a
                                  # cell's size, diversity_grid the number of cells (4 px = grid 32 at 128 px)
latent_encoder = False            # True: BicycleGAN (Zhu et al. 2017). Of the 2 latents per mask the first is
                                  # encoded from the real slice (a small encoder, training only) and alone pays
                                  # the L1 and feature-matching terms; the second is drawn from N(0, I), as at
                                  # synthesis, and pays latent regression instead; both pay the adversarial
                                  # term. So the L1 no longer pulls every latent to one average slice. Needs
                                  # --diversity_weight=0. Measured, not adopted (generative_model/RESULTS.md)
kl_weight = 0.01                  # with latent_encoder: KL of the encoded latent to N(0, I), summed over its
                                  # dimensions (BicycleGAN's value; 0.1 collapsed the encoder onto N(0, I))
latent_regression_weight = 0.5    # with latent_encoder: L1 between the encoder's mean for the drawn latent's
                                  # fake and that latent (BicycleGAN's lambda_z), so that the drawn latent
                                  # must show in its slice
drawn_feature_matching = False    # with latent_encoder: the drawn latent's fake pays the feature-matching term
                                  # against its real slice too (the critic's features, not pixels: an anchor
                                  # softer than L1); False: only the encoded one does
pool_size = 50                    # image pool for the discriminator (0 = off)
ngf = 16                          # generator width (64 = pix2pix; see the README for CPU/GPU)
ndf = 32                          # discriminator width (64 = pix2pix)
latent_dim = 100                  # the study's 100-d latent vector
latent_mode = "inject"            # "inject" (small plane + every decoder level) or "study" (FC to S*S)
norm = "batch"                    # "batch" or "instance"
upsample = "bilinear"             # "bilinear" (bilinear + 3x3 conv), "resize" (nearest + 3x3 conv: a 2-px
                                  # lattice), "bicubic" (bicubic + 3x3 conv) or "transpose" (study: checkerboards)
output_upsample = ""              # the last doubling (to full resolution) only: "resize", "bilinear",
                                  # "bicubic" or "transpose"; "" = as upsample (e.g. bilinear levels, nearest output)
full_res_convs = 2                # that many 3x3 convolutions at full resolution after the last doubling,
                                  # each seeing the mask, latent and class planes again, then the output
                                  # one (0 = pix2pix: the last doubling's convolution draws the image)
mask_norm = True                  # SPADE-style: the mask scales and shifts every decoder level
mask_resize = "nearest"           # mask norm's mask at coarse levels: "nearest" (pick pixels) or "area" (average)
noise_inputs = False              # per-pixel noise maps (learned strength) after each decoder level:
                                  # randomness for texture where the outline says nothing (StyleGAN; measured: left unused)
blur_downsampling = False         # discriminator: [1,2,1] blur before each stride-2 convolution
sharp_stem = False                # with blur_downsampling: the critic's first convolution at stride 1 on
                                  # the unblurred pair, then blur + subsample (a BlurPool): sharp, not aliased
pixel_critic = False              # discriminator: a second critic at full resolution, no strides
                                  # (7 x 7 field): judges fine texture off any grid
critic_scales = 1                 # > 1: pix2pixHD's multi-scale discriminator: that many PatchGANs, the k-th
                                  # on the (mask, slice) pair averaged down k times by 2 (at 2: 70- and 140-px
                                  # fields), so the layout of the whole brain is judged as well as texture
spectral_norm = True              # spectral normalisation in the discriminator
feature_matching_weight = 10.0    # pix2pixHD feature-matching loss (0: off, as the study)
spectrum_weight = 0.0             # > 0: L1 between the log amplitude spectra (2-d FFT) of each fake and
                                  # its real slice, against periodic patterns (Durall et al. 2020); 0: off
generator_ema = 0.0               # > 0: sample grids, generate.py and evaluate.py use a moving average of
                                  # the generator's weights with this decay (e.g. 0.999; ProGAN/StyleGAN); 0: off
# the study's generator and loss: --upsample=transpose --full_res_convs=0 --mask_norm=False
#                                 --spectral_norm=False --feature_matching_weight=0 (see generative_model/RESULTS.md)
# the default before the sixteenth session (a 2-px lattice; about 7 points more train-on-synthetic on
#                                 19 held-out patient groups, scored without test-time warps):
#                                 --upsample=resize --full_res_convs=0
seed = 0
device = "auto"                   # "auto" = CUDA when present, else CPU
amp = True                        # mixed precision on CUDA
threads = 2                       # CPU threads for torch
num_workers = 0                   # DataLoader worker processes
resume = False                    # continue from <run>/<class>/checkpoint.pt
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    import dataclasses

    import torch

    from generative_model.settings import GanSettings
    from generative_model.trainer import train_models
    from preprocess import distributed
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import apply_cli_flags

    flags = apply_cli_flags(globals())
    torch.set_num_threads(threads)
    settings = GanSettings(**{field.name: flags[field.name] for field in dataclasses.fields(GanSettings)})
    try:
        summaries = train_models(dataset, model_dir, run_name, settings, classes, resume, created_with=flags)
    except (OSError, KeyError, ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    finally:
        distributed.cleanup()
    for name, summary in summaries.items() if distributed.is_main() else ():
        print(f"{name}: {summary['epochs']} epochs on {summary['slices']} slices -> {summary['checkpoint']}")
