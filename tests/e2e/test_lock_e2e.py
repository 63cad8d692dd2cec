"""One writer per results folder, for real: sweep.py in subprocesses through Ray.

Two identical sweeps started together: exactly one runs, the other is refused in one
line naming it (exit 2). A holder killed with SIGKILL mid-sweep leaves its lock behind;
``--resume`` takes it over with a warning and completes the sweep. Every process a
test kills is its own sweep's (the driver and the Ray processes it started, found as
the driver's descendants), never another session's Ray."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ablations import lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = ["--smoke", "--wandb", "disabled", "--out", "res"]


def cmd(*argv):
    return [sys.executable, os.path.join(ROOT, "sweep.py"), *argv]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_all(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(pids, timeout=30.0) -> list[int]:
    """The pids still alive after ``timeout`` (zombies count as gone)."""
    deadline = time.time() + timeout
    left = list(pids)
    while left and time.time() < deadline:
        left = [p for p in left if os.path.exists(f"/proc/{p}") and
                open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_two_identical_sweeps_started_together_one_runs(tmp_path):
    argv = cmd(*SMOKE, "--name", "same")
    procs = [subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_all([p.pid, *descendants(p.pid)])
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[0][-2000:] + o[1][-2000:] for o in outs]
    winner = next(i for i, p in enumerate(procs) if p.returncode == 0)
    loser_err = outs[1 - winner][1].strip().splitlines()
    assert len(loser_err) == 1, loser_err  # one line, no traceback
    line = loser_err[0]
    assert "is in use by another writer" in line
    assert f"pid {procs[winner].pid} on host " in line and " since " in line
    assert "(python sweep.py --smoke --wandb disabled --out res --name same)" in line
    assert "4 trials: 4 completed" in outs[winner][0]
    run_dir = tmp_path / "res" / "same"
    spec = json.loads((run_dir / "spec.json").read_text())
    assert [i["kind"] for i in spec["invocations"]] == ["start"]  # one writer wrote
    assert len(pd.read_parquet(run_dir / "trials.parquet")) == 4
    assert not (run_dir / lock.NAME).exists()  # released at the end


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_by_resume(tmp_path):
    run_dir = tmp_path / "res" / "k"
    proc = subprocess.Popen(cmd(*SMOKE, "--name", "k"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victims = []
    try:
        deadline = time.time() + 240
        while not (run_dir / "spec.json").exists() and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        victims = [proc.pid, *descendants(proc.pid)]
        kill_all(victims)  # kill -9: the driver and its own Ray
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            victims = [proc.pid, *descendants(proc.pid)]
            kill_all(victims)
            proc.wait(timeout=30)
        assert not wait_gone(victims)
    held = json.loads((run_dir / lock.NAME).read_text())  # left behind by the dead holder
    assert held["pid"] == proc.pid

    # a new sweep of that name is refused as before ("already exists"), lock untouched
    p = subprocess.run(cmd(*SMOKE, "--name", "k"), cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "results already exist" in p.stderr, p.stderr
    assert json.loads((run_dir / lock.NAME).read_text()) == held

    p = subprocess.run(cmd("--out", "res", "--resume", "k"), cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    warning = [line for line in p.stderr.splitlines() if "taking over the lock" in line]
    assert len(warning) == 1 and f"pid {proc.pid} on host" in warning[0]
    assert "its process is gone" in warning[0]
    assert "4 trials: 4 completed" in p.stdout
    assert not (run_dir / lock.NAME).exists()
