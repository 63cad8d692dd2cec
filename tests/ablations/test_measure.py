"""Measurements in the worker and after the fact (ablations.measure_run): fragments keyed
by the trial's factors and ``when``, written before the trial's row; a measurement that
raises costs only itself; the same rows in-trial and post hoc (also with init.pt
rebuilt from the seed); merged into measurements/<name>.parquet, a damaged fragment
moved aside. No Ray here: the per-trial function is called directly."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablations import measure_run, measurements, results, weights
from ablations.measurements import Measurement
from ablations.plan import expand
from ablations.spec import resolve_measure, spec_from_dict
from ablations.train import run_train_trial
from tests.ablations.test_weights import tiny_spec, trial_of


def tiny(model, data, trial):
    """Logit sums of 8 test images, and 3 draws of the global RNG (the framework seeds
    it per trial, measurement and when, so they repeat after the fact)."""
    with torch.no_grad():
        out = model(data.test_x[:8]).float()
    return pd.DataFrame({"image": range(8), "logit_sum": out.sum(1).numpy(),
                         "noise": torch.rand(8).numpy()})


@pytest.fixture
def register(monkeypatch):
    """Register test measurements (the built-in ones are not loaded: _loaded=True)."""
    monkeypatch.setattr(measurements, "_loaded", True)
    added = []

    def add(name, fn=tiny, when=("init", "final"), **kw):
        measurements.register(Measurement(name, when, "cheap", fn, f"test {name}", **kw))
        added.append(name)
    yield add
    for name in added:
        measurements.unregister(name)


def fragment(spec, trial, name) -> pd.DataFrame:
    return pd.read_parquet(measure_run.fragment_path(spec.run_dir, trial.trial_id, name))


def test_fragments_are_keyed_and_written_before_the_row(tmp_path, register):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=("tiny", "late"))
    trial = trial_of(spec, "resnet")
    row_json = results.trial_dir(spec.run_dir, trial.trial_id) / "row.json"

    def late(model, data, trial):
        assert not row_json.exists() and not model.training
        return pd.DataFrame({"x": [1.0]})
    register("tiny")
    register("late", late, when=("final",))
    assert run_train_trial(trial, spec, spec.run_dir) == "completed"
    df = fragment(spec, trial, "tiny")
    keys = results.factor_columns()
    assert list(df.columns) == [*keys, "when", "image", "logit_sum", "noise"]
    assert list(df["when"]) == ["init"] * 8 + ["final"] * 8
    for k in keys:
        assert (df[k] == trial.factors()[k]).all(), k
    assert list(fragment(spec, trial, "late")["when"]) == ["final"]
    row = results.read_fragment_row(spec.run_dir, trial.trial_id)
    assert row["measure_seconds_tiny"] > 0 and row["measure_seconds_late"] > 0
    assert row["measure_errors"] is None
    # init measured with keep final: init.pt is kept for measuring again later
    assert weights.weights_path(spec.run_dir, trial.trial_id, "init").exists()


def test_a_raising_measurement_costs_only_itself(tmp_path, register, capsys):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=("boom", "tiny"))

    def boom(model, data, trial):
        raise ValueError("no such unit\nsecond line")
    register("boom", boom, when=("final",))
    register("tiny")
    trial = trial_of(spec, "mlp")
    assert run_train_trial(trial, spec, spec.run_dir) == "completed"
    row = results.read_fragment_row(spec.run_dir, trial.trial_id)
    assert row["status"] == "completed"
    assert row["measure_errors"] == "boom: ValueError: no such unit"
    assert not measure_run.fragment_path(spec.run_dir, trial.trial_id, "boom").exists()
    assert len(fragment(spec, trial, "tiny")) == 16
    err = [ln for ln in capsys.readouterr().err.splitlines() if "boom" in ln]
    assert len(err) == 1 and trial.trial_id in err[0] and "ValueError: no such unit" in err[0]


def test_a_diverged_trial_is_measured_at_init_only(tmp_path, register):
    spec = dataclasses.replace(tiny_spec(tmp_path, epochs=3), measure=("tiny", "fin"))
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, lr=1e12))
    register("tiny")
    register("fin", when=("final",))
    trial = trial_of(spec, "mlp")
    assert run_train_trial(trial, spec, spec.run_dir) == "diverged"
    assert set(fragment(spec, trial, "tiny")["when"]) == {"init"}
    assert not measure_run.fragment_path(spec.run_dir, trial.trial_id, "fin").exists()
    row = results.read_fragment_row(spec.run_dir, trial.trial_id)
    assert "measure_seconds_fin" not in row and row["measure_errors"] is None
    assert [p.name for p in weights.trial_weights_dir(spec.run_dir, trial.trial_id).iterdir()] \
        == ["init.pt"]


@pytest.mark.parametrize("family", ["mlp", "resnet"])
def test_in_trial_and_after_the_fact_give_the_same_rows(tmp_path, register, family):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=("tiny",))
    register("tiny")
    trial = trial_of(spec, family)
    run_train_trial(trial, spec, spec.run_dir)
    in_trial = fragment(spec, trial, "tiny")
    path = measure_run.fragment_path(spec.run_dir, trial.trial_id, "tiny")
    path.unlink()
    out = measure_run.measure_kept(trial, "completed", spec, spec.run_dir, ["tiny"])
    assert out["init_rebuilt"] is False and out["measure_errors"] is None
    pd.testing.assert_frame_equal(fragment(spec, trial, "tiny"), in_trial, check_exact=True)
    # without init.pt the initial network is rebuilt from the seed: the same rows again
    weights.weights_path(spec.run_dir, trial.trial_id, "init").unlink()
    out = measure_run.measure_kept(trial, "completed", spec, spec.run_dir, ["tiny"], redo=True)
    assert out["init_rebuilt"] is True
    pd.testing.assert_frame_equal(fragment(spec, trial, "tiny"), in_trial, check_exact=True)


def test_after_the_fact_skips_what_is_there_and_what_it_cannot_measure(tmp_path, register):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=())
    calls = []

    def counted(model, data, trial):
        calls.append(trial.trial_id)
        return tiny(model, data, trial)
    register("tiny", counted)
    register("fin", when=("final",))
    trial = trial_of(spec, "mlp")
    run_train_trial(trial, spec, spec.run_dir)  # keeps final.pt only
    out = measure_run.measure_kept(trial, "completed", spec, spec.run_dir, ["tiny", "fin"])
    assert out["init_rebuilt"] and set(fragment(spec, trial, "tiny")["when"]) == {"init", "final"}
    assert len(calls) == 2  # init and final
    out = measure_run.measure_kept(trial, "completed", spec, spec.run_dir, ["tiny", "fin"])
    assert len(calls) == 2 and out == {"init_rebuilt": False, "skipped": {}}
    weights.weights_path(spec.run_dir, trial.trial_id, "final").unlink()
    out = measure_run.measure_kept(trial, "completed", spec, spec.run_dir, ["tiny"], redo=True)
    assert out["skipped"] == {"tiny": "no kept final.pt"} and len(calls) == 2
    assert measure_run.fragment_path(spec.run_dir, trial.trial_id, "tiny").exists()  # kept


def test_merge_writes_one_file_per_measurement_and_a_damaged_fragment_costs_itself(
        tmp_path, register, capsys):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=("tiny",))
    register("tiny")
    trials = expand(spec)[0]
    for t in trials:
        run_train_trial(t, spec, spec.run_dir)
    tables = results.merge(spec.run_dir, trials)
    merged = pd.read_parquet(tmp_path / "w" / "measurements" / "tiny.parquet")
    assert len(merged) == 16 * len(trials) and set(merged.trial_id) == {t.trial_id for t in trials}
    assert "measure-tiny" not in tables and not (tmp_path / "w" / "measure-tiny.parquet").exists()
    assert tables["trials"]["measure_seconds_tiny"].gt(0).all()
    bad = measure_run.fragment_path(spec.run_dir, trials[0].trial_id, "tiny")
    bad.write_bytes(bad.read_bytes()[:100])
    capsys.readouterr()
    tables = results.merge(spec.run_dir, trials)
    assert set(tables["trials"]["status"]) == {"completed"}  # the trials are untouched
    merged = pd.read_parquet(tmp_path / "w" / "measurements" / "tiny.parquet")
    assert set(merged.trial_id) == {t.trial_id for t in trials[1:]}
    assert bad.with_name(bad.name + ".corrupt").exists()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(bad) in err[0] and "ablations.measure" in err[0]


def test_a_measurement_returning_key_columns_or_no_frame_fails_clearly(tmp_path, register):
    spec = dataclasses.replace(tiny_spec(tmp_path), measure=("keys", "list"))
    register("keys", lambda m, d, t: pd.DataFrame({"depth": [1], "when": ["x"]}))
    register("list", lambda m, d, t: [1, 2])
    trial = trial_of(spec, "mlp")
    run_train_trial(trial, spec, spec.run_dir)
    errors = results.read_fragment_row(spec.run_dir, trial.trial_id)["measure_errors"]
    assert errors == ("keys: ValueError: returned key column(s) depth, when; the framework "
                      "adds them: return the measurement's own columns only; "
                      "list: TypeError: returned list, not a pandas DataFrame")


# --------------------------------------------------------------------------- bad input
#
# ``python -m ablations.measure`` and ``sweep.py`` as subprocesses: one line on stderr
# naming the problem and the valid choices, exit 2, nothing written, Ray never imported.

ROOT = Path(__file__).resolve().parents[2]
RUN = ("import runpy, sys\nsys.argv = {argv!r}\ntry:\n    runpy.{how}\nexcept SystemExit as e:\n"
       "    code = e.code\nelse:\n    code = 0\nsys.exit(99 if 'ray' in sys.modules else code)\n")


def exit2(cwd, *argv, sweep=False) -> str:
    """Run the CLI; assert exit 2, one stderr line, no stdout, no file changed and no
    Ray; return the line."""
    how = (f"run_path({str(ROOT / 'sweep.py')!r}, run_name='__main__')" if sweep else
           "run_module('ablations.measure', run_name='__main__', alter_sys=True)")
    before = {p: p.stat().st_mtime_ns for p in Path(cwd).rglob("*")}
    p = subprocess.run([sys.executable, "-c", RUN.format(argv=["x", *argv], how=how)],
                       cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert {q: q.stat().st_mtime_ns for q in Path(cwd).rglob("*")} == before
    return p.stderr.strip()


def fake_sweep(tmp_path, keep="final", mode="train", kept=True) -> Path:
    """A finished sweep's folder as the CLI reads it (no training)."""
    spec = dataclasses.replace(tiny_spec(tmp_path / "res"), keep_weights=keep, mode=mode,
                               measure=("signal",))
    run = Path(spec.run_dir)
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"spec": dataclasses.asdict(spec)}))
    trials = expand(spec)[0]
    pd.DataFrame({"trial_id": [t.trial_id for t in trials], "status": "completed"}) \
        .to_parquet(run / "trials.parquet")
    for t in trials if kept else []:
        cfg = t.model_cfg.with_input(3 * 32 * 32, 10)
        weights.save(run, t, "final", weights.initial(cfg, t.seed).state_dict(), cfg, 1)
    return run


