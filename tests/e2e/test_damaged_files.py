"""Damaged files cost at most their own trial's progress: sweep.py for real, through
Ray Tune, on the synthetic dataset. Before, one truncated row.json made --resume die
with a JSONDecodeError, and one truncated checkpoint made every retry of its trial
reload it and fail, until the trial ended as status=error. A damaged or foreign CIFAR-10
batch file (a copy of the real subset, damaged) is one line naming the file and the fault,
exit 2, before Ray starts; before, a traceback (exit 1)."""
import os
import pickle
import shutil
import socket
import time

import numpy as np
import pandas as pd
import pytest

from tests.e2e.test_resilience import SMALL, rows, run
from tests.e2e.test_sweep_e2e import ROOT


def truncate(path, keep=0.5) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path.read_bytes()


def damage_warnings(stderr) -> list[str]:
    return [line for line in stderr.splitlines()
            if "warning: " in line and ("is unreadable" in line or "is unusable" in line)]


@pytest.mark.slow
def test_resume_reruns_only_the_trials_with_damaged_fragments(tmp_path):
    run_dir = tmp_path / "res" / "d"
    run(*SMALL, "--residual", "both", "--seeds", "2", "--epochs", "2", "--wandb", "disabled",
        "--out", "res", "--name", "d", cwd=tmp_path)
    trials = lambda t: run_dir / "trials" / t  # noqa: E731
    kept = {t: (r["finished_at"], (trials(t) / "row.json").stat().st_mtime_ns)
            for t, r in rows(run_dir).items() if t in ("mlp-4-residual-s0", "mlp-4-plain-s1")}
    bad_row = truncate(trials("mlp-4-plain-s0") / "row.json")
    bad_parquet = truncate(trials("mlp-4-residual-s1") / "epochs.parquet", keep=0.8)

    p = run("--out", "res", "--resume", "d", cwd=tmp_path)
    assert "2 trial(s) already finished, 2 to run" in p.stdout
    assert "4 trials: 4 completed, 0 diverged, 0 errored" in p.stdout
    assert "Traceback" not in p.stderr
    found = damage_warnings(p.stderr)
    assert len(found) == 2, found  # one line per damaged fragment
    # named as the sweep knows them: relative to where it runs
    assert any(w.startswith("warning: res/d/trials/mlp-4-plain-s0/row.json is unreadable")
               for w in found)
    assert any(w.startswith("warning: res/d/trials/mlp-4-residual-s1/epochs.parquet is "
                            "unreadable") for w in found)
    # moved aside, not deleted
    assert (trials("mlp-4-plain-s0") / "row.json.corrupt").read_bytes() == bad_row
    assert (trials("mlp-4-residual-s1") / "epochs.parquet.corrupt").read_bytes() == bad_parquet
    after = rows(run_dir)
    for t, (finished_at, mtime) in kept.items():  # the others are kept as they were
        assert after[t]["finished_at"] == finished_at
        assert (trials(t) / "row.json").stat().st_mtime_ns == mtime
    for t in ("mlp-4-plain-s0", "mlp-4-residual-s1"):  # the damaged ones ran again
        assert after[t]["status"] == "completed" and after[t]["attempts"] == 2
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert {t: sorted(g.epoch) for t, g in epochs.groupby("trial_id")} == \
        {t: [1, 2] for t in after}  # every trial's epochs once, none stale


@pytest.mark.slow
def test_a_damaged_checkpoint_is_set_aside_and_the_trial_completes(tmp_path):
    run_dir = tmp_path / "res" / "c"
    ckpt = run_dir / "ray" / "checkpoints" / "mlp-4-plain-s0.pt"
    # the trial stops at epoch 3 with the checkpoint of epoch 2 left behind
    run(*SMALL, "--residual", "off", "--epochs", "3", "--max-failures", "0", "--wandb",
        "disabled", "--out", "res", "--name", "c", cwd=tmp_path, expect=1,
        env={"RESABLATE_FAULT": "raise:mlp-4-plain-s0:3"})
    assert rows(run_dir)["mlp-4-plain-s0"]["status"] == "error"
    damaged = truncate(ckpt)  # what a failing disk leaves

    p = run("--out", "res", "--retry-failed", "c", cwd=tmp_path)
    assert "1 trials: 1 completed, 0 diverged, 0 errored" in p.stdout
    (line,) = damage_warnings(p.stderr)
    assert f"checkpoint {ckpt} is unusable" in line  # workers get absolute paths
    assert "starts over from epoch 1" in line
    assert (ckpt.parent / "mlp-4-plain-s0.pt.corrupt").read_bytes() == damaged
    assert not ckpt.exists()  # the new one went once the result was written
    row = rows(run_dir)["mlp-4-plain-s0"]
    assert row["status"] == "completed" and row["attempts"] == 2  # no retry was needed
    assert row["resumed_from_epoch"] is None  # started over
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert list(epochs.epoch) == [1, 2, 3]


