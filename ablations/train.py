"""Train one trial: SGD + momentum + weight decay, x0.1 at milestones (``ablations.optim``:
torch.optim's update bit for bit, without its torch._dynamo import per worker),
evaluation every epoch, per-layer statistics every k steps, divergence detection
(``ablations.evaluation.diverged_reason``: a non-finite or an exploded training loss).

``run_train_trial`` is four steps over one ``Training`` record: ``set_up`` (device,
precision, data, the seeded model), ``resume`` (from the trial's checkpoint, maybe
mid-epoch), ``train_epochs`` (train, judge, evaluate, checkpoint and report each
epoch; mid-epoch checkpoints: ``ablations.preempt``) and ``finish`` (the trial's row;
then its layers, feature maps, kept weights, measurements and fragment).

Fast by construction: data lives on the device as tensors (no DataLoader, no
per-image Python), augmentation is batched, bfloat16 autocast where the hardware
has native bf16, channels_last for conv nets, batch norm (+ the residual addition)
+ ReLU as one fused kernel when training in fp32 on a CPU (``ablations.device``),
inference mode for evaluation, and running loss and accuracy are summed on the
device: the host syncs once per epoch (plus once per statistics sample), never per
step.

``reporter`` (optional) receives per-epoch metrics and checkpoints: the Ray
runner passes one; tests can pass None. No Ray import here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from ablations.status import Status
import models
from ablations.hooks import LayerStatsRecorder
from models import fused

from . import checkpoint, files, measure_run, preempt, recipes, results, tracking, weights
from .checkpoint import discard_checkpoint, load_state, position_of, set_rng_states
from .data import DataError, load_dataset, pad_images, random_crop_flip
from .device import autocast, keep_freed_memory, pick_device, pick_precision, use_fused
from .evaluation import diverged_reason, evaluate, summarize
from .optim import SGD, StepSchedule, param_groups, warmup_factor
from .recipes import CONSTANT_WARMUP_FACTOR


def first_block_maps(model, image: torch.Tensor, norm_image: torch.Tensor) -> dict | None:
    """8 channels of the network's ``first_block()`` output for one test image (a conv
    net; None for a network without maps)."""
    block = model.first_block()  # None: a network without maps (models/interface.py)
    if block is None:
        return None
    maps = {}
    h = block.register_forward_hook(lambda m, i, o: maps.setdefault("o", o))
    with torch.inference_mode():
        model.eval()
        model(norm_image[None].float())
    h.remove()
    return {"maps": maps["o"][0, :8].float().cpu().numpy(),  # (8, H, W)
            "image": image.float().cpu().numpy()}              # (3, 32, 32) in [0, 1]


def injected_fault(trial_id: str, epoch: int) -> None:
    """Fault injection for tests: ``RESABLATE_FAULT=raise:<trial_id>[:<epoch>]`` makes that
    trial raise at the start of the epoch (default 1), on every attempt."""
    spec = os.environ.get("RESABLATE_FAULT", "")
    kind, _, rest = spec.partition(":")
    target, _, at = rest.partition(":")
    if kind == "raise" and target == trial_id and epoch == int(at or 1):
        raise RuntimeError(f"injected fault in {trial_id} at epoch {epoch} (RESABLATE_FAULT)")


def tracker_config(trial, spec, hp: dict, params: int) -> dict:
    """What W&B gets as config: every factor, the hyperparameters and the fixed settings."""
    t = spec.train
    return {**trial.record(), **hp, "params": params,
            "sweep": spec.name, "mode": spec.mode, "dataset": t.dataset, "subset": t.subset,
            "epochs": t.epochs, "batch_size": t.batch_size, "momentum": t.momentum,
            "milestones": list(t.milestones), "warmup_epochs": getattr(t, "warmup_epochs", 0),
            "recipe": getattr(spec, "recipe", "seed"), "decay": getattr(t, "decay", "all"),
            "pad_mode": getattr(t, "pad_mode", "reflect"),
            "normalize": getattr(t, "normalize", "channel")}


@dataclasses.dataclass
class Training:
    """One trial's training as it goes: what ``set_up`` builds, ``resume`` restores,
    ``train_epochs`` advances and ``finish`` records."""
    trial: Any
    spec: Any
    run_dir: Any
    reporter: Any
    tuning: bool
    started_at: float                  # time.time() when the trial started
    recipe: Any                        # ablations.recipes.Recipe
    device: str
    precision: str
    kept_heap: bool                    # keep_freed_memory() accepted
    fuse: bool                         # batch norm + ReLU as one kernel (use_fused)
    data: Any                          # ablations.data.Dataset
    cfg: Any                           # the model config with the data's input shape
    hp: dict                           # lr, weight_decay and the trial's own values
    model: Any = None
    opt: Any = None
    sched: Any = None
    gen: Any = None                    # the data order and augmentation's generator
    init_state: dict | None = None     # the network before its first step
    params: int = 0
    conv: bool = False                 # channels_last input
    history: list = dataclasses.field(default_factory=list)       # one dict per epoch
    layer_frames: list = dataclasses.field(default_factory=list)  # results.layer_frame
    start_epoch: int = 1
    resumed_from: int | None = None
    init_loss: float | None = None     # the first batch's loss before any step
    ckpt: Any = None                   # the checkpoint's path
    attempts: int = 1
    step: int = 0                      # optimizer steps taken
    status: Status = Status.COMPLETED
    diverged_epoch: int | None = None
    diverged_why: str | None = None
    wall: float = 0.0                  # training + per-epoch evaluation, seconds
    checkpoint_every_s: float = 0.0    # --checkpoint-every, seconds (0: epoch ends only)
    saved_at: float = 0.0              # time.monotonic() of the last checkpoint
    position: Any = None               # checkpoint.Position: resume within an epoch


def run_train_trial(trial, spec, run_dir, reporter=None, tuning: bool = False) -> str:
    """Train ``trial`` and write its fragment; returns its status.

    Checkpoints (model, optimizer, scheduler, history, statistics) go to
    ``<storage>/checkpoints/<trial_id>.pt`` after every epoch, atomically; a trial
    that starts again (a Tune retry, ``--resume``, ``--retry-failed``) continues
    from there, or starts over when that file is unusable (``load_state``).
    ``tuning``: an Optuna sample: metrics go to ``reporter`` only (no fragment, no
    checkpoint; a retried sample starts over).
    SIGTERM while it trains (``ablations.preempt``): a mid-epoch checkpoint, its attempt
    un-counted, then ``preempt.Preempted``; ``--checkpoint-every`` minutes since the last
    checkpoint: a mid-epoch one (the resumed trial is bit-identical either way).
    A ``DataError`` (this node's data files are damaged): an error row with its one line.
    """
    if tuning:
        return train_trial(trial, spec, run_dir, reporter, tuning)
    if preempt.requested():
        raise preempt.Preempted(trial.trial_id, "before it started")
    preempt.install()  # here when on the main thread; under Ray, WorkerSetup did it
    with preempt.armed(trial.trial_id):
        return train_trial(trial, spec, run_dir, reporter, tuning)


def train_trial(trial, spec, run_dir, reporter, tuning: bool) -> str:
    """``run_train_trial`` once the preemption handling is in place."""
    try:
        run = set_up(trial, spec, run_dir, reporter, tuning)
    except DataError as e:  # no retry: it would read the same damaged file on this node
        if tuning:
            raise
        results.warn(f"{trial.trial_id} ends with status=error: {e}")
        results.count_attempt(run_dir, trial.trial_id)  # it started: attempts counts it
        results.write_error(run_dir, trial, str(e))
        return Status.ERROR
    resume(run)
    tracker = tracking.TrialTracker(
        spec.wandb, run_dir, spec.name, trial.trial_id,
        tracker_config(trial, spec, run.hp, run.params), job_type="tune" if tuning else "trial")
    try:
        train_epochs(run, tracker)
    except preempt.Preempted:
        tracker.finish({"status": "preempted"})  # the rerun continues this W&B run
        raise
    except BaseException:
        tracker.finish({"status": Status.ERROR}, failed=True)
        raise
    return finish(run, tracker)


def set_up(trial, spec, run_dir, reporter, tuning: bool) -> Training:
    """Device, precision, data and the seeded model, optimizer and schedule at epoch 1."""
    started_at = time.time()
    t = spec.train
    recipe = recipes.get(getattr(spec, "recipe", "seed"))
    device = pick_device(t.device)
    precision = pick_precision(device, t.precision)
    kept_heap = keep_freed_memory() if device == "cpu" else False
    data = load_dataset(t, device)
    run = Training(trial=trial, spec=spec, run_dir=run_dir, reporter=reporter, tuning=tuning,
                   started_at=started_at, recipe=recipe, device=device, precision=precision,
                   kept_heap=kept_heap, fuse=False, data=data,
                   cfg=trial.model_cfg.with_input(data.in_features, data.num_classes),
                   hp={"lr": t.lr, "weight_decay": t.weight_decay, **trial.hp},
                   checkpoint_every_s=60 * getattr(spec, "checkpoint_every", 0),
                   saved_at=time.monotonic())
    start_fresh(run)
    model = run.model
    # the network before its first step, for --keep-weights and measurements at init
    # (taken before a checkpoint is loaded: a resumed trial has it too, bit for bit)
    run.init_state = weights.snapshot(model) if not tuning and measure_run.needs_init(spec) \
        else None
    run.params = models.count_params(model)
    run.conv = model.memory_format == torch.channels_last  # models/interface.py
    run.fuse = use_fused(model, device, precision, bool(t.compile))
    return run


def start_fresh(run: Training) -> None:
    """Model, optimizer, schedule and data generator as at epoch 1 (seeded); no history."""
    t, hp = run.spec.train, run.hp
    # channels_last for conv nets (weights.initial)
    run.model = model = weights.initial(run.cfg, run.trial.seed, run.device)
    run.opt = SGD(param_groups(model, t.decay, hp["weight_decay"]), lr=hp["lr"],
                  momentum=t.momentum, weight_decay=hp["weight_decay"])
    run.sched = StepSchedule(run.opt, t.milestones, gamma=0.1)
    run.gen = torch.Generator(device=run.device).manual_seed(run.trial.seed)
    run.history, run.layer_frames = [], []
    run.start_epoch, run.resumed_from, run.init_loss, run.position = 1, None, None, None


def resume(run: Training) -> None:
    """Count this attempt and continue from the trial's checkpoint when a usable one is
    there (never for a tuning sample)."""
    run.ckpt = results.checkpoint_path(run.spec.storage_dir, run.trial.trial_id)
    run.attempts = 1 if run.tuning else results.count_attempt(run.run_dir, run.trial.trial_id)
    state = None if run.tuning else load_state(run.ckpt)
    if state is None:
        return
    try:
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.gen.set_state(state["rng"])  # the data order continues as if never stopped
        run.history, run.layer_frames = list(state["history"]), list(state["layers"])
        run.init_loss = state.get("init_loss")
        run.start_epoch = run.resumed_from = int(state["epoch"]) + 1
        run.position = position_of(state)  # None: at the epoch's start
        set_rng_states(state.get("rngs"))
    except Exception as e:  # readable but not this trial's state: same as unreadable
        discard_checkpoint(run.ckpt, e)
        start_fresh(run)  # a half-loaded state must not leak in


def train_epochs(run: Training, tracker) -> None:
    """From ``run.start_epoch`` to the last epoch, or to a divergence: train each epoch,
    then judge, evaluate, checkpoint and report it (``end_epoch``)."""
    t, model = run.spec.train, run.model
    n = len(run.data.train_y)
    step_fn = torch.compile(model) if t.compile else model
    recorder = LayerStatsRecorder(model)
    run.step = run.position.step if run.position else \
        (run.start_epoch - 1) * math.ceil(n / t.batch_size)
    padded = pad_images(run.data.train_x, mode=t.pad_mode)  # (N, C, 40, 40), once
    wall0 = time.perf_counter()
    for epoch in range(run.start_epoch, t.epochs + 1):
        injected_fault(run.trial.trial_id, epoch)
        model.train()
        # resumed mid-epoch: the epoch's own lr (the optimizer's may be a warmup's)
        t0 = time.perf_counter() - (run.position.seconds if run.position else 0.0)
        lr = run.position.lr if run.position else run.opt.param_groups[0]["lr"]
        loss_sum, correct, first_loss = train_epoch(run, step_fn, recorder, padded, epoch, lr,
                                                    t0)
        run.opt.set_lr(lr)  # the schedule's own lr (warmup only scaled it)
        run.sched.step()
        train_loss = loss_sum.item() / n  # the one host sync of the epoch
        if first_loss is not None:  # epoch 1 only
            run.init_loss = first_loss.item()
        seconds = time.perf_counter() - t0
        if not end_epoch(run, tracker, epoch, lr, train_loss, correct, seconds):
            break
        if preempt.requested() and not run.tuning:  # its checkpoint is written
            preempt.hand_back(run, f"after epoch {epoch}")
    run.wall = time.perf_counter() - wall0  # training + evaluation, as plain_loop.py times it
    recorder.close()


def train_epoch(run: Training, step_fn, recorder, padded, epoch: int, lr: float, t0: float):
    """One pass over the training set in the generator's order (the rest of it, resumed
    mid-epoch); returns the summed loss, the correct count (on the device) and the
    first batch's loss before any step (the trial's step 0 only, else None). ``t0``:
    ``time.perf_counter()`` at the epoch's start."""
    t, data, model, opt, device = run.spec.train, run.data, run.model, run.opt, run.device
    n = len(data.train_y)
    warm_steps = getattr(t, "warmup_epochs", 0) * math.ceil(n / t.batch_size)
    # He et al. 2016's constant warmup (lr x0.1) for the deepest nets (ablations.recipes)
    low_steps = t.constant_warmup_steps if t.constant_warmup_depth and \
        run.trial.depth >= t.constant_warmup_depth else 0
    fmt = torch.channels_last if run.conv else torch.contiguous_format
    # the epoch's order and sums; resumed mid-epoch: the saved ones, from where it stopped
    start, perm, loss_sum, correct, first_loss = checkpoint.epoch_start(run, n)
    for k in range(start, n, t.batch_size):
        idx = perm[k:k + t.batch_size]
        xb = random_crop_flip(padded[idx], run.gen).contiguous(memory_format=fmt)
        yb = data.train_y[idx]
        # warmups scale the scheduled lr; the epoch's end restores it, and so does
        # step low_steps (a constant warmup may end within an epoch)
        if run.step < warm_steps or (low_steps and run.step <= low_steps):
            factor = warmup_factor(run.step, warm_steps)
            if run.step < low_steps:
                factor *= CONSTANT_WARMUP_FACTOR
            opt.set_lr(lr * factor)
        sample = t.stats_every and run.step % t.stats_every == 0 and not run.tuning
        with recorder.capture() if sample else contextlib.nullcontext():
            # fused: batch norm + ReLU as one kernel where it applies (models.fused)
            with autocast(device, run.precision), fused.enabled(run.fuse):
                # sampled steps run eagerly: the recorder's hooks would make a
                # compiled step recompile (same modules, same weights)
                out = (model if sample else step_fn)(xb)
            loss = F.cross_entropy(out.float(), yb)
        if run.step == 0:
            first_loss = loss.detach().clone()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sample:
            run.layer_frames.append(results.layer_frame(
                run.trial, recorder.snapshot(), "train", run.step, epoch))
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (out.argmax(1) == yb).sum()
        run.step += 1
        # SIGTERM, or --checkpoint-every minutes since the last: a mid-epoch checkpoint
        preempt.after_step(run, lambda: checkpoint.Position(
            epoch, k + t.batch_size, perm, loss_sum, correct, first_loss, lr, run.step,
            time.perf_counter() - t0))
    return loss_sum, correct, first_loss


