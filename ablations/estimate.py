"""How long a sweep will take here, before anything trains: time one training step of
each model on this machine (a second or so each), scale to the planned epochs, time the
trial's measurements once per family on the untrained network, and add the fixed costs
around the training (``START_S``, ``WORKER_START_S``, ``TRIAL_START_S``, ``REPORT_S``
and its parts; measured on 2 cores, see bench/README.md "Estimates").

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
MEASURE_BUDGET_S = 6.0  # the same for measurements, after each family's cheapest model
# Fixed costs around the training, seconds on 2 idle cores (bench/README.md "Estimates"):
START_S = 5.5           # interpreter and imports, the data check, a local Ray's start
                        # (a dry run adds its own timing of steps and measurements)
ATTACH_S = 3.0          # the same when joining a running cluster (--address)
WORKER_START_S = 2.0    # the first trial of each slot: a worker process, its imports, data
TRIAL_START_S = 0.3     # every trial: its W&B run, checkpoints, fragments
REPORT_S = 2.5          # the merge, the figures and tables, the report pages ...
REPORT_PER_TRIAL_S = 0.15        # ... per trial of the sweep (rows, per-trial items)
REPORT_PER_MEASUREMENT_S = 1.2   # ... per measurement (its figures and tables)


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


def _time_measurements(trial, measured, sizes: dict, device: str, threads: int) -> float:
    """Seconds of ``measured`` on ``trial``'s model as initialized, on random data of the
    trial's split sizes, each counted at every point it runs at. A measurement that
    fails here counts as free (it fails in the trial too, costing nothing)."""
    import torch

    from .measurements import MeasureData
    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        model = trial.model_cfg.with_input(3 * 32 * 32, 10).build().to(device).eval()
        n_test = max(1, int(sizes.get("test", 1)))
        n_train = max(1, min(int(sizes.get("train", 1)), 2048))
        data = MeasureData(train_x=torch.randn(n_train, 3, 32, 32, device=device),
                           train_y=torch.randint(0, 10, (n_train,), device=device),
                           test_x=torch.randn(n_test, 3, 32, 32, device=device),
                           test_y=torch.randint(0, 10, (n_test,), device=device),
                           device=device)
        secs = 0.0
        for m in measured:
            t0 = time.perf_counter()
            try:
                m.fn(model, data, trial)
            except Exception:  # noqa: BLE001  its failure costs nothing here either
                continue
            secs += (time.perf_counter() - t0) * len(m.when)
        return secs
    finally:
        torch.set_num_threads(saved)


def measure_seconds(trials, spec, sizes: dict, per_epoch: dict, device: str = "cpu",
                    budget_s: float = MEASURE_BUDGET_S) -> dict:
    """``{trial.cell: seconds of the trial's measurements}`` (``spec.measure``, each at
    every point it runs at; ``_time_measurements``). The cheapest model of each family
    (the shortest epoch in ``per_epoch``) is always timed, then the family's others,
    shortest epoch first, until ``budget_s`` is spent (the sweep itself waits for this
    timing, so the costliest models are the ones left out). A model left untimed gets
    the costliest timed model's seconds scaled by the square of their epochs' ratio (a
    model's epoch: the same steps and images, so the ratio of their steps' times):
    a measurement's cost grows faster than an epoch's (a lesion study runs a forward
    pass per unit, and the passes get longer with depth; measured on the README's main
    command, bench/README.md "Estimates"). A model without a timed epoch is left out."""
    from .measure_run import requested
    names = tuple(spec.measure or ())
    if not names or not trials:
        return {}
    threads = int(spec.train.threads or spec.cpus_per_trial or 1)
    measured = requested(names)
    by_family: dict = {}
    for trial in trials:
        if trial.cell in per_epoch:
            by_family.setdefault(trial.model_cfg.family, {}).setdefault(trial.cell, trial)
    out, t0 = {}, time.perf_counter()
    for cells in by_family.values():
        order = sorted(cells, key=lambda c: per_epoch[c])
        timed = None  # the last (costliest so far) timed cell
        for k, cell in enumerate(order):
            if k == 0 or time.perf_counter() - t0 <= budget_s:
                out[cell] = _time_measurements(cells[cell], measured, sizes, device, threads)
                timed = cell
            else:
                ratio = per_epoch[cell] / max(per_epoch[timed], 1e-9)
                out[cell] = out[timed] * ratio ** 2
    return out


def fixed_seconds(n_trials: int, n_measurements: int, attached: bool,
                  started: bool) -> tuple[float, float, float, float]:
    """``(start-up, worker start, per trial, report)`` seconds around the training:
    start-up is 0 when the sweep already ``started`` (its Ray is up when it prints the
    estimate)."""
    start = 0.0 if started else (ATTACH_S if attached else START_S)
    report = REPORT_S + REPORT_PER_TRIAL_S * n_trials + REPORT_PER_MEASUREMENT_S * n_measurements
    return start, WORKER_START_S, TRIAL_START_S, report


def line(spec, trials, sizes, slots: int, tuning_cells: int = 0,
         started: bool = True) -> tuple[str, dict]:
    """The plan's time estimate and the per-epoch seconds it used (for the progress
    ETA): the trials' training (one step of each model timed here, ``BUDGET_S`` at
    most), their measurements (``measure_seconds``) and start, shared among ``slots``
    after the workers' start, plus the start-up (unless ``started``) and the report."""
    if spec.mode != "train" or not sizes:
        return "", {}
    from .device import pick_device
    from .progress import duration
    t0 = time.perf_counter()
    try:
        device = pick_device(spec.train.device)  # raises for cuda without CUDA in the driver
        per_epoch = estimate_epochs(trials, spec, sizes["train"], sizes["val"] + sizes["test"],
                                    3 * 32 * 32, 10, device)
        measuring = measure_seconds(trials, spec, sizes, per_epoch, device)
    except Exception as e:  # an estimate must never stop a sweep
        return f"estimate: not available ({type(e).__name__}: {e})", {}
    known = [t for t in trials if t.cell in per_epoch]
    if not known:
        return "estimate: not available (no model could be timed)", {}
    start, worker, per_trial, report = fixed_seconds(len(trials), len(spec.measure or ()),
                                                     spec.address is not None, started)
    if not started:  # the sweep times the same steps and measurements before it runs
        start += time.perf_counter() - t0
    train = [per_epoch[t.cell] * spec.train.epochs for t in known]
    whole = [s + measuring.get(t.cell, 0.0) + per_trial for s, t in zip(train, known)]
    trials_s = worker + sweep_seconds(whole, slots)
    total = start + trials_s + report
    parts = [f"trials {duration(trials_s)}"] + (
        [f"start-up {duration(start)}"] if start else []) + [f"report {duration(report)}"]
    text = (f"estimate: about {duration(total)} here for {len(known)} trial(s), {slots} at a "
            f"time ({', '.join(parts)}; one training step of each model and its "
            f"measurements timed on this machine's {device}; assumes no trial diverges)")
    missing = len(trials) - len(known)
    if missing:
        text += f"; {missing} trial(s) not timed (timing budget spent)"
    if tuning_cells and spec.tune:
        search = sweep_seconds([max(train)] * tuning_cells * spec.samples, slots)
        text += (f"; tuning first: up to {duration(search)} ({tuning_cells} cells x "
                 f"{spec.samples} samples, less when pruned)")
    return text, per_epoch
