"""Stage 2b: synthesise slices from trained generators and an augmented-mask file.

    python generative_model/generate.py --model_dir=checkpoints/gan --run_name=gan_128 \
        --masks=data/masks_aug_128.h5 --per_class=1000 --out=data/synthetic_128.h5

Writes a dataset file of the real layout with attribute synthetic = True, which
capsule_classifier/train.py --data_path=... takes as it is. --pickle_out=FILE.pkl also writes the
study's pickle (a list of [image, label]). Same seed, same output. --mask_classes=any (class-
conditional runs) draws every class into masks of any class instead of its own.
"""
import sys

# ----------------------------------------------------------------------------- flags
model_dir = "checkpoints/gan"
run_name = "gan_128"
masks = "data/demo/masks_aug_128.h5" # augmented-mask file (preprocess/augment_masks.py writes this one)
out = "data/demo/synthetic_128.h5"   # synthetic dataset file to write
per_class = 0                        # slices per class; 0 = total / number of classes
total = 7000                         # used when per_class = 0 (the study made ~7,000)
batch_size = 64
seed = 0
device = "auto"
threads = 2
pickle_out = ""                      # also write the study's pickle here ("" = no)
compression = "gzip"                 # "gzip" (portable), "lzf" (faster to write; h5py only), "none"
mask_classes = "own"                 # "own": each class into masks of its own class; "any": into masks of
                                     # every class (class-conditional runs only: class and anatomy decoupled)
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    import os

    import torch

    from preprocess.checkpoint_io import CheckpointError
    from generative_model.synthesis import synthesize
    from preprocess.flags import apply_cli_flags

    from preprocess.distributed import leave_unless_rank_zero

    leave_unless_rank_zero("generate.py")
    flags = apply_cli_flags(globals())
    torch.set_num_threads(threads)
    try:
        summary = synthesize(os.path.join(model_dir, run_name), masks, out, per_class=per_class or None,
                             total=total, batch_size=batch_size, seed=seed, device=device,
                             pickle_out=pickle_out or None, created_with=flags,
                             compression=compression, mask_classes=mask_classes)
    except (OSError, KeyError, ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    counts = ", ".join(f"{name} {n}" for name, n in zip(summary["classes"], summary["per_class"]))
    print(f"wrote {summary['out']}: {summary['slices']} slices ({counts}) in {summary['seconds']} s"
          + (f"; pickle {summary['pickle']}" if "pickle" in summary else ""))
