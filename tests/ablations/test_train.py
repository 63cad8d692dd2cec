import dataclasses

import pandas as pd
import pytest

from ablations import results
from ablations.plan import expand
from ablations.spec import AblationSpec, TrainSettings
from ablations.train import run_train_trial


class Recorder:
    def __init__(self):
        self.reports = []

    def report(self, metrics):
        self.reports.append(metrics)

    def where(self):
        return {"node_id": "here"}


def small_spec(tmp_path, **train):
    t = dict(dataset="synthetic", subset=300, val_fraction=0.2, epochs=3, milestones=(2,),
             batch_size=64, stats_every=2, lr=0.05)
    t.update(train)
    return AblationSpec(families=("mlp", "resnet"), depths=(4,), seeds=1, residual="on",
                        out=str(tmp_path), name="t", train=TrainSettings(**t))


def test_training_writes_epochs_stats_checkpoints_and_feature_maps(tmp_path):
    spec = small_spec(tmp_path)
    trials, _ = expand(spec)
    resnet = [t for t in trials if t.family == "resnet"][0]
    rep = Recorder()
    assert run_train_trial(resnet, spec, spec.run_dir, rep) == "completed"
    ep = pd.read_parquet(results.trial_dir(spec.run_dir, resnet.trial_id) / "epochs.parquet")
    assert list(ep.epoch) == [1, 2, 3]
    for col in ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                "epoch_seconds", "train_images_per_s"]:
        assert ep[col].notna().all(), col
    assert ep.train_acc.between(0, 1).all() and ep.test_acc.between(0, 1).all()
    assert list(ep.lr) == pytest.approx([0.05, 0.05, 0.005])  # x0.1 after epoch 2
    assert [r["epoch"] for r in rep.reports] == [1, 2, 3]
    layers = pd.read_parquet(results.trial_dir(spec.run_dir, resnet.trial_id) / "layers.parquet")
    assert set(layers.phase) == {"train"} and sorted(layers.step.unique())[:2] == [0, 2]
    assert {"grad_norm", "act_mean_abs"} <= set(layers.stat)
    import numpy as np
    maps = np.load(f"{spec.run_dir}/features/{resnet.trial_id}.npz")
    assert maps["maps"].shape == (8, 32, 32) and maps["image"].shape == (3, 32, 32)
    row = results.read_fragment_row(spec.run_dir, resnet.trial_id)
    assert row["status"] == "completed" and row["final_test_acc"] == ep.test_acc.iloc[-1]
    assert row["precision"] in ("bf16", "fp32")


def test_synthetic_data_is_learned(tmp_path):
    spec = small_spec(tmp_path, epochs=4, milestones=())
    mlp = [t for t in expand(spec)[0] if t.family == "mlp"][0]
    run_train_trial(mlp, spec, spec.run_dir)
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["final_test_acc"] > 0.5  # 10 classes: chance is 0.1


def test_the_smoke_runs_resnets_leave_chance(tmp_path):
    """``sweep.py --smoke``'s own ResNet-4 trials learn (at 2 epochs they ended at 10%,
    which reads as a broken install)."""
    from ablations.arguments import build_parser, spec_from_args
    spec = spec_from_args(build_parser().parse_args(
        ["--smoke", "--families", "resnet", "--measure", "none", "--out", str(tmp_path)]))
    trials, _ = expand(spec)
    assert {t.residual for t in trials} == {False, True}
    for t in trials:
        assert run_train_trial(t, spec, spec.run_dir) == "completed"
        row = results.read_fragment_row(spec.run_dir, t.trial_id)
        assert row["final_test_acc"] > 0.5, (t.trial_id, row["final_test_acc"])


def test_nan_loss_is_a_diverged_result_not_a_crash(tmp_path):
    spec = small_spec(tmp_path, lr=1e12, epochs=5, milestones=())
    mlp = dataclasses.replace([t for t in expand(spec)[0] if t.family == "mlp"][0])
    assert run_train_trial(mlp, spec, spec.run_dir) == "diverged"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["status"] == "diverged" and 1 <= row["diverged_epoch"] < 5
    ep = pd.read_parquet(results.trial_dir(spec.run_dir, mlp.trial_id) / "epochs.parquet")
    assert len(ep) == row["diverged_epoch"]


def test_a_damaged_checkpoint_costs_only_the_trials_progress(tmp_path, capsys):
    """A truncated checkpoint (storage failed after a kill) is moved aside and the trial
    starts over, exactly as a fresh run: same seeds, same numbers. Before, every retry
    reloaded the same broken file and the trial ended as status=error."""
    fresh = small_spec(tmp_path / "fresh", milestones=())
    mlp = [t for t in expand(fresh)[0] if t.family == "mlp"][0]
    run_train_trial(mlp, fresh, fresh.run_dir)
    expected = pd.read_parquet(results.trial_dir(fresh.run_dir, mlp.trial_id)
                               / "epochs.parquet")

    spec = small_spec(tmp_path / "damaged", milestones=())
    ckpt = results.checkpoint_path(spec.storage_dir, mlp.trial_id)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a zip cut short
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["resumed_from_epoch"] is None and row["attempts"] == 1
    got = pd.read_parquet(results.trial_dir(spec.run_dir, mlp.trial_id) / "epochs.parquet")
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(got[cols], expected[cols])
    assert (ckpt.parent / f"{mlp.trial_id}.pt.corrupt").read_bytes()[:4] == b"PK\x03\x04"
    assert not ckpt.exists()  # the new one is removed once the result is written
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and str(ckpt) in err[0]


