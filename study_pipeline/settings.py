"""The settings of a study run: the flags of ``study.py`` (its presets: ``presets/study/*.json``)."""
import dataclasses

ARMS = ("real_only", "pretrained", "baseline", "synthetic_only")
# what a classifier preset may set for the study's baseline arm
BASELINE_PRESET_KEYS = {"model", "image_size", "epochs", "lr", "batch_size", "weight_decay", "label_smoothing",
                        "tumour_paste", "prior_correction", "test_time_warps"}


@dataclasses.dataclass
class StudySettings:
    """Everything that defines a study run."""
    data_path: str = "data/figshare_256.h5"   # real slices at the classifier's size (prepare_dataset.py)
    gan_data_path: str = ""        # the same slices at the GAN's size ("" = data_path)
    out: str = "checkpoints/study"
    k_folds: int = 5
    group_by: str = "patient"      # "patient" or "stretch"
    split_seed: int = 0            # the folds (the same for every seed)
    seeds: int = 3                 # classifier seeds 0..seeds-1 on every fold
    arms: tuple = ARMS
    # the GAN (one per fold, trained on the fold's training patients only); gan_<name> is GanSettings' <name>,
    # with its default (a test keeps them equal) except gan_epochs, the study's own CPU budget
    gan_epochs: int = 10
    gan_conditional: bool = True   # one class-conditional GAN; False: one model per class, as the study
    gan_ngf: int = 16
    gan_ndf: int = 32
    gan_batch_size: int = 4
    gan_upsample: str = "bilinear"
    gan_full_res_convs: int = 2
    gan_mask_norm: bool = True
    gan_spectral_norm: bool = True
    gan_feature_matching_weight: float = 10.0
    synthetic_per_class: int = 1000
    # the classifiers
    image_size: int = 0            # 0: the size of data_path
    epochs: int = 30
    pretrain_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    capsule_preset: str = "residual"
    baseline: str = "resnet18"     # "resnet18" or "resnet50"
    baseline_preset: str = ""      # presets/classifier file for the baseline arm (e.g. resnet18_cpu)
    augmentation: str = "mri"
    tumour_paste: float = 0.0      # the classifier's --tumour_paste (0: off, as every measured study row)
    prior_correction: float = 0.0  # the classifier's --prior_correction (0: off, as every measured study row)
    test_time_warps: bool = False  # the classifier's --test_time_warps (off, as every measured study row)
    device: str = "auto"


def settings_from_flags(flags):
    """StudySettings from the flags of study.py, by field name."""
    values = {f.name: flags[f.name] for f in dataclasses.fields(StudySettings)}
    values["arms"] = tuple(values["arms"])
    unknown = set(values["arms"]) - set(ARMS)
    if unknown:
        raise ValueError(f"--arms: unknown arms {sorted(unknown)}; known: {list(ARMS)}")
    if values["baseline_preset"]:
        baseline_preset(values["baseline_preset"], values["baseline"])
    return StudySettings(**values)


def baseline_preset(name, baseline):
    """The values of the classifier preset ``name`` for the baseline arm; refuses what the arm
    cannot take and a model other than ``baseline``."""
    from preprocess.flags import load_preset
    values = load_preset("classifier", name)
    unusable = set(values) - BASELINE_PRESET_KEYS
    if unusable:
        raise ValueError(f"--baseline_preset={name}: the study's baseline arm cannot take {sorted(unusable)}")
    if values.get("model", baseline) != baseline:
        raise ValueError(f"--baseline_preset={name} trains {values['model']}, but --baseline={baseline}")
    return values
