"""The project's trainer vs ../shared/bench/plain_loop.py, one run, same machine, same threads.

Both train the seed article's SmallResNet-18 (175,258 parameters) on the same
CIFAR-10 subset (all 5,085 training images of ../shared/data/cifar10-subset,
its 1,017 test images), SGD lr 0.1 momentum 0.9 wd 5e-4, batch 128, crop+flip,
x0.1 at epochs 15 and 25, test evaluation after every epoch. Ours runs through
the product path (`sweep.py`, Ray Tune) with the issue's replication command.

images/s is measured the same way for both: epochs x 5,085 / wall seconds of
the training loop *including* each epoch's evaluation (plain_loop.py's own
definition; our trial records that wall time as `wall_seconds`). Start-up (Ray,
data loading, model build) is excluded for both.

usage: python bench/train_bench.py [--epochs 30] [--threads 2] [--order plain,ours]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")
PLAIN = os.path.join(ROOT, "..", "shared", "bench", "plain_loop.py")


def run_plain(epochs, threads):
    out = subprocess.run([sys.executable, PLAIN, os.path.join(DATA, "cifar-10-batches-py"),
                          str(epochs), str(threads)], capture_output=True, text=True,
                         check=True).stdout
    print(out, flush=True)  # the loop's own per-epoch log
    get = lambda k: float(re.search(rf"{k} ([0-9.]+)", out).group(1))  # noqa: E731
    return {"images_per_s": get("train_images_per_s"), "test_acc": get("final_test_acc"),
            "wall_s": get("total")}


def run_ours(epochs, threads, out_dir):
    name = f"train-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--models", "small_resnet18",
           "--residual", "on", "--mode", "train", "--epochs", str(epochs), "--data-root", DATA,
           "--subset", "5085", "--val-fraction", "0", "--threads", str(threads),
           "--cpus-per-trial", str(threads), "--out", out_dir, "--name", name]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    row = pd.read_parquet(os.path.join(out_dir, name, "trials.parquet")).iloc[0]
    return {"images_per_s": row.epochs_run * 5085 / row.wall_seconds,
            "test_acc": row.final_test_acc, "wall_s": row.wall_seconds,
            "precision": row.precision, "run": os.path.join(out_dir, name)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--order", default="plain,ours")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    a = ap.parse_args()
    res = {}
    for which in a.order.split(","):
        res[which] = run_plain(a.epochs, a.threads) if which == "plain" else \
            run_ours(a.epochs, a.threads, a.out)
        print(which, {k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in res[which].items()}, flush=True)
    p, o = res["plain"], res["ours"]
    print(f"epochs {a.epochs}, threads {a.threads}: plain loop {p['images_per_s']:.0f} img/s, "
          f"ours {o['images_per_s']:.0f} img/s ({o['precision']}), "
          f"ratio {o['images_per_s'] / p['images_per_s']:.2f}x; final test acc plain "
          f"{100 * p['test_acc']:.1f}%, ours {100 * o['test_acc']:.1f}% "
          f"(diff {100 * (o['test_acc'] - p['test_acc']):+.1f} points)")


if __name__ == "__main__":
    main()
