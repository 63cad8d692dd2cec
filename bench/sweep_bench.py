"""Sweep efficiency: how much of a 2-CPU machine do 12 short trials actually use?

Workload (identical for every arm): 12 training trials of this project's trainer
(`ablations.train.run_train_trial`): MLPs at depths 4, 6, 8, plain and residual,
seeds 0 and 1, on the synthetic dataset, sized to about 2 s of compute each with
1 thread; `--cpus-per-trial 1` on a local Ray with 2 CPUs, so 2 run at a time.

    efficiency = (sum of the trials' own compute seconds / 2) / sweep wall seconds

"Own compute seconds" is the trial's `wall_seconds` (training + per-epoch
evaluation, timed inside the trial). The wall is the Tune run's (the Tuner's
`fit()`, or this project's `runner.run_groups`); Ray start-up, once per process,
is outside it for every arm and reported separately, as is the whole
`sweep.py` command.

Arms, alternated in one process on one Ray session:
  plain-default  ray.tune.Tuner, one trial per Tune trial, default settings
  plain-reuse    the same with reuse_actors=True
  resablate      runner.run_groups, exactly what sweep.py runs for these trials

usage: python bench/sweep_bench.py [--repeats 2] [--epochs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pandas as pd  # noqa: E402

from ablations import results, runner  # noqa: E402
from ablations.plan import expand  # noqa: E402
from ablations.spec import AblationSpec, TrainSettings  # noqa: E402

SWEEP_ARGS = ["--families", "mlp", "--depths", "4,6,8", "--residual", "both", "--seeds", "2",
              "--dataset", "synthetic", "--subset", "{subset}", "--epochs", "{epochs}",
              "--milestones", "", "--lr", "0.02", "--cpus-per-trial", "1", "--wandb", "disabled"]


def make_spec(out, name, epochs, subset):
    return AblationSpec(
        families=("mlp",), depths=(4, 6, 8), residual="both", seeds=2, out=out, name=name,
        wandb="disabled", cpus_per_trial=1, gpus_per_trial=0,
        train=TrainSettings(dataset="synthetic", subset=subset, epochs=epochs, milestones=(),
                            val_fraction=0.1, lr=0.02))


def plain_trainable(config, spec, trials, run_dir):
    """What a user would write: one trial per Tune trial, a report per epoch."""
    import torch
    from ray import tune

    from ablations.train import run_train_trial

    class Rep:
        def report(self, m):
            tune.report({k: v for k, v in m.items() if isinstance(v, (int, float))})

        def where(self):
            return {}

    torch.set_num_threads(1)
    run_train_trial(trials[config["i"]], spec, run_dir, Rep())


T0 = [0.0]
INIT = [0.0]


def start_ray(arm):
    """A fresh local Ray per arm; resablate's own start (runner.connect) for its arm."""
    import ray
    t0 = time.perf_counter()
    if arm == "resablate":
        runner.connect(None)
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="ERROR")
    INIT[0] = time.perf_counter() - t0


def run_plain(spec, trials, reuse):
    from ray import tune
    run_dir = os.path.abspath(spec.run_dir)
    trainable = tune.with_resources(
        tune.with_parameters(plain_trainable, spec=spec, trials=trials, run_dir=run_dir),
        {"cpu": 1})
    tuner = tune.Tuner(trainable, param_space={"i": tune.grid_search(list(range(len(trials))))},
                       tune_config=tune.TuneConfig(reuse_actors=reuse),
                       run_config=tune.RunConfig(storage_path=os.path.join(run_dir, "ray"),
                                                 name="plain", verbose=0))
    t0 = time.perf_counter()
    T0[0] = time.time()
    tuner.fit()
    return time.perf_counter() - t0


def run_ours(spec, trials):
    t0 = time.perf_counter()
    T0[0] = time.time()
    errors = runner.run_groups([[t] for t in trials], spec, spec.run_dir, "bench")
    assert not errors, errors
    return time.perf_counter() - t0


def measure(arm, out, epochs, subset, k):
    import ray
    spec = make_spec(out, f"{arm}-{k}", epochs, subset)
    trials, _ = expand(spec)
    start_ray(arm)
    try:
        wall = run_plain(spec, trials, arm == "plain-reuse") if arm.startswith("plain") \
            else run_ours(spec, trials)
    finally:
        ray.shutdown()
    rows = [results.read_fragment_row(spec.run_dir, t.trial_id) for t in trials]
    assert all(r and r["status"] == "completed" for r in rows), arm
    compute = sum(r["wall_seconds"] for r in rows)
    function = sum(r["finished_at"] - r["started_at"] for r in rows)
    for r in sorted(rows, key=lambda r: (r["pid"], r["started_at"])):
        print(f"  {arm} pid {r['pid']} start {r['started_at'] - T0[0]:6.2f} train "
              f"{r['finished_at'] - r['wall_seconds'] - T0[0]:6.2f} end "
              f"{r['finished_at'] - T0[0]:6.2f}")
    return {"arm": arm, "repeat": k, "wall_s": wall, "compute_s": compute,
            "mean_trial_s": compute / len(rows), "efficiency": compute / 2 / wall,
            "function_s": function, "efficiency_function": function / 2 / wall,
            "wall_from_init_s": wall + INIT[0],
            "efficiency_from_init": compute / 2 / (wall + INIT[0])}


def sweep_command(out, epochs, subset):
    """The whole `python sweep.py ...` command (Ray start-up, analysis included)."""
    args = [a.format(epochs=epochs, subset=subset) for a in SWEEP_ARGS]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), *args, "--out", out,
                    "--name", "cmd"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    trials = pd.read_parquet(os.path.join(out, "cmd", "trials.parquet"))
    return {"arm": "sweep.py command", "repeat": 0, "wall_s": wall,
            "compute_s": trials.wall_seconds.sum(), "mean_trial_s": trials.wall_seconds.mean(),
            "efficiency": trials.wall_seconds.sum() / 2 / wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--arms", default="plain-default,plain-reuse,resablate")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="sweep-bench-")
    rows = []
    for k in range(args.repeats):
        for arm in args.arms.split(","):
            rows.append(measure(arm, out, args.epochs, args.subset, k))
            print({k2: round(v, 3) if isinstance(v, float) else v
                   for k2, v in rows[-1].items()}, flush=True)
    rows.append(sweep_command(out, args.epochs, args.subset))
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    print("\nmedian efficiency per arm:")
    print(df.groupby("arm", sort=False)["efficiency"].median().round(3).to_string())
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
