"""Merge the finished folds of a study into ``results.json`` and ``RESULTS.md``, once the runs and
GANs that can be compared are found alike (study_pipeline/consistency.py): per arm the mean
and std over folds x seeds, the pooled confusion matrix and per-class recall, and the paired
differences between arms on the same fold and seed (95 % confidence interval and p-value of a
paired t-test over the fold x seed pairs; per fold, and the 95 % interval over the fold means),
drawn in ``paired_differences.png`` (study_pipeline/figures.py)."""
import glob
import os

import numpy as np
from scipy import stats

from capsule_classifier.report import macro_f1_of_confusion, plot_confusion, write_json_atomic
from preprocess.atomic import atomic_path
from preprocess.dataset import CLASS_NAMES, read_attrs
from study_pipeline.consistency import check_folds_alike
from study_pipeline.figures import PAIRED_FIGURE, plot_paired_differences
from study_pipeline.folds import FOLD_FILE, check_fold_folder, read_fold_record

# the study's own table (2020; 7-fold CV, slices of one patient on both sides of each split)
STUDY_REPORTED = {"pretrained": {"accuracy": 0.93, "macro_f1": 0.92}}
COMPARISONS = (("pretrained", "real_only"), ("baseline", "real_only"), ("pretrained", "baseline"),
               ("synthetic_only", "real_only"))
ARM_TITLES = {"real_only": "capsule, real slices only", "pretrained": "capsule, GAN pre-training + real",
              "baseline": "baseline CNN, real slices only", "synthetic_only": "capsule, synthetic slices only"}


def load_folds(out):
    """The fold records of ``out``, by fold; a record in another fold's folder (a copy) is refused."""
    folds = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(out)), "fold_*", FOLD_FILE)):
        record = read_fold_record(path)
        check_fold_folder(path, record)
        folds.append(record)
    return sorted(folds, key=lambda record: record["fold"])


def fold_split(out, folds, settings):
    """How the folds were cut (k_folds, group_by, split seed), as their validation files record it
    (``settings``, the collect call's flags, only where no fold has its file); folds cut
    differently cannot be merged."""
    keys = ("k_folds", "group_by", "split_seed")
    splits = set()
    for record in folds:
        val = os.path.join(out, f"fold_{record['fold']}", "val.h5")
        if os.path.exists(val):
            split = read_attrs(val).get("split", {})
            splits.add((split.get("k_folds"), split.get("group_by"), split.get("seed")))
    splits = splits or {tuple(settings.get(key) for key in keys)}
    if len(splits) > 1:
        raise ValueError(f"{out}: its folds were cut differently (k_folds, group_by, split seed: "
                         f"{sorted(splits, key=str)}); collect each study's folds in their own --out")
    return dict(zip(keys, splits.pop()))


def arm_summary(folds, arm):
    """Mean/std of accuracy and macro-F1 over every (fold, seed), pooled confusion and recall."""
    runs = [(f["fold"], int(seed), r) for f in folds for seed, r in f["arms"].get(arm, {}).items()]
    if not runs:
        return None
    accuracy = np.array([r["accuracy"] for *_, r in runs])
    macro_f1 = np.array([r["macro_f1"] for *_, r in runs])
    pooled = np.sum([np.array(r["confusion_matrix"]) for *_, r in runs], axis=0)
    recall = np.divide(np.diag(pooled), pooled.sum(1), out=np.zeros(len(pooled)), where=pooled.sum(1) > 0)
    return {"runs": len(runs), "accuracy_mean": float(accuracy.mean()), "accuracy_std": float(accuracy.std()),
            "macro_f1_mean": float(macro_f1.mean()), "macro_f1_std": float(macro_f1.std()),
            "pooled_confusion_matrix": pooled.tolist(),
            "pooled_macro_f1": macro_f1_of_confusion(pooled),
            "recall": dict(zip(CLASS_NAMES, recall.round(4).tolist()))}


SPREAD_TOLERANCE = 1e-12    # differences closer than this count as equal (no interval from them)


