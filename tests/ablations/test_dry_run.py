"""``python sweep.py --dry-run``: the plan, resources and estimate a sweep would print,
every flag and the data checked, nothing written, Ray not started, exit 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cwd, *argv):
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": ""})


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    p = run(tmp_path, "--smoke", "--dry-run", "--out", "res", "--name", "x")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("dry run: nothing written, Ray not started; results would go to res/x")
    assert "plan: 4 trials (train)" in out and "resources: " in out and "estimate: " in out
    assert "Ray" not in p.stderr and "Started a local Ray" not in out
    assert list(tmp_path.iterdir()) == []  # not even the results folder


def test_dry_run_checks_every_flag_and_the_data(tmp_path):
    p = run(tmp_path, "--dry-run", "--depths", "4", "--data-root", "nowhere", "--out", "res")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "nowhere" in p.stderr and p.stdout == ""
    p = run(tmp_path, "--dry-run", "--smoke", "--norm", "bogus")
    assert p.returncode == 2 and "bogus" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_an_existing_sweep_name_is_refused_like_the_sweep(tmp_path):
    (tmp_path / "res" / "x").mkdir(parents=True)
    (tmp_path / "res" / "x" / "spec.json").write_text("{}")
    p = run(tmp_path, "--smoke", "--dry-run", "--out", "res", "--name", "x")
    assert p.returncode == 2 and "results already exist" in p.stderr


def test_an_empty_list_item_is_one_line(tmp_path):
    for depths in ("5,,18", "5,18,"):
        p = run(tmp_path, "--depths", depths, "--dry-run")
        assert p.returncode == 2 and "has an empty item" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_list_models_into_a_closed_pipe_is_quiet(tmp_path):
    p = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "--list-models"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # `| head -0`: the reader is gone before anything is printed
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "BrokenPipeError" not in err and "Traceback" not in err
