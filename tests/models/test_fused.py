"""The fused batch-norm (+ addition) + ReLU kernel (models/fused.py, models/csrc/norm_relu.cpp).

Against a float64 reference on generated shapes and values (hypothesis), bit-identical
across thread counts, NaN as PyTorch, PyTorch's own ops wherever it does not apply, and
what happens when it cannot be built (no compiler, a failed build, two processes
building at once).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import models
from models import fused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CL = torch.channels_last

if shutil.which(os.environ.get("CXX", "c++")) is None:  # a compiler here must build it
    pytest.skip("no C++ compiler: the kernel cannot be built here", allow_module_level=True)


def test_kernel_builds_and_loads_here():
    assert fused.kernel() is not None, fused.unavailable()
    assert fused.unavailable() is None


def make_bn(C, seed, momentum=0.1):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(C, momentum=momentum)
    with torch.no_grad():  # any sign, zero included; running statistics not at their init
        bn.weight.copy_(torch.randn(C, generator=g) * (torch.rand(C, generator=g) > 0.1))
        bn.bias.copy_(torch.randn(C, generator=g))
        bn.running_mean.copy_(torch.randn(C, generator=g))
        bn.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    return bn


def run(bn, x, skip, dy, on=True):
    """(y, dx, dskip, dweight, dbias) of norm_relu, the kernel on or off."""
    x = x.detach().clone().requires_grad_()
    s = None if skip is None else skip.detach().clone().requires_grad_()
    bn.zero_grad(set_to_none=True)
    with fused.enabled(on):
        assert fused.applies(bn, x, s) is on
        y = fused.norm_relu(bn, x, s)
    y.backward(dy)
    return y.detach(), x.grad, None if s is None else s.grad, bn.weight.grad, bn.bias.grad


def reference64(bn, x, skip, dy, mask):
    """Training-mode batch norm in float64, + skip, ReLU; the gradient passes where
    ``mask`` (the fused output > 0: at a pre-activation within rounding of 0 the two
    computations may disagree on the side, which is not what is tested here)."""
    d = torch.float64
    x64 = x.detach().to(d).requires_grad_()
    w64 = bn.weight.detach().to(d).requires_grad_()
    b64 = bn.bias.detach().to(d).requires_grad_()
    s64 = None if skip is None else skip.detach().to(d).requires_grad_()
    z = F.batch_norm(x64, None, None, w64, b64, training=True, eps=bn.eps)
    if s64 is not None:
        z = z + s64
    z.backward(dy.to(d) * mask)
    dims = (0, 2, 3)
    n = x.numel() // x.shape[1]
    return (z.detach().clamp_min(0), x64.grad, None if s64 is None else s64.grad, w64.grad,
            b64.grad, x64.detach().mean(dims), x64.detach().var(dims, unbiased=True) if n > 1
            else None)


def close(a, b, what, rtol=2e-4):
    scale = b.abs().max().item() + 1e-6
    err = (a.double() - b.double()).abs().max().item()
    assert err <= rtol * scale + 1e-6, f"{what}: max error {err:.3g} at scale {scale:.3g}"


@given(n=st.integers(1, 5), c=st.sampled_from([1, 3, 8, 16, 24, 32, 64, 128]),
       h=st.integers(1, 6), w=st.integers(1, 6), with_skip=st.booleans(),
       offset=st.floats(-20, 20), scale=st.floats(0.01, 10), seed=st.integers(0, 2**16))
def test_matches_float64_batch_norm_add_relu(n, c, h, w, with_skip, offset, scale, seed):
    if n * h * w < 2:  # batch norm cannot train on one value per channel (tested below)
        return
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * scale + offset).contiguous(memory_format=CL)
    skip = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=CL) \
        if with_skip else None
    dy = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=CL)
    bn = make_bn(c, seed)
    rm0, rv0 = bn.running_mean.clone(), bn.running_var.clone()
    y, dx, ds, dw, db = run(bn, x, skip, dy)
    ry, rdx, rds, rdw, rdb, mean, var = reference64(bn, x, skip, dy, (y > 0).double())
    close(y, ry, "y")
    close(dx, rdx, "dx", rtol=1e-3)  # dx = w * invstd * (...): conditioning of the batch
    close(dw, rdw, "dweight")
    close(db, rdb, "dbias")
    if with_skip:
        assert torch.equal(ds, dy * (y > 0))  # the addition passes the masked gradient on
    close(bn.running_mean, 0.9 * rm0.double() + 0.1 * mean, "running_mean")
    close(bn.running_var, 0.9 * rv0.double() + 0.1 * var, "running_var")
    assert bn.num_batches_tracked.item() == 1
    assert y.is_contiguous(memory_format=CL) and dx.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("with_skip", [False, True])
def test_agrees_with_pytorchs_ops_on_a_resnet_sized_batch(with_skip):
    g = torch.Generator().manual_seed(3)
    shape = (64, 16, 16, 16)
    x, s, dy = ((torch.randn(shape, generator=g) * 2 + 0.5).contiguous(memory_format=CL)
                for _ in range(3))
    skip = s if with_skip else None
    bn_f, bn_t = make_bn(16, 1), make_bn(16, 1)
    got = run(bn_f, x, skip, dy, on=True)
    want = run(bn_t, x, skip, dy, on=False)
    for a, b, what in zip(got, want, ["y", "dx", "dskip", "dweight", "dbias"]):
        if b is not None:
            close(a, b, what, rtol=1e-4)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        close(getattr(bn_f, k).float(), getattr(bn_t, k).float(), k, rtol=1e-6)


def test_the_same_bits_with_one_thread_or_two():
    g = torch.Generator().manual_seed(5)
    x, s, dy = (torch.randn(32, 16, 16, 16, generator=g).contiguous(memory_format=CL)
                for _ in range(3))
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bn = make_bn(16, 2)
            out[threads] = (*run(bn, x, s, dy), bn.running_mean.clone(), bn.running_var.clone())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(out[1], out[2]))


def test_nan_and_inf_propagate_as_pytorchs():
    x = torch.randn(4, 8, 3, 3)
    x[1, 2, 0, 0] = float("nan")
    x[2, 5, 1, 1] = float("inf")
    x = x.contiguous(memory_format=CL)
    with fused.enabled():
        y = fused.norm_relu(make_bn(8, 0), x)
    want = F.relu(make_bn(8, 0)(x))
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    assert torch.isnan(y[:, 2]).all()  # a NaN poisons its channel's statistics


def hooked(bn):
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(o))
    return seen


@pytest.mark.parametrize("case", ["off", "eval", "hooked", "nchw", "bf16", "group_norm",
                                  "cumulative_momentum", "no_running_stats", "skip_nchw"])
def test_pytorchs_own_ops_wherever_the_kernel_does_not_apply(case):
    """Bit for bit ``F.relu(norm(x) + skip)``: the unfused path is the old code."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=CL)
    skip = torch.randn(4, 8, 5, 5).contiguous(memory_format=CL)
    norm = {"group_norm": nn.GroupNorm(1, 8), "cumulative_momentum": nn.BatchNorm2d(8, momentum=None),
            "no_running_stats": nn.BatchNorm2d(8, track_running_stats=False)}.get(
                case, nn.BatchNorm2d(8))
    if case == "eval":
        norm.eval()
    if case == "nchw":
        x = x.contiguous()
    if case == "skip_nchw":
        skip = skip.contiguous()
    if case == "bf16":
        x, skip = x.bfloat16(), skip.bfloat16()
        norm = norm.bfloat16()
    twin = {k: v.clone() for k, v in norm.state_dict().items()}
    seen = hooked(norm) if case == "hooked" else None
    with fused.enabled(case != "off"):
        assert not fused.applies(norm, x, skip)
        got = fused.norm_relu(norm, x, skip)
    ref = type(norm)(*([1, 8] if case == "group_norm" else [8]))
    if case in ("cumulative_momentum", "no_running_stats"):
        ref = nn.BatchNorm2d(8, momentum=None if case == "cumulative_momentum" else 0.1,
                             track_running_stats=case != "no_running_stats")
    ref = ref.to(x.dtype)
    ref.load_state_dict(twin)
    ref.train(norm.training)
    assert torch.equal(got, F.relu(ref(x) + skip))
    if seen is not None:
        assert len(seen) == 1  # the hook saw the norm's output