def end_epoch(run: Training, tracker, epoch: int, lr: float, train_loss: float, correct,
              seconds: float) -> bool:
    """Judge, evaluate, checkpoint and report a trained epoch; False when it diverged."""
    data, n = run.data, len(run.data.train_y)
    run.diverged_why = diverged_reason(train_loss, run.init_loss, data.num_classes)
    if run.diverged_why:
        run.status, run.diverged_epoch = Status.DIVERGED, epoch
        run.history.append({"epoch": epoch, "train_loss": train_loss, "lr": lr,
                            "epoch_seconds": seconds, "train_images_per_s": n / seconds})
        return False
    val_loss, val_acc = evaluate(run.model, data.val_x, data.val_y, run.device, run.precision)
    test_loss, test_acc = evaluate(run.model, data.test_x, data.test_y, run.device,
                                   run.precision)
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / n,
           "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
           "test_acc": test_acc, "lr": lr, "epoch_seconds": seconds,
           "train_images_per_s": n / seconds}
    run.history.append(row)
    if not run.tuning:
        checkpoint.write(run, epoch)
    tracker.log_epoch(row)
    if run.reporter:
        run.reporter.report(row)
    return True


def finish(run: Training, tracker) -> str:
    """Record the trial (``trial_row``): a tuning sample reports its outcome, a trial
    keeps its results (``keep_results``). Returns the trial's status."""
    epochs = pd.DataFrame(run.history)
    for k, v in reversed(run.trial.factors().items()):
        epochs.insert(0, k, v)
    row = trial_row(run, epochs)
    if run.tuning:
        tracker.finish({k: v for k, v in row.items() if k != "trial_id"})
        if run.reporter:
            last = [r["val_acc"] for r in run.history if "val_acc" in r]
            run.reporter.report({
                "status": run.status, "diverged_reason": run.diverged_why,
                "tune_final": 1,  # no "epoch": not a step
                "val_acc": 0.0 if run.status == Status.DIVERGED or not last else last[-1]})
        return run.status
    keep_results(run, tracker, row, epochs)
    return run.status


