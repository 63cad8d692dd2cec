"""Ray lost under a running sweep: one line saying so, what finished merged and
counted, the ``--resume`` command, exit 1, and none of Ray's internals on the terminal.

The real one (~45 s): a sweep through Ray whose own Ray processes (the driver's
descendants: gcs_server, raylet, workers, ...) are killed by pid after its first trial
ends, then the printed ``--resume`` command completes it. The fast ones: the watch
(``ablations.cluster.watch``) on a stand-in Ray node, and the ending
(``ablations.orchestrate.ray_lost``) of an in-process sweep without Ray."""
import dataclasses
import os
import re
import subprocess
import sys
import time
import types

import pandas as pd
import pytest

from ablations import arguments, cluster, lock, orchestrate, runner
from ablations.exit_noise import ExitNoiseFilter
from ablations.trial import run_group
from tests.e2e.test_lock_e2e import cmd, descendants, kill_all, wait_gone

# 4 training trials of ~10 s each, 2 at a time (2 CPUs): the first ends while 3 remain
ARGV = ["--families", "mlp", "--depths", "4,6", "--residual", "both", "--seeds", "1",
        "--dataset", "synthetic", "--subset", "3000", "--epochs", "15", "--milestones", "",
        "--batch-size", "100", "--stats-every", "5", "--lr", "0.02", "--recipe", "seed",
        "--cpus-per-trial", "1", "--keep-weights", "none", "--measure", "none",
        "--wandb", "disabled", "--out", "res", "--name", "lost"]


@pytest.fixture
def no_lost_flag():
    yield
    ExitNoiseFilter.ray_lost = False  # the flag is per process: leave it as found


def test_the_watch_calls_back_once_when_a_ray_process_ends(monkeypatch, no_lost_flag):
    import ray
    gcs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    raylet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    node = types.SimpleNamespace(all_processes={
        "gcs_server": [types.SimpleNamespace(process=gcs)],
        "raylet": [types.SimpleNamespace(process=raylet)]}, _gcs_address="127.0.0.1:1")
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    calls = []
    try:
        cluster.watch(calls.append, every_s=0.05)
        time.sleep(0.3)
        assert calls == []  # alive: nothing
        gcs.kill()
        deadline = time.time() + 10
        while not calls and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert calls == ["its gcs_server process ended"]
        assert ExitNoiseFilter.ray_lost and ExitNoiseFilter().lines("w", ["x"]) == []
    finally:
        cluster.unwatch()
        for p in (gcs, raylet):
            p.kill()
            p.wait()


def test_disconnect_stops_the_watch_before_ray_ends(monkeypatch, no_lost_flag):
    import ray
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    node = types.SimpleNamespace(all_processes={"raylet": [types.SimpleNamespace(process=proc)]})
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    calls = []
    cluster.watch(calls.append, every_s=0.05)
    cluster.disconnect()  # not connected: ray.shutdown is not called, the watch stops
    proc.kill()
    proc.wait()
    time.sleep(0.3)
    assert calls == [] and not ExitNoiseFilter.ray_lost


def test_ray_lost_ends_the_sweep_with_a_summary_and_the_resume_command(
        tmp_path, monkeypatch, capsys, no_lost_flag):
    """orchestrate.run in this process, Ray replaced: the first group runs, then the
    watch reports Ray lost; the process would end with os._exit(1)."""
    watched = []
    monkeypatch.setattr(cluster, "plan_local", lambda spec, units: False)
    monkeypatch.setattr(cluster, "connect", lambda address, prewarm=False: None)
    monkeypatch.setattr(cluster, "resolve_resources", lambda spec, units: dataclasses.replace(
        spec, cpus_per_trial=1, gpus_per_trial=0.0))
    monkeypatch.setattr(cluster, "cluster_info", lambda: {"nodes": 1, "resources": {"CPU": 2.0}})
    monkeypatch.setattr(cluster, "watch", lambda on_lost, **kw: watched.append(on_lost))

    def run_groups(groups, spec, run_dir, experiment, on_trial_end=None, progress=None):
        run_group(groups[0], spec, run_dir)
        assert (tmp_path / "p" / lock.NAME).exists()
        watched[-1]("its gcs_server and raylet processes ended")
        raise AssertionError("ray_lost returned")
    monkeypatch.setattr(runner, "run_groups", run_groups)

    def exit_(code):
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", exit_)
    argv = ["--families", "mlp", "--depths", "3,4", "--mode", "probe", "--seeds", "2",
            "--out", str(tmp_path), "--name", "p", "--wandb", "disabled"]
    parser = arguments.build_parser()
    with pytest.raises(SystemExit) as e:
        orchestrate.run(parser, parser.parse_args(argv), argv, {"started_at": 0.0})
    assert e.value.code == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "sweep.py: Ray was lost under the sweep (its gcs_server and raylet processes "
        "ended); the trials still running stopped",
        f"continue with: python sweep.py --out {tmp_path} --resume p"]
    assert f"4 of 8 trial(s) finished: 4 completed, 0 diverged, 0 errored; 4 pending in " \
           f"{tmp_path / 'p'}" in out
    rows = pd.read_parquet(tmp_path / "p" / "trials.parquet")
    assert sorted(rows["status"].value_counts().items()) == [("completed", 4), ("pending", 4)]
    assert not (tmp_path / "p" / lock.NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["all", "raylet"])
def test_killing_the_sweeps_own_ray_then_resume(tmp_path, which):
    """Every process of the sweep's Ray, or its raylet alone (whose dying notice with its
    state dump reaches the driver before the loss is noticed): one line, the summary,
    the resume command; no Ray internals."""
    proc = subprocess.Popen(cmd(*ARGV), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    victims, before, after = [], [], []
    try:
        for line in proc.stdout:
            before.append(line)
            if line.startswith("[1/"):  # the first trial ended
                break
        assert proc.poll() is None, "".join(before[-30:])
        victims = descendants(proc.pid)  # this sweep's Ray: gcs_server, raylet, workers
        assert any("gcs_server" in open(f"/proc/{p}/cmdline").read() for p in victims
                   if os.path.exists(f"/proc/{p}"))
        if which == "raylet":
            victims = [p for p in victims if os.path.exists(f"/proc/{p}")
                       and "raylet" in open(f"/proc/{p}/cmdline").read()]
            assert victims
        kill_all(victims)
        after = list(proc.stdout)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            victims += [proc.pid, *descendants(proc.pid)]
            kill_all(victims)
            proc.wait(timeout=30)
        assert not wait_gone(victims)
    text = "".join(after)
    assert proc.returncode == 1, "".join(before[-20:]) + text
    assert len(after) < 10, text
    assert "[state-dump]" not in text and "Traceback" not in text
    assert "Raylet is terminated" not in text
    assert "sweep.py: Ray was lost under the sweep" in text
    assert re.search(r"\d of 4 trial\(s\) finished: \d completed, 0 diverged, 0 errored; "
                     r"\d pending in res/lost", text), text
    resume = re.search(r"continue with: (python sweep\.py .*)", text).group(1)
    assert resume == "python sweep.py --out res --resume lost"
    assert not (tmp_path / "res" / "lost" / lock.NAME).exists()
    done = len(pd.read_parquet(tmp_path / "res" / "lost" / "trials.parquet")
               .query("status == 'completed'"))
    assert 1 <= done < 4
    if which == "raylet":
        return  # the rest as with every process killed

    p = subprocess.run(cmd(*resume.split()[2:]), cwd=tmp_path, capture_output=True,
                       text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"{done} trial(s) already finished, {4 - done} to run" in p.stdout
    assert "4 trials: 4 completed" in p.stdout
