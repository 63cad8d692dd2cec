"""A sweep whose results live in an object store: sweep.py in subprocesses through a
local Ray, against moto's S3 server on loopback. Workers stage their trials in their own
temporary folder (TMPDIR), never in the driver's results folder: everything the driver
merges came through the store."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest

from .conftest import S3_ENV, s3_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def short_tmp():
    """A TMPDIR short enough for Ray's socket paths (107 bytes), removed afterwards."""
    d = tempfile.mkdtemp(prefix="st", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sweep(tmp_path, endpoint, *args, timeout=300, tmpdir=None, **extra):
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(endpoint, tmp_path), PYTHONPATH=ROOT, **extra)
    if tmpdir:
        env["TMPDIR"] = tmpdir
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *args], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p, time.monotonic() - t0


@pytest.mark.parametrize("uri, env, says", [
    ("ftp://b/p", {}, "unknown scheme 'ftp'; valid: a local folder, s3://BUCKET/PREFIX"),
    ("s3://{bucket}/p", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach the store"),
    ("s3://nosuchbucket/p", {}, "bucket 'nosuchbucket' does not exist"),
    ("s3://{bucket}/p", {"AWS_ACCESS_KEY_ID": ""}, "no S3 credentials"),
], ids=["scheme", "unreachable", "no-bucket", "no-credentials"])
def test_bad_storage_is_one_line_exit_2_nothing_written(s3_server, s3, tmp_path, uri, env, says):
    p, took = sweep(tmp_path, s3_server, "--smoke", "--wandb", "disabled", "--out", "res",
                    "--name", "n", "--storage", uri.format(bucket=s3), timeout=60, **env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "res").exists()
    assert took < 20, took  # the checks take seconds; most of this is importing torch


def test_resume_of_a_sweep_the_store_does_not_have(s3_server, s3, tmp_path):
    p, _ = sweep(tmp_path, s3_server, "--out", "res", "--resume", "gone", "--storage",
                 f"s3://{s3}/p", timeout=60)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert f"no sweep res/gone nor s3://{s3}/p/gone (no spec.json)" in p.stderr
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
def test_sweep_on_s3_then_resume_from_a_fresh_folder(s3_server, s3, tmp_path, short_tmp):
    import pyarrow.fs as pafs
    from ablations.storage import Store
    uri = f"s3://{s3}/pre/fix"
    p, took = sweep(tmp_path, s3_server, "--smoke", "--wandb", "disabled", "--out", "res",
                    "--name", "s", "--storage", uri, tmpdir=short_tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "failed" not in p.stdout  # each progress line read its trial from the store
    run = tmp_path / "res" / "s"
    trials = pd.read_parquet(run / "trials.parquet")
    assert (trials["status"] == "completed").all() and len(trials) >= 2
    assert (run / "report.html").is_file()
    store = Store(uri, pafs.S3FileSystem(endpoint_override=s3_server))
    keys = set(store.list("s"))
    for tid in trials["trial_id"]:
        assert f"s/trials/{tid}/row.json" in keys and f"s/trials/{tid}/attempts" in keys
        assert f"s/checkpoints/{tid}.pt" not in keys  # removed with its result, as locally
        assert any(k.startswith(f"s/trials/{tid}/measure-") for k in keys)
    local_weights = sorted(p.relative_to(run).as_posix() for p in (run / "weights").rglob("*.pt"))
    assert local_weights and all(f"s/{w}" in keys for w in local_weights)
    features = sorted(p.relative_to(run).as_posix() for p in (run / "features").rglob("*.npz"))
    assert all(f"s/{f}" in keys for f in features)  # pulled from the store: nowhere else
    for merged in ("spec.json", "trials.parquet", "layers.parquet", "report.html"):
        assert f"s/{merged}" in keys
    assert any(k.startswith("s/ray/") for k in keys)  # Ray Tune's own state
    assert "AWS_SECRET" not in store.read("s/spec.json").decode()
    # the workers never wrote into the driver's results folder: they staged under TMPDIR
    assert os.path.isdir(os.path.join(short_tmp, "resablate-stage"))

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    p2, took2 = sweep(fresh, s3_server, "--out", "res", "--resume", "s", "--storage", uri,
                      tmpdir=short_tmp)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert f"{len(trials)} trial(s) already finished, 0 to run" in p2.stdout
    again = pd.read_parquet(fresh / "res" / "s" / "trials.parquet")
    pd.testing.assert_frame_equal(again, trials)
    assert (fresh / "res" / "s" / "report.html").is_file()
    print(f"sweep {took:.0f}s, resume {took2:.0f}s")


@pytest.mark.slow
def test_retry_failed_from_a_fresh_folder_reads_and_writes_the_store(s3_server, s3, tmp_path,
                                                                     short_tmp):
    """A trial that fails (injected, no retries) is an error row in the store; then
    ``--retry-failed`` from an empty folder archives it there and runs the trial again
    from its checkpoint in the store."""
    import json

    import pyarrow.fs as pafs
    from ablations.storage import Store
    uri, bad = f"s3://{s3}/r", "mlp-4-plain-norm=layer-block=pre-s0"
    p, _ = sweep(tmp_path, s3_server, "--smoke", "--wandb", "disabled", "--out", "res",
                 "--name", "f", "--storage", uri, "--max-failures", "0", tmpdir=short_tmp,
                 RESABLATE_FAULT=f"raise:{bad}:2")
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    store = Store(uri, pafs.S3FileSystem(endpoint_override=s3_server))
    assert json.loads(store.read(f"f/trials/{bad}/row.json"))["status"] == "error"
    assert store.exists(f"f/checkpoints/{bad}.pt")  # epoch 1's, kept for the rerun

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    p2, _ = sweep(fresh, s3_server, "--out", "res", "--retry-failed", "f", "--storage", uri,
                  tmpdir=short_tmp)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert f"retrying 1 errored or unfinished trial(s): {bad}" in p2.stdout
    row = json.loads(store.read(f"f/trials/{bad}/row.json"))
    assert row["status"] == "completed" and row["attempts"] == 2
    assert json.loads(store.read(f"f/trials/{bad}/errors/1.json"))["status"] == "error"
    trials = pd.read_parquet(fresh / "res" / "f" / "trials.parquet")
    assert (trials["status"] == "completed").all()
    assert not store.exists(f"f/checkpoints/{bad}.pt")
