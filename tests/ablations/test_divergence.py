"""Divergence that stays finite (ablations.evaluation.diverged_reason), for trials and for
tuning samples, and the budget every train row records (steps, schedule_steps)."""
import math

import pandas as pd
import pytest

from ablations import results
from ablations.plan import expand
from ablations.spec import AblationSpec, TrainSettings
from ablations.evaluation import EXPLODE_FACTOR, diverged_reason
from ablations.train import run_train_trial
from tests.ablations.test_train import Recorder




def mlp_spec(tmp_path, lr, epochs=2, **kw):
    # 240 training images at batch 64: 4 steps per epoch; fp32 on the CPU: the same
    # numbers on every machine with this torch
    t = TrainSettings(dataset="synthetic", subset=300, val_fraction=0.2, epochs=epochs,
                      milestones=(), batch_size=64, stats_every=0, lr=lr, device="cpu",
                      precision="fp32")
    return AblationSpec(families=("mlp",), depths=(4,), residual="on", seeds=1,
                        out=str(tmp_path), name="d", train=t, measure=(),
                        keep_weights="none", **kw)


def test_the_rule():
    ln10 = math.log(10)
    assert diverged_reason(float("nan"), 2.3, 10) == "non-finite"
    assert diverged_reason(float("inf"), None, 10) == "non-finite"
    assert diverged_reason(2.0, 2.3, 10) is None
    assert diverged_reason(EXPLODE_FACTOR * ln10 * 0.99, None, 10) is None
    assert diverged_reason(EXPLODE_FACTOR * ln10 * 1.01, None, 10) == "exploded"
    assert diverged_reason(6e4, 2.31, 10) == "exploded"  # the residual MLP-20 of the brief
    # judged against its own start when that is above chance (a deep plain net at init)
    assert diverged_reason(100.0, 18.8, 10) is None
    assert diverged_reason(200.0, 18.8, 10) == "exploded"
    # a start below chance, or none, or a non-finite one: chance is the reference
    assert diverged_reason(20.0, 0.5, 10) is None
    assert diverged_reason(20.0, float("nan"), 10) is None


def test_a_finite_explosion_ends_the_trial_as_diverged_exploded(tmp_path):
    spec = mlp_spec(tmp_path, lr=3.0)  # the loss reaches ~4e6 in epoch 1, finite
    mlp = expand(spec)[0][0]
    assert run_train_trial(mlp, spec, spec.run_dir) == "diverged"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["status"] == "diverged" and row["diverged_reason"] == "exploded"
    assert row["diverged_epoch"] == 1 and math.isfinite(row["init_loss"])
    ep = pd.read_parquet(results.trial_dir(spec.run_dir, mlp.trial_id) / "epochs.parquet")
    assert len(ep) == 1 and math.isfinite(ep.train_loss.iloc[0])
    assert ep.train_loss.iloc[0] > EXPLODE_FACTOR * max(row["init_loss"], math.log(10))
    assert row["steps"] == 4 and row["schedule_steps"] == 30 * 4


def test_a_normal_trial_stays_completed_and_records_its_budget(tmp_path):
    spec = mlp_spec(tmp_path, lr=0.05)
    mlp = expand(spec)[0][0]
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["diverged_reason"] is None and row["diverged_epoch"] is None
    assert abs(row["init_loss"] - math.log(10)) < 1.0
    # 2 epochs of 4 steps; the seed recipe's full schedule is 30 epochs of 4 steps
    assert (row["steps"], row["schedule_steps"], row["n_train"], row["batch_size"],
            row["recipe"], row["decay"]) == (8, 120, 240, 64, "seed", "all")


def test_he2016_rows_count_its_schedule_in_iterations(tmp_path):
    spec = mlp_spec(tmp_path, lr=0.05, epochs=1, recipe="he2016")
    mlp = expand(spec)[0][0]  # the trainer runs what it is given; validate refuses mlp
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    # 64,000 x 240/45,000 x 128/64 = 682.7 steps: the same 182 epochs at batch 64
    assert (row["steps"], row["schedule_steps"], row["recipe"]) == (4, 683, "he2016")


def test_a_resumed_trial_keeps_its_initial_loss(tmp_path):
    spec = mlp_spec(tmp_path, lr=0.05, epochs=2)
    mlp = expand(spec)[0][0]

    class Stop(Exception):
        pass

    class StopAfterFirstEpoch(Recorder):
        def report(self, metrics):
            raise Stop

    with pytest.raises(Stop):
        run_train_trial(mlp, spec, spec.run_dir, StopAfterFirstEpoch())
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    resumed = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    fresh_spec = mlp_spec(tmp_path / "fresh", lr=0.05, epochs=2)
    run_train_trial(mlp, fresh_spec, fresh_spec.run_dir)
    fresh = results.read_fragment_row(fresh_spec.run_dir, mlp.trial_id)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["init_loss"] == fresh["init_loss"] and resumed["steps"] == fresh["steps"]


@pytest.mark.parametrize("lr,reason", [(3.0, "exploded"), (1e12, "non-finite")])
def test_tuning_scores_an_exploded_sample_as_diverged(tmp_path, lr, reason):
    """A tuning sample runs the same trainer: an exploded one reports status diverged and
    val_acc 0.0, and the cell's Optuna study records 0.0, as for a NaN."""
    import optuna

    from ablations import tuning
    spec = mlp_spec(tmp_path, lr=0.05, epochs=2)
    base = expand(spec)[0][0]
    label = tuning.cell_of(base)
    search = tuning.make_searcher({label: base}, {"lr": (1e-3, 10.0)}, 2, spec.run_dir)
    config = search.suggest("tid")
    sample = tuning.sample_trial(base, config["sample"], {"lr": lr})
    rep = Recorder()
    assert run_train_trial(sample, spec, spec.run_dir, rep, tuning=True) == "diverged"
    final = rep.reports[-1]
    assert final["status"] == "diverged" and final["diverged_reason"] == reason
    assert final["val_acc"] == 0.0
    search.on_trial_complete("tid", final)
    study = search.studies[label]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].value == 0.0
    assert done[0].user_attrs["status"] == "diverged"
    assert done[0].user_attrs["diverged_reason"] == reason