def test_a_checkpoint_of_another_model_is_set_aside_not_half_loaded(tmp_path, capsys):
    """Readable, but not this trial's state (e.g. a model definition changed between
    --resume runs): loading it fails partway, so the trial starts over from a clean,
    seeded model instead of failing on every retry."""
    spec = small_spec(tmp_path, epochs=2, milestones=())
    trials = expand(spec)[0]
    mlp = [t for t in trials if t.family == "mlp"][0]
    resnet = [t for t in trials if t.family == "resnet"][0]

    class Stop(Exception):
        pass

    class StopAfterFirstEpoch:
        def report(self, metrics):
            raise Stop

        def where(self):
            return {}

    with pytest.raises(Stop):  # a paused run keeps its checkpoint (a finished one does not)
        run_train_trial(resnet, spec, str(tmp_path / "other"), StopAfterFirstEpoch())
    other = results.checkpoint_path(spec.storage_dir, resnet.trial_id)
    ckpt = results.checkpoint_path(spec.storage_dir, mlp.trial_id)
    other.rename(ckpt)  # the resnet's epoch-1 state where the mlp's should be
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    row = results.read_fragment_row(spec.run_dir, mlp.trial_id)
    assert row["resumed_from_epoch"] is None and row["epochs_run"] == 2
    assert (ckpt.parent / f"{mlp.trial_id}.pt.corrupt").exists()
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} is unusable" in err


def test_warmup_ramps_the_lr_linearly_per_step_then_follows_the_schedule(tmp_path, sgd_lrs):
    seen = sgd_lrs
    # 240 training images at batch 64: 4 steps per epoch; warmup over 1 epoch = 4 steps
    spec = small_spec(tmp_path, warmup_epochs=1)
    mlp = [t for t in expand(spec)[0] if t.family == "mlp"][0]
    assert run_train_trial(mlp, spec, spec.run_dir, Recorder()) == "completed"
    assert seen == pytest.approx([0.05 * k / 4 for k in (1, 2, 3, 4)] + [0.05] * 4 + [0.005] * 4)
    ep = pd.read_parquet(results.trial_dir(spec.run_dir, mlp.trial_id) / "epochs.parquet")
    assert list(ep.lr) == pytest.approx([0.05, 0.05, 0.005])  # the schedule's lr per epoch


def test_warmup_factor():
    from ablations.optim import warmup_factor
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_stats_every_0_records_no_statistics(tmp_path):
    """``--stats-every 0``: no layer statistics (the statistics benchmark's "off")."""
    spec = dataclasses.replace(small_spec(tmp_path, stats_every=0, epochs=1, milestones=()),
                               measure=(), keep_weights="none")
    mlp = [t for t in expand(spec)[0] if t.family == "mlp"][0]
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    assert not (results.trial_dir(spec.run_dir, mlp.trial_id) / "layers.parquet").exists()
    from ablations.spec import SpecError, validate_train
    validate_train(spec.train)  # 0 is valid
    with pytest.raises(SpecError, match="--stats-every must be >= 1, or 0 for no statistics"):
        validate_train(dataclasses.replace(spec.train, stats_every=-1))


def test_precision_asked_is_used_and_recorded(tmp_path):
    """``--precision fp32`` forces fp32 even where bf16 is native (the fp32 benchmark);
    the row records the precision, whether the model was compiled, the ATen ISA and
    whether its norm-ReLUs ran the fused kernel (fp32 with batch norm on a CPU only)."""
    import torch
    from ablations.device import pick_precision
    from models import fused
    assert pick_precision("cpu", "fp32") == "fp32" and pick_precision("cpu", "bf16") == "bf16"
    assert pick_precision("cpu") == ("bf16" if results.cpu_has_bf16() else "fp32")
    for asked in ("fp32", "bf16"):
        spec = dataclasses.replace(
            small_spec(tmp_path / asked, precision=asked, epochs=1, milestones=()),
            measure=(), keep_weights="none")
        resnet = [t for t in expand(spec)[0] if t.family == "resnet"][0]
        assert run_train_trial(resnet, spec, spec.run_dir) == "completed"
        row = results.read_fragment_row(spec.run_dir, resnet.trial_id)
        assert row["precision"] == asked and row["compiled"] is False
        assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert row["fused_norm_relu"] is (asked == "fp32" and fused.kernel() is not None)
        mlp = [t for t in expand(spec)[0] if t.family == "mlp"][0]
        assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
        assert results.read_fragment_row(spec.run_dir, mlp.trial_id)["fused_norm_relu"] is False


def test_aten_restricted_below_avx512_has_no_native_bf16(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert results.cpu_has_bf16() is False


def test_bad_precision_is_one_line():
    from ablations.spec import SpecError, validate_train
    with pytest.raises(SpecError, match=r"fp16.*auto, fp32, bf16|auto, fp32, bf16.*fp16"):
        validate_train(TrainSettings(precision="fp16"))