def _t_interval(values):
    """The 95 % t-interval of the mean of ``values`` (None for fewer than two, or no spread)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.ptp(values) <= SPREAD_TOLERANCE:
        return None
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]


def paired_difference(folds, arm, reference, metric="accuracy"):
    """``arm`` minus ``reference`` over the (fold, seed) pairs both have: their mean, 95 % CI and
    paired t-test p-value; each fold's pairs (``per_fold``); and the mean of the fold means with its
    95 % CI (``fold_means_mean``, ``fold_means_ci95``). Neither interval is exact: the pairs of one
    fold share its validation patients and its GAN, and the folds share training patients."""
    pairs = [(f["fold"], f["arms"][arm][seed][metric], f["arms"][reference][seed][metric]) for f in folds
             if arm in f["arms"] and reference in f["arms"]
             for seed in sorted(f["arms"][arm], key=int) if seed in f["arms"][reference]]
    if not pairs:
        return None
    diff = np.array([a - b for _, a, b in pairs])
    per_fold = {}
    for (fold, _, _), value in zip(pairs, diff):
        per_fold.setdefault(str(fold), []).append(float(value))
    fold_means = [float(np.mean(values)) for values in per_fold.values()]
    result = {"pairs": len(diff), "mean": float(diff.mean()), "per_fold": per_fold,
              "folds": len(fold_means), "fold_means_mean": float(np.mean(fold_means))}
    if (ci95 := _t_interval(diff)) is not None:          # the paired t-test is the one-sample test of diff
        result.update(ci95=ci95, p_value=float(stats.ttest_1samp(diff, 0.0).pvalue))
    if (over_folds := _t_interval(fold_means)) is not None:
        result["fold_means_ci95"] = over_folds
    return result


def collect(out, settings=None):
    """Write ``<out>/results.json`` and ``<out>/RESULTS.md`` from the finished folds."""
    folds = load_folds(out)
    if not folds:
        raise ValueError(f"{out}: no finished fold (fold_*/{FOLD_FILE}) to collect")
    split = fold_split(out, folds, settings or {})
    alike = check_folds_alike(out, folds)         # refuses folds run with other settings, naming them
    arms = {arm: summary for arm in ARM_TITLES if (summary := arm_summary(folds, arm))}
    differences = {f"{a} - {b}": {metric: paired_difference(folds, a, b, metric) for metric in ("accuracy", "macro_f1")}
                   for a, b in COMPARISONS if a in arms and b in arms}
    for arm, summary in arms.items():
        path = os.path.join(out, f"confusion_{arm}.png")
        plot_confusion(summary["pooled_confusion_matrix"], path,
                       f"{ARM_TITLES[arm]}: pooled over {summary['runs']} runs")
        summary["figure"] = os.path.basename(path)
    accuracy_differences = {name: both["accuracy"] for name, both in differences.items() if both["accuracy"]}
    figure = None
    if accuracy_differences:
        figure = plot_paired_differences(accuracy_differences, os.path.join(out, PAIRED_FIGURE))
    # "split" is how the folds were cut (from their files); "collect_flags" only the flags of this call
    # (a fold run alone, --fold=K, trained with its own flags: "settings_check" says they were alike)
    results = {"collect_flags": settings or {}, "split": split, "settings_check": alike, "folds": folds, "arms": arms,
               "paired_differences": differences, "paired_figure": figure, "study_reported": STUDY_REPORTED}
    write_json_atomic(results, os.path.join(out, "results.json"))
    with atomic_path(os.path.join(out, "RESULTS.md")) as tmp, open(tmp, "w") as handle:
        handle.write(results_markdown(results))
    return results


def _interval(bounds):
    return f"[{bounds[0]:+.3f}, {bounds[1]:+.3f}]" if bounds else "n/a"


def _pm(summary, metric):
    return f"{summary[f'{metric}_mean']:.3f} +- {summary[f'{metric}_std']:.3f}"


def fold_lines(folds, arm_names):
    """Markdown rows: per fold its validation size, each arm's accuracy (mean over seeds), the
    arms' training minutes and the machine that ran them (where recorded)."""
    lines = ["| fold | validation patients / slices | " + " | ".join(arm_names) + " | arm minutes | device |",
             "|---" * (len(arm_names) + 4) + "|"]
    for f in folds:
        runs = [r for arm in arm_names for r in f["arms"].get(arm, {}).values()]
        slices = int(np.sum(runs[0]["confusion_matrix"])) if runs else 0
        cells = [f"{np.mean([r['accuracy'] for r in f['arms'][arm].values()]):.3f}" if f["arms"].get(arm) else ""
                 for arm in arm_names]
        minutes = sum(r.get("seconds") or 0 for r in runs) / 60
        devices = ", ".join(sorted({r["device"] for r in runs if r.get("device")})) or "not recorded"
        lines.append(f"| {f['fold']} | {len(f['val_patients'])} / {slices} | " + " | ".join(cells)
                     + f" | {minutes:.1f} | {devices} |")
    return lines


