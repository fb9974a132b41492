"""The settings of one GAN training run: the flags of ``generative_model/train.py``, by field name
(a test keeps the script's defaults equal to these)."""
import dataclasses


@dataclasses.dataclass
class GanSettings:
    """Everything that defines one GAN training run (the flags of train.py)."""
    image_size: int = 128
    epochs: int = 12             # the CPU budget (60 minutes at 128 px on 2 cores); 30+ on a GPU
    decay_start: float = 0.5     # fraction of the epochs after which the LR decays linearly to 0
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    gan_loss: str = "lsgan"      # "vanilla" (BCE) or "lsgan" (least squares)
    l1_weight: float = 100.0     # lambda of the L1 term (study 0.1, pix2pix 100)
    tumour_l1_weight: float = 0.0  # > 0: L1 counts 1 + this inside the tumour (the dataset's tumor_masks)
    diversity_weight: float = 20.0  # mode-seeking term (-weight * min(|G(z1)-G(z2)| / |z1-z2|, cap)); 0 = off
    diversity_class_weights: str = ""  # e.g. "meningioma=30": that class's mode-seeking weight (others: diversity_weight)
    diversity_grid: int = 0      # > 0: the mode-seeking term compares the fakes averaged down to grid x grid cells
    l1_best_of_two: bool = False  # with two latents per mask, L1 counts only the fake closer to the real slice
    l1_scale: int = 1            # > 1: L1 compares fake and real averaged over l1_scale x l1_scale cells
    latent_encoder: bool = False  # BicycleGAN: the L1-paying latent encoded from the real slice, the other drawn
    kl_weight: float = 0.01      # with latent_encoder: weight of KL(q(z | real slice) || N(0, I)), summed over z
    latent_regression_weight: float = 0.5  # with latent_encoder: |encoder mean of G(mask, z) - z| for drawn z
    drawn_feature_matching: bool = False  # with latent_encoder: the drawn latent's fake pays feature matching too
    pool_size: int = 50
    ngf: int = 16
    ndf: int = 32
    latent_dim: int = 100
    latent_mode: str = "inject"
    norm: str = "batch"
    upsample: str = "bilinear"   # "bilinear", "resize" (nearest), "bicubic" (each + 3x3 conv) or "transpose" (study)
    output_upsample: str = ""    # the output level's upsampling when it differs from upsample ("" = the same)
    full_res_convs: int = 2      # extra 3x3 convolutions at full resolution before the output (0 = pix2pix)
    mask_norm: bool = True       # SPADE-style mask-conditioned normalisation in the decoder
    noise_inputs: bool = False   # per-pixel noise maps with learned strengths in the decoder (StyleGAN)
    mask_resize: str = "nearest"  # how mask norm shrinks the mask to coarse levels: "nearest" or "area"
    blur_downsampling: bool = False  # blur before each stride-2 convolution of the discriminator
    sharp_stem: bool = False     # with blur_downsampling: first critic conv at stride 1, unblurred, then a BlurPool
    pixel_critic: bool = False   # a second, stride-free critic at full resolution (7 x 7 field)
    critic_scales: int = 1       # > 1: pix2pixHD's multi-scale critic, one PatchGAN per halving of the pair
    spectral_norm: bool = True   # spectral normalisation of the discriminator's convolutions
    feature_matching_weight: float = 10.0  # pix2pixHD feature-matching loss on the discriminator's layers
    spectrum_weight: float = 0.0  # L1 between log amplitude spectra of each fake and its real slice
    generator_ema: float = 0.0   # > 0: decay of an average of the generator's weights that samples and synthesis use
    conditional: bool = True     # one class-conditional model; False: one model per class (the study)
    seed: int = 0
    device: str = "auto"
    amp: bool = True             # mixed precision on CUDA
    num_workers: int = 0
