"""``python -m analysis URI`` and ``python -m ablations.measure URI`` against moto's S3
server on loopback: they read the sweep from the store only (a local copy in --out),
analysis never touches the store's lock, measure is refused while a writer holds it,
and a bad URI, a missing bucket or a missing sweep is one line and exit 2."""
from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from ablations import measure, store_lock
from ablations.storage import Store
from analysis.__main__ import main as analysis_main

from ..analysis.test_report import _write_results
from .test_storage_e2e import short_tmp, sweep  # noqa: F401  (a fixture)
from .test_store_lock import plant
from .test_store_lock_e2e import stored_spec


@pytest.fixture
def stored(s3, tmp_path):
    """A results folder (synthetic rows, a real smoke spec) in ``s3://BUCKET/p/n``."""
    src = tmp_path / "src"
    _write_results(src, train=False)
    store = Store(f"s3://{s3}/p")
    store.upload_dir(src, "n")
    stored_spec(store, "n")
    return store


def test_analysis_reads_a_locked_sweep_from_the_store_and_leaves_the_lock(stored, tmp_path,
                                                                         capsys):
    claim = plant(stored, "n", host="node-7", pid=4242)  # a sweep still running elsewhere
    before = stored.list()
    out = tmp_path / "copy"
    t0 = time.monotonic()
    code = analysis_main([f"{stored.uri}/n", "--out", str(out), "--format", "png",
                          "--jobs", "1"])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.html").is_file() and (out / "trials.parquet").is_file()
    printed = capsys.readouterr().out.split()
    assert str(out / "report.html") in printed
    assert stored.list() == before  # read only: the claim is neither broken nor taken
    (info,) = store_lock.claims(stored, "n").values()
    assert info["token"] == claim["token"]
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("uri, says", [
    ("ftp://b/p/n", "unknown scheme 'ftp'"),
    ("s3://{bucket}", "name a sweep in the store: s3://BUCKET/PREFIX/NAME"),
    ("s3://nosuchbucket/p/n", "bucket 'nosuchbucket' does not exist"),
    ("s3://{bucket}/p/gone", "no sweep there (no gone/spec.json in s3://{bucket}/p); sweeps in "
                             "s3://{bucket}/p: n"),
], ids=["scheme", "no-name", "no-bucket", "no-sweep"])
@pytest.mark.parametrize("tool", ["analysis", "measure"])
def test_a_bad_uri_is_one_line_exit_2_nothing_written(stored, tmp_path, capsys, tool, uri,
                                                       says):
    bucket = stored.uri.split("/")[2]
    uri = uri.format(bucket=bucket)
    out = tmp_path / "copy"
    main = analysis_main if tool == "analysis" else measure.main
    before = stored.list()
    assert main([uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says.format(bucket=bucket) in err, err
    assert uri in err
    assert not out.exists() and stored.list() == before


def test_measure_refuses_a_sweep_whose_store_lock_is_held(stored, tmp_path, capsys):
    plant(stored, "n", host="node-7", pid=4242)
    out = tmp_path / "copy"
    assert measure.main([f"{stored.uri}/n", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{stored.uri}/n is in use by another writer: pid 4242 on host node-7" in err
    assert "measuring cannot write" in err
    assert not out.exists()


def test_measure_bad_input_after_the_copy_removes_the_copy(stored, tmp_path, capsys):
    out = tmp_path / "copy"  # the synthetic folder kept no weights: refused after the copy
    assert measure.main([f"{stored.uri}/n", "--out", str(out)]) == 2
    assert "no kept weights" in capsys.readouterr().err
    assert not out.exists()
    assert store_lock.claims(stored, "n") == {}


@pytest.mark.slow
def test_measure_and_analysis_from_the_store_only(s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    """A smoke sweep on s3, then measure and analysis from folders that never saw it."""
    uri = f"s3://{s3}/p"
    p, _ = sweep(tmp_path, s3_server, "--smoke", "--wandb", "disabled", "--out", "res",
                 "--name", "s", "--storage", uri, "--measure", "none", tmpdir=short_tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    store = Store(uri)
    assert not [k for k in store.list("s/trials") if "/measure_" in k]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import subprocess
    import sys
    from .conftest import S3_ENV, s3_env
    from .test_storage_e2e import ROOT
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT, TMPDIR=short_tmp)
    m = subprocess.run([sys.executable, "-m", "ablations.measure", f"{uri}/s", "--measure",
                        "signal", "--out", "copy"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert m.returncode == 0, m.stdout[-3000:] + m.stderr[-3000:]
    keys = set(store.list("s"))
    trials = pd.read_parquet(elsewhere / "copy" / "trials.parquet")
    for tid in trials["trial_id"]:  # each task put its fragment to the store
        assert f"s/trials/{tid}/measure-signal.parquet" in keys, m.stdout + m.stderr
    # the tasks measured in their own staging folders, not in the driver's copy
    assert os.path.isdir(os.path.join(short_tmp, "resablate-measure"))
    assert "s/measurements/signal.parquet" in keys and "s/measurements/runs.json" in keys
    assert store_lock.claims(store, "s") == {}  # held while writing, released
    a = subprocess.run([sys.executable, "-m", "analysis", f"{uri}/s", "--out", "view",
                        "--format", "png"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    got = pd.read_parquet(elsewhere / "view" / "measurements" / "signal.parquet")
    assert len(got) >= len(trials)
    assert (elsewhere / "view" / "report.html").is_file()
