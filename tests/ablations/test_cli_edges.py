"""sweep.py's edges a newcomer meets first: ``--smoke`` with study flags, its statistics,
``--list-models --families``, resource errors before the W&B line and Ray, ``--where``
naming what it found, and a missing CIFAR-10 downloaded only with ``--download``.
In-process where the seams allow (Ray and the download are replaced and must not be
reached), a subprocess where the command line itself is the subject."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import sweep as sweep_py
from ablations import arguments, cluster, tracking
from ablations.data import DataError, cifar_folder
from ablations.spec import SpecError
from ablations.where import ResultsError, apply_where

ROOT = Path(__file__).resolve().parents[2]


def spec_of(*argv):
    return arguments.spec_from_args(arguments.build_parser().parse_args(list(argv)))


# --------------------------------------------------------------------------- --smoke

def test_smoke_keeps_the_study_flags_typed_with_it():
    s = spec_of("--smoke", "--depths", "18,34", "--seeds", "5", "--dataset", "cifar10",
                "--epochs", "30")
    assert s.smoke and s.depths == (18, 34) and s.seeds == 5
    assert s.train.dataset == "cifar10" and s.train.epochs == 30
    assert s.train.milestones == (15, 25)  # the recipe's for the typed length, not smoke's 1
    assert s.train.subset == 512  # not typed: the smoke's


def test_smoke_alone_is_the_smallest_real_sweep():
    s = spec_of("--smoke")
    assert (s.depths, s.seeds, s.train.dataset, s.train.subset) == ((4,), 1, "synthetic", 512)
    assert (s.train.epochs, s.train.milestones) == (16, (12,))
    plain = spec_of()  # without --smoke the usual defaults
    assert (plain.depths, plain.train.dataset, plain.train.subset) == ((5, 18, 34), "cifar10",
                                                                        5000)
    assert plain.train.stats_every == 50


@pytest.mark.parametrize("argv", [("--smoke",), ("--smoke", "--epochs", "5"),
                                  ("--smoke", "--dataset", "cifar10", "--subset", "2000")])
def test_smoke_statistics_sample_through_training(argv):
    t = spec_of(*argv).train
    steps = t.epochs * math.ceil(t.train_images / t.batch_size)
    sampled = [s for s in range(steps) if s % t.stats_every == 0]  # as ablations.train does
    assert len(sampled) >= 5 and sampled[-1] >= steps // 2, (steps, t.stats_every)
    assert spec_of(*argv, "--stats-every", "3").train.stats_every == 3  # typed: kept


# --------------------------------------------------------------------------- --list-models

def run_cli(cwd, *argv):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ""})


def test_list_models_follows_families_and_depths(tmp_path):
    p = run_cli(tmp_path, "--list-models", "--families", "mlp", "--depths", "5")
    assert p.returncode == 0, p.stderr
    labels = [line.split()[0] for line in p.stdout.splitlines() if line[:1].strip()]
    assert labels == ["mlp-5"]
    p = run_cli(tmp_path, "--list-models", "--families", "mlx")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
    assert "unknown family 'mlx'; valid: mlp, resnet" in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_list_models_of_presets_and_of_everything(capsys):
    assert sweep_py.main(["--list-models", "--models", "seed_mlp5"]) == 0
    labels = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln[:1].strip()]
    assert labels == ["seed_mlp5"]
    assert sweep_py.main(["--list-models", "--depths", "5"]) == 0  # neither typed: every model
    labels = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln[:1].strip()]
    assert labels == ["mlp-5", "resnet-5", "seed_mlp5", "small_resnet18"]


# --------------------------------------------------------------------------- resources

@pytest.fixture
def no_gpu_no_ray(monkeypatch):
    """This machine without a GPU; starting Ray or resolving the W&B mode is recorded
    (neither may happen before a refusal)."""
    import ray._private.utils
    import torch
    reached = []
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: reached.append("ray"))
    monkeypatch.setattr(tracking, "resolve_mode", lambda *a, **k: reached.append("wandb"))
    return reached


@pytest.mark.parametrize("flags,needle", [
    (["--device", "cuda"], "--device cuda: this machine has no GPU; valid: --device auto"),
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2: this machine has no GPU; valid: 0"),
])
def test_resource_errors_come_before_the_wandb_line_and_ray(tmp_path, capsys, no_gpu_no_ray,
                                                            flags, needle):
    code = sweep_py.main(["--smoke", "--wandb", "offline", "--out", str(tmp_path / "res"),
                          *flags])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and err.strip().count("\n") == 0, err
    assert no_gpu_no_ray == [] and "W&B" not in out and out == ""
    assert not (tmp_path / "res").exists()  # nothing on disk, not even the results folder


def test_a_cluster_that_refuses_the_request_prints_no_wandb_line(tmp_path, capsys,
                                                                no_gpu_no_ray, monkeypatch):
    def refuse(spec, units):
        raise SpecError("--gpus-per-trial 4: the Ray cluster has at most 1 GPU(s) per node")
    monkeypatch.setattr(cluster, "resolve_resources", refuse)
    monkeypatch.setattr(cluster, "disconnect", lambda: None)
    code = sweep_py.main(["--smoke", "--wandb", "offline", "--out", str(tmp_path / "res"),
                          "--address", "auto"])
    out, err = capsys.readouterr()
    assert code == 2 and "at most 1 GPU" in err
    assert no_gpu_no_ray == ["ray"] and "W&B" not in out  # connected, refused, no W&B line


# --------------------------------------------------------------------------- --where

def test_where_names_the_key_it_found_nothing_for():
    trials = pd.DataFrame({"family": ["resnet", "resnet"], "model": ["resnet", "resnet"],
                           "depth": [4, 4], "residual": [True, False], "seed": [0, 0]})
    with pytest.raises(ResultsError) as e:
        apply_where({"trials": trials}, {"depth": [18]})
    assert str(e.value) == ("--where depth=18: no such trials; present: 4 (the depth values "
                            "in these results)")


# --------------------------------------------------------------------------- CIFAR-10

@pytest.fixture
def downloads(monkeypatch):
    """torchvision's CIFAR-10 download replaced by one that records its calls and fails
    as offline would (after making the folder, as torchvision does)."""
    import torchvision
    calls = []

    def offline(root, *a, **k):
        calls.append(root)
        os.makedirs(root, exist_ok=True)
        raise OSError("network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    return calls


def test_a_missing_cifar10_is_not_downloaded_unasked(tmp_path, downloads):
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        cifar_folder(str(root), download=False)
    msg = str(e.value)
    assert f"CIFAR-10 not found in {root / 'cifar-10-batches-py'}" in msg
    assert "--download (about 170 MB)" in msg and "--data-root DIR" in msg and "\n" not in msg
    assert downloads == [] and not root.exists()


def test_the_sweep_downloads_only_with_download(tmp_path, capsys, downloads, no_gpu_no_ray):
    argv = ["--depths", "4", "--seeds", "1", "--wandb", "offline", "--out", str(tmp_path / "r"),
            "--data-root", str(tmp_path / "data")]
    assert sweep_py.main(argv) == 2
    err = capsys.readouterr().err
    assert "--download (about 170 MB)" in err and err.count("\n") == 1
    assert downloads == [] and list(tmp_path.iterdir()) == []
    assert sweep_py.main([*argv, "--download", "--device", "cuda"]) == 2  # refused first
    assert "--device cuda" in capsys.readouterr().err and downloads == []
    assert sweep_py.main([*argv, "--download"]) == 2  # asked: tried (offline here)
    err = capsys.readouterr().err
    assert downloads == [str(tmp_path / "data")] and "download (about 170 MB) failed" in err
    assert list(tmp_path.iterdir()) == [] and no_gpu_no_ray == []


def test_a_dry_run_with_download_says_it_would_download(tmp_path, capsys, downloads):
    code = sweep_py.main(["--dry-run", "--depths", "4", "--families", "mlp", "--seeds", "1",
                          "--epochs", "1", "--out", str(tmp_path / "r"), "--data-root",
                          str(tmp_path / "data"), "--download"])
    out = capsys.readouterr().out
    assert code == 0 and downloads == [] and list(tmp_path.iterdir()) == []
    assert (f"note: CIFAR-10 is not in {tmp_path / 'data' / 'cifar-10-batches-py'}; the sweep "
            "would download it there first (about 170 MB)") in out
    assert "plan: 2 trials (train)" in out


def test_download_may_be_typed_with_resume():
    from ablations import resume
    parser = arguments.build_parser()
    argv = ["--smoke", "--download", "--resume", "x"]  # the up-arrow command, --resume added
    resume.check_repeated_study_flags(parser.parse_args(argv), arguments.given_flags(
        parser, argv), spec_of("--smoke"), "--resume")  # no error: not a study flag
    assert "download" not in resume.EXECUTION_FLAGS  # nor one stored with the sweep


# --------------------------------------------------------------------------- unused flags

@pytest.mark.parametrize("flags,warning", [
    (["--smoke", "--data-root", "DATA"], "warning: --data-root not used: the dataset is "
     "synthetic (--smoke's default); add --dataset cifar10 to train on CIFAR-10"),
    (["--smoke", "--dataset", "synthetic", "--download"], "warning: --download not used: "
     "the dataset is synthetic; add --dataset cifar10"),
    (["--mode", "probe", "--families", "mlp", "--seeds", "2", "--epochs", "3", "--lr", "0.1"],
     "warning: --epochs, --lr not used: --mode probe measures networks at init"),
    (["--smoke", "--stats-every", "500"], "warning: --stats-every 500 is beyond this run's 64 "
     "training steps: the figures through training get step 0 only; --stats-every 8"),
    (["--smoke", "--stats-every", "4"], None),
    (["--smoke", "--dataset", "cifar10", "--data-root", "DATA"], None),
    (["--mode", "probe", "--families", "mlp", "--seeds", "2", "--depths", "5"], None),
])
def test_a_dry_run_warns_of_each_typed_flag_the_sweep_would_not_read(tmp_path, capsys, flags,
                                                                      warning):
    data = ROOT.parent / "shared" / "data" / "cifar10-subset"
    if "cifar10" in flags and not data.exists():
        pytest.skip(f"needs the CIFAR-10 subset at {data}")
    argv = [str(data) if f == "DATA" else f for f in flags]
    assert sweep_py.main(["--dry-run", "--out", str(tmp_path / "r"), *argv]) == 0
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == (warning is not None), warnings
    assert warning is None or warnings[0].startswith(warning), warnings
    assert not (tmp_path / "r").exists()


def test_the_sweep_warns_of_unread_flags_before_ray(tmp_path, capsys, monkeypatch):
    from ablations import orchestrate

    def stop(*a, **k):
        raise SpecError("stopped before Ray")
    monkeypatch.setattr(orchestrate, "_connect", stop)
    code = sweep_py.main(["--smoke", "--wandb", "offline", "--out", str(tmp_path / "r"),
                          "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        "warning: --data-root not used: the dataset is synthetic (--smoke's default); add "
        "--dataset cifar10 to train on CIFAR-10", "sweep.py: error: stopped before Ray"]


@pytest.mark.parametrize("extra", [[], ["--dataset", "cifar10"]])
def test_a_data_root_of_an_unknown_scheme_is_refused_even_where_unread(tmp_path, capsys, extra):
    code = sweep_py.main(["--dry-run", "--smoke", *extra, "--data-root", "ftp://host/cifar",
                          "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (
        "sweep.py: error: --data-root ftp://host/cifar: unknown scheme 'ftp'; valid: a local "
        "folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")


class Terminal:
    """stdin and stderr as a terminal where the user types ``answer``."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def isatty(self):
        return True

    def readline(self):
        self.asked.append(True)
        return self.answer


