"""A sweep's orchestration (``ablations.orchestrate``) without Ray: the cluster and the
runner are replaced at their seams (the functions of ``ablations.cluster`` and
``ablations.runner``) and the probe trials run in this process. Start, interruption,
resume, errored groups, retry and bad input, as ``sweep.py`` drives them."""
import dataclasses
import json

import pandas as pd
import pytest

from ablations import arguments, cluster, orchestrate, runner
from ablations.trial import run_group


@pytest.fixture
def ray_calls(monkeypatch):
    """Every Ray-facing function of the cluster replaced; returns what was called."""
    calls = []
    monkeypatch.setattr(cluster, "plan_local", lambda spec, units: False)
    monkeypatch.setattr(cluster, "connect",
                        lambda address, prewarm=False: calls.append("connect"))
    monkeypatch.setattr(cluster, "disconnect", lambda: calls.append("disconnect"))
    monkeypatch.setattr(cluster, "resolve_resources", lambda spec, units: dataclasses.replace(
        spec, cpus_per_trial=1, gpus_per_trial=0.0))
    monkeypatch.setattr(cluster, "cluster_info",
                        lambda: {"nodes": 1, "resources": {"CPU": 2.0}})
    return calls


def in_process(monkeypatch, groups_to_run=None, errors=None):
    """``runner.run_groups`` as this process: the first ``groups_to_run`` groups run (all
    when None: fewer is a Ctrl-C), then the groups of ``errors`` fail (by index)."""
    seen = []

    def run_groups(groups, spec, run_dir, experiment, on_trial_end=None, progress=None):
        seen.append([[t.trial_id for t in g] for g in groups])
        for i, g in enumerate(groups[:groups_to_run]):
            if i not in (errors or {}):
                run_group(g, spec, run_dir)
                on_trial_end()
        return dict(errors or {})
    monkeypatch.setattr(runner, "run_groups", run_groups)
    return seen


def sweep(argv):
    parser = arguments.build_parser()
    return orchestrate.run(parser, parser.parse_args(argv), argv, {"started_at": 0.0})


def probe(tmp_path, *extra):
    return ["--families", "mlp", "--depths", "3,4", "--mode", "probe", "--seeds", "2",
            "--out", str(tmp_path), "--wandb", "disabled", *extra]


def invocations(run_dir):
    return [i["kind"] for i in json.loads((run_dir / "spec.json").read_text())["invocations"]]


def test_a_sweep_runs_its_plan_and_leaves_ray(tmp_path, monkeypatch, ray_calls, capsys):
    seen = in_process(monkeypatch)
    out = sweep(probe(tmp_path, "--name", "p"))
    assert out.finished and out.code == 0 and out.error is None
    assert out.counts == {"completed": 8, "diverged": 0, "error": 0} and out.trials == 8
    assert len(seen[0]) == 2  # one Tune trial per probe cell, its seeds and variants together
    rows = pd.read_parquet(tmp_path / "p" / "trials.parquet")
    assert len(rows) == 8 and set(rows["status"]) == {"completed"}
    assert invocations(tmp_path / "p") == ["start"]
    assert ray_calls[0] == "connect" and ray_calls[-1] == "disconnect"
    printed = capsys.readouterr().out
    assert "W&B: disabled" in printed and "resources: 1 CPU + 0 GPU per trial" in printed


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch, ray_calls,
                                                        capsys):
    in_process(monkeypatch, groups_to_run=1)
    out = sweep(probe(tmp_path, "--name", "p"))
    assert out.code == 130 and not out.finished
    assert "continue with python sweep.py --out" in capsys.readouterr().err
    rows = pd.read_parquet(tmp_path / "p" / "trials.parquet")
    assert sorted(rows["status"].value_counts().items()) == [("completed", 4), ("pending", 4)]
    seen = in_process(monkeypatch)
    out = sweep(["--resume", "p", "--out", str(tmp_path)])
    assert out.code == 0 and out.counts["completed"] == 8
    assert [len(g) for g in seen[0]] == [4]  # only the unfinished cell runs again
    assert "4 trial(s) already finished, 4 to run" in capsys.readouterr().out
    assert invocations(tmp_path / "p") == ["start", "resume"]


def test_a_failed_group_is_error_rows_and_retry_failed_reruns_it(tmp_path, monkeypatch,
                                                                 ray_calls):
    in_process(monkeypatch, errors={1: "Traceback: boom"})
    out = sweep(probe(tmp_path, "--name", "p"))
    assert out.finished and out.code == 1 and out.counts["error"] == 4
    rows = pd.read_parquet(tmp_path / "p" / "trials.parquet")
    assert set(rows.loc[rows["status"] == "error", "error"]) == {"Traceback: boom"}
    seen = in_process(monkeypatch)
    out = sweep(["--retry-failed", "p", "--out", str(tmp_path)])
    assert out.code == 0 and out.counts == {"completed": 8, "diverged": 0, "error": 0}
    assert [len(g) for g in seen[0]] == [4]
    assert invocations(tmp_path / "p") == ["start", "retry-failed"]


def test_bad_input_is_an_error_before_ray_and_before_any_write(tmp_path, monkeypatch,
                                                               ray_calls):
    in_process(monkeypatch)
    out = sweep(probe(tmp_path, "--name", "p", "--depths", "1"))
    assert out.code == 2 and "depth 1 is too small" in out.error
    assert "connect" not in ray_calls and not (tmp_path / "p").exists()
    sweep(probe(tmp_path, "--name", "p"))
    out = sweep(["--resume", "p", "--out", str(tmp_path), "--seeds", "3"])
    assert out.code == 2 and "--seeds was 2, now 3" in out.error
