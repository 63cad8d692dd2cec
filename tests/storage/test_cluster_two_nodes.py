"""A two-node Ray cluster on loopback with no shared results path: the head started
from one working directory, the second node from another, the driver from a third,
each with its own temporary folder, none of them inside the checkout and none with
PYTHONPATH. The code reaches the nodes through Ray's runtime env; everything a trial
writes reaches the driver through the object store (moto's S3 server on 127.0.0.1).
Then the second node is killed (kill -9 of its processes only) under a running trial.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from .conftest import S3_ENV, s3_env
from .test_storage_cluster import free_port, kill_marked, wait_listening
from .test_storage_e2e import ROOT, short_tmp  # noqa: F401  (a fixture)

# one small MLP cell on synthetic data; ~0.3-0.5 s per epoch on a loaded 2-core machine
SMALL = ["--families", "mlp", "--dataset", "synthetic", "--milestones", "", "--batch-size",
         "100", "--stats-every", "5", "--lr", "0.02", "--recipe", "seed", "--seeds", "1",
         "--cpus-per-trial", "1", "--wandb", "disabled"]
RAY_BIN = os.path.join(os.path.dirname(sys.executable), "ray")
# the head's GCS declares a silent node dead after ~3 s, not Ray's default ~30 s
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
               "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class Cluster:
    """Two Ray nodes of 1 CPU each on 127.0.0.1; ``head`` and ``worker`` are their
    folders (``cwd`` for ``ray start``, ``tmp`` its TMPDIR, ``marker`` the value of
    ``RESABLATE_TEST_RAY`` every process of that node carries)."""

    def __init__(self, base: Path, short: str, endpoint: str):
        self.base, self.endpoint = base, endpoint
        token = base / "token"
        token.write_text("0123456789abcdef0123456789abcdef")
        self.common_env = {k: v for k, v in os.environ.items()
                           if k not in S3_ENV and k not in ("PYTHONPATH", "RESABLATE_TEST_RAY")}
        self.common_env.update(s3_env(endpoint, base), RAY_AUTH_MODE="token",
                               RAY_AUTH_TOKEN_PATH=str(token))
        self.port = free_port()
        self.nodes = {}
        for name in ("head", "worker", "driver"):
            cwd, tmp = base / name, Path(short) / name[0]
            cwd.mkdir()
            tmp.mkdir()
            self.nodes[name] = {"cwd": cwd, "tmp": str(tmp), "marker": uuid.uuid4().hex}

    def env(self, name: str) -> dict:
        node = self.nodes[name]
        env = {**self.common_env, "TMPDIR": node["tmp"]}
        if name != "driver":  # the driver forwards RESABLATE_* to the workers: no marker
            env.update(FAST_HEALTH, RESABLATE_TEST_RAY=node["marker"])
        return env

    def start(self) -> None:
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                  "--disable-usage-stats"]
        # Ray's fixed default port of its dashboard agent (52365) would collide with
        # another node on this machine: a free one instead
        for name, args in (("head", ["--head", "--port", str(self.port),
                                     "--include-dashboard", "false"]),
                           ("worker", ["--address", f"127.0.0.1:{self.port}"])):
            node = self.nodes[name]
            p = subprocess.run([RAY_BIN, "start", *args, "--temp-dir",
                                os.path.join(node["tmp"], "r"), "--dashboard-agent-listen-port",
                                str(free_port()), *common],
                               cwd=node["cwd"], env=self.env(name), capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
            if name == "head":
                wait_listening(self.port)

    def stop(self) -> None:
        for name in ("worker", "head"):
            kill_marked(self.nodes[name]["marker"])

    def sweep(self, name: str, *argv) -> subprocess.Popen:
        """``sweep.py --address`` from ``name``'s folder (its own --out), output piped."""
        return subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "sweep.py"), "--address",
             f"127.0.0.1:{self.port}", "--out", "res", *argv],
            cwd=self.nodes[name]["cwd"], env=self.env(name), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def two_nodes(tmp_path, short, endpoint):
    cluster = Cluster(tmp_path, short, endpoint)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("the sweep hung:\n" + out[-3000:])
    assert proc.returncode == 0, out[-4000:]
    return out


def store_of(uri: str, endpoint: str):
    import pyarrow.fs as pafs
    from ablations.storage import Store
    return Store(uri, pafs.S3FileSystem(endpoint_override=endpoint))


def report_files(run: Path) -> dict[str, bytes]:
    """Every table the report wrote (``tables/*``), by name."""
    return {p.name: p.read_bytes() for p in sorted((run / "tables").iterdir())}


