"""explain.py: saliency maps through captum, scored against the tumour masks."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from capsule_classifier.explanations import gradcam_layer, saliency, tumour_scores
from capsule_classifier.network import make_model

ROOT = Path(__file__).resolve().parents[1]


def test_tumour_scores_follow_where_the_map_is():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    on = np.zeros((64, 64))
    on[12:18, 12:18] = 1
    off = np.zeros((64, 64))
    off[50:60, 50:60] = 1
    inside, outside = tumour_scores(on, mask), tumour_scores(off, mask)
    assert inside["in_tumour"] == 1 and inside["pointing_hit"] and inside["tumour_area"] == pytest.approx(100 / 4096)
    assert outside["in_tumour"] == 0 and outside["in_margin"] == 0 and not outside["pointing_hit"]


@pytest.mark.parametrize("method", ["gradcam", "occlusion", "lime"])
def test_saliency_maps_for_the_residual_capsule_network_and_resnet18(method):
    torch.manual_seed(0)
    for model in (make_model("capsule", image_size=64, preset="residual", widths=(8, 8, 16, 16)),
                  make_model("resnet18")):
        images = torch.rand(2, 1, 64, 64)
        maps, predicted = saliency(model.eval(), images, method)
        assert maps.shape == (2, 64, 64) and predicted.shape == (2,)
        assert 0 <= maps.min() and maps.max() <= 1          # normalised to the peak (all 0 if none)
    assert gradcam_layer(make_model("resnet18").eval(), 256) is not None


def test_explain_script_writes_scores_overlays_and_summary(holdout_run, blob_dataset, tmp_path):
    run_dir, _ = holdout_run
    out = tmp_path / "explained"
    done = subprocess.run([sys.executable, "capsule_classifier/explain.py", f"--checkpoint={run_dir / 'best.pt'}",
                           f"--input={blob_dataset}", f"--out={out}", "--max_overlays=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert len(rows) == 36 and all(0 <= float(r["in_tumour"]) <= 1 for r in rows)
    assert all(r["true_class"] and r["correct"] in ("True", "False") for r in rows)
    assert len(list((out / "overlays").glob("*.png"))) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["slices"] == 36 and set(summary["correct_vs_wrong"]) <= {"True", "False"}