def test_one_value_per_channel_raises_pytorchs_error():
    x = torch.randn(1, 4, 1, 1).contiguous(memory_format=CL)
    with fused.enabled(), pytest.raises(ValueError, match="more than 1 value per channel"):
        fused.norm_relu(nn.BatchNorm2d(4), x)


@pytest.mark.parametrize("block", ["post", "pre"])
@pytest.mark.parametrize("residual", [True, False])
def test_a_resnet_training_step_fused_matches_the_unfused_step(block, residual):
    """Same loss, gradients and running statistics, up to float rounding; outside
    ``enabled()`` the network is the unfused one, and ``join(*split(x))`` its forward."""
    cfg = models.get_config("resnet", depth=10, base_width=8, block=block, residual=residual)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=g).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (16,), generator=g)
    nets, losses = [], []
    for on in (True, False):
        torch.manual_seed(1)
        net = cfg.build().to(memory_format=CL)
        with fused.enabled(on):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        nets.append(net)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        close(a.grad, b.grad, f"grad of {name}", rtol=1e-3)
    for (name, a), b in zip(nets[0].named_buffers(), nets[1].buffers()):
        close(a.float(), b.float(), name, rtol=1e-5)
    net = nets[0].eval()
    for _, unit in net.units():
        v = torch.randn(2, unit.conv1.in_channels, 8, 8).contiguous(memory_format=CL)
        assert torch.equal(unit.join(*unit.split(v)), unit(v))