def _seeds_run(folds):
    """Every classifier seed that some arm of some fold ran (folds may have run different seeds)."""
    return sorted({int(seed) for f in folds for runs in f["arms"].values() for seed in runs})


def _alike_line(check):
    """What the settings check compared (study_pipeline/consistency.py)."""
    if not check:
        return ""
    unchecked = check["unchecked_runs"]
    return (f" Settings: the same in the {check['runs_compared']} runs and {check['gans_compared']} GAN(s) compared"
            + (f"; not compared, their checkpoints gone: {', '.join(unchecked)}" if unchecked else "") + ".")


def results_markdown(results):
    arms, folds = results["arms"], results["folds"]
    split = results["split"]
    lines = ["# Study results", "",
             f"{len(folds)} fold(s) of {split['k_folds'] or '?'} ({split['group_by'] or '?'}-wise), "
             f"seeds {', '.join(str(seed) for seed in _seeds_run(folds)) or 'none'} (the runs column counts "
             "each arm's fold x seed runs); "
             "every GAN was trained on its fold's training patients only (patients of each part in "
             "`results.json`)." + _alike_line(results.get("settings_check")), "",
             "| arm | runs | accuracy | macro-F1 | pooled macro-F1 | recall meningioma / glioma / pituitary | the study reported |",
             "|---|---|---|---|---|---|---|"]
    for arm, summary in arms.items():
        recall = " / ".join(f"{summary['recall'][c]:.2f}" for c in CLASS_NAMES)
        reported = STUDY_REPORTED.get(arm)
        reported = f"{reported['accuracy']:.2f} / {reported['macro_f1']:.2f} (record-wise)" if reported else ""
        lines.append(f"| {ARM_TITLES[arm]} | {summary['runs']} | {_pm(summary, 'accuracy')} | "
                     f"{_pm(summary, 'macro_f1')} | {summary['pooled_macro_f1']:.3f} | {recall} | {reported} |")
    lines += ["", "Paired differences (the same fold and seed in both arms). Over the pairs: mean, 95 % CI and "
              "paired t-test p-value, as if the pairs were independent (those of one fold share its validation "
              "patients and its GAN). Per fold: the mean over the seeds both arms ran (their number in brackets); "
              "over the folds: the mean of those fold means and its 95 % CI (the folds have their own validation "
              "patients and GANs but share training patients, so it is not exact either). Accuracy; "
              "`results.json` has the same for macro-F1.", "",
              "| difference | pairs | accuracy | 95 % CI | p | per fold | over the folds: mean, 95 % CI "
              "| macro-F1 | 95 % CI | p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, both in results["paired_differences"].items():
        if both["accuracy"] is None:         # the two arms share no fold and seed
            lines.append(f"| {name} | 0 |" + " n/a |" * 8)
            continue
        cells = []
        for metric in ("accuracy", "macro_f1"):
            d = both[metric]
            cells += [f"{d['mean']:+.3f}", _interval(d.get("ci95")), f"{d['p_value']:.3f}" if "p_value" in d else "n/a"]
            if metric == "accuracy":
                cells += [", ".join(f"{fold}: {np.mean(values):+.3f} ({len(values)})"
                                    for fold, values in d["per_fold"].items()),
                          f"{d['fold_means_mean']:+.3f} {_interval(d.get('fold_means_ci95'))}"]
        lines.append(f"| {name} | {both['accuracy']['pairs']} | " + " | ".join(cells) + " |")
    lines += ["", "Per fold (accuracy, the mean over each arm's own seeds):", "", *fold_lines(folds, list(arms))]
    figure = results.get("paired_figure")
    paired = f"paired differences per fold: [{figure}]({figure}); " if figure else ""
    confusions = ", ".join(f"[{arm}]({s['figure']})" for arm, s in arms.items())
    lines += ["", "Figures: " + paired + "confusion matrices: " + confusions + "; GAN samples: "
              + ", ".join(f"[fold {f['fold']}]({f['gan_samples']})" for f in folds if f.get("gan_samples"))
              + "; t-SNE of real and synthetic slices: "
              + ", ".join(f"[fold {f['fold']}]({f['tsne']})" for f in folds if f.get("tsne")), ""]
    return "\n".join(lines)
