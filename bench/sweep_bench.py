"""Sweep efficiency: how much of a 2-CPU machine do 12 short trials actually use?

Workload (identical for every arm): the 12 training trials of

    python sweep.py --recipe seed --families mlp --depths 4,6,8 --residual both --seeds 2 \
        --dataset synthetic --subset 2000 --epochs 8 --milestones '' --lr 0.02 \
        --cpus-per-trial 1 --wandb disabled --measure none --keep-weights none

(MLPs at depths 4, 6, 8, plain and residual, seeds 0 and 1, ~2-3 s of compute each
with 1 thread), 2 at a time on a local Ray with 2 CPUs.

    efficiency = (sum of the trials' own compute seconds / 2) / sweep wall seconds

"Own compute" is a trial's ``wall_seconds`` (its training loop and per-epoch
evaluation, timed inside the trial); ``efficiency_function`` uses the whole time
inside the trial function instead (also data, model, first-use costs). The sweep
wall is the Tune run: ``Tuner.fit()`` for the plain arms, ``runner.run_groups`` for
resablate, as the issue's reference measured it (Ray already started);
``efficiency_from_ray_start`` adds Ray's start-up to the wall, and ``process_s`` is
the whole command (Python start, imports, Ray, the run; for resablate also the
results, figures and report it writes after the run).

Arms, each a fresh process, alternated in one command:
  plain-default        bench/plain_tuner.py: ray.tune.Tuner, default settings
  plain-reuse          the same with reuse_actors=True
  resablate            the real `python sweep.py ...` command above (its own timings,
                       from the invocation record in spec.json)
  resablate-noprewarm  the same with RESABLATE_PREWARM=0 (workers start cold, as Tune
                       starts them): what the prestarted, preloaded workers are worth

usage: python bench/sweep_bench.py [--repeats 2] [--arms a,b,...] [--epochs 8]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ablations import results  # noqa: E402

ARMS = ("plain-default", "plain-reuse", "resablate", "resablate-noprewarm")


def sweep_args(epochs: int, subset: int) -> list[str]:
    # --recipe seed: the networks the plain-Tuner arms build (no norm, branches x1, decay
    # on every parameter), not the default recipe's pre-LN SkipInit MLPs
    return ["--recipe", "seed", "--families", "mlp", "--depths", "4,6,8", "--residual", "both",
            "--seeds", "2",
            "--dataset", "synthetic", "--subset", str(subset), "--epochs", str(epochs),
            "--milestones", "", "--lr", "0.02", "--cpus-per-trial", "1", "--wandb", "disabled",
            # the workload is the training: no end-of-trial measurements, no kept weights
            # (the defaults since issue 15), as the plain-Tuner arms do none
            "--measure", "none", "--keep-weights", "none"]


def run_arm(arm: str, out: str, name: str, args: list[str]) -> dict:
    """Run one arm in a fresh process; its timestamps and its results folder."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    t0 = time.time()
    if arm.startswith("plain"):
        cmd = [sys.executable, os.path.join(ROOT, "bench", "plain_tuner.py"), out, name,
               *(["--reuse"] if arm == "plain-reuse" else []), "--", *args]
    else:
        cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), *args, "--out", out,
               "--name", name]
        if arm == "resablate-noprewarm":
            env["RESABLATE_PREWARM"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    process_s = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{arm} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run_dir = os.path.join(out, name)
    if arm.startswith("plain"):
        clock = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        clock = json.load(open(os.path.join(run_dir, "spec.json")))["invocations"][-1]["timing"]
    return {"clock": clock, "run_dir": run_dir, "process_s": process_s}


def measure(arm: str, out: str, k: int, args: list[str]) -> dict:
    name = f"{arm}-{k}"
    got = run_arm(arm, out, name, args)
    clock, run_dir = got["clock"], got["run_dir"]
    ids = sorted(os.listdir(os.path.join(run_dir, "trials")))
    rows = [results.read_fragment_row(run_dir, i) for i in ids]
    assert len(rows) == 12 and all(r and r["status"] == "completed" for r in rows), arm
    compute = sum(r["wall_seconds"] for r in rows)
    function = sum(r["finished_at"] - r["started_at"] for r in rows)
    run0, run1 = clock["run_started_at"], clock["run_ended_at"]
    wall = run1 - run0
    first = min(r["started_at"] for r in rows) - run0
    for r in sorted(rows, key=lambda r: (r["pid"], r["started_at"])):
        print(f"  {arm} pid {r['pid']} function {r['started_at'] - run0:6.2f} training "
              f"{r['finished_at'] - r['wall_seconds'] - run0:6.2f} end "
              f"{r['finished_at'] - run0:6.2f}", flush=True)
    return {"arm": arm, "repeat": k, "compute_s": compute, "wall_s": wall,
            "first_trial_s": first, "efficiency": compute / 2 / wall,
            "efficiency_function": function / 2 / wall,
            "ray_start_s": run0 - clock["ray_start_at"],
            "efficiency_from_ray_start": compute / 2 / (run1 - clock["ray_start_at"]),
            "process_s": got["process_s"],
            "preloaded": sum(bool(r.get("worker_preloaded")) for r in rows)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--arms", default=",".join(ARMS))
    a = ap.parse_args()
    arms = a.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"unknown arm(s) {','.join(unknown)}; valid: {','.join(ARMS)}")
    out = tempfile.mkdtemp(prefix="sweep-bench-")
    args = sweep_args(a.epochs, a.subset)
    rows = []
    try:
        for k in range(a.repeats):
            for arm in arms:
                rows.append(measure(arm, out, k, args))
                print({key: round(v, 3) if isinstance(v, float) else v
                       for key, v in rows[-1].items()}, flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    print("\nmedians per arm:")
    cols = ["wall_s", "first_trial_s", "efficiency", "efficiency_function", "ray_start_s",
            "efficiency_from_ray_start", "process_s"]
    print(df.groupby("arm", sort=False)[cols].median().round(3).to_string())


if __name__ == "__main__":
    main()
