"""Batch norm (+ addition) + ReLU, forward + backward: PyTorch's operations vs the fused
kernel (models/fused.py), per layer shape of SmallResNet-18, alternated in one process.

Each case: random float32 channels_last tensors of batch 128, a BatchNorm2d in training
mode, ``norm_relu(bn, x, skip)`` with the kernel off (PyTorch's ``F.relu(bn(x) +
skip)``) and on, forward then backward; median of ``--reps`` after warm-up, the two
taking turns per round. Freed memory is kept in the heap as the trainer keeps it
(``keep_freed_memory``).

usage: python bench/norm_relu_bench.py [--threads 2] [--reps 30] [--rounds 3]
(AVX2 kernels on a newer CPU: ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ablations.device import keep_freed_memory  # noqa: E402
from models import fused  # noqa: E402

SHAPES = [(16, 32), (32, 16), (64, 8)]  # (channels, side) of SmallResNet-18's three stages


def case(channels: int, side: int, with_skip: bool, on: bool):
    bn = nn.BatchNorm2d(channels)
    x = torch.randn(128, channels, side, side).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    skip = torch.randn_like(x).requires_grad_() if with_skip else None
    dy = torch.randn_like(x)

    def run():
        with fused.enabled(on):
            y = fused.norm_relu(bn, x, skip)
        y.backward(dy)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    if fused.kernel() is None:
        sys.exit(f"the fused kernel is unavailable: {fused.unavailable()}")
    print(f"{a.threads} threads, ATen {torch.backends.cpu.get_cpu_capability()}, torch "
          f"{torch.__version__}; forward + backward, median of {a.reps} x {a.rounds} rounds")
    print("| layer (batch 128) | PyTorch's ops (us) | fused (us) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for channels, side in SHAPES:
        for with_skip in (False, True):
            runs = {on: case(channels, side, with_skip, on) for on in (False, True)}
            times = {on: [] for on in runs}
            for on, run in runs.items():
                for _ in range(5):
                    run()
            for _ in range(a.rounds):
                for on, run in runs.items():
                    for _ in range(a.reps):
                        t0 = time.perf_counter()
                        run()
                        times[on].append(time.perf_counter() - t0)
            ref, new = (1e6 * statistics.median(times[on]) for on in (False, True))
            name = f"BN{' + add' if with_skip else ''} + ReLU, {channels}x{side}x{side}"
            print(f"| {name} | {ref:.0f} | {new:.0f} | {ref / new:.2f}x |")


if __name__ == "__main__":
    main()