@pytest.mark.parametrize("answer,downloaded", [("y\n", True), ("yes\n", True), ("\n", False),
                                               ("n\n", False), ("", False)])
def test_on_a_terminal_a_missing_cifar10_is_asked_for(tmp_path, capsys, monkeypatch, downloads,
                                                      no_gpu_no_ray, answer, downloaded):
    term = Terminal(answer)
    monkeypatch.setattr(sys, "stdin", term)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["--depths", "4", "--seeds", "1", "--wandb", "offline", "--out", str(tmp_path / "r"),
            "--data-root", str(tmp_path / "data")]
    assert sweep_py.main(argv) == 2  # a download here fails: offline (the fixture)
    err = capsys.readouterr().err
    assert term.asked == [True] and err.startswith(
        f"CIFAR-10 is not in {tmp_path / 'data' / 'cifar-10-batches-py'}. Download it there "
        "(about 170 MB)? [y/N] ")
    assert downloads == ([str(tmp_path / "data")] if downloaded else [])
    assert ("download (about 170 MB) failed" in err) == downloaded
    assert ("download it there with --download" in err) == (not downloaded)
    assert no_gpu_no_ray == [] and list(tmp_path.iterdir()) == []


def test_not_on_a_terminal_nothing_is_asked(tmp_path, capsys, monkeypatch, downloads):
    term = Terminal("y\n")
    monkeypatch.setattr(sys, "stdin", term)
    monkeypatch.setattr(Terminal, "isatty", lambda self: False)
    argv = ["--dry-run", "--depths", "4", "--seeds", "1", "--out", str(tmp_path / "r"),
            "--data-root", str(tmp_path / "data")]
    assert sweep_py.main(argv) == 2
    assert sweep_py.main(argv[1:]) == 2
    assert term.asked == [] and downloads == [] and "[y/N]" not in capsys.readouterr().err
