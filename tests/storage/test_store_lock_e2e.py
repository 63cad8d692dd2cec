"""One writer per sweep in an object store, for real: sweep.py in subprocesses against
moto's S3 server on loopback, each driver with its own --out folder (so the local lock
cannot help). A sweep, a --resume and a --retry-failed of a sweep the store's lock
names are refused in one line naming the holder (exit 2); a stale claim is taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from ablations import store_lock
from ablations.storage import Store

from .conftest import S3_ENV, s3_env
from .test_storage_e2e import short_tmp, sweep  # noqa: F401  (a fixture)
from .test_store_lock import dead_pid, plant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = ["--smoke", "--wandb", "disabled"]

HOLD = """
import sys, time
from ablations import store_lock
from ablations.storage import Store
held = store_lock.acquire(Store(sys.argv[1]), sys.argv[2], "python sweep.py --name held")
print("held", flush=True)
time.sleep(120)
"""


def stored_spec(store, name: str) -> None:
    """``NAME/spec.json`` of a smoke sweep, as its driver writes it (the part --resume
    reads)."""
    from ablations.arguments import build_parser, spec_from_args
    from ablations.spec import spec_to_dict
    spec = spec_from_args(build_parser().parse_args(
        [*SMOKE, "--name", name, "--storage", store.uri]))
    store.write(f"{name}/spec.json", json.dumps({"spec": spec_to_dict(spec)}).encode())


@pytest.fixture
def holder(s3, s3_server, tmp_path):
    """A process holding the store's lock of ``s3://BUCKET/p/n``; yields its pid."""
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", HOLD, f"s3://{s3}/p", "n"], env=env,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("args", [
    ["--name", "n"], ["--resume", "n"], ["--retry-failed", "n"]], ids=lambda a: a[0][2:])
def test_a_locked_sweep_in_the_store_is_refused_naming_its_holder(s3_server, s3, tmp_path,
                                                                   holder, args):
    store = Store(f"s3://{s3}/p")
    if args[0] != "--name":
        stored_spec(store, "n")
    before = set(store.list())
    p, took = sweep(tmp_path, s3_server, *SMOKE, "--out", "other", *args,
                    "--storage", f"s3://{s3}/p", timeout=60)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = p.stderr.strip()
    assert "\n" not in err and "Traceback" not in p.stdout + p.stderr, err
    assert f"s3://{s3}/p/n is in use by another writer: pid {holder} on host" in err, err
    assert "(python sweep.py --name held)" in err
    assert not (tmp_path / "other").exists()  # the local lock let go, its folders removed
    assert set(store.list()) == before  # nothing written to the store
    assert took < 30, took


@pytest.mark.slow
def test_two_drivers_one_store_one_runs_then_a_stale_claim_is_taken_over(
        s3_server, s3, tmp_path, short_tmp):  # noqa: F811
    """Two identical sweeps from different --out folders (the same command on two
    machines): exactly one runs, the other exits 2 naming it. Then a claim left by a
    dead process is taken over by --resume from a third folder."""
    uri = f"s3://{s3}/p"
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT, TMPDIR=short_tmp)
    procs = []
    for out in ("a", "b"):
        (tmp_path / out).mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "sweep.py"), *SMOKE, "--out", "res",
             "--name", "n", "--storage", uri], cwd=tmp_path / out, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL))
    outs = [p.communicate(timeout=400) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], [o[1][-2000:] for o in outs]
    won = [p.returncode for p in procs].index(0)
    lost_err = outs[1 - won][1].strip()
    assert "\n" not in lost_err and f"pid {procs[won].pid} on host" in lost_err, lost_err
    store = Store(uri)
    assert store_lock.claims(store, "n") == {}  # released at the end
    trials = pd.read_parquet(tmp_path / "ab"[won] / "res" / "n" / "trials.parquet")
    assert (trials["status"] == "completed").all()

    stale = plant(store, "n", pid=dead_pid(), command="python sweep.py --name n (killed)")
    (tmp_path / "c").mkdir()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--out", "res",
                        "--resume", "n", "--storage", uri], cwd=tmp_path / "c", env=env,
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"warning: taking over the lock of {uri}/n from pid {stale['pid']}" in p.stderr
    assert "its process is gone" in p.stderr
    assert store_lock.claims(store, "n") == {}
    again = pd.read_parquet(tmp_path / "c" / "res" / "n" / "trials.parquet")
    assert sorted(again["trial_id"]) == sorted(trials["trial_id"])
    assert time.monotonic() - t0 < 300
