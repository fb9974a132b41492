"""The classifier under torchrun (gloo, 2 processes on the CPU): one set of outputs, training that
follows a single-process run with the same global batch, and resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocess.checkpoint_io import load_checkpoint_file

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--CrossValidation=False", "--val_fraction=0.2", "--batch_size=8", "--augmentation=none", "--tumour_paste=0",
          "--threads=1", "--device=cpu"]   # no random augmentation: one process and two must agree
# per-process batch norm on CPUs (PyTorch's SyncBatchNorm needs GPUs): losses agree within this
CPU_LOSS_TOLERANCE = 0.15


def _train(dataset, model_dir, name, processes, *extra, wait=True):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    command = [*launcher, "capsule_classifier/train.py", f"--data_path={dataset}", f"--model_dir={model_dir}",
               f"--run_name={name}", *COMMON, *extra]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(run_dir):
    return [h["train_loss"] for h in load_checkpoint_file(run_dir / "last.pt")["history"]]


def test_two_processes_follow_one_and_write_one_set_of_outputs(blob_dataset, tmp_path):
    _train(blob_dataset, tmp_path, "one", 1, "--epochs=3")
    _train(blob_dataset, tmp_path, "two", 2, "--epochs=3")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(two) == 3
    for a, b in zip(one, two):
        assert abs(a - b) <= CPU_LOSS_TOLERANCE * a, (one, two)
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    writers = {n.split(".")[-2] for n in names if n.startswith("events.out")}     # the process id
    assert names.count("metrics.json") == 1 and len(writers) <= 1, names
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("events")) == \
        sorted(n for n in names if not n.startswith("events"))
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["validation"]["count"] == 9


def test_resume_under_torchrun(blob_dataset, tmp_path):
    job = _train(blob_dataset, tmp_path, "cut", 2, "--epochs=12", wait=False)
    last = tmp_path / "cut" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    import os
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=60)
    done_epochs = len(load_checkpoint_file(last)["history"])
    if done_epochs == 12:
        pytest.skip("the run finished before it could be interrupted")
    _train(blob_dataset, tmp_path, "cut", 2, "--epochs=12", "--resume=True")
    assert len(_losses(tmp_path / "cut")) == 12
    assert (tmp_path / "cut" / "metrics.json").is_file()


def test_gan_under_torchrun_trains_once_and_writes_one_set_of_files(blob_dataset, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "generative_model/train.py", f"--dataset={blob_dataset}", "--image_size=64", "--epochs=2",
               "--ngf=4", "--ndf=4", "--batch_size=4", "--classes=glioma", "--conditional=False",
               f"--model_dir={tmp_path}", "--run_name=gan", "--threads=1", "--device=cpu"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "gan" / "glioma"
    history = load_checkpoint_file(folder / "checkpoint.pt")["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert done.stdout.count("glioma: 2 epochs") == 1
    assert json.loads((tmp_path / "gan" / "run.json").read_text())["models"] == {"glioma": "glioma/checkpoint.pt"}


def test_progress_bars_only_on_the_main_process_and_tqdm_env_switch_respected():
    # a fresh process per case: tqdm reads TQDM_DISABLE when imported (as bench/ sets it before importing),
    # and only for arguments that the call does not give
    code = "from tqdm import tqdm; from preprocess import distributed; " \
           "print(tqdm(range(2), **distributed.progress_bar_options()).disable)"
    base = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "RANK")}

    def bar_disabled(**env):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**base, "PYTHONPATH": str(ROOT), **env})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip() == "True"

    assert bar_disabled(RANK="1")
    assert not bar_disabled(RANK="0")
    assert bar_disabled(RANK="0", TQDM_DISABLE="1")
