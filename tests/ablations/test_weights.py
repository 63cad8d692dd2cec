"""Kept networks (ablations.weights): written atomically with their config and factors,
reloaded to the same test accuracy, init.pt bit-identical to a rebuild from the seed
(also after a resume from a checkpoint), a damaged file moved aside and counted as
missing, and the plan's disk estimate."""
import dataclasses
import os

import pytest
import torch

import models
from ablations import results, weights
from ablations.plan import expand
from ablations.spec import AblationSpec, TrainSettings
from ablations.data import load_dataset
from ablations.device import pick_precision
from ablations.evaluation import evaluate
from ablations.train import run_train_trial


def tiny_spec(tmp_path, keep="final", epochs=1, **kw):
    train = TrainSettings(dataset="synthetic", subset=200, val_fraction=0.1, epochs=epochs,
                          milestones=(), batch_size=50, stats_every=100, lr=0.05, device="cpu")
    return AblationSpec(families=("mlp", "resnet"), depths=(4,), residual="on", seeds=1,
                        out=str(tmp_path), name="w", measure=(), keep_weights=keep,
                        train=train, **kw)


def trial_of(spec, family):
    return next(t for t in expand(spec)[0] if t.family == family)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_saved_network_reloads_with_its_config_factors_and_trial(tmp_path):
    spec = tiny_spec(tmp_path)
    trial = trial_of(spec, "resnet")
    cfg = trial.model_cfg.with_input(3 * 32 * 32, 10)
    model = weights.initial(cfg, seed=3)
    path = weights.save(tmp_path, trial, "final", model.state_dict(), cfg, epoch=7,
                        test_acc=0.5)
    assert path == tmp_path / "weights" / trial.trial_id / "final.pt"
    rec = torch.load(path, weights_only=True)  # plain values and tensors only
    assert rec["model_config"] == {"class": "ResNetConfig", **dataclasses.asdict(cfg)}
    assert rec["factors"] == trial.factors() and rec["seed"] == trial.seed
    assert rec["epoch"] == 7 and rec["test_acc"] == 0.5
    assert rec["trial"]["trial_id"] == trial.trial_id
    assert rec["trial"]["model_cfg"]["class"] == "ResNetConfig"
    loaded, _ = weights.load_network(path)
    assert weights.config_from_record(rec["model_config"]) == cfg
    assert same_state(loaded.state_dict(), model.state_dict()) and not loaded.training
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncated", "not a record"])
def test_a_damaged_file_is_moved_aside_and_counts_as_missing(tmp_path, capsys, damage):
    spec = tiny_spec(tmp_path)
    trial = trial_of(spec, "mlp")
    cfg = trial.model_cfg.with_input(3 * 32 * 32, 10)
    path = weights.save(tmp_path, trial, "final", weights.initial(cfg, 0).state_dict(), cfg, 1)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save([1, 2, 3], path)
    assert weights.load(path) is None and weights.load_network(path) is None
    assert not path.exists() and (path.parent / "final.pt.corrupt").exists()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and str(path) in err[0] and "moved aside" in err[0]
    assert weights.load(path) is None  # missing now: no second warning
    assert capsys.readouterr().err == ""


def test_a_config_of_another_family_is_an_error_not_damage():
    rec = weights.config_record(models.get_config("mlp", depth=4))
    with pytest.raises(ValueError, match="does not match"):
        weights.config_from_record({**rec, "class": "ResNetConfig"})
    with pytest.raises(ValueError, match="unknown"):
        weights.config_from_record({**rec, "colour": "red"})


def test_a_kept_network_reloads_to_the_same_test_accuracy(tmp_path):
    spec = tiny_spec(tmp_path, epochs=2)
    data = load_dataset(spec.train, "cpu")
    for family in ("mlp", "resnet"):
        trial = trial_of(spec, family)
        assert run_train_trial(trial, spec, spec.run_dir) == "completed"
        row = results.read_fragment_row(spec.run_dir, trial.trial_id)
        path = weights.weights_path(spec.run_dir, trial.trial_id, "final")
        model, rec = weights.load_network(path)
        _, acc = evaluate(model, data.test_x, data.test_y, "cpu", pick_precision("cpu"))
        assert acc == row["final_test_acc"] == rec["test_acc"]
        assert rec["epoch"] == 2
        assert not weights.weights_path(spec.run_dir, trial.trial_id, "init").exists()


