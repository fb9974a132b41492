"""The study in one command, without leakage: does GAN pre-training help a capsule classifier?

    python study.py --preset=cpu --data_path=data/figshare_256.h5 --gan_data_path=data/figshare_128.h5
    python study.py --preset=cpu ... --fold=3            # one fold (e.g. one job of a cluster array)
    python study.py --preset=cpu ... --collect=True      # merge the finished folds

For every fold (patient-wise, or by stretch) it augments masks, trains the GAN and synthesises
slices from that fold's training patients only, then trains on exactly the same fold and seeds:
the capsule classifier on the real slices; pre-trained on the synthetic slices and fine-tuned on
the real ones; the baseline CNN; and on the synthetic slices alone. Every arm is tested on the
fold's validation patients. <out>/results.json and <out>/RESULTS.md hold per-arm means over
folds x seeds, the paired differences (95 % intervals and p-values over the fold x seed pairs, the
per-fold mean differences and a 95 % interval over the fold means; figure paired_differences.png),
and the patients each GAN saw.
A killed study continues where it stopped (every finished step is reused).

Presets (presets/study/*.json; flags given on the command line override them): demo (minutes on
the demo data), cpu (128 px GAN, 256 px classifier, 5 folds), study (the paper's setting, a GPU).
"""
import sys

# ----------------------------------------------------------------------------- flags
PRESETS = "study"                 # --preset=NAME reads presets/study/NAME.json
preset = ""                       # a preset name (demo, cpu, study) or a .json path
data_path = "data/figshare_256.h5"
gan_data_path = ""                # the same slices at the GAN's size ("" = data_path)
out = "checkpoints/study"
k_folds = 5
group_by = "patient"              # "patient" or "stretch"
split_seed = 0
seeds = 3                         # classifier seeds 0..seeds-1 per fold
arms = ["real_only", "pretrained", "baseline", "synthetic_only"]
fold = 0                          # 1..k_folds: run only that fold; 0: every fold, then collect
collect = False                   # only merge the finished folds into results.json / RESULTS.md
gan_epochs = 10
gan_conditional = True            # one class-conditional GAN (the GAN default); False: one per class
gan_ngf = 16
gan_ndf = 32
gan_batch_size = 4
gan_upsample = "bilinear"         # the GAN defaults of generative_model/train.py (a test keeps them equal)
gan_full_res_convs = 2
gan_mask_norm = True
gan_spectral_norm = True
gan_feature_matching_weight = 10.0
synthetic_per_class = 1000
image_size = 0                    # classifier size; 0: the size of data_path
epochs = 30
pretrain_epochs = 5
batch_size = 32
lr = 1e-3
capsule_preset = "residual"
baseline = "resnet18"
baseline_preset = ""              # presets/classifier/<name>.json for the baseline arm ("": the flags above)
augmentation = "mri"
tumour_paste = 0.0                # the classifier's --tumour_paste (its default is 0.5; the study's
                                  # measured rows ran without it)
prior_correction = 0.0            # the classifier's --prior_correction (its default is 1; the same)
test_time_warps = False           # the classifier's --test_time_warps (its default is True; the same)
device = "auto"
threads = 2
# -----------------------------------------------------------------------------


def run(flags):
    import dataclasses

    import torch

    from study_pipeline.folds import check_reuse, fold_rows, run_fold
    from study_pipeline.settings import settings_from_flags
    from study_pipeline.summary import collect as collect_folds

    torch.set_num_threads(flags["threads"])
    settings = settings_from_flags(flags)
    if not flags["collect"]:
        folds = fold_rows(settings)
        if not 0 <= flags["fold"] <= settings.k_folds:
            raise ValueError(f"--fold={flags['fold']}: use 1..{settings.k_folds}, or 0 for every fold")
        chosen = [(k, rows) for k, rows in enumerate(folds, start=1) if flags["fold"] in (0, k)]
        # what earlier runs left, checked for every fold before any trains
        reused = {k: check_reuse(settings, k, train_rows, val_rows) for k, (train_rows, val_rows) in chosen}
        for k, (train_rows, val_rows) in chosen:
            run_fold(settings, k, train_rows, val_rows, reused[k])
        if flags["fold"]:
            print(f"fold {flags['fold']} done; merge finished folds with --collect=True")
            return None
    results = collect_folds(settings.out, dataclasses.asdict(settings))
    print(f"wrote {settings.out}/results.json and {settings.out}/RESULTS.md "
          f"({len(results['folds'])} folds)")
    return results


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.flags import run_script
    from preprocess.mat_reader import MatFileError

    from preprocess.distributed import is_distributed

    if is_distributed():
        sys.exit("error: study.py does not run under torchrun; run its folds as separate jobs "
                 "(--fold=K, then --collect=True)")
    run_script(run, globals(), expected=(CheckpointError, MatFileError, ValueError, FileNotFoundError))
