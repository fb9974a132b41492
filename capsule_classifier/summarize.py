"""Write one markdown summary of a pipeline run: the metrics table and the figures of every stage.

    python capsule_classifier/summarize.py --runs=checkpoints/demo/real_only,checkpoints/demo/pretrained \
        --gan_run=checkpoints/demo/gan --tsne_dir=checkpoints/demo/tsne --out=checkpoints/demo/SUMMARY.md

Reads only files: each classifier run's metrics.json and figures, the GAN run's last sample grid
per class and its evaluation.json when there is one, and the t-SNE plot. Figures are linked with
paths relative to the summary, so the folder can be moved or zipped as it is.
"""
import sys
from pathlib import Path

# ----------------------------------------------------------------------------- flags
runs = ["checkpoints/demo/real_only", "checkpoints/demo/pretrained"]   # classifier run folders
gan_run = "checkpoints/demo/gan"        # GAN run folder ("" to leave out)
tsne_dir = "checkpoints/demo/tsne"      # folder with tsne.png ("" to leave out)
title = "Pipeline summary"
out = "checkpoints/demo/SUMMARY.md"
# -----------------------------------------------------------------------------


def _relative(path, base):
    import os
    return os.path.relpath(path, base).replace(os.sep, "/")


def _metrics_rows(run_dirs):
    import json
    rows = ["| run | folds | accuracy | macro-F1 | test accuracy | test macro-F1 | minutes |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in run_dirs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no metrics.json (did the classifier run finish?)")
        metrics = json.loads(path.read_text())
        cv, test = metrics.get("cv"), metrics.get("test")
        folds = len(cv["folds"]) if cv else "-"
        accuracy = f"{cv['accuracy_mean']:.3f} +- {cv['accuracy_std']:.3f}" if cv else "-"
        f1 = f"{cv['macro_f1_mean']:.3f} +- {cv['macro_f1_std']:.3f}" if cv else "-"
        test_accuracy = f"{test['accuracy']:.3f}" if test else "-"
        test_f1 = f"{test['macro_f1']:.3f}" if test else "-"
        minutes = f"{metrics['seconds'] / 60:.1f}" if "seconds" in metrics else "-"
        rows.append(f"| {Path(run).name} | {folds} | {accuracy} | {f1} | {test_accuracy} | {test_f1} | {minutes} |")
    return rows


def _gan_section(gan_dir, base):
    import json
    lines = ["## Conditional GAN", ""]
    grids = sorted(Path(gan_dir).glob("*/samples/epoch_*.png"))
    last_per_model = {}
    for grid in grids:
        last_per_model[grid.parent.parent.name] = grid
    for model, grid in sorted(last_per_model.items()):
        lines += [f"**{model}**, last epoch (mask | real | three fakes from different latent vectors):", "",
                  f"![{model} samples]({_relative(grid, base)})", ""]
    evaluation = Path(gan_dir) / "evaluation.json"
    if evaluation.exists():
        lines += ["Evaluation (`generative_model/evaluate.py`):", "", "```json",
                  json.dumps(json.loads(evaluation.read_text()), indent=1)[:4000], "```", ""]
    return lines


def write_summary(run_dirs, gan_dir, tsne_folder, heading, out_path):
    """Write the markdown summary to ``out_path`` (atomically) and return its path."""
    from preprocess.atomic import atomic_path
    out_path = Path(out_path)
    base = out_path.parent
    lines = [f"# {heading}", "", "## Classifier, patient-wise", ""] + _metrics_rows(run_dirs) + [""]
    for run in run_dirs:
        for figure in sorted(Path(run).glob("*.png")):
            lines += [f"![{Path(run).name} {figure.stem}]({_relative(figure, base)})", ""]
    if tsne_folder and (Path(tsne_folder) / "tsne.png").exists():
        lines += ["## t-SNE of the learned features (real and synthetic slices)", "",
                  f"![t-SNE]({_relative(Path(tsne_folder) / 'tsne.png', base)})", ""]
    if gan_dir:
        lines += _gan_section(gan_dir, base)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text("\n".join(lines))
    return out_path


if __name__ == "__main__":
    from preprocess.flags import apply_cli_flags

    apply_cli_flags(globals())
    try:
        path = write_summary(runs, gan_run, tsne_dir, title, out)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {path}")
