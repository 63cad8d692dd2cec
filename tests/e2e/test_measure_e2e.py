"""End to end: measurements in the sweep's workers, then after the fact from the kept
weights with ``python -m ablations.measure``, both through Ray, in subprocesses."""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.e2e.test_sweep_e2e import ROOT, ray_pids, sweep


def measure(*argv, cwd):
    before = ray_pids()
    p = subprocess.run([sys.executable, "-m", "ablations.measure", *argv], capture_output=True,
                       text=True, cwd=cwd, timeout=600,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ray_pids() <= before, "ablations.measure left Ray processes running"
    return p


def fragments(run, name) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p)
            for p in sorted((run / "trials").glob(f"*/measure-{name}.parquet"))}


@pytest.mark.slow
def test_measure_in_the_worker_then_after_the_fact(tmp_path):
    p = sweep("--families", "mlp,resnet", "--depths", "4", "--residual", "both",
              "--dataset", "synthetic", "--subset", "200", "--epochs", "1", "--wandb", "disabled",
              "--measure", "signal", "--seeds", "1", "--out", "res", "--name", "m", cwd=tmp_path)
    run = tmp_path / "res" / "m"
    assert "measurements at the end of each trial: signal (init, final, cheap)" in p.stdout
    assert re.search(r"^weights: final\.pt of each completed trial \+ init\.pt \(measured at "
                     r"init: signal\) in res/m/weights: about [\d.]+ [KM]?B for 4 trial\(s\)",
                     p.stdout, re.M), p.stdout
    assert "4 trials: 4 completed, 0 diverged, 0 errored" in p.stdout
    trials = pd.read_parquet(run / "trials.parquet")
    assert trials["measure_seconds_signal"].gt(0).all() and trials["measure_errors"].isna().all()
    ids = set(trials.trial_id)
    for tid in ids:
        assert {f.name for f in (run / "weights" / tid).iterdir()} == {"init.pt", "final.pt"}
    in_trial = fragments(run, "signal")
    assert set(in_trial) == ids
    merged = pd.read_parquet(run / "measurements" / "signal.parquet")
    assert set(merged.trial_id) == ids and set(merged["when"]) == {"init", "final"}
    pd.testing.assert_frame_equal(
        merged, pd.concat([in_trial[t] for t in trials.trial_id], ignore_index=True))
    md = (run / "report.md").read_text()
    assert "## Measurements" in md and "### signal_ratio" in md

    # after the fact: lesion for the first time, signal again (--redo), one task per trial
    q = measure("res/m", "--measure", "lesion,signal", "--redo", cwd=tmp_path)
    assert "measuring 4 trial(s) of res/m: lesion (final); signal (init, final)" in q.stdout
    lines = [ln for ln in q.stdout.splitlines() if re.match(r"\[\d/4\] ", ln)]
    assert len(lines) == 4 and all("lesion" in ln and "signal" in ln for ln in lines), lines
    assert "done: 4 trial(s) measured, 0 with failures" in q.stdout
    assert q.stdout.rstrip().endswith("report: every item written"), q.stdout[-2000:]
    again = fragments(run, "signal")
    for tid in ids:  # the same rows in the worker and after the fact
        pd.testing.assert_frame_equal(again[tid], in_trial[tid], check_exact=True)
    lesion = pd.read_parquet(run / "measurements" / "lesion.parquet")
    assert set(lesion.trial_id) == ids and set(lesion["when"]) == {"final"}
    md = (run / "report.md").read_text()
    section = md[md.index("## Measurements"):]
    assert "- lesion: " in section and "### lesion_by_unit" in section
    assert (run / "figures" / "lesion_by_unit.png").exists()
    assert len(json.loads((run / "measurements" / "runs.json").read_text())) == 1

    # resumable: nothing is missing, so nothing runs (and Ray does not start)
    r = measure("res/m", "--measure", "lesion", cwd=tmp_path)
    assert "nothing to measure in res/m: every trial has lesion" in r.stdout
