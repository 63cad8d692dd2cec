"""The project's trainer vs ../shared/bench/plain_loop.py, side by side, same machine and threads.

Both train the replicated article's SmallResNet-18 (175,258 parameters) on the same
CIFAR-10 subset (all 5,085 training images of ../shared/data/cifar10-subset,
its 1,017 test images), SGD lr 0.1 momentum 0.9 wd 5e-4, batch 128, crop+flip,
x0.1 at epochs 15 and 25, test evaluation after every epoch. Ours runs through
the product path (`sweep.py`, Ray Tune) with the issue's replication command,
plus ``--precision`` (default fp32: the plain loop's arithmetic, and what a CPU
without native bf16 runs).

images/s is measured the same way for both: epochs x 5,085 / wall seconds of
the training loop *including* each epoch's evaluation (plain_loop.py's own
definition; our trial records that wall time as `wall_seconds`). Start-up (Ray,
data loading, model build) is excluded for both.

The same command also measures this machine's fp32 matmul peak (a 2048 x 2048
matmul with the same threads and the same ISA, best of 20, before the first and
after the last run) and states each side's arithmetic rate as a fraction of it:
FLOPs counted by ``torch.utils.flop_counter`` (one multiply-add = 2) for the
forward and backward of every training image plus the forward of every test
image per epoch, divided by that wall time.

``--isa avx2`` runs everything (both loops and the peak) with oneDNN and ATen
restricted to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``): the
kernels an AVX2-only CPU runs, on this machine's cores and memory. Each trial
records the capability it ran with (``cpu_capability``), which is checked here.

usage: python bench/train_bench.py [--epochs 30] [--threads 2] [--repeats 1]
           [--order plain,ours] [--precision fp32] [--isa native|avx2] [--compile]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")
PLAIN = os.path.join(ROOT, "..", "shared", "bench", "plain_loop.py")
N_TRAIN, N_TEST = 5085, 1017
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}

PEAK = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(3):
    a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter())
           for _ in range(20))
print(2 * 2048 ** 3 / best / 1e9, torch.backends.cpu.get_cpu_capability())
"""


def env_for(isa: str) -> dict:
    return {**os.environ, **ISA_ENV[isa]}


def matmul_peak(threads: int, isa: str) -> tuple[float, str]:
    """GFLOP/s of the best of 20 fp32 2048^3 matmuls, and the ATen capability it ran with."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(threads)], capture_output=True,
                         text=True, check=True, env=env_for(isa)).stdout.split()
    return float(out[0]), out[1]


def flops_per_epoch() -> float:
    """Training (forward + backward) FLOPs of every training image plus the forward of
    every test image, for SmallResNet-18 (the same network on both sides)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, ROOT)
    import models
    net = models.get_config("small_resnet18").build()
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(net(x), y).backward()
    with FlopCounterMode(display=False) as test, torch.no_grad():
        net.eval()(x)
    return (train.get_total_flops() * N_TRAIN + test.get_total_flops() * N_TEST) / 128


def run_plain(epochs, threads, isa):
    out = subprocess.run([sys.executable, PLAIN, os.path.join(DATA, "cifar-10-batches-py"),
                          str(epochs), str(threads)], capture_output=True, text=True,
                         check=True, env=env_for(isa)).stdout
    get = lambda k: float(re.search(rf"{k} ([0-9.]+)", out).group(1))  # noqa: E731
    return {"images_per_s": get("train_images_per_s"), "test_acc": get("final_test_acc"),
            "wall_s": get("total"), "precision": "fp32"}


def run_ours(epochs, threads, isa, precision, compile_, out_dir):
    name = f"train-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), "--models", "small_resnet18",
           "--residual", "on", "--mode", "train", "--epochs", str(epochs), "--data-root", DATA,
           "--subset", str(N_TRAIN), "--val-fraction", "0", "--threads", str(threads),
           "--cpus-per-trial", str(threads), "--precision", precision, "--out", out_dir,
           "--name", name, "--wandb", "disabled", "--measure", "none",
           "--keep-weights", "none"] + (["--compile"] if compile_ else [])
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env_for(isa))
    row = pd.read_parquet(os.path.join(out_dir, name, "trials.parquet")).iloc[0]
    return {"images_per_s": row.epochs_run * N_TRAIN / row.wall_seconds,
            "test_acc": row.final_test_acc, "wall_s": row.wall_seconds,
            "precision": row.precision, "cpu_capability": row.get("cpu_capability"),
            "fused_norm_relu": row.get("fused_norm_relu"),
            "run": os.path.join(out_dir, name)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--order", default="plain,ours")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    ap.add_argument("--isa", default="native", choices=tuple(ISA_ENV))
    ap.add_argument("--compile", action="store_true", help="ours with --compile")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    a = ap.parse_args()
    flops = flops_per_epoch()
    peak0, cap = matmul_peak(a.threads, a.isa)
    print(f"ISA {a.isa} (ATen capability {cap}); fp32 matmul peak {peak0:.0f} GFLOP/s with "
          f"{a.threads} threads; {flops / 1e9:.1f} GFLOP per epoch", flush=True)
    rows = []
    for r in range(a.repeats):
        res = {}
        for which in a.order.split(","):
            res[which] = run_plain(a.epochs, a.threads, a.isa) if which == "plain" else \
                run_ours(a.epochs, a.threads, a.isa, a.precision, a.compile, a.out)
            print(r, which, {k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in res[which].items()}, flush=True)
        if res["ours"].get("cpu_capability") not in (None, cap):
            sys.exit(f"the trial ran with {res['ours']['cpu_capability']}, not {cap}")
        rows.append(res)
    peak1, _ = matmul_peak(a.threads, a.isa)
    peak = max(peak0, peak1)
    print(f"matmul peak before {peak0:.0f}, after {peak1:.0f} GFLOP/s; fractions use {peak:.0f}")
    print("| run | plain img/s | ours img/s | ratio | plain GFLOP/s (of peak) | "
          "ours GFLOP/s (of peak) | final acc plain / ours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    ratios = []
    for r, res in enumerate(rows):
        p, o = res["plain"], res["ours"]
        rate = {k: a.epochs * flops / v["wall_s"] / 1e9 for k, v in res.items()}
        ratios.append(o["images_per_s"] / p["images_per_s"])
        print(f"| {r + 1} | {p['images_per_s']:.0f} | {o['images_per_s']:.0f} "
              f"({o['precision']}) | **{ratios[-1]:.2f}x** | {rate['plain']:.0f} "
              f"({rate['plain'] / peak:.0%}) | {rate['ours']:.0f} ({rate['ours'] / peak:.0%}) "
              f"| {100 * p['test_acc']:.1f}% / {100 * o['test_acc']:.1f}% |")
    print(f"epochs {a.epochs}, threads {a.threads}, ISA {a.isa}: ratio min "
          f"{min(ratios):.2f}x, median {statistics.median(ratios):.2f}x over {a.repeats} "
          f"repeat(s)")


if __name__ == "__main__":
    main()
