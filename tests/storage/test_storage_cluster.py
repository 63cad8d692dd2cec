"""A Ray cluster started outside the checkout (its own working directory, no
PYTHONPATH) joined with --address and --storage s3://...: the code reaches its workers
through Ray's runtime env, and every trial's files reach the store from there."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.ray_procs import kill_marked  # by the marker of this test's Ray (also used by
                                        # test_cluster_two_nodes, per node)
from .conftest import S3_ENV, s3_env
from .test_storage_e2e import ROOT, short_tmp  # noqa: F401  (a fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)


@pytest.mark.slow
def test_cluster_node_outside_the_checkout_runs_shipped_code_into_the_store(
        s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    from ablations.storage import Store
    import pyarrow.fs as pafs
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef")
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV and k != "PYTHONPATH"}
    env.update(s3_env(s3_server, tmp_path), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), TMPDIR=short_tmp,
               RESABLATE_TEST_RAY=(marker := uuid.uuid4().hex))
    node, driver = tmp_path / "node", tmp_path / "driver"
    node.mkdir()
    driver.mkdir()
    port, temp = free_port(), os.path.join(short_tmp, "r")
    try:
        started = subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp,
                        "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
                        "--num-cpus", "2", "--num-gpus", "0", "--disable-usage-stats"],
                       cwd=node, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        wait_listening(port)
        uri = f"s3://{s3}/c"
        p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--smoke", "--wandb",
                            "disabled", "--address", f"127.0.0.1:{port}", "--storage", uri,
                            "--out", "res", "--name", "c"], cwd=driver, env=env,
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        trials = pd.read_parquet(driver / "res" / "c" / "trials.parquet")
        assert (trials["status"] == "completed").all()
        keys = set(Store(uri, pafs.S3FileSystem(endpoint_override=s3_server)).list("c"))
        assert all(f"c/trials/{t}/row.json" in keys for t in trials["trial_id"])
        assert (driver / "res" / "c" / "report.html").is_file()
        # the node got the code from Ray (py_modules), unpacked in its session folder
        shipped = list(Path(temp).glob("session_*/runtime_resources/py_modules_files/*"))
        assert shipped, sorted(p.name for p in Path(temp).glob("session_*/runtime_resources/*"))
    finally:
        kill_marked(marker)
