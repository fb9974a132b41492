"""Stage 2d: one table over several evaluated GAN runs (the variant table of generative_model/RESULTS.md).

    python generative_model/compare_evaluations.py --runs=checkpoints/gq/base,checkpoints/gq/new

Each run folder holds the GAN's model folders (``<class or all>/losses.csv``) and the output of
evaluate.py (``evaluation/evaluation.json``, with ``--heldout`` and ``--feature_checkpoint``).
Prints a markdown table (KID, Fréchet distance, precision/recall, train-on-synthetic/test-on-real
(with evaluate.py --classifier_seeds also its mean +- std over the seeds), its per-class recall,
latent diversity, the strongest periodic artefact (``spectrum.py``: peak excess of the synthetic
over the real mean log spectrum, its period, and the level real slices of other patients reach),
GAN training time); ``--out=FILE.md`` also writes it. Evaluations from before ``spectrum.py`` get
their spectrum computed here from the files named in their flags.
"""
import csv
import json
import os
from pathlib import Path

# ----------------------------------------------------------------------------- flags
runs = []                         # run folders (<model_dir>/<run_name>), compared in this order
evaluation = "evaluation"         # evaluate.py's folder inside each run
out = ""                          # also write the table to this markdown file ("" = print only)
# -----------------------------------------------------------------------------

COLUMNS = ("run", "KID (+- std over subsets)", "FD", "precision / recall",
           "train on synthetic, test on real: acc. / macro-F1", "its recall men. / gli. / pit.",
           "latent diversity, SSIM men. / gli. / pit. (lower = more diverse)",
           "periodic artefact: spectral peak excess (period, px); held-out real", "GAN training, s")


def training_seconds(run_dir):
    """Summed epoch times of every model of the run (from their losses.csv); None if absent."""
    tables = sorted(Path(run_dir).glob("*/losses.csv"))
    if not tables:
        return None
    total = 0.0
    for path in tables:
        with open(path, newline="") as handle:
            total += sum(float(row["seconds"]) for row in csv.DictReader(handle))
    return total


def synthetic_to_real_recall(tstr, evaluation_dir, classes):
    """Per-class recall of the train-on-synthetic run: in evaluation.json since this session's
    evaluate.py; for earlier evaluations, from that classifier run's own metrics.json."""
    if "recall" in tstr:
        return tstr["recall"]
    with open(os.path.join(evaluation_dir, "classifier", "synthetic_to_real", "metrics.json")) as handle:
        per_class = json.load(handle)["test"]["per_class"]
    return {name: per_class[name]["recall"] for name in classes}


def spectrum_of(result, path):
    """evaluate.py's spectrum section; for an earlier evaluation, computed from its flags' files."""
    if "spectrum" in result:
        return result["spectrum"]
    from generative_model.spectrum import spectral_artefacts
    flags = result.get("flags", {})
    files = [flags.get("real"), flags.get("synthetic")]
    if not all(files) or not all(os.path.isfile(f) for f in files):
        raise ValueError(f"{path}: no 'spectrum' section, and the files of its flags are not there ({files})")
    return spectral_artefacts(*files, flags.get("heldout") or None)


def spectrum_cell(spectrum):
    def peak(report):
        period = report["peak_period_px"]
        return f"{report['peak_excess']:.2f} ({period:.1f})" if period else f"{report['peak_excess']:.2f} (no excess)"
    floor = spectrum.get("real_floor")
    return peak(spectrum) + (f"; {peak(floor)}" if floor else "")


def run_row(run_dir, evaluation_dir):
    """The table cells of one run; raises ValueError naming a missing or incomplete evaluation."""
    evaluation_dir = os.path.join(run_dir, evaluation_dir)
    path = os.path.join(evaluation_dir, "evaluation.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (run generative_model/evaluate.py on {run_dir} first)")
    with open(path) as handle:
        result = json.load(handle)
    if "diversity" not in result:
        raise ValueError(f"{path}: no 'diversity' section (an evaluation that stopped early?); rerun evaluate.py")
    classes = list(result["diversity"])
    cells = [os.path.basename(os.path.normpath(run_dir))]
    synthetic = result.get("feature_space", {}).get("against_train", {}).get("synthetic")
    cells += ([f"{synthetic['kid_mean']:.3f} +- {synthetic['kid_std']:.3f}", f"{synthetic['fd']:.1f}",
               f"{synthetic['precision']:.2f} / {synthetic['recall']:.2f}"] if synthetic else ["not run"] * 3)
    tstr = result.get("classifier", {}).get("synthetic_to_real", {})
    if "accuracy" in tstr:
        recall = synthetic_to_real_recall(tstr, evaluation_dir, classes)
        score = f"{tstr['accuracy']:.3f} / {tstr['macro_f1']:.3f}"
        seeds = tstr.get("over_seeds")
        if seeds:   # evaluate.py --classifier_seeds: the spread over classifier seeds beside the first
            score += (f"; {seeds['runs']} seeds: {seeds['accuracy_mean']:.3f} +- {seeds['accuracy_std']:.3f}"
                      f" / {seeds['macro_f1_mean']:.3f} +- {seeds['macro_f1_std']:.3f}")
        cells += [score, " / ".join(f"{recall[c]:.2f}" for c in classes)]
    else:
        cells += ["not run", ""]
    cells.append(" / ".join(f"{result['diversity'][c]['pairwise_ssim']:.2f}" for c in classes))
    cells.append(spectrum_cell(spectrum_of(result, path)))
    seconds = training_seconds(run_dir)
    cells.append(f"{seconds:.0f}" if seconds is not None else "")
    return cells


def run(flags):
    names = [r for r in flags["runs"] if r]
    if not names:
        raise ValueError("--runs: give one or more run folders, comma separated")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(run_row(r, flags["evaluation"])) + " |" for r in names]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if flags["out"]:
        from preprocess.atomic import atomic_path
        with atomic_path(flags["out"]) as tmp, open(tmp, "w") as handle:
            handle.write(table)
    return table


if __name__ == "__main__":
    from preprocess.flags import run_script
    run_script(run, globals(), expected=(ValueError, OSError))
