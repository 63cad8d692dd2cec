import dataclasses
import json
import os
import subprocess
import sys

import pytest

from ablations import arguments, resume
from ablations.plan import expand, group_by_cell
from ablations.spec import AblationSpec, Execution, SpecError, Study, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spec_of(argv):
    return arguments.spec_from_args(arguments.build_parser().parse_args(argv))


def test_defaults_are_the_products_main_command():
    s = spec_of([])
    assert s.families == ("mlp", "resnet") and s.depths == (5, 18, 34)
    assert s.residual == "both" and s.mode == "train" and s.wandb == "auto"


def test_expand_cells_seeds_and_skips():
    s = spec_of(["--depths", "5,18", "--seeds", "2", "--mode", "probe"])
    trials, skipped = expand(s)
    ids = [t.trial_id for t in trials]
    assert len(trials) == 3 * 2 * 2  # mlp-5, mlp-18, resnet-18 x both x 2 seeds
    assert "resnet-18-plain-s1" in ids and "mlp-5-residual-s0" in ids
    assert len(set(ids)) == len(ids)
    assert skipped == [("resnet-5", pytest.approx(skipped[0][1]))]
    assert "nearest valid: 4 or 6" in skipped[0][1]
    assert [len(g) for g in group_by_cell(trials)] == [2] * 6


def test_models_presets_replace_families_x_depths():
    trials, skipped = expand(spec_of(["--models", "small_resnet18", "--residual", "on",
                                      "--seeds", "1"]))
    assert [t.trial_id for t in trials] == ["small_resnet18-residual-s0"]
    assert trials[0].depth == 14 and trials[0].family == "resnet" and not skipped


