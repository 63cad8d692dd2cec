"""Recipes (ablations.recipes, ``--recipe``): what each one resolves to, that presets keep
the seed recipe, that typed flags win, that a recipe's factor level acts as the typed
flag, and that bad input is one line, exit 2, nothing written."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from ablations import arguments, recipes
from ablations.plan import expand, settings_line
from ablations.spec import AblationSpec, SpecError, TrainSettings, spec_from_dict, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.abspath("data")


def spec_of(argv):
    return arguments.spec_from_args(arguments.build_parser().parse_args(argv))


def test_he2016_resolves_to_the_papers_recipe_scaled_to_the_training_set():
    s = spec_of(["--families", "resnet", "--depths", "20,110", "--recipe", "he2016"])
    assert s.recipe == "he2016"
    # 4,500 training images (5,000 less 10% validation): 64k x 4500/45000 = 6,400 steps
    # = 177.8 epochs of 36 steps -> 178 epochs; drops at 3,200 and 4,800 steps -> epochs
    # 89 and 133; ResNet-110's lr 0.01 for 400 x 4500/45000 = 40 steps
    assert s.train == TrainSettings(
        dataset="cifar10", data_root=DATA, subset=5000, val_fraction=0.1, epochs=178, lr=0.1,
        momentum=0.9, weight_decay=1e-4, batch_size=128, milestones=(89, 133),
        stats_every=50, threads=None, device="auto", precision="auto", compile=False,
        warmup_epochs=0, decay="all", pad_mode="zero", normalize="pixel-mean",
        constant_warmup_steps=40, constant_warmup_depth=110)
    assert s.factors == (("branch_scale", ("one",)), ("shortcut", ("pad",)))
    assert recipes.get("he2016").schedule_steps(4500, 128) == 6400
    trials, skipped = expand(s)
    assert not skipped
    assert [t.trial_id for t in trials if t.seed == 0] == [
        "resnet-20-plain-s0", "resnet-20-residual-sc=pad-s0", "resnet-110-plain-s0",
        "resnet-110-residual-sc=pad-s0"]
    pad = next(t for t in trials if t.trial_id == "resnet-20-residual-sc=pad-s0").model_cfg
    assert pad.shortcut == "pad" and pad.branch_scale == "one" and pad.norm == "batch"
    validate(dataclasses.replace(s, out="/nonexistent-out"))


def test_he2016_on_45k_images_is_64k_iterations_with_drops_at_32k_and_48k():
    s = spec_of(["--families", "resnet", "--depths", "56", "--recipe", "he2016",
                 "--subset", "50000"])
    # 45,000 images: 352 steps per epoch; 64,000 / 352 = 181.8 -> 182 epochs; 32,000 /
    # 352 = 90.9 -> 91; 48,000 / 352 = 136.4 -> 136; warmup 400 steps
    assert (s.train.epochs, s.train.milestones) == (182, (91, 136))
    assert s.train.constant_warmup_steps == 400
    assert recipes.get("he2016").schedule_steps(45000, 128) == 64000


def test_he2016_epochs_typed_sets_the_length_and_drops_at_half_and_three_quarters():
    s = spec_of(["--families", "resnet", "--depths", "20", "--recipe", "he2016",
                 "--epochs", "10"])
    assert (s.train.epochs, s.train.milestones) == (10, (5, 8))
    assert spec_of(["--families", "resnet", "--depths", "20", "--recipe", "he2016",
                    "--epochs", "1"]).train.milestones == ()


@pytest.mark.parametrize("argv", [["--models", "small_resnet18"], ["--models", "seed_mlp5"],
                                  ["--models", "small_resnet18,seed_mlp5", "--mode", "probe"]])
def test_presets_keep_the_seed_recipe_todays_settings(argv):
    s = spec_of(argv)
    assert s.recipe == "seed" and s.factors == ()
    # TrainSettings' defaults are today's (the replicated article's) settings, field by field
    assert s.train == TrainSettings(data_root=DATA)
    assert (s.train.lr, s.train.momentum, s.train.weight_decay, s.train.batch_size,
            s.train.epochs, s.train.milestones, s.train.decay) == \
        (0.1, 0.9, 5e-4, 128, 30, (15, 25), "all")
    assert [t.trial_id for t in expand(s)[0] if t.seed == 0][0].endswith("-plain-s0")


def test_default_recipe_is_seed_plus_skipinit_pre_ln_mlps_and_decay_on_weights():
    s = spec_of(["--families", "mlp,resnet", "--depths", "8"])
    assert s.recipe == "default"
    assert s.train == dataclasses.replace(TrainSettings(data_root=DATA), decay="weights")
    assert s.factors == (("branch_scale", ("zero",)),)
    assert s.family_factors == (("mlp", (("norm", ("layer",)), ("block", ("pre",)))),)
    ids = [t.trial_id for t in expand(s)[0]]
    assert "mlp-8-residual-norm=layer-block=pre-scale=zero-s0" in ids
    assert "resnet-8-residual-scale=zero-s0" in ids  # the mlp's levels stay the mlp's
    # a resnet-only sweep gets no mlp levels; a typed --norm sets every family's norm
    assert spec_of(["--families", "resnet", "--depths", "8"]).family_factors == ()
    typed = spec_of(["--families", "mlp,resnet", "--depths", "8", "--norm", "batch"])
    assert typed.family_factors == (("mlp", (("block", ("pre",)),)),)
    assert {t.model_cfg.norm for t in expand(typed)[0]} == {"batch"}
    assert spec_of(["--mode", "probe"]).recipe == "seed"  # a probe's networks at init


def test_a_recipes_factor_level_is_exactly_the_typed_flag():
    base = ["--families", "mlp,resnet", "--depths", "8", "--seeds", "2"]
    by_recipe = spec_of(base)
    typed = spec_of([*base, "--branch-scale", "zero"])
    assert by_recipe == typed
    a, b = expand(by_recipe)[0], expand(typed)[0]
    assert [t.trial_id for t in a] == [t.trial_id for t in b]
    assert "mlp-8-residual-norm=layer-block=pre-scale=zero-s1" in [t.trial_id for t in a]
    assert [t.record() for t in a] == [t.record() for t in b]
    assert [t.model_cfg for t in a] == [t.model_cfg for t in b]


def test_typed_flags_override_the_recipe():
    s = spec_of(["--families", "resnet", "--depths", "20", "--recipe", "he2016", "--lr", "0.05",
                 "--momentum", "0.8", "--weight-decay", "5e-4", "--batch-size", "64",
                 "--decay", "weights", "--pad-mode", "reflect", "--normalize", "channel",
                 "--epochs", "6", "--milestones", "2", "--warmup-epochs", "1",
                 "--shortcut", "projection", "--branch-scale", "zero"])
    t = s.train
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.decay, t.pad_mode, t.normalize,
            t.epochs, t.milestones, t.warmup_epochs) == \
        (0.05, 0.8, 5e-4, 64, "weights", "reflect", "channel", 6, (2,), 1)
    assert s.factors == (("branch_scale", ("zero",)), ("shortcut", ("projection",)))
    d = spec_of(["--depths", "8", "--branch-scale", "one", "--decay", "all"])
    assert d.recipe == "default" and d.factors == (("branch_scale", ("one",)),)
    assert d.train.decay == "all"
    assert "mlp-8-residual-norm=layer-block=pre-s0" in [t.trial_id for t in expand(d)[0]]
    assert spec_of(["--models", "seed_mlp5", "--recipe", "default"]).factors == \
        (("branch_scale", ("zero",)),)


def test_seeds_default_per_mode_and_smoke_keeps_one():
    assert spec_of([]).seeds == 3
    assert spec_of(["--mode", "probe"]).seeds == 100
    assert spec_of(["--seeds", "5", "--mode", "probe"]).seeds == 5
    smoke = spec_of(["--smoke"])
    assert smoke.seeds == 1
    assert "1 seed(s) per cell (--smoke)" in settings_line(smoke)
    assert "3 seed(s) per cell" in settings_line(spec_of(["--depths", "8"]))


def test_settings_line_names_the_recipe_and_the_share_of_its_schedule():
    line = settings_line(spec_of(["--families", "resnet", "--depths", "20", "--recipe",
                                        "he2016", "--epochs", "89"]))
    assert line.startswith("recipe he2016: lr 0.1, momentum 0.9, weight decay 0.0001 on every "
                           "parameter, batch 128, 89 epoch(s) = 3204 steps (50% of the "
                           "recipe's 6400), x0.1 after epochs 44,67, zero-padded")
    assert "zero-padded crops, pixel-mean normalization; --branch-scale one, --shortcut pad" \
        in line
    deep = settings_line(spec_of(["--families", "resnet", "--depths", "20,110",
                                        "--recipe", "he2016"]))
    assert "x0.1 after epochs 89,133, lr x0.1 for 40 steps at depth >= 110, zero" in deep
    assert "no lr drops" in settings_line(spec_of(["--depths", "8", "--milestones", ""]))


def test_an_old_spec_json_without_recipe_loads_as_the_seed_recipe():
    old = spec_from_dict({"mode": "train", "seeds": 1, "train": {"epochs": 30, "lr": 0.1}})
    assert old.recipe == "seed" and old.train.decay == "all"
    assert old.train.pad_mode == "reflect" and old.train.normalize == "channel"
    assert old.train.constant_warmup_steps == 0
    new = spec_of(["--families", "resnet", "--depths", "20", "--recipe", "he2016"])
    assert spec_from_dict(json.loads(json.dumps(dataclasses.asdict(new)))) == new


@pytest.mark.parametrize("argv", [
    ["--families", "resnet", "--depths", "18"],
    ["--families", "resnet", "--depths", "20,34"],
    ["--families", "mlp", "--depths", "20"],
    ["--families", "mlp,resnet", "--depths", "20"],
    ["--models", "seed_mlp5"],
])
def test_he2016_refuses_other_families_and_depths(argv):
    with pytest.raises(SpecError) as e:
        validate(spec_of([*argv, "--recipe", "he2016"]))
    msg = str(e.value)
    assert "\n" not in msg and "--recipe he2016" in msg
    assert "valid depths: 8, 14, 20, 26, 32" in msg or "use --families resnet" in msg


def test_he2016_accepts_a_6n_plus_2_preset():
    s = spec_of(["--models", "small_resnet18", "--recipe", "he2016"])  # depth 14 = 6 x 2 + 2
    validate(dataclasses.replace(s, out="/nonexistent-out"))
    residual = [t for t in expand(s)[0] if t.residual]
    assert residual[0].trial_id == "small_resnet18-residual-sc=pad-s0"
    assert all(t.model_cfg.shortcut == "pad" for t in residual)


@pytest.mark.parametrize("argv,needle", [
    (["--recipe", "fancy"], "argument --recipe: invalid choice: 'fancy' (choose from 'seed', "
                            "'default', 'he2016')"),
    (["--recipe", "he2016", "--families", "resnet", "--depths", "18"],
     "--recipe he2016: resnet depth 18 is not 6n+2; valid depths: 8, 14, 20, 26, 32"),
    (["--recipe", "he2016", "--depths", "20"], "--recipe he2016 trains the resnet family only; "
                                              "got mlp"),
    (["--decay", "some"], "argument --decay: invalid choice: 'some'"),
])
def test_cli_bad_recipe_input_is_one_line_exit_2_nothing_written(tmp_path, argv, needle):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *argv, "--dataset",
                        "synthetic", "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not out.exists()


def test_unknown_recipe_in_a_stored_spec_is_one_line():
    with pytest.raises(SpecError, match="unknown --recipe 'fancy'; valid recipes: seed, "
                                        "default, he2016"):
        validate(AblationSpec(recipe="fancy", mode="probe"))


def test_he2016_data_zero_padding_and_mean_image():
    from ablations.data import load_dataset, pad_images
    t = TrainSettings(dataset="synthetic", subset=300, val_fraction=0.2)
    he = dataclasses.replace(t, normalize="pixel-mean", pad_mode="zero")
    x = load_dataset(he, "cpu").train_x
    assert x.mean(0).abs().max() < 1e-5          # the mean image is subtracted, per pixel
    raw = load_dataset(t, "cpu").train_x
    assert not torch.allclose(x.std(), torch.tensor(1.0), atol=0.05)  # no std division
    assert torch.allclose(raw.std((0, 2, 3)), torch.ones(3), atol=1e-3)  # channel: std 1
    padded = pad_images(x[:2], mode="zero")
    assert padded.shape == (2, 3, 40, 40)
    assert padded[:, :, :4].abs().sum() == 0 and padded[:, :, :, -4:].abs().sum() == 0
    assert torch.equal(padded[:, :, 4:-4, 4:-4], x[:2])
    reflect = pad_images(x[:2])
    assert torch.equal(reflect[:, :, 3, 4:-4], x[:2, :, 1])  # reflect: row 1 mirrored


def test_constant_warmup_runs_the_deep_trials_at_a_tenth_of_the_lr(tmp_path, sgd_lrs):
    from ablations import results
    from ablations.train import run_train_trial
    seen = sgd_lrs
    # 240 training images at batch 64: 4 steps per epoch
    t = TrainSettings(dataset="synthetic", subset=300, val_fraction=0.2, epochs=2,
                      milestones=(1,), batch_size=64, stats_every=0, lr=0.05, device="cpu",
                      constant_warmup_steps=3, constant_warmup_depth=4)
    spec = AblationSpec(families=("mlp",), depths=(4,), residual="on", seeds=1,
                        out=str(tmp_path), name="w", train=t, measure=(), keep_weights="none")
    mlp = expand(spec)[0][0]
    assert run_train_trial(mlp, spec, spec.run_dir) == "completed"
    assert seen == pytest.approx([0.005] * 3 + [0.05] + [0.005] * 4)
    seen.clear()
    shallower = dataclasses.replace(spec, name="v", train=dataclasses.replace(
        t, constant_warmup_depth=5))  # depth 4 < 5: no warmup
    assert run_train_trial(mlp, shallower, shallower.run_dir) == "completed"
    assert seen == pytest.approx([0.05] * 4 + [0.005] * 4)
    row = results.read_fragment_row(shallower.run_dir, mlp.trial_id)
    assert row["steps"] == 8 and row["recipe"] == "seed"