def in_fresh_process(code: str, env: dict, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


PROBE = """
    import sys
    from models import fused
    from ablations.device import use_fused
    import models
    net = models.get_config("resnet", depth=4, base_width=4).build()
    print(fused.kernel() is not None, fused.unavailable())
    print(use_fused(net, "cpu", "fp32", False), use_fused(net, "cpu", "fp32", False))
"""


def test_a_failed_build_is_one_warning_and_pytorchs_ops(tmp_path):
    """A broken compiler: no kernel, one warning per process naming why, training as
    before; nothing left in the kernel folder."""
    r = in_fresh_process(PROBE, {"CXX": "false", "RESABLATE_KERNEL_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["False its build failed (false: exit status 1)",
                                     "False False"], r.stdout
    warnings = [ln for ln in r.stderr.splitlines() if "fused batch-norm+ReLU" in ln]
    assert len(warnings) == 1 and "its build failed" in warnings[0], r.stderr
    assert list(tmp_path.iterdir()) == []
    r = in_fresh_process(PROBE, {"CXX": str(tmp_path / "no-such-compiler"),
                                 "RESABLATE_KERNEL_DIR": str(tmp_path)})
    assert r.stdout.splitlines()[0].startswith("False FileNotFoundError"), r.stdout


def test_turned_off_is_silent(tmp_path):
    r = in_fresh_process(PROBE, {"RESABLATE_FUSED": "0", "RESABLATE_KERNEL_DIR": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.splitlines() == ["False RESABLATE_FUSED=0",
                                                           "False False"], r
    assert "fused" not in r.stderr


@pytest.mark.slow
def test_two_processes_building_at_once_both_load_one_library(tmp_path):
    code = "from models import fused; k = fused.kernel(); print(k is not None, fused.unavailable())"
    env = {**os.environ, "RESABLATE_KERNEL_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o.strip() for o, _ in outs] == ["True None"] * 2, outs
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # no temporary file left
    r = in_fresh_process(code, {"RESABLATE_KERNEL_DIR": str(tmp_path), "CXX": "false"})
    assert r.stdout.strip() == "True None"  # built once: later processes only load it


def test_ten_sgd_steps_fused_track_the_unfused_ones():
    """The losses of 10 SGD steps (momentum, weight decay, lr 0.1) agree to 1e-3, step
    by step (here ~2e-5 at step 10; like any change of rounding, e.g. of the thread
    count, the two trajectories drift apart over longer runs: ~3e-3 by step 30)."""
    from ablations.optim import SGD
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(10, 32, 3, 16, 16, generator=g)
    ys = torch.randint(0, 10, (10, 32), generator=g)
    curves = {}
    for on in (True, False):
        torch.manual_seed(2)
        net = models.get_config("resnet", depth=10, base_width=8).build().to(memory_format=CL)
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        losses = []
        for x, y in zip(xs, ys):
            with fused.enabled(on):
                loss = F.cross_entropy(net(x.contiguous(memory_format=CL)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[on] = torch.tensor(losses)
    assert torch.allclose(curves[True], curves[False], rtol=1e-3, atol=0)
