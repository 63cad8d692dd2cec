"""Batched probe vs the seed-article loop (../shared/bench/probe_loop.py), side by side.

For each depth, alternately runs the reference loop script (a subprocess, its
own timer, 1 thread) and this project's probe (``ablations.probe.probe_mlp_variants``,
what a probe-mode sweep trial runs for an MLP (model, depth), 1 thread) over the
same seeds, plain and residual, REPEATS times; reports the median probes/s of
each and their ratio. Medians per layer are checked two ways: against the
loop's printed values (4 significant digits) and, at full precision, against
the same recipe run one model per seed in-process (``ablations.probe.probe_one``).

usage: python bench/probe_bench.py [--depths 5,34] [--seeds 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import models  # noqa: E402
from ablations.probe import probe_mlp_variants, probe_one  # noqa: E402

LOOP = os.path.join(ROOT, "..", "shared", "bench", "probe_loop.py")


def run_loop(depth, seeds):
    out = subprocess.run([sys.executable, LOOP, str(depth), str(seeds)], capture_output=True,
                         text=True, check=True).stdout
    rate = float(re.search(r"probes_per_s (\S+)", out).group(1))
    med = {}
    for m in re.finditer(r"layers\.(\d+)\.weight plain (\S+) residual (\S+)", out):
        med[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return rate, med


def lower_median(a: np.ndarray) -> np.ndarray:
    """torch.median's definition (the loop's): the lower middle value for even n."""
    return np.sort(a, 0)[(len(a) - 1) // 2]


def run_ours(depth, seeds):
    t0 = time.perf_counter()
    out = probe_mlp_variants(models.get_config("seed_mlp5", depth=depth), list(range(seeds)),
                             batch=1)  # what a probe sweep runs for this (model, depth)
    dt = time.perf_counter() - t0
    med = {r: lower_median(np.stack([s.grad[:, 0] for s, _ in v])) for r, v in out.items()}
    return 2 * seeds / dt, med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="5,34")
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)  # the loop script uses 1 thread too
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, seeds {a.seeds}, 1 thread each")
    for depth in map(int, a.depths.split(",")):
        loop_rates, our_rates = [], []
        for _ in range(a.repeats):  # interleaved, so both see the same machine load
            r, loop_med = run_loop(depth, a.seeds)
            loop_rates.append(r)
            r, our_med = run_ours(depth, a.seeds)
            our_rates.append(r)
        # full precision: the loop's recipe, one model per seed, in this process
        ref = {r: lower_median(np.stack([probe_one(models.get_config(
            "seed_mlp5", depth=depth, residual=r), s, 1)[0].grad[:, 0]
            for s in range(a.seeds)])) for r in (False, True)}
        exact = max(float(np.max(np.abs(our_med[r] - ref[r]) / np.abs(ref[r])))
                    for r in (False, True))
        printed = max(abs(our_med[r][i] - loop_med[i][int(r)]) / abs(loop_med[i][int(r)])
                      for i in loop_med for r in (False, True))
        lo, ours = statistics.median(loop_rates), statistics.median(our_rates)
        print(f"depth {depth}: loop {lo:,.0f} probes/s (runs {[round(x) for x in loop_rates]}), "
              f"batched {ours:,.0f} probes/s (runs {[round(x) for x in our_rates]}), "
              f"ratio {ours / lo:.1f}x")
        print(f"  per-layer medians: max rel. diff vs one-model-per-seed {exact:.1e}, "
              f"vs loop's printed 4 digits {printed:.1e}; "
              f"layers.0 residual/plain {our_med[True][0] / our_med[False][0]:.3g}")


if __name__ == "__main__":
    main()