@pytest.mark.slow
def test_two_nodes_without_a_shared_path_run_a_sweep_into_the_store(
        s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    uri = f"s3://{s3}/two"
    with two_nodes(tmp_path, short_tmp, s3_server) as cluster:
        # two trials at a time (1 CPU per node, 1 per trial): both nodes take one at once
        out = finish(cluster.sweep("driver", *SMALL, "--depths", "4,6", "--residual", "both",
                                   "--epochs", "4", "--subset", "800", "--storage", uri,
                                   "--name", "t"), timeout=240)
    assert "on 2 node(s)" in out and "4 trials: 4 completed" in out, out[-3000:]
    run = cluster.nodes["driver"]["cwd"] / "res" / "t"
    trials = pd.read_parquet(run / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "completed").all()
    assert trials.node_id.nunique() == 2, trials.node_id  # both nodes ran trials
    keys = set(store_of(uri, s3_server).list("t"))
    for tid in trials.trial_id:
        assert f"t/trials/{tid}/row.json" in keys
        assert f"t/weights/{tid}/final.pt" in keys
        assert any(k.startswith(f"t/trials/{tid}/measure-") for k in keys), tid
    # the final report is whole on the driver: every figure and table drawn, none failed
    assert (run / "report.html").is_file() and not (run / "report_errors.log").exists()
    assert "could not draw" not in (run / "report.md").read_text()
    assert report_files(run)
    # nothing reached a node's own folders but Ray's files and its staging folder
    for name in ("head", "worker"):
        node = cluster.nodes[name]
        assert not any(node["cwd"].iterdir()), list(node["cwd"].iterdir())
        assert os.path.isdir(os.path.join(node["tmp"], "resablate-stage"))


def staged_checkpoint(node: dict, name: str) -> str | None:
    """The id of a trial with a checkpoint in ``node``'s staging folder (it runs there)."""
    for p in Path(node["tmp"]).glob(f"resablate-stage/*/{name}/checkpoints/*.pt"):
        return p.stem
    return None


@pytest.mark.slow
def test_worker_node_killed_mid_sweep_then_resume_elsewhere_gives_the_same_tables(
        s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    uri = f"s3://{s3}/kill"
    store = store_of(uri, s3_server)
    with two_nodes(tmp_path, short_tmp, s3_server) as cluster:
        proc = cluster.sweep("driver", *SMALL, "--depths", "4", "--residual", "both",
                             "--epochs", "16", "--subset", "1500", "--storage", uri,
                             "--max-failures", "0", "--name", "k")
        try:
            victim, deadline = None, time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                victim = staged_checkpoint(cluster.nodes["worker"], "k")
                if victim and store.exists(f"k/checkpoints/{victim}.pt"):
                    break
                time.sleep(0.2)
            assert victim and proc.poll() is None, "no trial checkpointed on the worker node"
            kill_marked(cluster.nodes["worker"]["marker"])
            out = finish(proc, timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        # a lost node is no failure (--max-failures 0): its trial ran again on the head
        assert "2 trials: 2 completed" in out, out[-3000:]
        assert f"{victim}: its node was lost; runs again from its checkpoint" in out, out[-3000:]
        assert "[state-dump]" not in out and "Raylet is terminated" not in out, out[-3000:]
        run = cluster.nodes["driver"]["cwd"] / "res" / "k"
        trials = pd.read_parquet(run / "trials.parquet").set_index("trial_id")
        assert (trials.status == "completed").all()
        row = json.loads(store.read(f"k/trials/{victim}/row.json"))
        assert (row["resumed_from_epoch"] or 0) >= 2, row  # from its checkpoint, not epoch 1
        assert row["node_id"] == trials.node_id.drop(victim).iloc[0]  # finished on the head
        epochs = pd.read_parquet(run / "epochs.parquet")
        assert sorted(epochs[epochs.trial_id == victim].epoch) == list(range(1, 17))

        env = cluster.env("driver")
    # the cluster is gone (both nodes stopped); a fresh driver folder, only the URI:
    # nothing to run, so no cluster is needed, and the same tables byte for byte
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--out", "res",
                        "--resume", "k", "--storage", uri], cwd=fresh, env=env,
                       capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"every trial has its result in {uri}: merging here, without the cluster" \
        in p.stdout, p.stdout[-3000:]
    assert "2 trial(s) already finished, 0 to run" in p.stdout, p.stdout[-3000:]
    again = fresh / "res" / "k"
    assert report_files(again) == report_files(run)
    pd.testing.assert_frame_equal(pd.read_parquet(again / "trials.parquet").set_index("trial_id"),
                                  trials)
