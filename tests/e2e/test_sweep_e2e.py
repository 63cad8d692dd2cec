"""End to end: sweep.py for real, through Ray Tune, in a subprocess."""
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.ablations.test_data import write_cifar
from tests.ray_procs import marked_pids

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ray_pids():
    """This test session's raylets and GCS servers (tests/ray_procs.py): never another
    session's Ray on the same machine."""
    return marked_pids("raylet|gcs_server")


def sweep(*argv, cwd, env=None, umask=None):
    before = ray_pids()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *argv],
                       capture_output=True, text=True, cwd=cwd, timeout=600,
                       env={**os.environ, **(env or {})},
                       preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ray_pids() <= before, "the sweep left Ray processes running"
    return p


@pytest.mark.slow
def test_probe_sweep_through_ray(tmp_path):
    # with the prestarted, preloaded workers switched off: Tune starts its own
    p = sweep("--families", "mlp,resnet", "--depths", "4,5", "--mode", "probe", "--seeds", "2",
              "--out", "res", "--name", "probe", cwd=tmp_path, env={"RESABLATE_PREWARM": "0"})
    run = tmp_path / "res" / "probe"
    assert "skipped resnet-5" in p.stdout
    assert "12 trials: 12 completed, 0 diverged, 0 errored" in p.stdout
    trials = pd.read_parquet(run / "trials.parquet")
    assert len(trials) == 12 and set(trials.status) == {"completed"}
    assert {"trial_id", "family", "model", "depth", "residual", "seed", "params",
            "status"} <= set(trials.columns)
    assert not trials.worker_preloaded.any()
    layers = pd.read_parquet(run / "layers.parquet")
    assert set(layers.stat) == {"grad_mean_abs", "grad_norm", "act_mean_abs", "act_std",
                                "act_zero_frac"}
    assert set(layers.trial_id) == set(trials.trial_id) and set(layers.phase) == {"init"}
    # mlp-4: 4 weights x 2 grad stats + 4 taps x 3 act stats per trial
    one = layers[layers.trial_id == "mlp-4-plain-s1"]
    assert len(one) == 4 * 2 + 4 * 3
    spec = json.loads((run / "spec.json").read_text())
    assert spec["spec"]["seeds"] == 2 and spec["environment"]["packages"]["ray"]
    assert spec["environment"]["git_commit"]
    for f in ["grad_by_layer", "act_by_layer"]:
        assert (run / "figures" / f"{f}.pdf").stat().st_size > 0
        assert (run / "figures" / f"{f}.png").stat().st_size > 0
    assert (run / "tables" / "grad_mlp-4.md").exists()
    assert (run / "tables" / "grad_mlp-4.tex").exists()


