"""Preemption (ablations.preempt): a real SIGTERM mid-epoch checkpoints the trial
(data-loader position included) and hands it back without counting an attempt; the
resumed trial ends bit for bit where an uninterrupted one does. --checkpoint-every:
mid-epoch checkpoints on a clock, so a crash (kill -9) costs at most that much.
In-process, no Ray (tests/e2e/test_preempt_e2e.py: the same through a sweep)."""
import dataclasses
import os
import signal

import pandas as pd
import pytest
import torch

from ablations import checkpoint, optim, preempt, results, weights
from ablations.plan import expand
from ablations.spec import AblationSpec, SpecError, TrainSettings, validate

# 240 training images at batch 64: 4 steps per epoch (the last one of 48 images)
STEPS_PER_EPOCH = 4
COLS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
        "lr"]


@pytest.fixture(autouse=True)
def clean_handler():
    """Each test starts and ends with the process's own SIGTERM handling and no flag."""
    preempt.uninstall()
    before = signal.getsignal(signal.SIGTERM)
    yield
    preempt.uninstall()
    signal.signal(signal.SIGTERM, before)


def small_spec(tmp_path, name="t", checkpoint_every=10.0, **train):
    t = dict(dataset="synthetic", subset=300, val_fraction=0.2, epochs=3, milestones=(2,),
             batch_size=64, stats_every=3, lr=0.05, warmup_epochs=1)
    t.update(train)
    return AblationSpec(families=("mlp", "resnet"), depths=(4,), seeds=1, residual="on",
                        out=str(tmp_path), name=name, measure=(), keep_weights="final",
                        checkpoint_every=checkpoint_every, train=TrainSettings(**t))


def trial_of(spec, family):
    return [t for t in expand(spec)[0] if t.family == family][0]


def at_step(monkeypatch, k, action):
    """Run ``action()`` as optimizer step ``k`` (1 = the first) is about to update."""
    real, seen = optim.SGD.step, []

    def step(self):
        seen.append(1)
        if len(seen) == k:
            action()
        return real(self)
    monkeypatch.setattr(optim.SGD, "step", step)


def outcome(spec, trial):
    """The trial's final weights, epochs and layer statistics, and its row."""
    run_dir = spec.run_dir
    final = torch.load(weights.weights_path(run_dir, trial.trial_id, "final"),
                       weights_only=True)["state_dict"]
    tdir = results.trial_dir(run_dir, trial.trial_id)
    return (final, pd.read_parquet(tdir / "epochs.parquet")[COLS],
            pd.read_parquet(tdir / "layers.parquet"),
            results.read_fragment_row(run_dir, trial.trial_id))


def assert_same(a, b):
    wa, ea, la, _ = a
    wb, eb, lb, _ = b
    assert wa.keys() == wb.keys()
    for k in wa:  # bit for bit: equal values, not close ones
        assert torch.equal(wa[k], wb[k]), k
    pd.testing.assert_frame_equal(ea, eb, check_exact=True)
    pd.testing.assert_frame_equal(la, lb, check_exact=True)


@pytest.mark.parametrize("family,step", [("mlp", 2), ("resnet", 6)])
def test_sigterm_mid_epoch_checkpoints_and_resumes_bit_identical(tmp_path, monkeypatch,
                                                                  family, step):
    """A real SIGTERM to this process at step ``step`` (epoch 1 in its warmup; epoch 2):
    the trial writes a mid-epoch checkpoint after that step and raises Preempted, its
    attempt not counted; run again, it ends exactly where an uninterrupted run does
    (weights, every epoch's numbers, the per-layer statistics)."""
    plain = small_spec(tmp_path / "plain")
    trial = trial_of(plain, family)
    from ablations.train import run_train_trial
    assert run_train_trial(trial, plain, plain.run_dir) == "completed"
    expected = outcome(plain, trial)

    spec = small_spec(tmp_path / "stopped")
    with monkeypatch.context() as m, \
            pytest.raises(preempt.Preempted, match=f"{trial.trial_id}: preempted"):
        at_step(m, step, lambda: os.kill(os.getpid(), signal.SIGTERM))
        run_train_trial(trial, spec, spec.run_dir)
    assert preempt.requested()
    state = checkpoint.load_state(results.checkpoint_path(spec.storage_dir, trial.trial_id))
    pos = checkpoint.position_of(state)
    epoch = (step - 1) // STEPS_PER_EPOCH + 1
    assert pos is not None and pos.epoch == epoch and pos.step == step
    assert state["epoch"] == epoch - 1 and 0 < pos.next_index < 240  # within the epoch
    assert results.read_attempts(spec.run_dir, trial.trial_id) == 0  # not counted
    assert results.read_fragment_row(spec.run_dir, trial.trial_id) is None

    # the worker got SIGTERM: a trial handed to it now goes back before it starts
    with pytest.raises(preempt.Preempted, match="before it started"):
        run_train_trial(trial, spec, spec.run_dir)
    assert results.read_attempts(spec.run_dir, trial.trial_id) == 0

    preempt.uninstall()  # a fresh worker
    assert run_train_trial(trial, spec, spec.run_dir) == "completed"
    got = outcome(spec, trial)
    assert_same(got, expected)
    row = got[3]
    assert row["attempts"] == 1 and row["resumed_from_epoch"] == epoch
    assert not results.checkpoint_path(spec.storage_dir, trial.trial_id).exists()