VALID = "valid measurements: lesion, shattering, landscape"


@pytest.mark.parametrize("case,argv,expected", [
    ("missing folder", ["res/nope"], "res/nope is not a sweep's results folder (no spec.json "
                                     "and trials.parquet); give the folder sweep.py wrote"),
    ("the OUT folder", ["res"], "sweeps in it: w"),
    ("unknown name", ["res/w", "--measure", "lesion,bogus"], "unknown measurement 'bogus'; "
                                                             + VALID),
    ("twice", ["res/w", "--measure", "lesion,lesion"], "names a measurement twice"),
    ("none", ["res/w", "--measure", "none"], "nothing to measure; " + VALID),
    ("cpus", ["res/w", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0 (got 0)"),
    ("flag", ["res/w", "--keep"], "unrecognized arguments: --keep"),
    ("where key", ["res/w", "--where", "colour=1"], "unknown factor 'colour'; valid: family"),
    ("where form", ["res/w", "--where", "depth"], "expected FACTOR=VALUE"),
])
def test_measure_cli_bad_input(tmp_path, case, argv, expected):
    fake_sweep(tmp_path)
    assert expected in exit2(tmp_path, *argv)


def test_measure_cli_on_a_sweep_that_kept_no_weights(tmp_path):
    fake_sweep(tmp_path, keep="none", kept=False)
    assert exit2(tmp_path, "res/w", "--measure", "lesion").endswith(
        "no kept weights in res/w/weights: the sweep ran with --keep-weights none; rerun it "
        "with --keep-weights final")


def test_measure_cli_on_a_probe_sweep(tmp_path):
    fake_sweep(tmp_path, mode="probe")
    assert "is a probe sweep: it trained no networks to measure" in exit2(tmp_path, "res/w")


@pytest.mark.parametrize("argv,expected", [
    (["--measure", "bogus"], "unknown measurement 'bogus'; " + VALID),
    (["--measure", "lesion", "--mode", "probe"], "--measure lesion needs --mode train"),
    (["--measure", "signal,signal"], "names a measurement twice: signal,signal"),
    (["--measure", ""], "--measure is empty"),
    (["--keep-weights", "some"], "invalid choice: 'some' (choose from 'final', 'all', 'none')"),
])
def test_sweep_measure_flags_bad_input(tmp_path, argv, expected):
    line = exit2(tmp_path, "--dataset", "synthetic", "--depths", "4", "--out", "out", *argv,
                 sweep=True)
    assert expected in line and not (tmp_path / "out").exists()


def test_sweep_flags_resolve_to_the_spec():
    from ablations.arguments import build_parser, spec_from_args
    parse = build_parser().parse_args
    spec = spec_from_args(parse(["--measure", "none", "--keep-weights", "all"]))
    assert spec.measure == () and spec.keep_weights == "all"
    spec = spec_from_args(parse([]))
    assert spec.measure is None and spec.keep_weights == "final"
    assert resolve_measure(spec).measure == tuple(measurements.defaults())
    probe = spec_from_args(parse(["--mode", "probe"]))
    assert resolve_measure(probe).measure == ()
    old = spec_from_dict({"mode": "train"})  # spec.json of a sweep before measurements
    assert old.measure == () and old.keep_weights == "none"


def test_where_selects_the_trials_to_measure():
    from ablations.measure import _where
    from ablations.spec import SpecError
    rows = pd.DataFrame({"trial_id": ["a", "b", "c"], "family": "mlp", "model": "mlp",
                         "depth": [4, 4, 8], "residual": [True, False, True], "seed": [0, 1, 0]})
    assert _where(rows, []) == {"a", "b", "c"}
    assert _where(rows, ["seed=0"]) == {"a", "c"}
    assert _where(rows, ["seed=0", "depth=8"]) == {"c"}
    with pytest.raises(SpecError, match="no such trials; present: 0, 1"):
        _where(rows, ["seed=5"])


def test_a_report_that_cannot_be_built_is_one_warning(tmp_path, capsys):
    """The report is rebuilt by ``python -m analysis`` in a child process (ablations never
    imports analysis); its failure is a warning and a note, never a crash."""
    from ablations.measure import rebuild_report
    assert rebuild_report(tmp_path / "missing") == "report not built"
    err = capsys.readouterr().err
    assert "warning: the report could not be built (python -m analysis exited with 2)" in err
    assert f"rebuild it with: python -m analysis {tmp_path / 'missing'}" in err


def test_measure_cli_on_damaged_cifar_batches_is_one_line(tmp_path):
    """A CIFAR-10 sweep measured with a damaged batch file: one line naming the file,
    exit 2, before Ray starts (ablations.data checks every batch it reads)."""
    from tests.ablations.test_data import write_cifar
    run = fake_sweep(tmp_path)
    rec = json.loads((run / "spec.json").read_text())
    rec["spec"]["train"]["dataset"] = "cifar10"
    (run / "spec.json").write_text(json.dumps(rec))
    write_cifar(tmp_path / "data")
    batch = next((tmp_path / "data").rglob("data_batch_1"))
    batch.write_bytes(batch.read_bytes()[:100])
    line = exit2(tmp_path, "res/w", "--data-root", "data", "--measure", "signal")
    assert "data_batch_1" in line and "truncated" in line
