"""Stage 1c: split a dataset file patient-wise (or by stretch) into a training and a held-out file,
so the GAN, the mask augmentation and the feature classifier can be trained without ever seeing
the held-out patients, and synthetic slices tested on them.

    python preprocess/split_dataset.py --dataset=data/figshare_128.h5 --train_out=data/figshare_128_train.h5 \
        --heldout_out=data/figshare_128_heldout.h5 --fraction=0.2

Each output keeps every column of the input and records its part and patients in the ``split``
attribute (JSON). The same seed and settings give the same split as the classifier's hold-out.
"""
import sys

# ----------------------------------------------------------------------------- flags
dataset = "data/demo/demo_128.h5"                  # prepared dataset file (prepare_dataset.py)
train_out = "data/demo/demo_128_train.h5"          # the training part
heldout_out = "data/demo/demo_128_heldout.h5"      # the held-out part (about `fraction` of the slices)
fraction = 0.2
group_by = "patient"                               # "patient" or "stretch" (figshare numbering)
seed = 0
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags
    from preprocess.splits import write_split

    flags = apply_cli_flags(globals())
    try:
        summary = write_split(dataset, train_out, heldout_out, fraction, seed, group_by)
    except (OSError, KeyError, ValueError) as error:
        sys.exit(f"error: {error}")
    for part, info in summary.items():
        print(f"{part}: {info['slices']} slices of {info['patients']} patients "
              f"(per class {info['per_class']}) -> {info['out']}")
