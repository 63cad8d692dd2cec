"""A W&B outage costs tracking, never training: sweep.py for real, through Ray, with a
(fake) key configured and a W&B "server" on loopback that never answers or cannot
start a run. Before, every trial's wandb.init failed, each trial was retried and ended
as status=error (458 s for --smoke instead of 27 s), and the figures run ended the
sweep with a traceback.

The environment has no real credentials (HOME, NETRC and the wandb folders are in
tmp_path, no WANDB_* or proxy variable from outside), so nothing can prompt and
every request goes to 127.0.0.1."""
import os
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from ablations import tracking, wandb_log
from tests.ablations.test_tracking import FAKE_KEY, Server
from tests.e2e.test_sweep_e2e import ROOT, ray_pids

# --smoke trains with the default recipe: SkipInit residual cells (--branch-scale zero)
# the default recipe: SkipInit branches, and pre-activation LayerNorm MLPs
SMOKE_TRIALS = {"mlp-4-plain-norm=layer-block=pre-s0",
                "mlp-4-residual-norm=layer-block=pre-scale=zero-s0", "resnet-4-plain-s0",
                "resnet-4-residual-scale=zero-s0"}


def outage_env(tmp_path, base_url) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and not k.lower().endswith("_proxy")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_API_KEY=FAKE_KEY,
               WANDB_BASE_URL=base_url, WANDB_SILENT="true",
               **{k: str(tmp_path / "wandb-home" / k.lower()) for k in
                  ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR",
                   "WANDB_ARTIFACT_DIR")})
    return env


def ray_pids_of(marker: str) -> set:
    """Ray processes started with ``marker`` in their environment: this test's, not those
    of other sweeps on the machine."""
    mine = set()
    for pid in ray_pids():
        try:
            if marker.encode() in open(f"/proc/{pid}/environ", "rb").read():
                mine.add(pid)
        except OSError:  # ended meanwhile
            pass
    return mine


def run_smoke(tmp_path, mode, base_url, name, **env):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--smoke", "--wandb",
                        mode, "--out", "res", "--name", name], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600, env={**outage_env(tmp_path, base_url), **env},
                       stdin=subprocess.DEVNULL)  # nothing could answer a prompt: none may come
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert not ray_pids_of(str(tmp_path / "home")), "the sweep left Ray processes running"
    print(f"--smoke --wandb {mode} in an outage: {seconds:.1f} s")
    run_dir = tmp_path / "res" / name
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert set(trials.trial_id) == SMOKE_TRIALS
    assert set(trials.status) == {"completed"} and (trials.attempts == 1).all()  # no retries
    assert "4 trials: 4 completed, 0 diverged, 0 errored" in p.stdout
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert FAKE_KEY not in p.stdout + p.stderr
    runs = {r["name"]: r for r in map(wandb_log.read_offline_run,
                                      tracking.offline_run_dirs(run_dir))}
    assert set(runs) == SMOKE_TRIALS | {f"{name}-figures"}  # every run kept, offline
    assert all(r["exit_code"] == 0 for r in runs.values())
    assert f"upload with: wandb sync {run_dir.relative_to(tmp_path)}/wandb/offline-run-*" \
        in p.stdout
    return p, seconds, run_dir


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: a server behind a dead route."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.slow
def test_auto_with_a_key_and_a_silent_server_goes_offline(tmp_path, silent_server):
    p, seconds, run_dir = run_smoke(tmp_path, "auto", silent_server, "auto")
    assert (f"W&B: offline (credentials found, but no answer from {silent_server} within "
            "3 s; upload later with: wandb sync res/auto/wandb/offline-run-*)") in p.stdout
    assert "W&B: " not in p.stderr  # chosen once, up front: no trial even tries
    assert seconds < 180  # 458 s before; ~40 s on 2 busy cores


@pytest.mark.slow
def test_forced_online_trials_fall_back_to_offline_and_complete(tmp_path):
    """--wandb online and a server that answers HTTP but cannot start a run: each
    trial's wandb.init fails (within WANDB_INIT_TIMEOUT), the trial logs offline,
    one warning line names it, and it completes on its first attempt."""
    server = Server(status=503)
    try:
        p, seconds, run_dir = run_smoke(tmp_path, "online", server.url, "online",
                                        WANDB_INIT_TIMEOUT="3")
    finally:
        server.close()
    assert "W&B: online (--wandb online;" in p.stdout
    lines = [line for line in p.stderr.splitlines() if "warning: W&B: " in line]
    for name in SMOKE_TRIALS | {"online-figures"}:
        mine = [line for line in lines if f"W&B: {name}: " in line]
        assert len(mine) == 1, (name, lines)
        assert "its online run could not start" in mine[0]
        assert "logging offline instead" in mine[0]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials.wandb.str.contains("/wandb/offline-run-").all()  # rows name the folders
    assert seconds < 240