def test_init_is_the_seeds_network_bit_for_bit_also_after_a_resume(tmp_path, monkeypatch):
    fresh = tiny_spec(tmp_path / "fresh", keep="all", epochs=2)
    trial = trial_of(fresh, "resnet")
    run_train_trial(trial, fresh, fresh.run_dir)
    init = torch.load(weights.weights_path(fresh.run_dir, trial.trial_id, "init"),
                      weights_only=True)
    torch.manual_seed(trial.seed)  # what the brief promises: the seed rebuilds it
    rebuilt = trial.model_cfg.with_input(3 * 32 * 32, 10).build()
    assert same_state(init["state_dict"], rebuilt.state_dict()) and init["epoch"] == 0
    # a trial that fails in epoch 2 and resumes from its epoch-1 checkpoint
    resumed = tiny_spec(tmp_path / "resumed", keep="all", epochs=2)
    monkeypatch.setenv("RESABLATE_FAULT", f"raise:{trial.trial_id}:2")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_train_trial(trial, resumed, resumed.run_dir)
    monkeypatch.delenv("RESABLATE_FAULT")
    run_train_trial(trial, resumed, resumed.run_dir)
    assert results.read_fragment_row(resumed.run_dir, trial.trial_id)["resumed_from_epoch"] == 2
    for when in ("init", "final"):
        a, b = (torch.load(weights.weights_path(s.run_dir, trial.trial_id, when),
                           weights_only=True) for s in (fresh, resumed))
        assert same_state(a["state_dict"], b["state_dict"]), when


def test_keep_none_writes_no_weights(tmp_path):
    spec = tiny_spec(tmp_path, keep="none")
    run_train_trial(trial_of(spec, "mlp"), spec, spec.run_dir)
    assert not os.path.exists(os.path.join(spec.run_dir, "weights"))
    assert not weights.kept_any(spec.run_dir)


@pytest.mark.parametrize("keep,init_measured,completed,files", [
    ("final", False, True, ["final"]), ("final", True, True, ["init", "final"]),
    ("final", True, False, ["init"]), ("final", False, False, []),
    ("all", False, True, ["init", "final"]), ("all", False, False, ["init"]),
    ("none", True, True, [])])
def test_files_to_keep(keep, init_measured, completed, files):
    assert weights.files_to_keep(keep, init_measured, completed) == files


@dataclasses.dataclass(frozen=True)
class M:  # what plan_lines reads of a Measurement
    name: str
    when: tuple
    cost: str = "cheap"


def test_the_plan_states_the_disk_and_the_measurements(tmp_path):
    spec = dataclasses.replace(tiny_spec(tmp_path), seeds=2)
    trials = expand(spec)[0]
    params = {t.family: models.count_params(t.model_cfg.build()) for t in trials}
    final_only = sum(params[t.family] for t in trials) * 4  # 2 seeds each
    lines = weights.plan_lines("final", [M("lesion", ("final",))], trials, spec.run_dir)
    assert lines[0] == ("measurements at the end of each trial: lesion (final, cheap) "
                        "(a diverged trial: its init points only)")
    assert f"about {weights._size(final_only)} for 4 trial(s)" in lines[1]
    assert "final.pt of each completed trial in" in lines[1]
    both = weights.plan_lines("final", [M("signal", ("init", "final"))], trials, spec.run_dir)
    assert f"about {weights._size(2 * final_only)}" in both[1]
    assert "init.pt (measured at init: signal)" in both[1]
    none = weights.plan_lines("none", [], trials, spec.run_dir)
    assert none[0].endswith(": none") and "impossible" in none[1]
    assert weights._size(1234) == "1.2 KB" and weights._size(5e9) == "5.0 GB"
