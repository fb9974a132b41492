"""Stage 2c: measure the synthetic slices: diversity, intensity fidelity, value to the classifier.

    python generative_model/evaluate.py --model_dir=checkpoints/gan --run_name=gan_128 \
        --masks=data/masks_aug_128.h5 --real=data/figshare_128.h5 \
        --synthetic=data/synthetic_128.h5 --out_dir=checkpoints/gan/gan_128/evaluation

Writes <out_dir>/evaluation.json (every number, with the commands of the classifier runs),
<out_dir>/real_vs_synthetic.png, spectrum.png (periodic artefacts: synthetic minus real mean log
amplitude spectra, generative_model/spectrum.py), tumour_contrast.png (tumour brightness over tissue
per class, real against synthetic: generative_model/tumour_contrast.py) and, with --feature_checkpoint, quality.json and quality.png (KID,
FD, precision/recall and memorisation in that classifier's feature space). With --heldout (real
slices of patients the GAN never saw, from preprocess/split_dataset.py), train-on-synthetic is
tested on those patients. The classifier part calls capsule_classifier/train.py as a
subprocess (--classifier=False skips it; --classifier_runs=synthetic_to_real keeps only the quick
train-on-synthetic / test-on-real run; --classifier_args passes more flags, e.g. "--epochs=5";
--classifier_seeds=0,1,2 repeats the tested runs with those seeds and reports mean +- std).
Classifier runs that already finished with the same command are reused, so several evaluate.py
processes with different --classifier_runs can run side by side and a last one collects them.
"""
import sys
from pathlib import Path

# ----------------------------------------------------------------------------- flags
model_dir = "checkpoints/gan"
run_name = "gan_128"
masks = "data/demo/masks_aug_128.h5"    # masks for the diversity measurement
real = "data/demo/demo_128.h5"          # real slices the GAN was trained on (histograms, grid, test set)
synthetic = "data/demo/synthetic_128.h5" # output of generate.py
heldout = ""                            # real slices of patients the GAN never saw (split_dataset.py):
                                        # train-on-synthetic is tested on them, and they give the
                                        # real-vs-real floor of every feature metric
feature_checkpoint = ""                 # classifier trained on the real training slices (e.g.
                                        # --model=resnet18): its penultimate features are the space of
                                        # KID, FD, precision/recall and memorisation ("" = skip them)
feature_slices = 2000                   # at most this many slices per file for the feature metrics
                                        # and the tumour contrast
out_dir = ""                            # "" = <model_dir>/<run_name>/evaluation
diversity_masks = 8                     # masks per class for the diversity measurement
diversity_latents = 4                   # latent vectors per mask
classifier = True                       # run the classifier comparisons
classifier_runs = ["synthetic_to_real", "real_only", "synthetic_pretrained"]   # which comparisons;
                                        # "real_to_heldout" (needs --heldout) is the TSTR reference
k_folds = 5
classifier_args = ""                    # extra flags for capsule_classifier/train.py, space separated
classifier_seeds = []                   # classifier seeds ([] = [seed]): the first is the seed of every
                                        # classifier run; the others repeat the tested runs
                                        # (synthetic_to_real, real_to_heldout), and evaluation.json adds
                                        # their accuracy and macro-F1 as mean +- std (ddof 1)
seed = 0
device = "auto"
threads = 2
# -----------------------------------------------------------------------------

if __name__ == "__main__":
    import json
    import os
    import time

    import torch

    from generative_model.evaluation import (classifier_comparison, comparison_grid, heldout_leakage,
                                             histogram_distances, latent_diversity)
    from generative_model.quality_report import quality_report
    from generative_model.spectrum import spectral_artefacts
    from generative_model.tumour_contrast import tumour_contrast_report
    from preprocess.dataset import has_field, read_attrs
    from preprocess.flags import apply_cli_flags

    from preprocess.distributed import leave_unless_rank_zero

    leave_unless_rank_zero("evaluate.py")
    flags = apply_cli_flags(globals())
    torch.set_num_threads(threads)
    run_dir = os.path.join(model_dir, run_name)
    out = Path(out_dir or os.path.join(run_dir, "evaluation"))
    out.mkdir(parents=True, exist_ok=True)
    report = {"flags": flags}
    try:
        started = time.perf_counter()
        report["diversity"] = latent_diversity(run_dir, masks, diversity_masks, diversity_latents, seed, device)
        report["histogram_distance"] = histogram_distances(real, synthetic)
        report["grid"] = comparison_grid(real, synthetic, out / "real_vs_synthetic.png", seed=seed)
        report["spectrum"] = spectral_artefacts(real, synthetic, heldout or None, out / "spectrum.png")
        unmasked = [path for path in (real, synthetic, heldout) if path and not has_field(path, "tumor_masks")]
        report["tumour_contrast"] = (
            {"skipped": f"no tumor_masks in {', '.join(unmasked)}"} if unmasked else
            tumour_contrast_report(real, synthetic, heldout or None, out / "tumour_contrast.png", feature_slices, seed))
        print(json.dumps({k: report[k] for k in ("diversity", "histogram_distance", "spectrum", "tumour_contrast")},
                         indent=1))
        if heldout:
            report["heldout_leakage"] = leakage = heldout_leakage(run_dir, synthetic, heldout)
            if leakage["heldout_patients_the_gan_saw"] or leakage["synthetic_slices_from_heldout_masks"]:
                print(f"warning: the GAN or its masks saw held-out patients ({leakage}); the tests on "
                      f"{heldout} are not on unseen patients")
        if feature_checkpoint:
            quality = quality_report(feature_checkpoint, real, synthetic, heldout, out, feature_slices, seed, device)
            report["feature_space"] = quality
            print(json.dumps(quality["against_train"], indent=1))
        if classifier:
            seeds = [int(s) for s in classifier_seeds] or [seed]
            if len(set(seeds)) < len(seeds):
                raise ValueError(f"--classifier_seeds={classifier_seeds}: each seed once")
            first_seed, *more_seeds = seeds
            report["classifier"] = classifier_comparison(
                real, synthetic, int(read_attrs(real)["image_size"]), out / "classifier", k_folds, first_seed,
                classifier_args.split(), classifier_runs, heldout or None, more_seeds)
            print(json.dumps(report["classifier"], indent=1))
        report["seconds"] = round(time.perf_counter() - started, 1)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    finally:
        with open(out / "evaluation.json", "w") as handle:
            json.dump(report, handle, indent=2)
    print(f"wrote {out / 'evaluation.json'}")
