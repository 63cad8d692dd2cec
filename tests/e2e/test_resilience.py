"""Sweeps that survive: retries, killed workers, killed drivers, --resume, --retry-failed,
W&B offline runs, per-cell Optuna tuning, a two-node Ray cluster. All for real: sweep.py
in a subprocess through Ray Tune, on the synthetic dataset."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.e2e.test_sweep_e2e import ROOT, ray_pids
from tests.ray_procs import kill_marked, marked_pids

# each test here runs a sweep or two through Ray for 30-70 s: the slow run (CI runs it)
pytestmark = pytest.mark.slow

# the seed recipe and one seed: the plain/residual ids and trial counts these tests name
SMALL = ["--families", "mlp", "--depths", "4", "--dataset", "synthetic", "--subset", "600",
         "--milestones", "", "--batch-size", "100", "--stats-every", "5", "--lr", "0.02",
         "--recipe", "seed", "--seeds", "1"]


def cmd(*argv):
    return [sys.executable, os.path.join(ROOT, "sweep.py"), *argv]


def run(*argv, cwd, env=None, expect=0):
    p = subprocess.run(cmd(*argv), capture_output=True, text=True, cwd=cwd, timeout=600,
                       env={**os.environ, **(env or {})})
    assert p.returncode == expect, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def rows(run_dir):
    return {p.parent.name: json.loads(p.read_text())
            for p in (run_dir / "trials").glob("*/row.json")}


def kill_new_ray(before):
    """Kill the Ray processes a test left (a killed driver's cluster): every process of
    this test session started since ``before`` (tests/ray_procs.py), wait until gone."""
    kill_marked(pids=marked_pids() - before)


def trial_workers():
    """Pids of this session's Ray workers running a Tune trial (process title
    ray::<actor>.<method>)."""
    return sorted(marked_pids(r"ray::(ImplicitFunc|_trainable)"))


def test_failing_trial_is_retried_recorded_as_error_then_retry_failed(tmp_path):
    """A trainable that raises is retried (--max-failures), then status=error with its
    traceback, the sweep completes; W&B offline runs exist per trial; --retry-failed
    reruns only that trial, from its checkpoint."""
    run_dir = tmp_path / "res" / "f"
    p = run(*SMALL, "--residual", "both", "--epochs", "3", "--max-failures", "1",
            "--wandb", "offline", "--out", "res", "--name", "f", cwd=tmp_path, expect=1,
            env={"RESABLATE_FAULT": "raise:mlp-4-plain-s0:2"})
    assert "2 trials: 1 completed, 0 diverged, 1 errored" in p.stdout
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    bad = trials.loc["mlp-4-plain-s0"]
    assert bad.status == "error" and "injected fault in mlp-4-plain-s0 at epoch 2" in bad.error
    assert bad.attempts == 2  # first try + 1 retry
    assert trials.loc["mlp-4-residual-s0"].status == "completed"
    assert trials.loc["mlp-4-residual-s0"].lr == 0.02 and trials.hp_source.eq("fixed").all()

    # W&B offline: one run per trial with its factors as config and per-epoch metrics
    from ablations import tracking, wandb_log
    offline = {r["name"]: r for r in map(wandb_log.read_offline_run,
                                         tracking.offline_run_dirs(run_dir))}
    assert {"mlp-4-plain-s0", "mlp-4-residual-s0", "f-figures"} <= set(offline)
    good = offline["mlp-4-residual-s0"]
    assert good["group"] == "f"
    assert {k: good["config"][k] for k in ("family", "depth", "residual", "seed", "lr")} == \
        {"family": "mlp", "depth": 4, "residual": True, "seed": 0, "lr": 0.02}
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    mine = epochs[epochs.trial_id == "mlp-4-residual-s0"].sort_values("epoch")
    logged = [h for h in good["history"] if "val_acc" in h]
    assert [h["val_acc"] for h in logged] == pytest.approx(list(mine.val_acc))
    assert good["summary"]["status"] == "completed"
    assert "wandb sync" in p.stdout

    before = rows(run_dir)
    p = run("--out", "res", "--retry-failed", "f", "--wandb", "disabled", cwd=tmp_path)
    assert "retrying 1 errored or unfinished trial(s): mlp-4-plain-s0" in p.stdout
    assert "2 trials: 2 completed, 0 diverged, 0 errored" in p.stdout
    after = rows(run_dir)
    assert after["mlp-4-residual-s0"] == before["mlp-4-residual-s0"]  # untouched
    fixed = after["mlp-4-plain-s0"]
    assert fixed["attempts"] == 3 and fixed["resumed_from_epoch"] == 2  # epoch 1 was saved
    assert (run_dir / "trials" / "mlp-4-plain-s0" / "errors" / "1.json").exists()  # kept
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert sorted(epochs[epochs.trial_id == "mlp-4-plain-s0"].epoch) == [1, 2, 3]


def test_killed_worker_resumes_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "res" / "k"
    ckpt = run_dir / "ray" / "checkpoints" / "mlp-4-plain-s0.pt"
    before = ray_pids()
    proc = subprocess.Popen(cmd(*SMALL, "--residual", "off", "--epochs", "40", "--subset",
                                "2000", "--wandb", "disabled", "--out", "res", "--name", "k"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert ckpt.exists(), "no checkpoint appeared"
        workers = trial_workers()
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "1 trials: 1 completed" in out
    row = rows(run_dir)["mlp-4-plain-s0"]
    assert row["attempts"] == 2 and row["resumed_from_epoch"] >= 2
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert list(epochs.epoch) == list(range(1, 41))  # every epoch exactly once
    assert not ckpt.exists()  # removed once the result is written
    assert ray_pids() <= before


def test_killed_driver_then_resume_keeps_finished_trials(tmp_path):
    run_dir = tmp_path / "res" / "d"
    before = ray_pids()
    argv = [*SMALL, "--depths", "4,6", "--residual", "both", "--epochs", "4", "--subset",
            "1500", "--cpus-per-trial", "2", "--wandb", "disabled", "--out", "res",
            "--name", "d"]
    proc = subprocess.Popen(cmd(*argv), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(rows(run_dir)) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # driver, its Ray and the workers: a crash
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_new_ray(before)
    done = rows(run_dir)
    assert 1 <= len(done) < 4, "kill the driver mid-sweep"
    stamps = {t: (r["finished_at"], (run_dir / "trials" / t / "row.json").stat().st_mtime_ns)
              for t, r in done.items()}
    # readable at this moment: a refreshed trials.parquet (pending rows) or none yet
    if (run_dir / "trials.parquet").exists():
        assert len(pd.read_parquet(run_dir / "trials.parquet")) == 4

    p = run("--out", "res", "--resume", "d", cwd=tmp_path)
    assert f"{len(done)} trial(s) already finished, {4 - len(done)} to run" in p.stdout
    assert "4 trials: 4 completed" in p.stdout
    after = rows(run_dir)
    for t, (finished_at, mtime) in stamps.items():  # not recomputed
        assert after[t]["finished_at"] == finished_at
        assert (run_dir / "trials" / t / "row.json").stat().st_mtime_ns == mtime
        assert after[t]["attempts"] == 1
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert sorted(trials.trial_id) == sorted(after) and set(trials.status) == {"completed"}
    spec = json.loads((run_dir / "spec.json").read_text())
    assert [i["kind"] for i in spec["invocations"]] == ["start", "resume"]


def test_tune_lr_per_cell_then_train_every_seed(tmp_path):
    run_dir = tmp_path / "res" / "t"
    p = run(*SMALL, "--residual", "both", "--epochs", "2", "--seeds", "2", "--tune", "lr",
            "--samples", "4", "--wandb", "offline", "--out", "res", "--name", "t",
            cwd=tmp_path)
    assert "tuning lr per cell: 2 cells x 4 samples" in p.stdout
    # actors that end (pruned samples, the end of each Tuner) leave no tracebacks or
    # warnings behind: not wandb's lost service connection, not Tune's closed log files
    for noise in ("Traceback", "ConnectionResetError", "ValueError when calling"):
        assert noise not in p.stderr, p.stderr[-3000:]
    hist = pd.read_parquet(run_dir / "tuning.parquet")
    assert sorted(hist.cell.unique()) == ["mlp-4-plain", "mlp-4-residual"]
    assert hist.groupby("cell").size().tolist() == [4, 4]  # its own search per cell
    # one progress line per ended sample, as training trials get
    lines = re.findall(r"^tuning (mlp-4-\w+) sample (\d)/4 \(lr=[0-9.e-]+\): (.+)$",
                       p.stdout, re.M)
    assert sorted((c, int(n)) for c, n, _ in lines) == \
        [(c, n) for c in ("mlp-4-plain", "mlp-4-residual") for n in range(1, 5)], p.stdout
    assert all(w.startswith(("val acc", "pruned after epoch", "diverged")) for *_, w in lines)
    assert hist.lr.between(1e-3, 1.0).all()
    assert set(hist.state) <= {"COMPLETE", "PRUNED", "FAIL"}
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    for cell, g in trials.groupby(trials.trial_id.str.rsplit("-s", n=1).str[0]):
        h = hist[hist.cell == cell]
        best = h[h.state == "COMPLETE"].sort_values(["value", "number"],
                                                    ascending=[False, True]).iloc[0]
        assert h.selected.sum() == 1 and h[h.selected].number.item() == best.number
        assert g.lr.nunique() == 1 and g.lr.iloc[0] == pytest.approx(best.lr)  # every seed
        assert set(g.hp_source) == {"tuned"}
        assert set(g.seed) == {0, 1}
    assert trials.weight_decay.eq(5e-4).all()  # not tuned: the fixed value


def finished_samples(run_dir) -> dict:
    """{cell: {sample number: (state, status, lr, value)}} of the finished tuning samples
    (status: how the sample ended; None for one cut short by an interrupt), read
    from the sweep's Optuna journal (the driver may be writing it meanwhile)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    path = run_dir / "tuning" / "optuna.journal"
    if not path.exists():
        return {}
    storage = JournalStorage(JournalFileBackend(str(path)))
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out[summary.study_name] = {t.number: (t.state.name, t.user_attrs.get("status"),
                                              t.params.get("lr"), t.value)
                                   for t in study.trials if t.state.is_finished()}
    return out


