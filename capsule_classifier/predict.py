"""Classify slices with a trained checkpoint and write a CSV of class probabilities.

    python capsule_classifier/predict.py --checkpoint=checkpoints/RUN/best.pt --input=PATH --out=preds.csv

PATH is a figshare .mat file, a brainTumorDataPublic_*.zip, a png/jpg image, a dataset file (.h5)
or a folder of those. Raw slices are prepared exactly like the training data. One row per slice:
file,predicted_class,p_meningioma,p_glioma,p_pituitary,error. A file that cannot be read (damaged,
truncated, not an image) gets a row with the reason in ``error``; the run fails (exit 1) only when
nothing could be read, or with --strict=True when anything could not. 16-bit PNG images are read at
full depth. Runs on the CPU by default.
"""
import sys

checkpoint = ""
input = ""
out = "predictions.csv"
device = "cpu"
threads = 2
flips = True                  # average the probabilities over the slice and the flips it was trained with
prior_correction = None       # divide the probabilities by the checkpoint's training class shares to this
                              # power (1: as if its classes had been equally common in training; 0: off;
                              # None: as its training run scored, train.py's --prior_correction)
test_time_warps = None        # average over small rotations and scalings of each slice as well
                              # (engine.TEST_TIME_WARPS; None: as its training run scored)
strict = False                # exit with status 1 when any file could not be read (else only when none could)


def run(flags):
    from capsule_classifier.checkpoint import model_for_script, scoring_prior, scoring_warps, trained_vertical_flips
    from capsule_classifier.inference import classify

    strength = flags["prior_correction"]
    if strength is not None and (not isinstance(strength, (int, float)) or strength < 0):
        raise ValueError(f"--prior_correction={strength}: 0 (off) or more")
    model, record, chosen = model_for_script(flags, "predict.py", "input")
    prior, strength = scoring_prior(record, strength, flags["checkpoint"])
    rows = classify(model, flags["input"], record["image_size"], chosen, flags["out"], flags["flips"],
                    trained_vertical_flips(record), prior, strength,
                    scoring_warps(record, flags["test_time_warps"]))
    failed = [row for row in rows if row[-1]]
    print(f"classified {len(rows) - len(failed)} slices with {flags['checkpoint']} -> {flags['out']}")
    for row in failed:
        print(f"could not read {row[0]}: {row[-1]}", file=sys.stderr)
    if failed and (flags["strict"] or len(failed) == len(rows)):
        sys.exit(f"error: {len(failed)} of {len(rows)} files could not be read (the 'error' column of {flags['out']})")
    return rows


if __name__ == "__main__":
    from preprocess.checkpoint_io import CheckpointError
    from preprocess.distributed import leave_unless_rank_zero
    from preprocess.flags import run_script

    leave_unless_rank_zero("predict.py")

    run_script(run, globals(), expected=(CheckpointError, ValueError))
