"""The sweep's W&B Report (analysis.wandb_report) and its publishing (analysis.wandb_publish).

Checked on the JSON viewspec the library would upload, with no server: the one GraphQL
query that serializing makes (the project's internal id) is answered by the test through
``project_lookup``; nothing else of the library is replaced. Publishing is checked where
it must give up (no credentials, no server, WANDB_MODE offline): at once, in one line,
without the key; a live W&B server cannot be reached from here.
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("wandb_workspaces")

import wandb_workspaces.reports.v2 as wr  # noqa: E402
from wandb_workspaces import expr  # noqa: E402

from ablations import factors as F  # noqa: E402
from ablations import spec as sweep_spec  # noqa: E402
from analysis import wandb_publish, wandb_report  # noqa: E402
from tests.analysis.strategies import results_frames, write_results_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex digits, valid nowhere
FINDING = "- mlp depth 8: residual minus plain test accuracy +12.0 pp over 2 seed(s)."
REPORT_MD = ("# resablate sweep s\n\n## Findings (residual minus plain, paired by seed)\n\n"
             f"{FINDING}\n\n## Spec\n\n- **name**: s\n")
FIGURES = ("degradation_vs_depth", "gradient_flow")


def make_folder(path: Path, family="mlp", depths=(4, 8), requested=None, tuning=False,
                figures=FIGURES, report=True, name="s") -> Path:
    """A train sweep's folder: trials/epochs.parquet in the project's columns, spec.json,
    figures/*.png (empty: only their stems matter), report.md, and tuning.parquet."""
    trials, epochs = [], []
    for depth in depths:
        for lv in F.variants(family, {"residual": ("plain", "residual"), **(requested or {})}):
            for seed in (0, 1):
                keys = {"trial_id": "-".join([family, str(depth), *F.id_parts(family, lv),
                                                     f"s{seed}"]),
                        "family": family, "model": family, "depth": depth, **F.columns(lv),
                        "seed": seed}
                acc = 0.5 + 0.1 * seed
                trials.append({**keys, "lr": 0.1, "weight_decay": 5e-4, "hp_source": "fixed",
                               "params": 1000, "status": "completed", "final_train_loss": 1.0,
                               "final_train_acc": acc, "final_val_acc": acc,
                               "final_test_acc": acc, "epochs_run": 2})
                epochs += [{**keys, "epoch": e, "train_loss": 1.5 / e, "train_acc": acc,
                            "val_loss": 1.0, "val_acc": acc, "test_loss": 1.0, "test_acc": acc,
                            "lr": 0.1, "epoch_seconds": 1.0, "train_images_per_s": 100.0}
                           for e in (1, 2)]
    write_results_folder({"trials": pd.DataFrame(trials), "epochs": pd.DataFrame(epochs)},
                         path, spec={"spec": {"name": name, "mode": "train",
                                              "tune": ["lr"] if tuning else []}},
                         features=False)
    for stem in figures:
        (path / "figures").mkdir(exist_ok=True)
        (path / "figures" / f"{stem}.png").write_bytes(b"")
    if report:
        (path / "report.md").write_text(REPORT_MD)
    if tuning:
        cells = pd.DataFrame(trials).drop_duplicates("depth")[["depth"]]
        rows = [{"cell": f"{family}-{d}-{v}", "family": family, "model": family, "depth": d,
                 "residual": v == "residual", "number": n, "value": 0.1 * n, "lr": 10.0 ** -n,
                 "state": "COMPLETE", "status": "completed", "selected": n == 2}
                for d in cells["depth"] for v in ("plain", "residual") for n in range(3)]
        pd.DataFrame(rows).to_parquet(path / "tuning.parquet", index=False)
    return path


def spec_of(folder, lookups=None) -> dict:
    """The viewspec of the folder's report for team/proj, lookups recorded."""
    def lookup(entity, project):
        (lookups if lookups is not None else []).append((entity, project))
        return "P1"
    return wandb_report.viewspec(wandb_report.build_report(folder, "team", "proj"), lookup)


def grids(spec: dict) -> dict[str, tuple[list, list]]:
    """{first run set's name: (run sets, panels)} of each panel grid."""
    out = {}
    for b in spec["spec"]["blocks"]:
        if b["type"] == "panel-grid":
            m = b["metadata"]
            out[m["runSets"][0]["name"]] = (m["runSets"],
                                            m["panelBankSectionConfig"]["panels"])
    return out


def leaves(runset: dict) -> list[tuple]:
    return [(f["key"]["section"], f["key"]["name"], f["op"], f["value"])
            for f in runset["filters"]["filters"]]


@pytest.mark.parametrize("tuning", [False, True])
def test_every_run_set_selects_the_sweeps_group_and_a_job_type(tmp_path, tuning):
    lookups = []
    spec = spec_of(make_folder(tmp_path, tuning=tuning), lookups)
    runsets = [rs for sets, _ in grids(spec).values() for rs in sets]
    jobs = {}
    for rs in runsets:
        found = leaves(rs)
        assert ("run", "group", "=", "s") in found, rs["name"]
        jobs[rs["name"]] = [v for s, k, op, v in found if k == "jobType"]
        assert rs["project"] == {"name": "proj", "entityName": "team", "id": "P1"}
    assert lookups == [("team", "proj")] * len(runsets)  # the one query, once per run set
    assert jobs["trials by cell"] == ["trial"] and jobs["figures"] == ["analysis"]
    assert jobs.get("tuning samples") == (["tune"] if tuning else None)


def test_a_wrong_filter_string_serializes_to_no_filter_and_is_refused():
    bad = wr.Runset(entity="", project="", name="x", filters="run.group == 's'")
    assert bad._to_model().filters["filters"] == []  # the pitfall: every run of the project
    with pytest.raises(ValueError, match="every run"):
        wandb_report.check_filter(bad, "s")


# Names as they reach ``--name``: any argv bytes but NUL, decoded as Python decodes argv
# (bytes that are not UTF-8 become lone surrogates), or text heavy in the characters the
# filter parser rewrites or quotes with; ``cli_accepts`` keeps those the sweep accepts.
TRICKY = "=<>!'\"\\()[]{},.:;#% \n\t\x7fé€😀"
NAMES = st.one_of(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
                  .map(os.fsdecode),
                  st.text(st.one_of(st.sampled_from(TRICKY), st.characters(
                      blacklist_characters="\0")), min_size=1, max_size=40),
                  st.just("Metric('Group') within_last 5 days"))


def cli_accepts(name: str) -> bool:
    """Whether the sweep's own validation (``ablations.spec.validate``) takes --name NAME."""
    try:
        sweep_spec.validate(sweep_spec.AblationSpec(families=("mlp",), depths=(4,),
                                                    out=str(ROOT / "no-such-dir"), name=name))
    except sweep_spec.SpecError:
        return False
    return True


@pytest.fixture(scope="module")
def any_name_folder(tmp_path_factory):
    """One folder with every kind of run set (tuning included); tests rename its sweep."""
    return make_folder(tmp_path_factory.mktemp("names") / "run", tuning=True)


def rename(folder: Path, name: str) -> Path:
    (folder / "spec.json").write_text(json.dumps(
        {"spec": {"name": name, "mode": "train", "tune": ["lr"]}}))
    return folder


def test_the_cli_accepts_names_the_filter_parser_would_rewrite():
    assert all(map(cli_accepts, ["lr=0.1", "bob's", 'a"b', "a<b", "x\\n", "a\nb"]))
    assert not any(map(cli_accepts, ["", ".", "..", "a/b"]))


@pytest.mark.parametrize("name", ["lr=0.1", "bob's", 'say "hi"', "a<b>c", "x\\y", "x\\n",
                                  "two\nlines", "Metric('x') within_last 5 days", "é 😀"])
def test_a_name_the_filter_parser_would_rewrite_still_selects_its_group(any_name_folder, name):
    sets = [rs for rss, _ in grids(spec_of(rename(any_name_folder, name))).values()
            for rs in rss]
    assert len(sets) == 6  # trials, plain, residual, trials by cell, figures, tuning samples
    assert all(("run", "group", "=", name) in leaves(rs) for rs in sets)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(name=NAMES)
@example(name="lr=0.1")
@example(name="bob's")
def test_every_name_the_cli_accepts_selects_exactly_its_group(any_name_folder, name):
    assume(cli_accepts(name))
    folder = rename(any_name_folder, name)
    try:
        name.encode()
    except UnicodeEncodeError:  # not UTF-8: W&B cannot hold it as a group; said, not built
        with pytest.raises(ValueError, match="not valid UTF-8"):
            wandb_report.build_report(folder, "team", "proj")
        return
    for runsets, _ in grids(spec_of(folder)).values():  # build_report checks each filter
        for rs in runsets:
            found = leaves(rs)
            assert [v for _, key, _, v in found if key == "group"] == [name]
            assert ("run", "jobType") in {(section, key) for section, key, _, _ in found}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_the_filter_string_parses_back_to_the_exact_values(name):
    parsed = expr.filters_tree_to_v2(expr.expr_to_filters(
        wandb_report.run_filter(name, "trial", residual=False)))["filters"]
    assert [(f["key"], f["op"], f["value"]) for f in parsed] == [
        ({"section": "run", "name": "group"}, "=", name),
        ({"section": "run", "name": "jobType"}, "=", "trial"),
        ({"section": "config", "name": "residual"}, "=", False)]


def test_cells_are_grouped_by_config_keys_of_the_factors_that_vary(tmp_path):
    plain = grids(spec_of(make_folder(tmp_path / "a")))["trials by cell"][0][0]
    assert plain["grouping"] == [{"section": "config", "name": "depth.value"},
                                 {"section": "config", "name": "residual.value"}]
    crossed = make_folder(tmp_path / "b", family="resnet", depths=(8, 20),
                          requested={"norm": ("batch", "none")})
    rs = grids(spec_of(crossed))["trials by cell"][0][0]
    assert rs["grouping"] == [{"section": "config", "name": f"{k}.value"}
                              for k in ("depth", "residual", "norm")]


def test_curves_per_varying_key_each_grouped_by_its_config_key(tmp_path):
    folder = make_folder(tmp_path, family="resnet", requested={"norm": ("batch", "none")},
                         depths=(8, 20))
    (runset,), panels = grids(spec_of(folder))["trials"]
    assert runset["grouping"] == []  # only the panel's grouping applies
    got = [(p["viewType"], p["config"]["metrics"], p["config"]["groupBy"],
            p["config"]["xAxis"], p["config"]["aggregate"]) for p in panels]
    assert got == [("Run History Line Plot", [y], f"{k}.value", "epoch", True)
                   for k in ("depth", "residual", "norm") for y in ("val_acc", "test_acc")]


def test_bare_group_by_name_would_be_a_run_attribute(tmp_path):
    bare = wr.LinePlot(y=["val_acc"], groupby="State")._to_model().config.group_by
    assert bare == "state"  # the run's state, not a config key
    panels = [p for _, ps in grids(spec_of(make_folder(tmp_path))).values() for p in ps]
    by = [p["config"]["groupBy"] for p in panels if "groupBy" in p["config"]]
    assert by and all(g.endswith(".value") for g in by)


def test_final_accuracy_against_depth_one_run_set_per_residual_level(tmp_path):
    runsets, (panel,) = grids(spec_of(make_folder(tmp_path)))["plain"]
    assert [rs["name"] for rs in runsets] == ["plain", "residual"]
    assert [("config", "residual", "=", False) in leaves(runsets[0]),
            ("config", "residual", "=", True) in leaves(runsets[1])] == [True, True]
    assert panel["viewType"] == "Scatter Plot"
    assert (panel["config"]["xAxis"], panel["config"]["yAxis"]) == (
        "config:depth.value", "summary:final_test_acc")


def test_runs_table_parallel_coordinates_and_comparer(tmp_path):
    (rs,), panels = grids(spec_of(make_folder(tmp_path)))["trials by cell"]
    factor_cols = [f"config:{k}.value" for k in F.names()]
    assert rs["runFeed"]["columnOrder"] == (
        ["run:displayName", "config:model.value", "config:depth.value", *factor_cols,
         "config:seed.value", "config:lr.value", "config:weight_decay.value",
         "config:hp_source.value"] + [f"summary:{m}" for m in wandb_report.TABLE_SUMMARY])
    assert rs["runFeed"]["lockColumns"] is True
    assert [p["viewType"] for p in panels] == ["Parallel Coordinates Plot", "Run Comparer"]
    assert [c["accessor"] for c in panels[0]["config"]["columns"]] == [
        "config:depth.value", "config:residual.value", "config:lr.value",
        "config:weight_decay.value", "summary:final_val_acc", "summary:final_test_acc"]


def test_figures_by_the_keys_they_are_logged_under(tmp_path):
    _, panels = grids(spec_of(make_folder(tmp_path / "a")))["figures"]
    assert [(p["viewType"], p["config"]["mediaKeys"]) for p in panels] == [
        ("Media Browser", [s]) for s in sorted(FIGURES)]
    assert "figures" not in grids(spec_of(make_folder(tmp_path / "b", figures=())))


def test_findings_are_the_reports_findings_section(tmp_path):
    def markdown(folder):
        return [b["content"] for b in spec_of(folder)["spec"]["blocks"]
                if b["type"] == "markdown-block"]
    (text,) = markdown(make_folder(tmp_path / "a"))
    assert text == f"**Findings (residual minus plain, paired by seed)**\n\n{FINDING}"
    (missing,) = markdown(make_folder(tmp_path / "b", report=False))
    assert "No findings" in missing and "report.md" in missing


def test_tuning_samples_have_their_own_grid(tmp_path):
    assert "tuning samples" not in grids(spec_of(make_folder(tmp_path / "a")))
    (rs,), panels = grids(spec_of(make_folder(tmp_path / "b", tuning=True)))["tuning samples"]
    kinds = [p["viewType"] for p in panels]
    assert kinds == ["Run History Line Plot", "Scatter Plot", "Parallel Coordinates Plot",
                     "Markdown Panel"]
    assert (panels[1]["config"]["xAxis"], panels[1]["config"]["yAxis"]) == (
        "config:lr.value", "summary:val_acc")
    table = panels[3]["config"]["value"]
    assert "| mlp-4-plain | 0.01 | 0.200 | 3 |" in table  # sample 2 selected of 3


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(frames=results_frames())
def test_any_results_folder_gives_a_filtered_report(tmp_path_factory, frames):
    folder = write_results_folder(frames, tmp_path_factory.mktemp("r"), features=False)
    spec = spec_of(folder)
    sets = grids(spec)
    for runsets, _ in sets.values():
        for rs in runsets:
            assert ("run", "group", "=", folder.name) in leaves(rs)
            assert all(k["section"] == "config" for k in rs["grouping"])
    trials = frames["trials"]
    probe = "probe_loss" in trials and "final_test_acc" not in trials
    assert ("trials by cell" in sets) == (not probe) and ("probe runs" in sets) == probe
    if not probe:
        keys = wandb_report.cell_keys(trials)
        assert [k["name"] for k in sets["trials by cell"][0][0]["grouping"]] == [
            f"{k}.value" for k in keys]


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network used")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_write_spec_needs_no_network_and_no_login(tmp_path, monkeypatch):
    no_network(monkeypatch)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key in ("WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    folder = make_folder(tmp_path)
    path = wandb_report.write_spec(folder)
    assert path == folder / "wandb_report.json"
    record = json.loads(path.read_text())
    assert (record["entity"], record["project"]) == ("<entity>", "resablate")
    assert record["url"] is None
    assert record["publish"].endswith("--wandb-report '<entity>/resablate'")
    ids = {rs["project"]["id"] for sets, _ in grids(record["viewspec"]).values() for rs in sets}
    assert ids == {wandb_report.PLACEHOLDER_ID}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".wandb_report")] == []


@pytest.fixture
def no_wandb_home(tmp_path, monkeypatch):
    """No credentials anywhere: no key, a HOME without netrc, a server that is not there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "config"))
    for key in ("WANDB_API_KEY", "WANDB_MODE", "NETRC", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    return tmp_path


@pytest.mark.parametrize("env, reason", [({}, "no W&B credentials"),
                                         ({"WANDB_API_KEY": FAKE_KEY}, "no answer from"),
                                         ({"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "offline"},
                                          "WANDB_MODE=offline")])
def test_publish_gives_up_at_once_in_one_line(no_wandb_home, monkeypatch, env, reason):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    folder = make_folder(no_wandb_home / "run")
    before = (folder / "spec.json").read_text()
    t0 = time.monotonic()
    url, message = wandb_publish.publish(folder, "team/proj")
    assert time.monotonic() - t0 < 5
    assert url is None and "\n" not in message and reason in message
    assert message.endswith(f"publish later with: python -m analysis {folder} "
                            "--wandb-report team/proj")
    assert FAKE_KEY not in message and (folder / "spec.json").read_text() == before


def test_publish_never_raises_on_a_bad_target(no_wandb_home):
    url, message = wandb_publish.publish(no_wandb_home, "no-slash")
    assert url is None and "ENTITY/PROJECT" in message


def test_publish_records_the_url_it_saved(no_wandb_home, monkeypatch):
    """The glue after a save (the save itself needs a live server): URL in spec.json and
    wandb_report.json, in the message, never the key."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(wandb_publish.tracking, "server_problem", lambda *a, **k: None)
    url = f"https://wandb.example/team/proj/reports/s--{FAKE_KEY[:4]}"

    class Saved:
        def save(self):
            self.url = url
            return self
    monkeypatch.setattr(wandb_publish, "build_report", lambda *a, **k: Saved())
    folder = make_folder(no_wandb_home / "run")
    got, message = wandb_publish.publish(folder, "team/proj")
    assert got == url and message == f"W&B report: {url} (no offline runs to sync)"
    assert json.loads((folder / "spec.json").read_text())["wandb_report_url"] == url
    assert json.loads((folder / "wandb_report.json").read_text())["url"] == url


def test_cli_publish_without_credentials_keeps_exit_code_and_key(no_wandb_home):
    folder = make_folder(no_wandb_home / "run")
    proc = subprocess.run([sys.executable, "-m", "analysis", str(folder), "--format", "png",
                           "--wandb-report", "team/proj"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "WANDB_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out[-1] == str(folder / "report.html") and str(folder / "wandb_report.json") in out
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("W&B report not published: no answer from http://127.0.0.1:9")
    assert FAKE_KEY not in proc.stdout + proc.stderr


def test_cli_rejects_a_target_that_is_not_entity_slash_project(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path), "--wandb-report",
                           "a/b/c"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "ENTITY/PROJECT" in proc.stderr and proc.stdout == ""


class Refusing(http.server.BaseHTTPRequestHandler):
    """A W&B host that answers every request with 401 (a key it does not know)."""

    def _refuse(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"errors": [{"message": "permission denied"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_cli_publish_to_a_server_that_refuses_the_key(no_wandb_home):
    """Past the quick checks (credentials, an answering server): the sync of a real
    offline run and the save are tried and refused (wandb sync exits 0 then: its ERROR
    line is what tells); the exit code, the one line and the key's absence hold."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = make_folder(no_wandb_home / "run")
    subprocess.run([sys.executable, "-c", (
        "import sys; from ablations.tracking import TrialTracker\n"
        "t = TrialTracker('offline', sys.argv[1], 's', 'mlp-4-plain-s0', {'depth': 4})\n"
        "t.log_epoch({'epoch': 1, 'val_acc': 0.5}); t.finish({'status': 'completed'})"),
        str(folder)], cwd=ROOT, check=True, timeout=120)
    try:
        env = {**os.environ, "WANDB_API_KEY": FAKE_KEY,
               "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_port}"}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "analysis", str(folder), "--format", "png",
                               "--wandb-report", "team/proj"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env=env)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("W&B report not published: ")
    assert "offline runs not synced: RuntimeError: `wandb sync`: ERROR" in line
    assert FAKE_KEY not in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 300
