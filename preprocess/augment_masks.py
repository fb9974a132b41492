"""Stage 1b: make new condition masks by random affine warps of real tumours (as the study did).

    python preprocess/augment_masks.py --dataset=data/figshare_256.h5 --out=data/masks_aug_256.h5 --per_class=2334

Writes conditions, tumor_masks, labels and source_ids (the slice each mask came from); the GAN
stage turns these masks into synthetic slices.
"""
# ----------------------------------------------------------------------------- flags
dataset = "data/demo/demo_128.h5"  # prepared dataset file (prepare_dataset.py)
out = "data/demo/masks_aug_128.h5"  # augmented-mask file to write
per_class = 100                    # new masks per class (the study made ~7,000 slices in all)
seed = 0                           # same seed, same masks
workers = 0                        # processes; 0 = one per core
# -----------------------------------------------------------------------------


def run(flags):
    from preprocess.mask_augmentation import augment_masks

    summary = augment_masks(flags["dataset"], flags["out"], flags["per_class"], flags["seed"], flags["workers"],
                            created_with=flags)
    print(f"wrote {summary['out']}: {summary['masks']} masks in {summary['seconds']} s")


if __name__ == "__main__":
    from preprocess.flags import run_script

    run_script(run, globals(), expected=(OSError, KeyError, ValueError))
