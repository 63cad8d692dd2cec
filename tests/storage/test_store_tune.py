"""``--tune`` with an object-store ``--storage`` (moto's S3 server on loopback): a tuning
sample runs in a folder staged on its node and its W&B run goes to the store; the Optuna
journal goes to the store after every ended sample, and a ``--resume`` from a fresh
folder continues the search from it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ablations import runner, storage, tracking, tuning, wandb_log
from ablations.plan import expand
from ablations.spec import AblationSpec, TrainSettings

from .conftest import S3_ENV, s3_env
from .test_storage_e2e import ROOT, short_tmp, sweep  # noqa: F401  (short_tmp: a fixture)
from .test_store_wandb import _wandb_free_env, wandb_env  # noqa: F401  (a fixture)


def tiny_spec(uri: str, out, **kw) -> AblationSpec:
    t = TrainSettings(dataset="synthetic", subset=300, val_fraction=0.2, epochs=2,
                      milestones=(), batch_size=64, stats_every=0, lr=0.05, device="cpu",
                      precision="fp32")
    return AblationSpec(families=("mlp",), depths=(4,), residual="on", seeds=1, out=str(out),
                        name="tn", train=t, measure=(), keep_weights="none", storage=uri,
                        tune=("lr",), samples=2, **kw)


def test_a_tuning_sample_is_staged_and_its_run_reaches_the_store(wandb_env, s3, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    uri = f"s3://{s3}/t"
    spec = tiny_spec(uri, tmp_path / "res", wandb="offline")
    base = expand(spec)[0][0]
    label = tuning.cell_of(base)
    reports = []
    monkeypatch.setattr(runner.TuneReporter, "report", lambda self, m: reports.append(m))
    driver_dir = tmp_path / "res" / "tn"
    runner._trainable({"kind": "tune", "cell": label, "sample": 0, "hp": {"lr": 0.05}},
                      groups=[], cells={label: base}, spec=spec, run_dir=str(driver_dir))
    assert reports[-1]["tune_final"] == 1 and reports[-1]["status"] == "completed"
    assert not driver_dir.exists()  # the sample wrote nothing into the driver's folder
    staged = list((tmp_path / "tmp" / "resablate-stage").glob("*/tn/wandb/offline-run-*"))
    assert len(staged) == 1  # it ran in a folder staged on its node
    sample_id = tuning.sample_trial(base, 0, {"lr": 0.05}).trial_id
    keys = storage.Store(uri).list("tn/wandb")
    assert any(re.fullmatch(rf"tn/wandb/{staged[0].name}/run-"
                            rf"{tracking.run_id('tn', sample_id)}\.wandb", k) for k in keys)


def _journal(root) -> Path:
    return Path(root, "tn", "tuning", "optuna.journal")


def test_the_journal_goes_to_the_store_after_each_sample_and_the_longer_one_is_pulled(
        s3, tmp_path, capsys):
    uri = f"s3://{s3}/j"
    spec = tiny_spec(uri, tmp_path / "a")
    base = expand(spec)[0][0]
    label = tuning.cell_of(base)
    sync = storage.RunSync(spec)
    search = tuning.make_searcher({label: base}, spec.search_space(), 2, spec.run_dir,
                                  on_told=sync.push_tuning)
    config = search.suggest("one")
    search.report("one", {"epoch": 1, "val_acc": 0.5})
    search.on_trial_complete("one", {"status": "completed", "tune_final": 1})
    store = storage.Store(uri)
    assert store.read("tn/tuning/optuna.journal") == _journal(tmp_path / "a").read_bytes()

    fresh = tiny_spec(uri, tmp_path / "b")  # a --resume on another machine
    storage.RunSync(fresh).pull()
    again = tuning.make_searcher({label: base}, spec.search_space(), 2, fresh.run_dir)
    assert again.remaining_total() == 1  # the finished sample is kept
    assert again.studies[label].trials[0].params == config["hp"]

    longer = _journal(tmp_path / "b").read_bytes() + b"\n"  # what the store does not have
    _journal(tmp_path / "b").write_bytes(longer)
    storage.RunSync(fresh).pull()
    assert _journal(tmp_path / "b").read_bytes() == longer  # never the shorter one over it

    def down():
        raise OSError("the store is down")
    failing = tuning.make_searcher({label: base}, spec.search_space(), 2, spec.run_dir,
                                   on_told=down)
    failing.suggest("two")
    failing.on_trial_complete("two", error=True)  # does not raise
    err = capsys.readouterr().err
    assert "warning: the tuning journal was not copied to the store (OSError: the store is " \
           "down)" in err


def finished_in_store(store) -> int:
    """Samples in the store's journal that ended by themselves (not cut short by the
    interrupt: those run again); 0 while it has none."""
    import tempfile

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if not store.exists("i/tuning/optuna.journal"):
        return 0
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "j")
        Path(path).write_bytes(store.read("i/tuning/optuna.journal"))
        st = JournalStorage(JournalFileBackend(path))
        return sum(1 for s in optuna.get_all_study_summaries(st)
                   for t in optuna.load_study(study_name=s.study_name, storage=st).trials
                   if t.state.is_finished()
                   and (t.state.name != "FAIL" or t.user_attrs.get("status")))


# 3 samples of 30 epochs (~2 s each here): after the first is in the store the others
# leave seconds for the interrupt to land (2 samples of 4 epochs sometimes ended first)
SAMPLES = 3


@pytest.mark.slow
def test_tune_on_s3_interrupted_then_resumed_from_a_fresh_folder(s3_server, s3, tmp_path,
                                                                  short_tmp):  # noqa: F811
    """``--tune lr --samples 3`` on the store: Ctrl-C once a sample is in the store's
    journal (exit 130); ``--resume`` from an empty folder keeps that sample, runs the
    rest, trains every seed on the selection; the samples' W&B runs are in the store
    and in the resumed driver's folder."""
    import pyarrow.fs as pafs
    uri = f"s3://{s3}/tu"
    store = storage.Store(uri, pafs.S3FileSystem(endpoint_override=s3_server))
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT, TMPDIR=short_tmp,
               **_wandb_free_env(tmp_path))
    argv = [sys.executable, os.path.join(ROOT, "sweep.py"), "--smoke", "--families", "mlp",
            "--residual", "on", "--epochs", "30", "--tune", "lr", "--samples", str(SAMPLES),
            "--cpus-per-trial", "2", "--wandb", "offline", "--out", "res", "--name", "i",
            "--storage", uri]
    (tmp_path / "first").mkdir()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=tmp_path / "first", env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while finished_in_store(store) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 130:  # every sample ended before the interrupt landed: no test
        pytest.skip(f"not interrupted in time (exit {proc.returncode})")
    assert "the per-cell search is not finished" in err, err[-3000:]
    cells = int(re.search(rf"per cell: (\d+) cells x {SAMPLES} samples", out).group(1))
    kept = finished_in_store(store)
    assert 1 <= kept < SAMPLES * cells

    (tmp_path / "second").mkdir()
    p, _ = sweep(tmp_path / "second", s3_server, "--out", "res", "--resume", "i",
                 "--storage", uri, tmpdir=short_tmp, **_wandb_free_env(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert re.search(rf"{cells} cells x {SAMPLES} samples .*; {SAMPLES * cells - kept} to run",
                     p.stdout), p.stdout
    run = tmp_path / "second" / "res" / "i"
    hist = pd.read_parquet(run / "tuning.parquet")
    assert len(hist) >= SAMPLES * cells and hist.selected.sum() == cells
    trials = pd.read_parquet(run / "trials.parquet")
    assert set(trials.status) == {"completed"} and set(trials.hp_source) <= {
        "tuned", "default (no tuning sample completed)"}
    keys = set(store.list("i"))
    assert {"i/tuning/optuna.journal", "i/tuning/selected.json", "i/tuning.parquet"} <= keys
    jobs = [wandb_log.read_offline_run(d)["job_type"] for d in tracking.offline_run_dirs(run)]
    assert jobs.count("tune") >= SAMPLES * cells and jobs.count("trial") == len(trials)
    assert all(f"i/wandb/{d.name}/{f.name}" in keys for d in tracking.offline_run_dirs(run)
               for f in d.glob("run-*.wandb"))
    print(f"tuning sweep with an interrupt and a resume: {time.monotonic() - t0:.0f}s")
