"""How long a sweep will take here, before anything trains: time one training step of
each model on this machine (a second or so each), scale to the planned epochs.

A training epoch is ``ceil(train / batch)`` steps plus evaluation of the validation and
test images (a forward pass, taken as a third of a training step per image). The
steps are timed with the threads a trial gets and the arithmetic it will use (the
precision ``--precision`` resolves to, and the fused norm-ReLU kernel where the trainer
uses it; not ``--compile``, whose compilation alone would take longer than the
estimate's budget), on random data, in the driver: on a
cluster or a GPU node the trials may run faster or slower than here, and the printed
line says where it was timed. ``ablations.progress`` replaces the estimate with the
measured epoch times as soon as trials report them.
"""
from __future__ import annotations

import math
import time

EVAL_COST = 1 / 3    # a forward pass of one image, in training steps' per-image cost
BUDGET_S = 8.0       # stop timing further models after this long (the rest: unknown)


def step_seconds(model_cfg, batch: int, in_features, num_classes: int, threads: int,
                 device: str = "cpu", precision: str = "fp32") -> float:
    """Seconds of one SGD training step (forward, backward, update) at ``batch``, in
    ``precision`` ("fp32" or "bf16"), as the trainer runs it (``ablations.train``)."""
    import torch
    import torch.nn.functional as F

    from models import fused
    from models.interface import check_network

    from .device import autocast, use_fused
    from .optim import SGD
    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        model = check_network(model_cfg.with_input(in_features, num_classes).build(),
                              model_cfg.family)
        fmt = model.memory_format  # the trainer's layout (models/interface.py)
        model = model.to(device).to(memory_format=fmt)
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        fuse = use_fused(model, device, precision, compiled=False)

        def step(n):
            x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=fmt)
            y = torch.randint(0, num_classes, (n,), device=device)
            with fused.enabled(fuse), autocast(device, precision):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device != "cpu":
                torch.cuda.synchronize()
        step(min(batch, 8))  # first-call allocations and kernel selection
        t0 = time.perf_counter()
        step(batch)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(saved)


def epoch_seconds(step_s: float, n_train: int, n_eval: int, batch: int) -> float:
    """One epoch: the training steps plus the evaluation images at ``EVAL_COST``."""
    per_image = step_s / batch
    return math.ceil(n_train / batch) * step_s + n_eval * EVAL_COST * per_image


def estimate_epochs(trials, spec, n_train: int, n_eval: int, in_features, num_classes: int,
                    device: str = "cpu", budget_s: float = BUDGET_S) -> dict:
    """``{trial.cell: seconds per epoch}`` for the trials' models, timed here in order of
    first appearance; models left when ``budget_s`` has run out are absent."""
    from models import fused

    from .device import pick_precision
    t = spec.train
    threads = int(t.threads or spec.cpus_per_trial or 1)
    precision = pick_precision(device, t.precision)
    if device == "cpu" and precision == "fp32":
        fused.kernel()  # its one-time build (~8 s, then cached) is not a step's time
    out, t0 = {}, time.perf_counter()
    for trial in trials:
        key = trial.cell
        if key in out:
            continue
        if time.perf_counter() - t0 > budget_s:
            break
        s = step_seconds(trial.model_cfg, t.batch_size, in_features, num_classes, threads,
                         device, precision)
        out[key] = epoch_seconds(s, n_train, n_eval, t.batch_size)
    return out


def sweep_seconds(per_trial: list[float], slots: int) -> float:
    """Wall time of trials of ``per_trial`` seconds on ``slots`` at once: the work shared
    among the slots, or the longest trial when it is longer (greedy longest-first)."""
    if not per_trial:
        return 0.0
    loads = [0.0] * max(1, slots)
    for s in sorted(per_trial, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)