@pytest.mark.parametrize("argv,needle", [
    (["--families", "vgg"], "unknown family 'vgg'; valid families: mlp, resnet"),
    (["--models", "resnet99"], "valid model presets: seed_mlp5, small_resnet18"),
    (["--models", "mlp"], "--models takes presets, 'mlp' is a family"),
    (["--depths", "1"], "depth 1 is too small"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--milestones", "40", "--epochs", "30"], "must be < --epochs 30"),
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
])
def test_validation_errors_name_the_problem(argv, needle):
    with pytest.raises(SpecError) as e:
        validate(spec_of(argv))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_out_that_is_a_file_and_existing_results_are_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(SpecError, match="is a file"):
        validate(AblationSpec(out=str(f), mode="probe"))
    (tmp_path / "r" / "done").mkdir(parents=True)
    (tmp_path / "r" / "done" / "spec.json").write_text("{}")
    with pytest.raises(SpecError, match="results already exist"):
        validate(AblationSpec(out=str(tmp_path / "r"), name="done", mode="probe"))
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("argv,needle", [
    (["--residual", "maybe"], "argument --residual: invalid choice: 'maybe' (choose from"),
    (["--depths", "5,x"], "'x' is not an integer"),
    (["--depths", "1"], "depth 1 is too small"),
    (["--families", "mlp,vgg"], "unknown family 'vgg'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--wandb", "loud"], "invalid choice: 'loud' (choose from 'auto', 'online', 'offline'"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2: this machine has no GPU; valid: 0"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial above 1 must be a whole number"),
    (["--address", "127.0.0.1:9"], "--address 127.0.0.1:9: nobody listens there"),
    (["--address", "nonsense"], "--address 'nonsense' is not host:port or 'auto'"),
    (["--resume", "nosuch"], "--resume nosuch: no sweep"),
    (["--retry-failed", "nosuch"], "--retry-failed nosuch: no sweep"),
    (["--tune", "lr,momentum", "--mode", "train"],
     "unknown --tune hyperparameter 'momentum'; valid --tune hyperparameters: lr, weight_decay"),
    (["--tune", "lr", "--samples", "0", "--mode", "train"], "--samples must be >= 1"),
    (["--tune", "lr"], "--tune needs --mode train"),
    (["--tune-range", "lr=1:0.1", "--tune", "lr", "--mode", "train"], "0 < low < high"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
    (["--mode", "fit"], "invalid choice: 'fit'"),
    (["--warmup-epochs", "30", "--mode", "train"], "--warmup-epochs must be in 0..29"),
    (["--norm", "group"], "--norm: unknown level 'group'; valid levels: batch, layer, none"),
    (["--branch-scale", "one,half"], "--branch-scale: unknown level 'half'; valid levels: one, "
                                     "invsqrt, zero"),
    (["--families", "mlp", "--shortcut", "pad"], "--shortcut applies to resnet only; this sweep "
                                                 "has mlp"),
    (["--block", ","], "--block is empty; e.g. post,pre"),
    (["--families", "mlp", "--norm", "batch"], "--norm batch with --probe-batch 1"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, argv, needle):
    out = tmp_path / "results"
    mode = [] if {"--mode", "--resume", "--retry-failed"} & set(argv) else ["--mode", "probe"]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *argv, *mode,
                        "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not out.exists()


def test_cli_out_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("precious")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--mode", "probe",
                        "--out", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "is a file" in p.stderr
    assert f.read_text() == "precious"


def test_list_models_prints_counts():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--list-models"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    assert "small_resnet18" in p.stdout and "175,258" in p.stdout and "seed_mlp5" in p.stdout


@pytest.mark.parametrize("epochs,expected", [(30, (15, 25)), (10, (5, 8)), (2, (1,)), (1, ()),
                                             (60, (30, 50))])
def test_default_milestones_follow_the_seed_schedule(epochs, expected):
    s = spec_of(["--epochs", str(epochs)])
    assert s.train.milestones == expected
    validate(s)


def test_explicit_milestones_are_kept_and_checked():
    assert spec_of(["--milestones", "3,7", "--epochs", "10"]).train.milestones == (3, 7)
    assert spec_of(["--milestones", ""]).train.milestones == ()


@pytest.mark.parametrize("res,units,asked,expected", [
    ((2, 0, 2, 0), 1, (None, None), (2, 0.0)),      # one trial gets every core
    ((2, 0, 2, 0), 12, (None, None), (1, 0.0)),     # 12 trials share 2 cores
    ((2, 0, 1, 0), 4, (None, None), (1, 0.0)),      # two 1-CPU nodes
    ((16, 1, 16, 1), 10, (None, None), (1, 0.1)),   # 10 trials packed on one GPU
    ((16, 8, 16, 8), 4, (None, None), (4, 1.0)),    # 4 trials, 8 GPUs: 1 GPU each
    ((16, 1, 16, 1), 10, (None, 0.25), (4, 0.25)),  # 4 at a time on the GPU
    ((16, 1, 16, 1), 10, (3, 0.5), (3, 0.5)),       # explicit requests are kept
])
def test_plan_resources_defaults_use_every_cpu_and_gpu(res, units, asked, expected):
    from ablations.cluster import plan_resources
    assert plan_resources(*res, units, *asked) == expected


def test_plan_resources_refuses_what_no_node_has():
    from ablations.cluster import plan_resources
    with pytest.raises(SpecError, match="--gpus-per-trial 2: the Ray cluster has no GPU"):
        plan_resources(2, 0, 2, 0, 4, None, 2)
    with pytest.raises(SpecError, match="at most 1 GPU"):
        plan_resources(4, 2, 2, 1, 4, None, 2)
    with pytest.raises(SpecError, match=r"--cpus-per-trial 3: no node .*\(largest: 2\)"):
        plan_resources(4, 0, 2, 0, 4, 3, None)


@pytest.mark.parametrize("cpus,gpus,units,asked,expected", [
    (2, 0, 12, (None, None), True),     # 12 trials, 1 CPU each: every prestarted worker runs
    (2, 0, 12, (1, None), True),
    (2, 0, 1, (None, None), False),     # one 2-CPU trial: a second worker would idle
    (2, 0, 12, (2, None), False),       # --cpus-per-trial 2
    (8, 0, 4, (None, None), False),     # 4 trials on 8 CPUs (2 CPUs each)
    (4, 1, 8, (1, 0.25), True),         # 4 at a time on the GPU, 1 CPU each, 4 CPUs
    (16, 1, 10, (None, None), False),   # 10 GPU-packed trials, 16 CPUs
])
def test_prewarm_only_when_every_cpu_runs_a_trial(monkeypatch, cpus, gpus, units, asked,
                                                   expected):
    import ray._private.utils
    import torch

    from ablations import cluster
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: cpus)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.delenv("RESABLATE_PREWARM", raising=False)
    spec = AblationSpec(cpus_per_trial=asked[0], gpus_per_trial=asked[1])
    assert cluster.plan_local(spec, units) is expected
    monkeypatch.setenv("RESABLATE_PREWARM", "0")
    assert cluster.plan_local(spec, units) is False
    monkeypatch.delenv("RESABLATE_PREWARM")
    import dataclasses
    assert cluster.plan_local(dataclasses.replace(spec, address="auto"), units) is False


def test_plan_local_refuses_what_this_machine_lacks_even_without_prewarm(monkeypatch):
    import ray._private.utils
    import torch

    from ablations import cluster
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("RESABLATE_PREWARM", "0")
    with pytest.raises(SpecError, match="--gpus-per-trial 2: the Ray cluster has no GPU"):
        cluster.plan_local(AblationSpec(gpus_per_trial=2), 4)
    with pytest.raises(SpecError, match=r"--cpus-per-trial 3: no node .*\(largest: 2\)"):
        cluster.plan_local(AblationSpec(cpus_per_trial=3), 4)


def test_stored_spec_round_trips_through_json(tmp_path):
    import dataclasses as dc
    import json

    from ablations.spec import spec_from_dict
    spec = spec_of(["--tune", "lr", "--tune-range", "lr=1e-3:0.5", "--depths", "5,18",
                    "--milestones", "3,4", "--epochs", "5"])
    back = spec_from_dict(json.loads(json.dumps(dc.asdict(spec))))
    assert back == spec


def _stored_sweep(tmp_path, argv, name="x"):
    """A results folder holding the spec.json that ``argv`` would have started."""
    spec = spec_of([*argv, "--name", name, "--out", str(tmp_path)])
    (tmp_path / name).mkdir()
    (tmp_path / name / "spec.json").write_text(json.dumps({"spec": dataclasses.asdict(spec)}))
    return spec


def _resume(tmp_path, argv):
    argv = [*argv, "--out", str(tmp_path)]
    parser = arguments.build_parser()
    return resume.stored_spec(parser.parse_args(argv), arguments.given_flags(parser, argv))


ORIGINAL = ["--families", "mlp", "--depths", "4,5", "--mode", "train", "--dataset", "synthetic",
            "--subset", "500", "--epochs", "3", "--seeds", "2", "--tune-range", "lr=0.01:0.5"]


def test_resume_accepts_the_original_command_repeated(tmp_path):
    stored = _stored_sweep(tmp_path, ORIGINAL)
    spec, kind = _resume(tmp_path, [*ORIGINAL, "--resume", "x"])  # up-arrow, append
    assert kind == "resume" and spec == dataclasses.replace(stored, out=str(tmp_path))
    spec, _ = _resume(tmp_path, ["--resume", "x", "--wandb", "offline", "--name", "x"])
    assert spec.depths == (4, 5) and spec.wandb == "offline"


def test_resume_accepts_a_repeated_smoke_command(tmp_path):
    _stored_sweep(tmp_path, ["--smoke", "--mode", "probe"])
    spec, _ = _resume(tmp_path, ["--smoke", "--mode", "probe", "--resume", "x"])
    assert spec.smoke and spec.depths == (4,)
    with pytest.raises(SpecError, match="--smoke was True, now False|--mode was probe, now train"):
        _resume(tmp_path, ["--resume", "x", "--mode", "train"])


@pytest.mark.parametrize("changed,needle", [
    (["--depths", "4"], "--depths was 4,5, now 4;"),
    (["--epochs", "30"], "--epochs was 3, now 30;"),  # typed, although it is the default
    (["--dataset", "cifar10"], "--dataset was synthetic, now cifar10;"),
    (["--tune-range", "lr=0.01:0.6"], "--tune-range was lr,0.01,0.5, now lr,0.01,0.6;"),
    (["--name", "y"], "--resume x: --name y differs from the sweep's name"),
])
def test_resume_refuses_a_changed_study_flag_naming_both_values(tmp_path, changed, needle):
    _stored_sweep(tmp_path, ORIGINAL)
    with pytest.raises(SpecError) as e:
        _resume(tmp_path, [*changed, "--resume", "x"])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_resume_with_a_changed_flag_exits_2_and_changes_nothing(tmp_path):
    _stored_sweep(tmp_path, ORIGINAL)
    before = (tmp_path / "x" / "spec.json").read_text()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *ORIGINAL[:-1],
                        "lr=0.02:0.5", "--resume", "x", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--tune-range was" in p.stderr
    assert (tmp_path / "x" / "spec.json").read_text() == before
    assert sorted(os.listdir(tmp_path / "x")) == ["spec.json"]


def test_plan_does_not_cross_a_factor_where_it_does_not_apply():
    s = spec_of(["--families", "mlp,resnet", "--depths", "8", "--branch-scale",
                 "one,invsqrt,zero", "--shortcut", "projection,pad", "--mode", "probe",
                 "--seeds", "1"])
    trials, skipped = expand(s)
    assert not skipped
    cells = sorted(t.trial_id[:-3] for t in trials)
    # mlp: 1 plain + 3 scales (no shortcut type); resnet: 1 plain + 3 scales x 2 shortcuts
    assert cells == sorted(
        ["mlp-8-plain", "mlp-8-residual", "mlp-8-residual-scale=invsqrt",
         "mlp-8-residual-scale=zero", "resnet-8-plain", "resnet-8-residual",
         "resnet-8-residual-sc=pad", "resnet-8-residual-scale=invsqrt",
         "resnet-8-residual-scale=invsqrt-sc=pad", "resnet-8-residual-scale=zero",
         "resnet-8-residual-scale=zero-sc=pad"])
    plain = [t for t in trials if not t.residual]
    assert all(t.factors()["branch_scale"] == "n/a" for t in plain)
    pad = next(t for t in trials if t.trial_id == "resnet-8-residual-sc=pad-s0")
    assert pad.model_cfg.shortcut == "pad" and pad.model_cfg.branch_scale == "one"
    # defaults: the same trials, ids and configs as before the factor flags existed
    base = spec_of(["--families", "mlp,resnet", "--depths", "8", "--mode", "probe",
                    "--seeds", "1"])
    assert [t.trial_id for t in expand(base)[0]] == ["mlp-8-plain-s0", "mlp-8-residual-s0",
                                                     "resnet-8-plain-s0", "resnet-8-residual-s0"]


def test_device_cuda_without_a_gpu_per_trial_is_one_line():
    from ablations.cluster import check_device
    check_device("cuda", 1.0, 0.25)
    check_device("cpu", 0.0, 0.0)
    check_device("auto", 0.0, 0.0)
    with pytest.raises(SpecError, match=r"^--device cuda: the Ray cluster has no GPU; valid: "
                                        r"--device auto or cpu$"):
        check_device("cuda", 0.0, 0.0)
    with pytest.raises(SpecError, match=r"--gpus-per-trial 0 gives the trials no GPU"):
        check_device("cuda", 2.0, 0.0)


# spec.json's "spec" as sweeps wrote it before the spec was split into Study and Execution
BEFORE_SPLIT = json.loads(
    '{"families": ["mlp", "resnet"], "depths": [4, 6], "residual": "both", "models": [], '
    '"mode": "train", "seeds": 3, "recipe": "default", "out": "/tmp/r", "name": "fixed", '
    '"wandb": "disabled", "smoke": false, "probe_batch": 1, "cpus_per_trial": 1, '
    '"gpus_per_trial": 0.0, "address": null, "storage": null, "max_failures": 2, "tune": [], '
    '"samples": 8, "tune_ranges": [], "factors": [["branch_scale", ["zero"]]], '
    '"family_factors": [["mlp", [["norm", ["layer"]], ["block", ["pre"]]]]], '
    '"measure": ["lesion", "shattering", "responses", "signal"], "keep_weights": "final", '
    '"train": {"dataset": "synthetic", "data_root": "/tmp/data", "subset": 512, '
    '"val_fraction": 0.1, "epochs": 2, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005, '
    '"batch_size": 128, "milestones": [1], "stats_every": 4, "threads": null, '
    '"device": "auto", "precision": "auto", "compile": false, "warmup_epochs": 0, '
    '"decay": "weights", "pad_mode": "reflect", "normalize": "channel", '
    '"constant_warmup_steps": 0, "constant_warmup_depth": 0}}')


def test_spec_is_its_study_and_its_execution():
    spec = spec_of(["--depths", "4,6", "--norm", "none", "--cpus-per-trial", "2", "--name", "n"])
    study, execution = {f.name for f in dataclasses.fields(Study)}, \
        {f.name for f in dataclasses.fields(Execution)}
    assert not study & execution
    assert study | execution == {f.name for f in dataclasses.fields(AblationSpec)}
    assert spec.study.depths == (4, 6) and spec.execution.cpus_per_trial == 2
    assert AblationSpec.of(spec.study, spec.execution) == spec
    assert spec.execution.run_dir == spec.run_dir == os.path.join("results", "n")


def test_spec_json_keeps_its_keys_values_and_order():
    from ablations.spec import spec_from_dict, spec_to_dict
    spec = spec_from_dict(BEFORE_SPLIT)
    # written again, byte for byte what the sweep wrote before the split, plus the
    # execution settings added since, at their defaults
    again = spec_to_dict(spec)
    assert again.pop("checkpoint_every") == 10.0
    assert json.dumps(again) == json.dumps(BEFORE_SPLIT)
    assert spec.family_factors == (("mlp", (("norm", ("layer",)), ("block", ("pre",)))),)
    fresh = spec_of(["--tune", "lr", "--depths", "5"])
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(fresh)))) == fresh