def test_checkpoint_every_bounds_what_a_crash_costs(tmp_path, monkeypatch):
    """--checkpoint-every: mid-epoch checkpoints on a clock. A crash at step 7 (a
    kill -9, as far as the checkpoint can tell) resumes from step 6's checkpoint, not
    from epoch 1's end, and still ends bit for bit as an uninterrupted run. With 0,
    only epoch ends are saved."""
    from ablations.train import run_train_trial
    plain = small_spec(tmp_path / "plain")
    trial = trial_of(plain, "mlp")
    run_train_trial(trial, plain, plain.run_dir)
    expected = outcome(plain, trial)

    class Crash(Exception):
        pass

    def crash():
        raise Crash

    for every, resumed_at in ((1e-9, 6), (0.0, STEPS_PER_EPOCH)):  # each step / epoch ends
        spec = small_spec(tmp_path / f"every-{every}", checkpoint_every=every)
        with monkeypatch.context() as m, pytest.raises(Crash):
            at_step(m, 7, crash)
            run_train_trial(trial, spec, spec.run_dir)
        state = checkpoint.load_state(results.checkpoint_path(spec.storage_dir,
                                                              trial.trial_id))
        pos = checkpoint.position_of(state)
        assert (pos.step if pos else state["epoch"] * STEPS_PER_EPOCH) == resumed_at
        assert run_train_trial(trial, spec, spec.run_dir) == "completed"
        got = outcome(spec, trial)
        assert_same(got, expected)
        assert got[3]["attempts"] == 2  # a crash is an attempt (a preemption is not)


def test_due_follows_the_clock_and_the_flag():
    run = type("Run", (), {"tuning": False, "checkpoint_every_s": 600.0, "saved_at": 100.0})()
    assert not preempt.due(run, now=699.0) and preempt.due(run, now=700.0)
    run.checkpoint_every_s = 0.0
    assert not preempt.due(run, now=10 ** 9)
    preempt.request()
    assert preempt.due(run, now=0.0)
    run.tuning = True  # a tuning sample keeps no checkpoint
    assert not preempt.due(run, now=0.0)


def test_sigterm_with_no_trial_training_ends_the_process_as_before():
    """The handler chains to the one it replaced (Ray's: exit) when no training trial
    runs here, and after a first SIGTERM, so a second one ends the process at once."""
    calls = []
    signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    assert preempt.install()
    os.kill(os.getpid(), signal.SIGTERM)  # nothing training: the previous handler
    assert calls == [signal.SIGTERM] and preempt.requested()
    preempt.uninstall()
    signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    preempt.install()
    with preempt.armed("t"):
        os.kill(os.getpid(), signal.SIGTERM)  # training: only the flag
        assert calls == [signal.SIGTERM] and preempt.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # the second: the previous handler again
    assert calls == [signal.SIGTERM, signal.SIGTERM]


def test_install_off_the_main_thread_does_nothing():
    import threading
    before, got = signal.getsignal(signal.SIGTERM), []
    t = threading.Thread(target=lambda: got.append(preempt.install()))
    t.start()
    t.join()
    assert got == [False] and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_checkpoint_every_is_one_line(tmp_path, value):
    spec = dataclasses.replace(small_spec(tmp_path), checkpoint_every=value)
    with pytest.raises(SpecError, match=r"^--checkpoint-every must be a number of minutes "
                                        r">= 0 \(0: at epoch ends only; got "):
        validate(spec)


def test_checkpoint_every_is_an_execution_setting(tmp_path):
    """It does not change results: a spec.json written before it existed loads with the
    default, and --resume may change it."""
    from ablations import arguments, resume
    from ablations.spec import spec_from_dict, spec_to_dict
    spec = small_spec(tmp_path, checkpoint_every=2.5)
    assert spec.execution.checkpoint_every == 2.5 and "checkpoint_every" in \
        resume.EXECUTION_FLAGS
    old = spec_to_dict(spec)
    del old["checkpoint_every"]
    assert spec_from_dict(old).checkpoint_every == 10.0
    args = arguments.build_parser().parse_args(["--checkpoint-every", "0.5"])
    assert arguments.execution_from_args(args).checkpoint_every == 0.5