def test_ctrl_c_during_tuning_then_resume_keeps_the_finished_samples(tmp_path):
    """Ctrl-C while the per-cell searches still have samples to run: exit 130 with the
    --resume command, no training on a partial selection; --resume finishes the searches
    without rerunning a finished sample, then trains every seed on the selection."""
    run_dir = tmp_path / "res" / "i"
    before = ray_pids()
    argv = [*SMALL, "--residual", "both", "--epochs", "3", "--subset", "1500", "--seeds", "2",
            "--tune", "lr", "--samples", "6", "--cpus-per-trial", "1", "--wandb", "disabled",
            "--out", "res", "--name", "i"]
    proc = subprocess.Popen(cmd(*argv), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while (sum(map(len, finished_samples(run_dir).values())) < 1
               and time.time() < deadline and proc.poll() is None):
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_new_ray(before)
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    assert ("interrupted: the per-cell search is not finished; continue with python sweep.py"
            " --out res --resume i") in err
    done = finished_samples(run_dir)
    n_done = sum(map(len, done.values()))
    assert 1 <= n_done < 12, "interrupt the searches while samples are left"
    assert not (run_dir / "tuning" / "selected.json").exists()
    assert not list((run_dir / "trials").glob("*/row.json")), "trained on a partial search"
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) == {"pending"}
    timing = json.loads((run_dir / "spec.json").read_text())["invocations"][0]["timing"]
    assert timing["connected_at"] <= timing["tuning_started_at"] <= timing["tuning_ended_at"]
    assert "run_started_at" not in timing  # interrupted before the trials' run

    p = run("--out", "res", "--resume", "i", cwd=tmp_path)
    assert "4 trials: 4 completed" in p.stdout
    after = finished_samples(run_dir)
    for cell, samples in done.items():
        for number, record in samples.items():  # kept as they were, not rerun
            assert after[cell][number] == record
    for cell, samples in after.items():
        ran = [n for n, (_, status, _, _) in samples.items() if status]
        assert len(ran) == 6, (cell, samples)  # each cell's full search, nothing extra
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert set(trials.status) == {"completed"} and set(trials.hp_source) == {"tuned"}
    spec = json.loads((run_dir / "spec.json").read_text())
    assert [i["kind"] for i in spec["invocations"]] == ["start", "resume"]
    timing = spec["invocations"][1]["timing"]
    assert timing["tuning_ended_at"] <= timing["run_started_at"] <= timing["run_ended_at"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_cluster_with_address_places_trials_on_both_nodes(tmp_path):
    """`ray start --head` + a second `ray start --address`, 1 CPU each, loopback only,
    token authentication with a token file of the test's own; stopped afterwards."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    temp = f"/tmp/rt{os.getpid()}"
    before = ray_pids()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
              "--disable-usage-stats"]
    try:
        subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp,
                        "--include-dashboard", "false", *common], env=env, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        # ~3 s per trial: one node's reused actor cannot finish all 4 before the other
        # node's worker has started (~5 s cold), so both nodes must run trials
        p = subprocess.run(cmd(*SMALL, "--depths", "4,6", "--residual", "both", "--epochs", "12",
                               "--subset", "1500", "--cpus-per-trial", "1", "--wandb",
                               "disabled", "--address", f"127.0.0.1:{port}", "--out", "res",
                               "--name", "c"),
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "on 2 node(s)" in p.stdout and "4 trials: 4 completed" in p.stdout
        trials = pd.read_parquet(tmp_path / "res" / "c" / "trials.parquet")
        assert trials.node_id.nunique() == 2  # both nodes ran trials
    finally:
        kill_new_ray(before)  # this test's two nodes only, never `ray stop --force`
    assert not ray_pids() - before
