"""fp32 candidates for the CPU trainer, one SmallResNet-18 training step each, alternated.

The step is the trainer's (forward, cross-entropy, backward, SGD with momentum and
weight decay) on a batch of 128 random 3x32x32 images, fp32, with the given
threads. Variants:
  nchw          contiguous layout, eager: what ../shared/bench/plain_loop.py runs
  cl            channels_last, eager: what the trainer runs
  cl-compile    channels_last, torch.compile (inductor: fused pointwise ops; the
                convolutions stay oneDNN's)
  nchw-compile  contiguous, torch.compile
  cl-fused      channels_last, eager, batch norm (+ addition) + ReLU as one kernel
                (models.fused; its one-time build is in the build column when the
                kernel folder is empty, e.g. RESABLATE_KERNEL_DIR=$(mktemp -d))
Each variant is built and warmed up first (compile time is reported), then the
variants take turns for --rounds rounds of --steps steps; the median step of each is
compared with nchw's. A compiled variant pays for itself in a trial of S steps when
(eager - compiled) x S exceeds its compile time; that break-even is printed.

--keep-heap applies the trainer's allocator setting (``keep_freed_memory``: freed
tensors stay in the heap instead of being re-faulted every step); the page faults of
the whole run are printed. Compilation uses a fresh inductor cache unless --warm-cache.

usage: python bench/fp32_variants.py [--threads 2] [--rounds 5] [--steps 10]
           [--variants nchw,cl,cl-compile,nchw-compile,cl-fused] [--keep-heap]
           [--warm-cache]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from models import fused  # noqa: E402


def make(variant: str):
    if variant.endswith("fused"):
        if fused.kernel() is None:
            sys.exit(f"cl-fused: the kernel is unavailable ({fused.unavailable()})")
    torch.manual_seed(0)
    fmt = torch.channels_last if variant.startswith("cl") else torch.contiguous_format
    net = models.get_config("small_resnet18").build().to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fn = torch.compile(net) if variant.endswith("compile") else net
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (128,))

    def step():
        with fused.enabled(variant.endswith("fused")):
            loss = F.cross_entropy(fn(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default="nchw,cl,cl-compile,nchw-compile")
    ap.add_argument("--keep-heap", action="store_true",
                    help="the trainer's allocator setting (ablations.device.keep_freed_memory)")
    ap.add_argument("--warm-cache", action="store_true",
                    help="reuse torch.compile's on-disk cache (default: a fresh one, so the "
                    "compile time is what a fresh machine pays)")
    a = ap.parse_args()
    if not a.warm_cache:
        import tempfile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    if a.keep_heap:
        from ablations.device import keep_freed_memory
        assert keep_freed_memory()
    torch.set_num_threads(a.threads)
    import resource
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    names = a.variants.split(",")
    steps, warm = {}, {}
    for v in names:
        t0 = time.perf_counter()
        steps[v] = make(v)
        for _ in range(3):
            steps[v]()
        warm[v] = time.perf_counter() - t0
    times = {v: [] for v in names}
    for _ in range(a.rounds):
        for v in names:
            for _ in range(a.steps):
                t0 = time.perf_counter()
                steps[v]()
                times[v].append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    base = statistics.median(times[names[0]])
    print(f"SmallResNet-18 fp32 training step, batch 128, {a.threads} threads, ATen "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, heap "
          f"{'kept' if a.keep_heap else 'as glibc sets it'}: {faults} page faults in all")
    print(f"| variant | build + 3 warm-up steps (s) | median step (ms) | vs {names[0]} |")
    print("| --- | ---: | ---: | ---: |")
    for v in names:
        m = statistics.median(times[v])
        print(f"| {v} | {warm[v]:.1f} | {1000 * m:.1f} | {base / m:.2f}x |")
    for v in names:
        if v.endswith("compile") and v[:-len("-compile")] in times:
            eager = statistics.median(times[v[:-len("-compile")]])
            gain = eager - statistics.median(times[v])
            extra = warm[v] - warm[v[:-len("-compile")]]
            print(f"{v}: saves {1000 * gain:.1f} ms/step; its extra {extra:.1f} s of "
                  + (f"compilation pays after {extra / gain:.0f} steps" if gain > 0
                     else "compilation never pays"))


if __name__ == "__main__":
    main()
