"""Outputs never overwrite inputs, and an unusable --out is refused before any work is done."""
import hashlib
import os
import signal
import stat
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocess.atomic import check_outputs

ROOT = Path(__file__).resolve().parents[1]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refused(args, message):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    return done


def test_check_outputs_names_the_flag():
    with pytest.raises(ValueError, match="--out=a.h5 is also the input --dataset"):
        check_outputs({"out": "a.h5"}, {"dataset": "./a.h5"})
    with pytest.raises(ValueError, match="--out=.* is also the input --data_path"):
        check_outputs({"out": "b.h5"}, {"data_path": ["a.h5", "b.h5"]})
    with pytest.raises(ValueError, match="name the same file"):
        check_outputs({"out": "c.h5", "pickle_out": "c.h5"})
    check_outputs({"out": "a.h5", "pickle_out": ""}, {"dataset": "b.h5"})     # nothing wrong


def test_scripts_refuse_to_overwrite_their_input(blob_dataset, demo_mat_dir, tmp_path):
    dataset = shutil.copy(blob_dataset, tmp_path / "d.h5")
    before = _digest(dataset)
    _refused(["preprocess/augment_masks.py", f"--dataset={dataset}", f"--out={dataset}"], "also the input --dataset")
    _refused(["generative_model/generate.py", f"--model_dir={tmp_path}", "--run_name=none", f"--masks={dataset}",
              f"--out={dataset}"], "also the input --masks")
    mat = shutil.copy(sorted(Path(demo_mat_dir).glob("*.mat"))[0], tmp_path / "one.mat")
    mat_before = _digest(mat)
    _refused(["preprocess/prepare_dataset.py", f"--source={mat}", f"--out={mat}"], "also the input --source")
    assert _digest(dataset) == before and _digest(mat) == mat_before


def test_an_output_that_is_a_directory_is_refused_before_the_work(demo_mat_dir, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    _refused(["preprocess/prepare_dataset.py", f"--source={demo_mat_dir}", f"--out={folder}", "--image_size=64"],
             "is a directory")
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*partial"))


def test_outputs_follow_the_umask(blob_dataset, tmp_path):
    from preprocess.splits import write_split
    previous = os.umask(0o022)
    try:
        write_split(blob_dataset, tmp_path / "a.h5", tmp_path / "b.h5")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.h5").stat().st_mode) == 0o644


def test_sigterm_leaves_no_partial_file(demo_mat_dir, tmp_path):
    out = tmp_path / "out" / "d.h5"
    process = subprocess.Popen([sys.executable, "preprocess/prepare_dataset.py", f"--source={demo_mat_dir}",
                                f"--out={out}", "--image_size=512", "--workers=1"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.parent.glob(".*.partial")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "finished before it could be stopped"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0 and not out.exists()
    assert not list(out.parent.glob(".*partial")), list(out.parent.iterdir())


@pytest.mark.parametrize("script,args,message", [
    ("preprocess/prepare_dataset.py", ["--image_size=0"], "--image_size=0"),
    ("preprocess/prepare_dataset.py", ["--image_size=-8"], "--image_size=-8"),
    ("capsule_classifier/train.py", ["--image_size=0"], "--image_size=0"),
    ("capsule_classifier/train.py", ["--epochs=0"], "--epochs=0"),
    ("generative_model/train.py", ["--epochs=-1", "--image_size=64"], "--epochs=-1"),
    ("generative_model/generate.py", ["--total=0"], "nothing to synthesise"),
    ("generative_model/generate.py", ["--mask_classes=every"], "--mask_classes='every'"),
])
def test_flags_that_would_do_nothing_are_refused(script, args, message, blob_dataset, demo_mat_dir, tmp_path):
    data = {"preprocess/prepare_dataset.py": [f"--source={demo_mat_dir}", f"--out={tmp_path / 'o.h5'}"],
            "capsule_classifier/train.py": [f"--data_path={blob_dataset}", f"--model_dir={tmp_path}"],
            "generative_model/train.py": [f"--dataset={blob_dataset}", f"--model_dir={tmp_path}"],
            "generative_model/generate.py": [f"--model_dir={tmp_path}", f"--masks={blob_dataset}",
                                             f"--out={tmp_path / 's.h5'}"]}[script]
    _refused([script, *data, *args], message)
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "s.h5").exists()


def test_train_names_a_file_that_is_not_a_dataset(blob_dataset, demo_mat_dir, tmp_path):
    mat = sorted(Path(demo_mat_dir).glob("*.mat"))[0]
    _refused(["capsule_classifier/train.py", f"--data_path={mat}", f"--model_dir={tmp_path}"],
             f"{mat}: a figshare .mat slice, not a dataset file")
    masks = tmp_path / "masks.h5"
    subprocess.run([sys.executable, "preprocess/augment_masks.py", f"--dataset={blob_dataset}", f"--out={masks}",
                    "--per_class=2", "--workers=1"], cwd=ROOT, check=True, capture_output=True, timeout=120)
    _refused(["capsule_classifier/train.py", f"--data_path={masks}", f"--model_dir={tmp_path}"],
             f"{masks}: not a dataset file of this project: no field(s) ['images', 'patient_ids']")
