"""Where and in what precision a trial computes: the device, bf16 autocast or fp32,
the fused batch-norm + ReLU kernel, and the host allocator setting for CPU training.

Shared by the trainer (``ablations.train``), the after-the-fact measurements
(``ablations.measure_run``) and the cost estimate (``ablations.estimate``); it imports
none of them.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import torch

from models import fused

from . import results


def pick_device(name: str) -> str:
    """``--device`` resolved: ``auto`` is cuda when a CUDA device is visible, else cpu;
    ``cuda`` without one raises RuntimeError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is visible to this worker")
    return name


def pick_precision(device: str, asked: str = "auto") -> str:
    """``asked`` unless "auto": then bf16 autocast only where the hardware computes bf16
    natively (CPU: AVX512-BF16/AMX; CUDA: compute capability >= 8), else fp32."""
    if asked != "auto":
        return asked
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if results.cpu_has_bf16() else "fp32"


def autocast(device: str, precision: str):
    """bfloat16 autocast on ``device`` for ``precision == "bf16"``, else a null context."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Keep the memory of freed tensors in this process's heap (glibc only).

    By default glibc serves blocks above a (dynamic) threshold with mmap and returns
    freed heap tops to the OS, so a CPU training step re-faults the pages of its
    activations every step (how many, and what it costs: bench/README.md). Serving
    every block up to 32 MiB from the heap and trimming only above 1 GiB free makes
    the next step reuse the same pages. The process keeps its peak memory, which it
    needs again every step anyway. Returns whether both settings were accepted.
    ``RESABLATE_KEEP_HEAP=0`` leaves glibc's defaults (for benchmarks)."""
    if not sys.platform.startswith("linux") or os.environ.get("RESABLATE_KEEP_HEAP") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, ...): its allocator as it is
        return False


def use_fused(model, device: str, precision: str, compiled: bool) -> bool:
    """Whether this trial trains its batch norms + ReLUs with the fused kernel
    (``models.fused``): fp32 on a CPU, eager, and a network with BatchNorm2d. Builds
    the kernel on a machine's first use (build time: bench/README.md); where it cannot
    be built, one warning per process and PyTorch's ops (``RESABLATE_FUSED=0``: off,
    silently)."""
    if device != "cpu" or precision != "fp32" or compiled or not any(
            type(m) is torch.nn.BatchNorm2d for m in model.modules()):
        return False
    if fused.kernel() is not None:
        return True
    if fused.unavailable() != "RESABLATE_FUSED=0":
        _warn_unfused(fused.unavailable())
    return False


@functools.lru_cache(maxsize=None)
def _warn_unfused(why: str) -> None:
    """The kernel-unavailable warning, once per process (per reason)."""
    print(f"warning: the fused batch-norm+ReLU kernel is unavailable ({why}); "
          "training runs PyTorch's separate operations (the same arithmetic, ~6% slower)",
          file=sys.stderr, flush=True)
