"""Progress lines, ETA and the plan's time estimate (no Ray: events fed directly)."""
import dataclasses
import io
import re
import time

import pytest

from ablations import estimate
from ablations.spec import resolve_measure as resolve
from ablations.progress import SweepProgress, Unit, duration


@pytest.mark.parametrize("s,text", [(None, "?"), (float("nan"), "?"), (0, "0s"), (42.4, "42s"),
                                    (372, "6m12s"), (3900, "1h05m"), (90061, "1d01h")])
def test_duration(s, text):
    assert duration(s) == text


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def rows(**by_id):
    return lambda tid: by_id.get(tid)


def test_lines_counts_and_eta_from_measured_epochs():
    units = [Unit("a", ["a"], ("mlp", 4), epochs=10, estimate_s=1.0),
             Unit("b", ["b"], ("mlp", 4), epochs=10, estimate_s=1.0),
             Unit("c", ["c"], ("resnet", 4), epochs=10, estimate_s=3.0)]
    out = io.StringIO()
    p = SweepProgress(units, slots=2, read_row=rows(
        a={"status": "completed", "wall_seconds": 372, "final_test_acc": 0.412,
           "final_train_loss": 1.61},
        b={"status": "diverged", "diverged_epoch": 1, "wall_seconds": 3.0}), stream=out)
    assert p.bar is None  # a StringIO is not a terminal
    # before any measurement: the estimates, 10*1 + 10*1 + 10*3 = 50 s of work on 2 slots
    assert p.eta() == pytest.approx(max(50 / 2, 30))
    for e in range(1, 6):  # unit a runs at 2 s per epoch: twice its estimate
        p.epoch(0, e, 2.0)
    # a: 5 left x 2 s; b: same model and depth -> 2 s x 10; c: estimate x median ratio 2
    assert p.eta() == pytest.approx(max((10 + 20 + 60) / 2, 60))
    p.finished(0)
    assert out.getvalue().splitlines() == [
        "[1/3] a completed in 6m12s: test acc 41.2%, train loss 1.61 | ETA 1m00s"]
    p.finished(1)
    p.finished(1)  # Tune may report an end twice: counted once
    p.finished(2)
    lines = out.getvalue().splitlines()
    assert lines[1] == "[2/3] b diverged at epoch 1 in 3s | ETA 1m00s"
    assert lines[2] == "[3/3] c failed after all retries (status=error; traceback in " \
                       "trials.parquet)"
    assert p.eta() == 0.0


def test_unknown_estimate_gives_unknown_eta():
    p = SweepProgress([Unit("a", ["a"], ("mlp", 4), epochs=3)], 1, rows(), stream=io.StringIO())
    assert p.eta() is None and duration(p.eta()) == "?"
    p.epoch(0, 1, 5.0)
    assert p.eta() == pytest.approx(10.0)


def test_a_probe_cell_of_many_seeds_is_one_line():
    ids = [f"mlp-4-plain-s{i}" for i in range(5)]
    out = io.StringIO()
    p = SweepProgress([Unit("mlp-4 probe", ids, ("mlp", 4), epochs=1, estimate_s=0.1)], 1,
                      rows(**{i: {"status": "completed", "probe_loss": 1.0} for i in ids[:4]}),
                      stream=out)
    p.finished(0)
    assert out.getvalue().splitlines() == ["[5/5] mlp-4 probe (5 trials): 4 completed, "
                                           "1 no result"]


def test_live_bar_on_a_terminal_prints_lines_above_it():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    p = SweepProgress([Unit("a", ["a"], ("mlp", 4), epochs=2, estimate_s=1.0)], 1,
                      rows(a={"status": "completed"}), stream=out)
    assert p.bar is not None
    p.epoch(0, 1, 1.0)
    p.finished(0)
    p.close()
    assert "[1/1] a completed" in out.getvalue() and "1/1 trials" in out.getvalue()


def test_epoch_seconds_counts_training_steps_and_evaluation():
    # 1000 training images at batch 100: 10 steps of 0.5 s; 600 eval images at a third
    # of 0.5/100 s each
    assert estimate.epoch_seconds(0.5, 1000, 600, 100) == pytest.approx(5 + 600 / 3 * 0.005)
    assert estimate.epoch_seconds(0.5, 1001, 0, 100) == pytest.approx(5.5)


def test_sweep_seconds_shares_work_among_slots():
    assert estimate.sweep_seconds([], 2) == 0
    assert estimate.sweep_seconds([10, 10, 10, 10], 2) == 20
    assert estimate.sweep_seconds([30, 1, 1], 2) == 30  # the longest trial bounds it
    assert estimate.sweep_seconds([5, 4, 3, 3, 3], 2) == 10  # greedy longest-first (optimum 9)


def test_step_seconds_times_a_real_step_of_each_family(monkeypatch):
    """In either precision; a ResNet's fp32 step on a CPU runs the fused norm-ReLU kernel,
    as the trainer does, and its bf16 step does not."""
    import models
    from models import fused
    calls, real = [], fused._NormReLU.apply
    monkeypatch.setattr(fused._NormReLU, "apply", lambda *a: calls.append(1) or real(*a))
    for name in ("mlp", "resnet"):
        cfg = models.get_config(name, depth=4, residual=True)
        for precision in ("fp32", "bf16"):
            calls.clear()
            assert 0 < estimate.step_seconds(cfg, 16, 3072, 10, threads=1,
                                             precision=precision) < 30
            fused_here = name == "resnet" and precision == "fp32" and fused.kernel() is not None
            assert bool(calls) == fused_here