# --- damaged or foreign CIFAR-10 batch files: one line, exit 2, before Ray starts ---

CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")
DATA = ["--families", "mlp", "--depths", "4", "--seeds", "1", "--epochs", "1",
        "--wandb", "disabled", "--out", "res", "--name", "d"]


def rewrite(path, **change):
    """The batch at ``path`` with some entries changed (None: removed)."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d.update(change)
    path.write_bytes(pickle.dumps({k: v for k, v in d.items() if v is not None}))


def labels(path) -> list:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")["labels"]


DAMAGES = {  # name: (file, how it is damaged, the fault the line names)
    "truncated": ("data_batch_1", lambda p: truncate(p),
                  "is truncated (pickle data was truncated)"),
    "empty": ("data_batch_5", lambda p: p.write_bytes(b""), "is empty"),
    "a list": ("data_batch_2", lambda p: p.write_bytes(pickle.dumps([1, 2, 3])),
               "holds a list, not a dict"),
    "no data key": ("data_batch_1", lambda p: rewrite(p, data=None),
                    "has no 'data' key (its keys: 'batch_label', 'labels')"),
    "wrong shape": ("data_batch_3", lambda p: rewrite(p, data=np.zeros((1017, 1024), np.uint8)),
                    "has 'data' of shape (1017, 1024), not (N, 3072)"),
    "wrong dtype": ("data_batch_1", lambda p: rewrite(p, data=np.zeros((1017, 3072), np.int64)),
                    "has 'data' of int64, not a uint8 array"),
    "label out of range": ("test_batch", lambda p: rewrite(p, labels=[10] + labels(p)[1:]),
                           "has label 10 at index 0 (1 outside 0..9)"),
    "label count": ("data_batch_4", lambda p: rewrite(p, labels=labels(p)[:-17]),
                    "has 1000 labels for 1017 images"),
    "foreign pickle": ("data_batch_1", lambda p: p.write_bytes(pickle.dumps(
        {"data": pd.Timestamp(0), "labels": [0]})),
        "is a pickle of other objects (it refers to pandas._libs.tslibs.timestamps"),
}


@pytest.fixture
def cifar_copy(tmp_path):
    """A writable copy of the real CIFAR-10 subset (never the shared one)."""
    if not os.path.isdir(CIFAR):
        pytest.skip(f"{CIFAR} not here")
    copy = tmp_path / "cifar"
    shutil.copytree(CIFAR, copy)
    for p in copy.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return copy


def closed_port() -> int:
    """A loopback port nothing listens on: a sweep that got as far as Ray fails to join."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(tmp_path, *argv):
    """sweep.py ``argv``: exit 2 with one line on stderr, before Ray and before any write;
    returns that line."""
    t0 = time.monotonic()
    p = run(*argv, "--address", f"127.0.0.1:{closed_port()}", cwd=tmp_path, expect=2)
    seconds = time.monotonic() - t0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "res").exists()      # nothing written
    assert "W&B:" not in p.stdout                # printed just before Ray is joined
    assert "cannot join the Ray cluster" not in lines[0]
    assert seconds < 60, seconds                 # a few seconds: no Ray, no training
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_batch_file_is_one_line_exit_2_before_ray(tmp_path, cifar_copy, damage):
    name, damage_it, fault = DAMAGES[damage]
    path = cifar_copy / "cifar-10-batches-py" / name
    damage_it(path)
    damaged = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    line = refused(tmp_path, *DATA, "--data-root", str(cifar_copy))
    assert line.startswith(f"sweep.py: error: CIFAR-10 batch {path} {fault}"), line
    assert "N x 3072 uint8" in line  # what the file should hold
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == damaged  # left as it was


def test_too_few_images_for_the_subset_is_one_line(tmp_path, cifar_copy):
    line = refused(tmp_path, *DATA, "--data-root", str(cifar_copy), "--subset", "6000")
    assert line == ("sweep.py: error: --subset 6000 is larger than the training set (5085 "
                    "images); valid: 10..5085")


@pytest.mark.slow
def test_resume_checks_the_data_again(tmp_path, cifar_copy):
    """A finished sweep on real images, its copy damaged since: --resume is refused before
    Ray with the one line, and the results folder is left as it was."""
    run(*DATA, "--data-root", str(cifar_copy), "--subset", "200", "--batch-size", "100",
        "--milestones", "", "--recipe", "seed", cwd=tmp_path)
    run_dir = tmp_path / "res" / "d"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    truncate(cifar_copy / "cifar-10-batches-py" / "data_batch_2")
    p = run("--out", "res", "--resume", "d", "--address", f"127.0.0.1:{closed_port()}",
            cwd=tmp_path, expect=2)
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"sweep.py: error: CIFAR-10 batch {cifar_copy}/cifar-10-batches-py/"
                           "data_batch_2 is truncated"), line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