def trial_row(run: Training, epochs: pd.DataFrame) -> dict:
    """The trial's row of trials.parquet: factors, hyperparameters, outcome, budget,
    machine and timing, and the summary of its epochs."""
    t, trial, n, device = run.spec.train, run.trial, len(run.data.train_y), run.device
    return {**trial.record(), **run.hp, "params": run.params,
            "status": run.status, "diverged_epoch": run.diverged_epoch,
            "diverged_reason": run.diverged_why, "init_loss": run.init_loss,
            # the budget: steps taken, against the recipe's full schedule for this
            # training set (a report reads "X% of the recipe's schedule")
            "recipe": run.recipe.name, "steps": run.step,
            "schedule_steps": run.recipe.schedule_steps(n, t.batch_size), "n_train": n,
            "batch_size": t.batch_size, "decay": t.decay, "device": device,
            "precision": run.precision, "compiled": bool(t.compile),
            "heap_kept": run.kept_heap, "fused_norm_relu": run.fuse,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()
            if device == "cpu" else None,
            "train_seconds": float(epochs["epoch_seconds"].sum()) if len(epochs) else 0.0,
            "wall_seconds": run.wall, "threads": torch.get_num_threads(),
            "attempts": run.attempts, "resumed_from_epoch": run.resumed_from,
            **(run.reporter.where() if run.reporter else {}),
            "started_at": run.started_at, "finished_at": time.time(), "pid": os.getpid(),
            **summarize(epochs)}


