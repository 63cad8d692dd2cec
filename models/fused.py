"""``relu(norm(x) + skip)`` in one fused CPU kernel while training (``csrc/norm_relu.cpp``).

Where it applies (inside ``enabled()``, a BatchNorm2d in training mode with running
statistics, float32 channels_last CPU input, no hooks on the norm), ``norm_relu``
runs batch norm, the residual addition and the ReLU as one kernel forward and one
backward: 1.5-2.0x faster on those operations and ~6% on a SmallResNet-18 training
step with AVX2 kernels (bench/README.md). Anywhere else, and wherever the kernel
cannot be built, it is PyTorch's ``F.relu(norm(x) + skip)``. The values are the
same up to float rounding (tests/models/test_fused.py); so are the running
statistics and ``num_batches_tracked``.

The kernel is compiled on first use with the system's C++ compiler (``$CXX`` or
``c++``; ~8 s once here) for the CPU capability PyTorch runs with (AVX2 gets
``-march=x86-64-v3``, AVX512 ``x86-64-v4``, anything else no ISA flags), and kept in
``$RESABLATE_KERNEL_DIR`` (default ``~/.cache/resablate/kernels``) under a name
that changes with the source, the flags and the torch version. Each build goes to a
temporary file that is renamed into place, so processes building at once neither
wait for each other nor read a half-written library. No compiler, a failed build or
``RESABLATE_FUSED=0``: ``kernel()`` is None, ``unavailable()`` says why, and
training runs PyTorch's ops.

    with fused.enabled():               # the trainer, around its training steps
        loss = loss_fn(model(x), y)     # the blocks call norm_relu(bn, x, skip)

The families reach it through ``models.norm_act`` (``norm_act`` with a ReLU,
``NormActSequential`` ending in one); any other activation runs PyTorch's ops.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("csrc") / "norm_relu.cpp"
BUILD_TIMEOUT_S = 600
_ARCH = {"AVX2": ["-march=x86-64-v3"], "AVX512": ["-march=x86-64-v4"]}
_state = {"enabled": False, "why": None}


def _flags() -> list[str]:
    return ["-O3", "-fopenmp", *_ARCH.get(torch.backends.cpu.get_cpu_capability(), [])]


def _library_path() -> Path:
    """Where the build for this source, these flags and this torch lives."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(
        _flags() + [torch.__version__, sys.platform]).encode()).hexdigest()[:16]
    root = os.environ.get("RESABLATE_KERNEL_DIR") or \
        os.path.join(os.path.expanduser("~"), ".cache", "resablate", "kernels")
    return Path(root) / f"norm_relu-{torch.backends.cpu.get_cpu_capability()}-{key}.so"


def _build(target: Path) -> None:
    """Compile ``SOURCE`` into ``target`` (atomically); CalledProcessError, OSError or
    TimeoutExpired when that fails."""
    # (not torch.utils.cpp_extension: importing it warns about CUDA on a CPU machine)
    root = os.path.dirname(torch.__file__)
    lib = os.path.join(root, "lib")
    abi = int(torch.compiled_with_cxx11_abi())
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [os.environ.get("CXX", "c++"), *_flags(), "-shared", "-fPIC", "-std=c++20",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               f"-I{os.path.join(root, 'include')}", str(SOURCE), "-o", tmp,
               f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
        subprocess.run(cmd, check=True, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT_S)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def kernel():
    """``torch.ops.resablate_fused`` (built and loaded once per process), or None when
    turned off or it cannot be built (``unavailable()`` says why)."""
    if os.environ.get("RESABLATE_FUSED", "1") == "0":
        _state["why"] = "RESABLATE_FUSED=0"
        return None
    try:
        path = _library_path()
        if not path.is_file():
            _build(path)
        torch.ops.load_library(str(path))
        return torch.ops.resablate_fused
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        first = next((ln for ln in lines if "error" in ln), lines[-1] if lines else
                     f"exit status {e.returncode}")
        _state["why"] = f"its build failed ({e.cmd[0]}: {first.strip()})"
    except subprocess.TimeoutExpired:
        _state["why"] = f"its build took over {BUILD_TIMEOUT_S} s"
    except Exception as e:  # OSError (no compiler, unwritable folder), a load error
        _state["why"] = f"{type(e).__name__}: {e}"
    return None


def unavailable() -> str | None:
    """Why ``kernel()`` is None (None when it loaded or was not tried)."""
    return _state["why"]


def is_enabled() -> bool:
    """Whether ``norm_relu`` may use the kernel now (inside ``enabled()``, kernel loaded)."""
    return _state["enabled"]


@contextlib.contextmanager
def enabled(on: bool = True):
    """Inside, ``norm_relu`` uses the kernel where it applies (and ``on``)."""
    before = _state["enabled"]
    _state["enabled"] = bool(on) and kernel() is not None
    try:
        yield _state["enabled"]
    finally:
        _state["enabled"] = before


class _NormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, skip, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = kernel().forward(x, skip, weight, bias, running_mean, running_var,
                                           momentum, eps)
        ctx.save_for_backward(x, y, weight, mean, invstd)
        ctx.has_skip = skip is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, y, weight, mean, invstd = ctx.saved_tensors
        dx, dskip, dweight, dbias = kernel().backward(dy, x, y, weight, mean, invstd,
                                                      ctx.has_skip)
        return dx, (dskip if ctx.has_skip else None), dweight, dbias, None, None, None, None


def _dense_cl(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4
            and t.is_contiguous(memory_format=torch.channels_last))


def applies(norm: nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None) -> bool:
    """Whether ``norm_relu(norm, x, skip)`` runs the kernel now."""
    return (_state["enabled"] and type(norm) is nn.BatchNorm2d and norm.training
            and norm.track_running_stats and norm.affine and norm.momentum is not None
            and not (norm._forward_hooks or norm._forward_pre_hooks)
            and not (nn.modules.module._global_forward_hooks
                     or nn.modules.module._global_forward_pre_hooks)
            and _dense_cl(x) and (skip is None or (_dense_cl(skip) and skip.shape == x.shape))
            and x.numel() > x.shape[1])


def norm_relu(norm: nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None
              ) -> torch.Tensor:
    """``F.relu(norm(x) + skip)`` (``skip`` None: ``F.relu(norm(x))``), fused where it
    applies (``applies``)."""
    if applies(norm, x, skip):
        norm.num_batches_tracked.add_(1)  # as nn.BatchNorm2d.forward (momentum is set)
        return _NormReLU.apply(x, skip, norm.weight, norm.bias, norm.running_mean,
                               norm.running_var, norm.momentum, norm.eps)
    out = norm(x)
    return F.relu(out if skip is None else out + skip)
