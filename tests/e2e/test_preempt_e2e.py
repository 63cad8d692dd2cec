"""A spot node's termination notice, for real: sweep.py through Ray Tune (on
127.0.0.1), and SIGTERM sent from here to the Ray worker training a trial, mid-epoch.
The trial checkpoints, is run again without using a retry, and ends with the same
weights, bit for bit, as the same trial never stopped."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.e2e.test_resilience import trial_workers
from tests.e2e.test_sweep_e2e import ROOT

TRIAL = "mlp-4-residual-s0"
# 540 training images at batch 100: 6 steps per epoch; SIGTERM after step 8 (epoch 2)
ARGS = ["--families", "mlp", "--depths", "4", "--residual", "on", "--dataset", "synthetic",
        "--subset", "600", "--milestones", "2", "--batch-size", "100", "--stats-every", "5",
        "--lr", "0.02", "--epochs", "3", "--recipe", "seed", "--seeds", "1",
        "--measure", "none", "--wandb", "disabled", "--max-failures", "0"]
STEP = 8


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (the sweep's own Ray: its raylet's workers)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    seen, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def final_weights(run_dir):
    return torch.load(run_dir / "weights" / TRIAL / "final.pt", weights_only=True)["state_dict"]


def test_sigterm_to_a_trials_worker_checkpoints_it_and_reruns_it_bit_identical(tmp_path):
    pidfile = tmp_path / "stalled.pid"
    env = {**os.environ, "RESABLATE_FAULT": f"stall:{TRIAL}:{STEP}",
           "RESABLATE_FAULT_PIDFILE": str(pidfile)}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sweep.py"), *ARGS,
                             "--out", "res", "--name", "p"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not pidfile.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert pidfile.exists(), "the trial never reached step %d: %s" % (
            STEP, proc.stdout.read()[-3000:] if proc.poll() is not None else "")
        pid = int(pidfile.read_text())
        # the worker training the trial, in this sweep's own Ray (never another's)
        assert pid in descendants(proc.pid) and pid in trial_workers(), pid
        os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # failed: stop the sweep and its own Ray, nothing else
            mine = descendants(proc.pid)
            proc.kill()
            proc.communicate()
            for p in mine:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert proc.returncode == 0, out[-4000:]
    assert f"worker pid {pid}: SIGTERM: checkpointing {TRIAL}" in out, out[-4000:]
    assert f"{TRIAL}: preempted (its worker got SIGTERM): checkpointed, runs again" in out
    assert "1 completed, 0 diverged, 0 errored" in out, out[-2000:]
    assert "attempt failed" not in out  # no retry was used (--max-failures 0: none left)
    run_dir = tmp_path / "res" / "p"
    row = json.loads((run_dir / "trials" / TRIAL / "row.json").read_text())
    assert row["status"] == "completed" and row["attempts"] == 1  # unchanged
    assert row["resumed_from_epoch"] == 2 and row["epochs_run"] == 3
    assert (run_dir / "trials" / TRIAL / "attempts").read_text() == "1"

    # the same trial never stopped, trained as the worker did (the stored spec)
    from ablations import plan
    from ablations.spec import spec_from_dict
    from ablations.trial import run_group
    spec = spec_from_dict(json.loads((run_dir / "spec.json").read_text())["spec"])
    spec = dataclasses.replace(spec, out=str(tmp_path / "plain"), storage=None)
    trial = [t for t in plan.expand(spec)[0] if t.trial_id == TRIAL]
    threads = torch.get_num_threads()
    try:
        assert run_group(trial, spec, spec.run_dir) == ["completed"]
    finally:
        torch.set_num_threads(threads)
    got, want = final_weights(run_dir), final_weights(tmp_path / "plain" / "p")
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
