"""W&B tracking without a server: modes, credentials, offline runs read back from disk,
and outages: a server that never answers, refuses, or answers but cannot start a run.

Every test runs with HOME, NETRC, the wandb config/cache/data folders and the
working directory in ``tmp_path`` and no ``WANDB_*`` or proxy variable from outside,
so the user's credentials and settings are never read or written and every request
goes to loopback (a W&B "server" here is a socket or a tiny HTTP server on
127.0.0.1; keys are fake). wandb is torn down after each test (its service keeps
the environment it started with).
"""
import http.server
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from ablations import tracking, wandb_log, wandb_mode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("WANDB_") or key == "NETRC" or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key, sub in [("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / sub))
    for key, value in tracking.QUIET_ENV.items():  # set by trackers: restored after the test
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    yield home
    if "wandb" in sys.modules:
        import wandb
        wandb.teardown()


def write_netrc(path, machine, password="k" * 40):
    path.write_text(f"machine {machine}\n  login user\n  password {password}\n")
    path.chmod(0o600)


FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex digits, valid nowhere


class Server:
    """A W&B "server" on loopback that answers every request with ``status``: enough for
    a reachability check, never enough for wandb.init."""

    def __init__(self, status=503):
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def answering(monkeypatch):
    server = Server()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    yield server
    server.close()


@pytest.fixture
def silent_server(monkeypatch):
    """Accepts connections (the kernel does, from the backlog) and never says a word:
    what a server behind a dead route looks like to a client."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        monkeypatch.setenv("WANDB_BASE_URL", url)
        yield url


@pytest.fixture
def refusing(monkeypatch):
    with socket.socket() as s:  # a local port nobody listens on: refused, no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    return url


# ---------------------------------------------------------------- modes and credentials

def test_auto_is_offline_without_credentials(env):
    assert not wandb_mode.has_credentials()
    mode, why = wandb_mode.resolve_mode("auto", "res/a")
    assert mode == "offline" and "no W&B credentials" in why
    assert "wandb sync res/a/wandb/offline-run-*" in why
    for mode in ("offline", "disabled"):
        assert wandb_mode.resolve_mode(mode).mode == mode
    # forced online without a key: tracking degrades, it does not stop the sweep
    mode, why = wandb_mode.resolve_mode("online")
    assert mode == "offline" and why.startswith("--wandb online but no W&B credentials")


def test_auto_is_online_with_an_api_key_and_a_server_that_answers(env, monkeypatch,
                                                                  answering):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_mode.has_credentials()
    assert wandb_mode.resolve_mode("auto") == ("online",
                                               f"credentials found and {answering.url} answers")
    assert wandb_mode.resolve_mode("online").mode == "online"
    monkeypatch.setenv("WANDB_API_KEY", "  ")
    assert wandb_mode.resolve_mode("auto").mode == "offline"


def test_auto_is_offline_when_the_server_never_answers(env, monkeypatch, silent_server,
                                                       capsys):
    """The outage that made every trial fail: a key, and no answer from the server."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    t0 = time.perf_counter()
    mode, why = wandb_mode.resolve_mode("auto", "res/a")
    seconds = time.perf_counter() - t0
    assert mode == "offline"
    assert why == (f"credentials found, but no answer from {silent_server} within 3 s; "
                   "upload later with: wandb sync res/a/wandb/offline-run-*")
    assert 2.5 < seconds < 6  # the bounded wait, not wandb's 90 s init timeout
    out = capsys.readouterr()
    assert FAKE_KEY not in why + out.out + out.err


def test_auto_is_offline_at_once_when_the_server_refuses(env, monkeypatch, refusing):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    t0 = time.perf_counter()
    mode, why = wandb_mode.resolve_mode("auto")
    assert mode == "offline" and time.perf_counter() - t0 < 2
    assert f"no answer from {refusing} (Connection refused)" in why


def test_server_check_counts_any_http_answer(env):
    server = Server(status=404)  # an API root need not say 200
    try:
        assert wandb_mode.server_problem(server.url) is None
    finally:
        server.close()
    assert "no answer" in wandb_mode.server_problem("http://127.0.0.1:1", timeout=1)


def test_netrc_entry_for_the_wandb_host_is_detected(env, tmp_path, monkeypatch):
    write_netrc(env / ".netrc", "api.wandb.ai")  # ~/.netrc
    assert wandb_mode.has_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # another host
    assert not wandb_mode.has_credentials()
    other = tmp_path / "other-netrc"
    write_netrc(other, "wandb.example.org")
    monkeypatch.setenv("NETRC", str(other))
    assert wandb_mode.has_credentials()
    other.write_text("default login user password secret\n")  # not a W&B entry
    assert not wandb_mode.has_credentials()
    other.write_text("machine wandb.example.org login user password\n")  # no key
    assert not wandb_mode.has_credentials()


def test_invalid_mode_names_the_choices(env, tmp_path):
    with pytest.raises(ValueError, match="auto, online, offline, disabled"):
        wandb_mode.resolve_mode("cloud")
    with pytest.raises(ValueError, match="auto, online, offline, disabled"):
        tracking.TrialTracker("cloud", str(tmp_path), "g", "t", {})


def test_online_without_credentials_logs_offline_with_a_warning(env, tmp_path, capsys):
    t = tracking.TrialTracker("online", str(tmp_path / "run"), "g", "t", {"depth": 2})
    assert t.mode == "offline" and t.url is None
    t.log_epoch({"epoch": 1, "loss": 0.5})
    t.finish({"status": "completed"})
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: W&B: t: no W&B credentials; logging offline")
    run = wandb_log.read_offline_run(t.run_path)
    assert run["history"][0]["loss"] == 0.5 and run["summary"]["status"] == "completed"


def test_run_id_is_stable_short_and_distinct():
    a = tracking.run_id("sweep-1", "resnet-8-on-s0")
    assert a == tracking.run_id("sweep-1", "resnet-8-on-s0") and len(a) == 16
    assert set(a) <= set("0123456789abcdef")
    assert a != tracking.run_id("sweep-2", "resnet-8-on-s0")
    assert a != tracking.run_id("sweep-1", "resnet-8-on-s1")


# ---------------------------------------------------------------- disabled

def test_disabled_imports_nothing_and_writes_nothing(tmp_path):
    code = (
        "import json, sys\n"
        "from ablations import tracking\n"
        "t = tracking.TrialTracker('disabled', 'run', 'g', 't', {'depth': 4})\n"
        "t.log_epoch({'epoch': 1, 'loss': 0.5})\n"
        "t.log_layers(object())\n"
        "t.finish({'status': 'completed'})\n"
        "with tracking.TrialTracker('disabled', 'run', 'g', 'u', {}) as u:\n"
        "    pass\n"
        "fig = tracking.log_figures('disabled', 'run', 'g', ['missing.png'])\n"
        "print(json.dumps([t.url, t.run_path, fig, 'wandb' in sys.modules,\n"
        "                  tracking.sync_command('run')]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=ROOT, HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [None, None, None, False, None]
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- offline runs

def trial_config(seed):
    return {"family": "resnet", "model": "resnet", "depth": 8, "residual": "on",
            "seed": seed, "lr": 0.05, "milestones": [2], "hp_source": "fixed"}


def epoch_rows(seed):
    rows = [{"epoch": e, "train_loss": 2.0 / e + seed, "val_acc": 0.25 * e, "lr": 0.05,
             "trial_id": f"resnet-8-on-s{seed}", "note": None} for e in (1, 2, 3)]
    if seed == 1:
        rows[2]["val_loss"] = float("nan")  # a diverged value is logged as NaN
    return rows


def layers_frame(seed):
    return pd.DataFrame({
        "trial_id": f"resnet-8-on-s{seed}", "layer": ["stem", "block1", "stem", "block1"],
        "layer_index": [0, 1, 0, 1], "stat": "grad_norm", "value": [0.5, 0.25, 0.4, 0.2],
        "phase": "train", "step": [0, 0, 2, 2], "epoch": [1, 1, 2, 2]})


def test_offline_trials_in_one_process_are_read_back_from_disk(env, tmp_path):
    run_dir = tmp_path / "results" / "sweep-a"
    trackers, seconds = {}, []
    for seed in (0, 1):
        name = f"resnet-8-on-s{seed}"
        t0 = time.perf_counter()
        t = tracking.TrialTracker("offline", str(run_dir), "sweep-a", name, trial_config(seed))
        seconds.append(time.perf_counter() - t0)
        for row in epoch_rows(seed):
            t.log_epoch(row)
        t.log_layers(layers_frame(seed))
        t.finish({"status": "completed" if seed == 0 else "diverged", "best_val_acc": 0.75})
        t.finish({"status": "overwritten"})  # idempotent: ignored
        assert t.url is None
        trackers[name] = t
    print(f"wandb.init seconds (first, second): {seconds[0]:.2f}, {seconds[1]:.2f}")

    dirs = tracking.offline_run_dirs(run_dir)
    assert len(dirs) == 2
    assert sorted(str(d) for d in dirs) == sorted(t.run_path for t in trackers.values())
    cmd = tracking.sync_command(run_dir)
    assert cmd == f"wandb sync {run_dir / 'wandb'}/offline-run-*"
    assert tracking.sync_command(tmp_path / "elsewhere") is None

    for seed, (name, t) in enumerate(trackers.items()):
        run = wandb_log.read_offline_run(t.run_path)
        assert (run["id"], run["name"], run["group"]) == \
            (tracking.run_id("sweep-a", name), name, "sweep-a")
        assert (run["project"], run["job_type"], run["exit_code"]) == ("resablate", "trial", 0)
        assert run["config"] == trial_config(seed)
        epochs = [r for r in run["history"] if "epoch" in r]
        assert [r["_step"] for r in epochs] == [1, 2, 3]
        for got, logged in zip(epochs, epoch_rows(seed)):
            for key in ("epoch", "train_loss", "val_acc", "lr"):
                assert got[key] == logged[key], (name, key)
            assert "trial_id" not in got and "note" not in got  # non-numeric: skipped
        assert ("val_loss" in epochs[2]) == (seed == 1)
        if seed == 1:
            assert math.isnan(epochs[2]["val_loss"])
        table = epochs[2]["layers"]  # logged at the last epoch's step
        assert table["_type"] == "table-file" and table["nrows"] == 4
        with open(os.path.join(t.run_path, "files", table["path"])) as f:
            stored = json.load(f)
        frame = layers_frame(seed)
        assert stored["columns"] == list(frame.columns)
        assert [r[stored["columns"].index("value")] for r in stored["data"]] == \
            list(frame["value"])
        summary = run["summary"]
        assert summary["status"] == ("completed", "diverged")[seed]
        assert summary["best_val_acc"] == 0.75 and summary["train_loss"] == 2.0 / 3 + seed
        assert (summary["layers_rows"], summary["layers_rows_logged"]) == (4, 4)


def test_an_exception_in_the_block_finishes_the_run_as_failed(env, tmp_path):
    with pytest.raises(KeyError):
        with tracking.TrialTracker("offline", str(tmp_path), "g", "t", {"depth": 2}) as t:
            t.log_epoch({"epoch": 1, "train_loss": 1.5})
            raise KeyError("boom")
    run = wandb_log.read_offline_run(t.run_path)
    assert run["exit_code"] == 1 and run["summary"]["status"] == "error"
    assert run["history"][0]["train_loss"] == 1.5


def test_a_new_tracker_finishes_an_unfinished_one_as_abandoned(env, tmp_path):
    a = tracking.TrialTracker("offline", str(tmp_path), "g", "a", {})
    a.log_epoch({"epoch": 1, "loss": 1.0})
    b = tracking.TrialTracker("offline", str(tmp_path), "g", "b", {})
    a.log_epoch({"epoch": 2, "loss": 0.5})  # ignored, no error
    a.finish({"status": "completed"})
    b.log_epoch({"epoch": 1, "loss": 2.0})
    b.finish({"status": "completed"})
    got = {r["name"]: (r["exit_code"], r["summary"]["status"], [h["loss"] for h in r["history"]])
           for r in map(wandb_log.read_offline_run, tracking.offline_run_dirs(tmp_path))}
    assert got == {"a": (1, "abandoned", [1.0]), "b": (0, "completed", [2.0])}


def test_long_runs_span_log_blocks_and_read_back_exactly(env, tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": e / 1000, "images_per_s": 1e4 + e}
            for e in range(1, 301)]
    with tracking.TrialTracker("offline", str(tmp_path), "g", "long", {}) as t:
        for row in rows:
            t.log_epoch(row)
        t.finish({"status": "completed"})
    (log,) = [p for p in os.listdir(t.run_path) if p.endswith(".wandb")]
    assert os.path.getsize(os.path.join(t.run_path, log)) > 2 * 32768  # records cross blocks
    history = wandb_log.read_offline_run(t.run_path)["history"]
    assert [{k: r[k] for k in rows[0]} for r in history] == rows


def test_log_figures_writes_an_analysis_run(env, tmp_path):
    from PIL import Image
    png = tmp_path / "fig" / "depth_vs_acc.png"
    png.parent.mkdir()
    Image.new("RGB", (6, 4), (200, 30, 30)).save(png)
    run_dir = tmp_path / "results"
    assert tracking.log_figures("disabled", str(run_dir), "sweep-a", [str(png)]) is None
    assert not run_dir.exists()
    path = tracking.log_figures("offline", str(run_dir), "sweep-a", [str(png)],
                                {"trials": 12, "status": "completed"})
    assert [str(d) for d in tracking.offline_run_dirs(run_dir)] == [path]
    run = wandb_log.read_offline_run(path)
    assert (run["name"], run["group"], run["job_type"]) == \
        ("sweep-a-figures", "sweep-a", "analysis")
    image = run["history"][0]["depth_vs_acc"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (6, 4)
    assert os.path.isfile(os.path.join(path, "files", image["path"]))
    assert run["summary"]["trials"] == 12 and run["summary"]["figures"] == 1


def read_runs(run_dir):
    return {r["name"]: r for r in map(wandb_log.read_offline_run,
                                      tracking.offline_run_dirs(run_dir))}


def test_online_run_that_cannot_start_falls_back_to_offline(env, tmp_path, monkeypatch,
                                                            answering, capsys):
    """The server answers (the reachability check passes) but wandb.init fails: the
    trial's tracker logs offline instead, within the init timeout, and never raises."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    t0 = time.perf_counter()
    t = tracking.TrialTracker("online", str(tmp_path / "run"), "g", "mlp-4-plain-s0",
                              {"depth": 4})
    assert time.perf_counter() - t0 < 30
    assert t.mode == "offline" and t.url is None
    for row in epoch_rows(0):
        t.log_epoch(row)
    t.log_layers(layers_frame(0))
    t.finish({"status": "completed"})
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith("warning: W&B: mlp-4-plain-s0: its online run could not start "
                           "(CommError: ")  # wandb's own words
    assert "logging offline instead (upload later with: wandb sync " in line
    assert FAKE_KEY not in err
    run = read_runs(tmp_path / "run")["mlp-4-plain-s0"]
    assert run["id"] == tracking.run_id("g", "mlp-4-plain-s0")  # sync continues that run
    assert [h["train_loss"] for h in run["history"] if "train_loss" in h] == \
        [r["train_loss"] for r in epoch_rows(0)]
    assert run["summary"]["status"] == "completed" and run["exit_code"] == 0


def test_online_run_against_a_silent_server_goes_offline_in_seconds(env, tmp_path,
                                                                    monkeypatch,
                                                                    silent_server, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    t0 = time.perf_counter()
    t = tracking.TrialTracker("online", str(tmp_path / "run"), "g", "t", {})
    assert time.perf_counter() - t0 < 10  # 3 s check + an offline start, not 30 s init
    assert t.mode == "offline"
    t.finish({"status": "completed"})
    assert f"no answer from {silent_server} within 3 s" in capsys.readouterr().err


class DyingRun:
    """Stands in for an online run whose service dies after ``lives`` calls."""

    def __init__(self, lives):
        self.lives, self.url, self.finished = lives, "https://wandb.example/r", None
        self.settings = type("S", (), {"sync_dir": "/nonexistent/run-x"})()
        self.summary = self

    def _call(self):
        self.lives -= 1
        if self.lives < 0:
            raise ConnectionResetError("[Errno 104] Connection reset by peer")

    def log(self, *args, **kwargs):
        self._call()

    def update(self, values):
        self._call()

    def finish(self, exit_code=0):
        self.finished = exit_code
        self._call()


def test_a_run_that_dies_mid_way_continues_offline_with_everything(env, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(tracking, "server_problem", lambda *a, **k: None)
    real_start, dying = tracking._start_run, DyingRun(lives=2)
    monkeypatch.setattr(tracking, "_start_run", lambda mode, *a, **k:
                        dying if mode == "online" else real_start(mode, *a, **k))
    t = tracking.TrialTracker("online", str(tmp_path), "g", "t", {"depth": 4})
    assert (t.mode, t.url) == ("online", "https://wandb.example/r")
    for row in epoch_rows(0):  # the third call fails
        t.log_epoch(row)
    assert (t.mode, t.url) == ("offline", None) and dying.finished == 1
    t.log_layers(layers_frame(0))
    t.finish({"status": "completed"})
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: W&B: t: its online run failed (ConnectionResetError: "
                           "[Errno 104] Connection reset by peer); continuing in an offline "
                           "run with the same id")
    run = read_runs(tmp_path)["t"]
    assert [h["epoch"] for h in run["history"] if "epoch" in h] == [1, 2, 3]  # replayed
    assert run["summary"]["status"] == "completed"
    assert run["summary"]["layers_rows"] == 4


def test_a_failed_trials_run_losing_wandb_core_at_its_end_is_quiet(env, tmp_path,
                                                                  monkeypatch, capsys):
    """A pruned tuning sample whose actor Ray ends: wandb-core (the actor's child) is
    killed while the stopped trial finishes its run as failed. The lost connection
    prints nothing and starts no replacement run (the CI flake of
    test_tune_lr_per_cell_then_train_every_seed); a trial that completes still warns."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(tracking, "server_problem", lambda *a, **k: None)
    started = []

    def start(mode, *a, **k):
        started.append(mode)
        return DyingRun(lives=1)

    monkeypatch.setattr(tracking, "_start_run", start)
    t = tracking.TrialTracker("online", str(tmp_path), "g", "pruned", {"depth": 4})
    t.log_epoch(epoch_rows(0)[0])  # its one good call
    t.finish({"status": "error"}, failed=True)  # the summary and the finish both fail
    assert capsys.readouterr().err == "" and started == ["online"]
    t = tracking.TrialTracker("online", str(tmp_path), "g", "done", {"depth": 4})
    t.log_epoch(epoch_rows(0)[0])
    t.finish({"status": "completed"})
    assert "done: its online run failed (ConnectionResetError" in capsys.readouterr().err


def test_a_tracker_that_fails_twice_stops_tracking_and_never_raises(env, tmp_path,
                                                                   monkeypatch, capsys):
    t = tracking.TrialTracker("offline", str(tmp_path), "g", "t", {})

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    t.log_epoch({"epoch": 1, "loss": 1.0})
    monkeypatch.setattr(t._run, "log", broken)  # first failure: a new offline run
    t.log_epoch({"epoch": 2, "loss": 0.5})
    assert t.mode == "offline"
    monkeypatch.setattr(t._run, "log", broken)  # second: give up, quietly
    t.log_epoch({"epoch": 3, "loss": 0.25})
    t.log_layers(layers_frame(0))
    t.finish({"status": "completed"})
    assert t.mode == "disabled"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "failed again" in lines[1] and "not tracked from here" in lines[1]


def test_log_figures_failure_is_one_warning_not_an_exception(env, tmp_path, capsys):
    path = tracking.log_figures("offline", str(tmp_path / "res"), "sweep-a",
                                [str(tmp_path / "missing.png")])
    assert path is None
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: W&B: sweep-a-figures: figures not logged (")
    assert str(tmp_path / "res" / "figures") in line


def test_log_figures_in_an_outage_logs_offline(env, tmp_path, monkeypatch, refusing, capsys):
    from PIL import Image
    png = tmp_path / "fig.png"
    Image.new("RGB", (4, 4)).save(png)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    path = tracking.log_figures("online", str(tmp_path / "res"), "sweep-a", [str(png)])
    assert path is not None and wandb_log.read_offline_run(path)["summary"]["figures"] == 1
    assert "sweep-a-figures" in capsys.readouterr().err


# ---------------------------------------------------------------- helpers

def test_large_layer_tables_keep_evenly_spaced_steps():
    df = pd.DataFrame({"step": [s for s in range(100) for _ in range(30)], "value": 1.0})
    fit = tracking._fit_rows(df, 600)
    assert len(fit) <= 600 and fit.groupby("step").size().eq(30).all()
    assert {0, 99} <= set(fit["step"]) and fit["step"].nunique() == 20
    assert tracking._fit_rows(df, 5000) is df


def test_tables_are_typed_and_tolerate_mixed_columns():
    typed = tracking._table(pd.DataFrame({"layer": ["a", "b"], "value": [0.5, float("nan")]}))
    assert typed.columns == ["layer", "value"] and typed.data[0] == ["a", 0.5]
    mixed = tracking._table(pd.DataFrame({"layer": ["a", 3], "value": [0.5, 1.0]}))
    assert mixed.data == [["a", 0.5], [3, 1.0]]


def test_exit_hook_is_quiet_when_wandb_core_was_killed(monkeypatch):
    """Ray kills a finished actor's wandb-core before the exit hooks run; wandb.teardown
    then raises SystemExit(-9), which the hook must absorb (else a traceback is printed)."""
    import wandb

    def killed_service():
        raise SystemExit(-9)

    monkeypatch.setattr(wandb, "teardown", killed_service)
    tracking._teardown_quietly()  # raises SystemExit without the fix


def test_offline_run_dirs_skip_a_folder_without_a_run_log(tmp_path):
    """A killed attempt can leave an empty offline-run folder: it is not a run."""
    from ablations import tracking
    good = tmp_path / "wandb" / "offline-run-20260101_000001-abc"
    empty = tmp_path / "wandb" / "offline-run-20260101_000000-abc"
    for d in (good, empty):
        (d / "files").mkdir(parents=True)
    (good / "run-abc.wandb").write_bytes(b"x")
    assert tracking.offline_run_dirs(tmp_path) == [good]
