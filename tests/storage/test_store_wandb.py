"""W&B offline runs with an object-store ``--storage`` (moto's S3 server on loopback): a
staged worker's run folder goes to ``URI/NAME/wandb/`` when its run finishes (completed,
preempted or failed), the driver pulls it into its results folder, where the printed
``wandb sync`` command finds it, and a store fault never costs the trial.

W&B runs here without a server or credentials (HOME, NETRC and the wandb folders in
``tmp_path``, no ``WANDB_*`` variable from outside)."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from ablations import storage, tracking, wandb_log
from ablations.spec import AblationSpec

from .test_storage_e2e import short_tmp, sweep  # noqa: F401  (short_tmp: a fixture)


def _wandb_free_env(tmp_path) -> dict:
    """The environment that keeps W&B on this test's own folders, offline."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "NETRC": str(home / ".netrc"),
            **{k: str(tmp_path / "wandb-home" / sub) for k, sub in
               [("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]},
            **tracking.QUIET_ENV}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B settings from outside; staging (TMPDIR) under ``tmp_path``."""
    for key in list(os.environ):
        if key.startswith("WANDB_") or key == "NETRC" or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    for key, value in _wandb_free_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    yield
    if "wandb" in sys.modules:
        import wandb
        wandb.teardown()


def _files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
            if p.is_file() and not p.is_symlink()}  # debug-core.log: a link to wandb-core's log


def test_offline_runs_reach_the_store_as_they_finish_and_the_driver_pulls_them(
        wandb_env, s3, tmp_path):
    uri = f"s3://{s3}/p"
    spec, run_dir, mirror = storage.stage(AblationSpec(storage=uri, name="w"), ["t1", "t2"])
    assert str(tmp_path / "tmp") in run_dir  # staged on "this node", not in a results folder
    trackers = {}
    with mirror:
        for name, how in [("t1", "completed"), ("t2", "preempted"), ("t3", "failed")]:
            t = trackers[name] = tracking.TrialTracker("offline", run_dir, "w", name, {"d": 2})
            t.log_epoch({"epoch": 1, "loss": 0.5})
            if how == "failed":
                with pytest.raises(RuntimeError), t:
                    raise RuntimeError("the trial broke")
            else:
                assert t.kept_at == f"{uri}/w/wandb/{Path(t.run_path).name}"
                t.finish({"status": how})
    store = storage.Store(uri)
    for t in trackers.values():
        folder = Path(t.run_path)
        keys = store.list(f"w/wandb/{folder.name}")
        assert {k.split(f"{folder.name}/", 1)[1] for k in keys} == _files(folder)
        assert any(k.endswith(".wandb") for k in keys)
    # wandb's own logs beside the runs (debug.log, latest-run) stay on the node
    assert all(k.startswith("w/wandb/offline-run-") for k in store.list("w/wandb"))

    driver = AblationSpec(storage=uri, name="w", out=str(tmp_path / "driver"))
    storage.RunSync(driver).pull()
    pulled = {r["name"]: r for r in map(wandb_log.read_offline_run,
                                        tracking.offline_run_dirs(driver.run_dir))}
    assert {n: r["summary"]["status"] for n, r in pulled.items()} == \
        {"t1": "completed", "t2": "preempted", "t3": "error"}
    assert pulled["t1"]["history"][0]["loss"] == 0.5
    assert tracking.sync_command(driver.run_dir) == \
        f"wandb sync {driver.run_dir}/wandb/offline-run-*"


def test_a_store_fault_costs_the_trial_nothing(wandb_env, s3, tmp_path, monkeypatch, capsys):
    spec, run_dir, mirror = storage.stage(AblationSpec(storage=f"s3://{s3}/p", name="f"), ["t"])

    def down(self, local, key):
        raise OSError("the store is down")
    monkeypatch.setattr(storage.Store, "put_file", down)
    with mirror:
        t = tracking.TrialTracker("offline", run_dir, "f", "t", {})
        t.log_epoch({"epoch": 1, "loss": 0.25})
        t.finish({"status": "completed"})  # does not raise
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert line == (f"warning: W&B: t: its offline run was not copied to the store (OSError: "
                    f"the store is down); it stays in {t.run_path}")
    assert wandb_log.read_offline_run(t.run_path)["summary"]["status"] == "completed"


def test_the_driver_pushes_its_own_runs_not_those_it_pulled(s3, tmp_path, monkeypatch):
    uri = f"s3://{s3}/d"
    spec = AblationSpec(storage=uri, name="d", out=str(tmp_path / "res"))
    store = storage.Store(uri)
    store.write("d/wandb/offline-run-1-aaa/run-aaa.wandb", b"a trial's run")
    sync = storage.RunSync(spec)
    sync.pull()
    mine = Path(spec.run_dir, "wandb", "offline-run-2-bbb")
    (mine / "files").mkdir(parents=True)
    (mine / "run-bbb.wandb").write_bytes(b"the figures run")
    (mine / "files" / "config.yaml").write_text("x: 1")
    Path(spec.run_dir, "wandb", "debug.log").write_text("noise")
    os.symlink(mine, Path(spec.run_dir, "wandb", "latest-run"))
    put = []
    real = storage.Store.put_file
    monkeypatch.setattr(storage.Store, "put_file",
                        lambda self, local, key: (put.append(key), real(self, local, key)))
    sync.push()
    assert sorted(k for k in put if "/wandb/" in k) == [
        "d/wandb/offline-run-2-bbb/files/config.yaml", "d/wandb/offline-run-2-bbb/run-bbb.wandb"]
    assert store.read("d/wandb/offline-run-1-aaa/run-aaa.wandb") == b"a trial's run"


@pytest.mark.slow
def test_offline_sweep_on_s3_keeps_every_trials_run_in_the_store_and_here(
        s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    uri = f"s3://{s3}/wb"
    p, took = sweep(tmp_path, s3_server, "--smoke", "--wandb", "offline", "--out", "res",
                    "--name", "s", "--storage", uri, tmpdir=short_tmp,
                    **_wandb_free_env(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    run = tmp_path / "res" / "s"
    trials = pd.read_parquet(run / "trials.parquet")
    import pyarrow.fs as pafs
    store = storage.Store(uri, pafs.S3FileSystem(endpoint_override=s3_server))
    keys = set(store.list("s/wandb"))
    here = {r["name"]: d for d in tracking.offline_run_dirs(run)
            for r in [wandb_log.read_offline_run(d)]}
    assert set(here) == {*trials.trial_id, "s-figures"}  # every trial's run, pulled
    for name, d in here.items():
        assert {f"s/wandb/{d.name}/{f}" for f in _files(d)} <= keys  # and in the store
        r = wandb_log.read_offline_run(d)
        assert r["exit_code"] == 0  # complete: uploaded after its exit record
        assert name == "s-figures" or r["summary"]["status"] == "completed"
    for tid, where in zip(trials.trial_id, trials.wandb):
        assert re.fullmatch(rf"{uri}/s/wandb/offline-run-[0-9_]+-{tracking.run_id('s', tid)}",
                            where), where
    assert "upload with: wandb sync res/s/wandb/offline-run-*" in p.stdout
    print(f"sweep {took:.0f}s")