def test_short_training_run_on_cifar_format_data_through_ray(tmp_path):
    write_cifar(tmp_path / "data", n_train_per_batch=40, n_test=30)
    p = sweep("--families", "mlp,resnet", "--depths", "4", "--residual", "both",
              "--data-root", "data", "--subset", "200", "--val-fraction", "0.1",
              "--epochs", "2", "--milestones", "1", "--batch-size", "50", "--stats-every", "2",
              "--recipe", "seed", "--seeds", "1", "--out", "res", "--name", "train", cwd=tmp_path,
              umask=0o027)
    run = tmp_path / "res" / "train"
    assert "4 trials: 4 completed" in p.stdout
    # Every file the sweep wrote has the mode its umask gives (0666 - 027 = 0640), not
    # mkstemp's 0600: results, weights, tables, figures, report.
    modes = {str(f.relative_to(run)): oct(f.stat().st_mode & 0o777) for f in run.rglob("*")
             if f.is_file() and not f.relative_to(run).parts[0] in ("ray", "wandb")}
    assert {"spec.json", "trials.parquet", "report.html", "tables/summary.md",
            "figures/training_curves.png"} <= set(modes)
    assert any(k.startswith("weights/") and k.endswith("final.pt") for k in modes)
    assert {k: m for k, m in modes.items() if m != oct(0o640)} == {}
    epochs = pd.read_parquet(run / "epochs.parquet")
    assert len(epochs) == 4 * 2 and set(epochs.epoch) == {1, 2}
    trials = pd.read_parquet(run / "trials.parquet")
    assert trials.final_test_acc.between(0, 1).all()
    # 4 one-CPU trials on this machine's CPUs: Ray prestarts one worker per CPU as the
    # driver connects, each imports the trainer, and Tune's actors run in them
    # (runner.plan_local; with more than 4 CPUs a trial gets several and no
    # worker is prestarted).
    assert trials.worker_preloaded.all() == ((os.cpu_count() or 1) <= 4)
    assert trials.pid.nunique() <= min(4, os.cpu_count() or 1)  # reused actors
    timing = json.loads((run / "spec.json").read_text())["invocations"][-1]["timing"]
    stamps = ["started_at", "ray_start_at", "connected_at", "run_started_at", "run_ended_at"]
    assert [timing[k] for k in stamps] == sorted(timing[k] for k in stamps)
    assert timing["run_started_at"] <= trials.started_at.min()
    assert trials.finished_at.max() <= timing["run_ended_at"]
    layers = pd.read_parquet(run / "layers.parquet")
    assert set(layers.phase) == {"train"}
    assert (run / "figures" / "training_curves.png").exists()
    assert len(list((run / "features").glob("resnet-4-*.npz"))) == 2
    # The sweep ends with the paper figures, tables and the report.
    for f in ("degradation_vs_depth", "training_curves_by_depth", "layer_response_std",
              "gradient_flow"):
        assert (run / "figures" / f"{f}.pdf").stat().st_size > 0
    for t in ("summary", "paired"):
        assert (run / "tables" / f"{t}.tex").stat().st_size > 0
    md = (run / "report.md").read_text()
    assert "**4 trials: 4 completed, 0 diverged, 0 errored.**" in md
    assert "python sweep.py --families mlp,resnet --depths 4" in md
    assert md.count("data:image/png") == 0
    assert (run / "report.html").read_text().count("data:image/png;base64,") >= 6
    assert "report: res/train/report.html" in p.stdout
    # Progress, stdout not a terminal: the estimate before training, then one plain line
    # per finished trial, counted, with an ETA on every line but the last; no bar.
    assert re.search(r"^estimate: about \S+ here for 4 trial\(s\), 2 at a time", p.stdout, re.M)
    lines = [ln for ln in p.stdout.splitlines() if re.match(r"\[\d+/4\] ", ln)]
    assert [ln.split("/")[0] for ln in lines] == ["[1", "[2", "[3", "[4"], p.stdout
    line = re.compile(r"^\[\d/4\] (mlp|resnet)-4-(plain|residual)-s0 completed in \S+: "
                      r"test acc \d+\.\d%, train loss \S+( \| ETA \S+)?$")
    assert all(line.match(ln) for ln in lines), lines
    assert all(" | ETA " in ln for ln in lines[:3]) and " | ETA " not in lines[3]
    assert "\r" not in p.stdout and "trials [" not in p.stdout
    assert p.stdout.rstrip().splitlines()[-1].endswith("report: every item written")


def test_existing_results_are_not_overwritten(tmp_path):
    run = tmp_path / "res" / "x"
    run.mkdir(parents=True)
    (run / "spec.json").write_text("{}")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--mode", "probe",
                        "--out", "res", "--name", "x"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "results already exist" in p.stderr
    assert (run / "spec.json").read_text() == "{}"


@pytest.mark.slow
def test_probe_sweep_with_two_extra_factors_through_ray(tmp_path):
    """norm x branch_scale crossed with residual and depth, for real through Ray: one plain
    cell per norm level shared by both branch scales, factor columns in every file, and
    contrasts of each level against its baseline in the report."""
    p = sweep("--families", "mlp,resnet", "--depths", "4", "--norm", "batch,none",
              "--branch-scale", "one,zero", "--mode", "probe", "--seeds", "2",
              "--probe-batch", "2", "--out", "res", "--name", "fx", cwd=tmp_path,
              env={"RESABLATE_PREWARM": "0"})
    run = tmp_path / "res" / "fx"
    # per family: 2 plain cells (norm) + 4 residual cells (norm x scale), 2 seeds each
    assert "24 trials: 24 completed, 0 diverged, 0 errored" in p.stdout
    trials = pd.read_parquet(run / "trials.parquet")
    cells = trials.drop_duplicates(["family", "residual", "norm", "branch_scale"])
    assert len(cells) == 12
    assert set(trials[~trials.residual].branch_scale) == {"n/a"}
    assert set(trials[trials.residual].branch_scale) == {"one", "zero"}
    assert set(trials[trials.family == "mlp"].shortcut) == {"n/a"}
    assert "resnet-4-residual-norm=none-scale=zero-s1" in set(trials.trial_id)
    layers = pd.read_parquet(run / "layers.parquet")
    assert {"norm", "branch_scale", "shortcut"} <= set(layers.columns)
    spec = json.loads((run / "spec.json").read_text())
    assert dict(map(tuple, spec["spec"]["factors"]))["norm"] == ["batch", "none"]
    # a probe has no final metrics to contrast: one gradient table per residual cell
    # against its plain twin, named like the cells, and every item written
    tables = {f.name for f in (run / "tables").glob("grad_*.md")}
    assert {"grad_mlp-4.md", "grad_mlp-4-norm=batch-scale=zero.md",
            "grad_resnet-4-norm=none-scale=zero.md", "grad_resnet-4-scale=zero.md"} <= tables
    assert len(tables) == 8
    assert (run / "figures" / "act_by_layer.png").stat().st_size > 0
    assert "could not" not in (run / "report.md").read_text()
    assert p.stdout.rstrip().endswith("report: every item written")
