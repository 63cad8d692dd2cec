"""The cost of the per-layer statistics recorder: the same training with the recorder
off, at ``--stats-every 50`` and at ``--stats-every 1``, alternated in one command.

Each run is the worker's own code, ``ablations.train.run_train_trial``, called in this
process (no Ray, no W&B, no measurements, no kept weights): SmallResNet-18 on all
5,085 training images of ../shared/data/cifar10-subset, SGD lr 0.1, batch 128, the
given epochs, test evaluation after every epoch, 2 threads. Time = the trial's own
``wall_seconds`` (training + per-epoch evaluation, plain_loop.py's definition).
Configurations are alternated (off, 50, 1, off, 50, 1, ...) so that the machine's
drift hits each alike; the ratio of each configuration's median to the median of
"off" is printed.

usage: python bench/stats_bench.py [--epochs 3] [--repeats 3] [--threads 2] [--precision fp32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")
CONFIGS = {"off": 0, "every 50": 50, "every 1": 1}


def one_run(stats_every: int, epochs: int, threads: int, out: str, precision: str) -> float:

    from ablations import results, train
    from ablations.plan import expand
    from ablations.spec import AblationSpec, TrainSettings
    spec = AblationSpec(models=("small_resnet18",), residual="on", out=out,
                        name=f"stats-{stats_every}-{os.getpid()}-{len(os.listdir(out))}",
                        wandb="disabled", measure=(), keep_weights="none",
                        train=TrainSettings(data_root=DATA, subset=5085, val_fraction=0.0,
                                            epochs=epochs, milestones=(), threads=threads,
                                            stats_every=stats_every, device="cpu",
                                            precision=precision))
    trial = expand(spec)[0][0]
    import torch
    torch.set_num_threads(threads)
    train.run_train_trial(trial, spec, spec.run_dir)
    row = results.read_fragment_row(spec.run_dir, trial.trial_id)
    assert row["status"] == "completed", row["status"]
    return float(row["wall_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="auto: bf16 where the CPU has it natively; fp32: the AVX2-only case")
    a = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    with tempfile.TemporaryDirectory() as out:
        for r in range(a.repeats):
            for name, every in CONFIGS.items():
                s = one_run(every, a.epochs, a.threads, out, a.precision)
                times[name].append(s)
                print(f"repeat {r + 1} {name:>8}: {s:.2f} s", flush=True)
    base = statistics.median(times["off"])
    from ablations.device import pick_precision
    print(f"SmallResNet-18, {pick_precision('cpu', a.precision)}, {a.epochs} epochs x 5,085 "
          f"images, {a.threads} threads, "
          f"median of {a.repeats}:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:>8}: {m:7.2f} s  ratio {m / base:.3f}x  runs "
              + ", ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