def test_every_flag_is_an_execution_or_a_study_flag():
    """A flag typed with --resume is either one that may change, the sweep's --name, or a
    study flag whose stored value can be compared (once, --wandb-report was none)."""
    parser = arguments.build_parser()
    spec = spec_of([])
    for action in parser._actions:
        dest = action.dest
        if dest in resume.EXECUTION_FLAGS | resume.INVOCATION_FLAGS | {"help", "name"}:
            continue
        resume.study_value(spec.study, dest)  # AttributeError for a flag of neither kind
    assert resume.EXECUTION_FLAGS == {"out", "wandb", "cpus_per_trial", "gpus_per_trial",
                                      "address", "storage", "max_failures", "checkpoint_every", "resume",
                                      "retry_failed", "wandb_report", "dry_run"}


def test_resume_takes_the_execution_flags_typed_now(tmp_path):
    stored = _stored_sweep(tmp_path, [*ORIGINAL, "--max-failures", "5", "--cpus-per-trial",
                                      "2"])
    spec, _ = _resume(tmp_path, ["--resume", "x", "--wandb-report", "team/project"])
    assert spec == dataclasses.replace(stored, out=str(tmp_path))  # nothing typed: stored
    spec, _ = _resume(tmp_path, ["--resume", "x", "--max-failures", "2", "--storage", "st",
                                 "--address", "auto"])
    assert spec.max_failures == 2 and spec.cpus_per_trial == 2 and spec.address == "auto"
    assert spec.storage == os.path.abspath("st") and spec.study == stored.study