def test_estimate_is_keyed_by_cell_with_factor_levels():
    from ablations.arguments import build_parser, spec_from_args
    from ablations.plan import expand
    spec = spec_from_args(build_parser().parse_args(
        ["--families", "mlp", "--depths", "4", "--norm", "none,layer", "--dataset",
         "synthetic", "--batch-size", "16", "--threads", "1"]))
    trials, _ = expand(spec)
    per_epoch = estimate.estimate_epochs(trials, spec, 100, 50, 3072, 10)
    assert set(per_epoch) == {t.cell for t in trials} and len(per_epoch) == 4
    assert all(s > 0 for s in per_epoch.values())


def test_measurements_timed_on_the_cheapest_model_first_then_within_a_budget(monkeypatch):
    """Each family's cheapest model (shortest epoch) is timed first; the others are timed
    while the budget lasts, else scaled from the costliest timed one by the square of the
    epochs' ratio. Every measurement counts at each of its points."""
    from ablations import measurements
    from ablations.arguments import build_parser, spec_from_args
    from ablations.plan import expand
    spec = resolve(spec_from_args(build_parser().parse_args(
        ["--families", "mlp", "--depths", "4,8", "--dataset", "synthetic", "--threads", "1",
         "--measure", "signal,lesion"])))
    trials, _ = expand(spec)
    calls = []
    timed = [dataclasses.replace(measurements.get(n), fn=lambda model, data, trial, n=n: (
        calls.append((n, trial.cell, tuple(data.test_x.shape))), time.sleep(0.05)))
        for n in ("signal", "lesion")]
    from ablations import measure_run
    monkeypatch.setattr(measure_run, "requested", lambda names: timed if names else [])
    cells = list(dict.fromkeys(t.cell for t in trials))
    per_epoch = {cells[0]: 1.0, cells[1]: 3.0}
    sizes = {"train": 100, "val": 0, "test": 40}
    out = estimate.measure_seconds(trials, spec, sizes, per_epoch, budget_s=0)
    assert [c[:2] for c in calls] == [("signal", cells[0]), ("lesion", cells[0])]
    assert calls[0][2] == (40, 3, 32, 32)
    # signal runs at init and final, lesion at final only: 3 x ~0.05 s
    assert 0.15 <= out[cells[0]] < 1.0
    assert out[cells[1]] == pytest.approx(out[cells[0]] * 9)
    calls.clear()
    out = estimate.measure_seconds(trials, spec, sizes, per_epoch)  # within the budget
    assert [c[1] for c in calls] == [cells[0], cells[0], cells[1], cells[1]]
    assert 0.15 <= out[cells[1]] < 1.0
    # no measurements: nothing to time
    none = dataclasses.replace(spec, measure=())
    assert estimate.measure_seconds(trials, none, {"test": 40}, per_epoch) == {}


def test_the_estimate_counts_start_up_trials_and_report():
    from ablations.arguments import build_parser, spec_from_args
    from ablations.plan import expand
    spec = resolve(spec_from_args(build_parser().parse_args(
        ["--families", "mlp", "--depths", "4", "--dataset", "synthetic", "--threads", "1",
         "--measure", "none", "--epochs", "1"])))
    trials, _ = expand(spec)
    sizes = {"train": 64, "val": 0, "test": 32}
    dry, _ = estimate.line(spec, trials, sizes, slots=2, started=False)
    live, _ = estimate.line(spec, trials, sizes, slots=2, started=True)
    # a dry run's start-up: the fixed part and the timing the sweep will do again
    assert int(re.search(r"start-up (\d+)s", dry).group(1)) >= estimate.START_S - 0.5
    assert "start-up" not in live and "report 3s" in live  # 2.5 s + 6 x 0.15 s
    start, worker, per_trial, report = estimate.fixed_seconds(len(trials), 0, False, False)
    assert start == estimate.START_S and worker == estimate.WORKER_START_S
    assert report == estimate.REPORT_S + estimate.REPORT_PER_TRIAL_S * len(trials)
    assert estimate.fixed_seconds(4, 2, True, False)[0] == estimate.ATTACH_S
    assert estimate.fixed_seconds(4, 2, True, True)[0] == 0
    assert estimate.fixed_seconds(4, 2, True, False)[3] == pytest.approx(
        estimate.REPORT_S + 4 * estimate.REPORT_PER_TRIAL_S + 2 * estimate.REPORT_PER_MEASUREMENT_S)


def test_tuning_sample_lines():
    from ablations.runner import sample_line
    c = {"cell": "mlp-8-plain", "sample": 2, "hp": {"lr": 0.012345}}
    assert sample_line(c, {"tune_final": 1, "status": "completed", "val_acc": 0.4123}, 8) == \
        "tuning mlp-8-plain sample 3/8 (lr=0.0123): val acc 41.2%"
    assert sample_line(c, {"tune_final": 1, "status": "diverged", "val_acc": 0.0}, 8) == \
        "tuning mlp-8-plain sample 3/8 (lr=0.0123): diverged"
    assert sample_line(c, {"epoch": 2, "val_acc": 0.1}, 8) == \
        "tuning mlp-8-plain sample 3/8 (lr=0.0123): pruned after epoch 2 (val acc 10.0%)"
    assert sample_line({"cell": "x", "sample": 0}, None, 1) == \
        "tuning x sample 1/1: ended without a result"
