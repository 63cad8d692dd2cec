"""One arm of the sweep-efficiency benchmark: the sweep's trials under a plain
``ray.tune.Tuner``, as a user would write it: one Tune trial per trial, a report per
epoch, default Ray start (bound to loopback), optionally ``reuse_actors``.

The trials are the very ones `sweep.py` runs for the benchmark's arguments (same
spec, same trainer: ``ablations.train.run_train_trial``), so every arm does the same
work. Prints one JSON line: process start, Ray start, Tune run start and end
(``time.time()``), and the results folder.

usage: python bench/plain_tuner.py OUT NAME [--reuse] -- SWEEP_ARGS...
"""
from __future__ import annotations

import time

PROCESS_STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sweep  # noqa: E402
from ablations.arguments import spec_from_args  # noqa: E402
from ablations.plan import expand  # noqa: E402


def trainable(config, spec, trials, run_dir):
    import torch
    from ray import tune

    from ablations.train import run_train_trial

    class Reporter:
        def report(self, metrics):
            tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

        def where(self):
            return {}

    torch.set_num_threads(int(spec.cpus_per_trial))
    run_train_trial(trials[config["i"]], spec, run_dir, Reporter())


def main():
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--reuse", action="store_true")
    a = ap.parse_args(argv[:cut])
    args = sweep.build_parser().parse_args(argv[cut + 1:] + ["--out", a.out, "--name", a.name])
    spec = spec_from_args(args)
    trials, _ = expand(spec)
    run_dir = os.path.abspath(spec.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    import ray
    from ray import tune
    ray_start = time.time()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.ERROR)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec, trials=trials,
                                                 run_dir=run_dir),
                            {"cpu": spec.cpus_per_trial}),
        param_space={"i": tune.grid_search(list(range(len(trials))))},
        tune_config=tune.TuneConfig(reuse_actors=a.reuse),
        run_config=tune.RunConfig(storage_path=os.path.join(run_dir, "ray"), name="plain",
                                  verbose=0))
    run_started = time.time()
    tuner.fit()
    run_ended = time.time()
    ray.shutdown()
    print(json.dumps({"started_at": PROCESS_STARTED, "ray_start_at": ray_start,
                      "run_started_at": run_started, "run_ended_at": run_ended,
                      "run_dir": run_dir}))


if __name__ == "__main__":
    main()