def keep_results(run: Training, tracker, row: dict, epochs: pd.DataFrame) -> None:
    """Write the trial's layers, first-block feature maps, kept weights, measurements
    and fragment, finish its W&B run, then drop its checkpoint."""
    trial, run_dir, data = run.trial, run.run_dir, run.data
    frames = {"epochs": epochs}
    if run.layer_frames:
        frames["layers"] = pd.concat(run.layer_frames, ignore_index=True)
        tracker.log_layers(frames["layers"])
    maps = first_block_maps(run.model, data.test_images[0], data.test_x[0]) \
        if run.status == Status.COMPLETED else None
    if maps is not None:
        results.write_npz(f"{run_dir}/features/{trial.trial_id}.npz", maps)
    row["wandb"] = tracker.url or tracker.kept_at
    # kept weights and measurement fragments first: a trial with a row has them
    row.update(measure_run.finish_trial(trial, run.spec, run_dir, run.cfg, run.model,
                                        run.init_state, data, run.device, run.status,
                                        row.get("epochs_run", 0), row.get("final_test_acc")))
    results.write_fragment(run_dir, trial.trial_id, row, frames)
    tracker.finish({k: v for k, v in row.items() if k != "trial_id"})
    if os.path.exists(run.ckpt):
        files.remove(run.ckpt)  # the fragment has everything; weights/ keeps what --keep-weights asks
