"""Train one trial: SGD + momentum + weight decay, x0.1 at milestones (``ablations.optim``:
torch.optim's update bit for bit, without its ~2 s torch._dynamo import per worker),
evaluation every epoch, per-layer statistics every k steps, divergence detection
(``diverged_reason``: a non-finite or an exploded training loss).

Fast by construction: data lives on the device as tensors (no DataLoader, no
per-image Python), augmentation is batched, bfloat16 autocast where the hardware
has native bf16 (CPU: AVX512-BF16/AMX; CUDA: compute capability >= 8),
channels_last for conv nets, batch norm (+ the residual addition) + ReLU as one
fused kernel when training in fp32 on a CPU (``models.fused``), inference mode for
evaluation, and running loss and accuracy are summed on the device: the host syncs
once per epoch (plus once per statistics sample), never per step.

``reporter`` (optional) receives per-epoch metrics and checkpoints: the Ray
runner passes one; tests can pass None. No Ray import here.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import math
import os
import sys
import time

import pandas as pd
import torch
import torch.nn.functional as F

import models
from ablations.hooks import LayerStatsRecorder
from models import fused

from . import measure_run, results, weights
from .data import load_dataset, pad_images, random_crop_flip
from .optim import SGD, StepSchedule, param_groups, warmup_factor
from .recipes import CONSTANT_WARMUP_FACTOR

# Evaluation batch: on a CPU, 256 images keep a SmallResNet's activations in cache and
# in the kept heap (1,017 test images: 0.16 s at 256 against 0.34 s at 1000, fp32, 2
# threads); a GPU wants large batches.
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 1000


# A trial has diverged when an epoch's mean training loss exceeds this many times its
# reference loss (see diverged_reason).
EXPLODE_FACTOR = 10.0


def diverged_reason(train_loss: float, init_loss: float | None, num_classes: int
                    ) -> str | None:
    """Why a trial whose epoch ended with mean training loss ``train_loss`` has diverged,
    or None. This is the one rule for every trial and every tuning sample (a diverged
    sample scores like any diverged one: ``ablations.tuning``).

    - ``"non-finite"``: the loss is NaN or inf.
    - ``"exploded"``: the loss exceeds ``EXPLODE_FACTOR`` x max(``init_loss``,
      ln(``num_classes``)). ``init_loss`` is the loss on the first training batch before
      the first step; ln(``num_classes``) is the loss of a uniform guess (chance) and
      stands in when ``init_loss`` is unknown or non-finite. A network that learns stays
      near or below both, and a deep network that starts far above chance is judged
      against its own start. A finite explosion is still divergence: a residual MLP-20
      on synthetic data ended its first epoch at loss 6e4..8e5 (chance: ln 10 = 2.30),
      and it was counted as completed before this rule.
    """
    if not math.isfinite(train_loss):
        return "non-finite"
    reference = math.log(num_classes)
    if init_loss is not None and math.isfinite(init_loss):
        reference = max(reference, init_loss)
    return "exploded" if train_loss > EXPLODE_FACTOR * reference else None


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is visible to this worker")
    return name


def pick_precision(device: str, asked: str = "auto") -> str:
    """``asked`` unless "auto": then bf16 autocast only where the hardware computes bf16
    natively, else fp32."""
    if asked != "auto":
        return asked
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if results.cpu_has_bf16() else "fp32"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Keep the memory of freed tensors in this process's heap (glibc only).

    By default glibc serves blocks above a (dynamic) threshold with mmap and returns
    freed heap tops to the OS, so a CPU training step re-faults the pages of its
    activations every step: ~7,800 page faults (~31 MB) per SmallResNet-18 step of
    batch 128, ~8-15% of an fp32 step on 2 cores (bench/README.md). Serving every
    block up to 32 MiB from the heap and trimming only above 1 GiB free makes the
    next step reuse the same pages. The process keeps its peak memory, which it
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
    the kernel on a machine's first use (~8 s here); where it cannot be built, one
    warning per process and PyTorch's ops (``RESABLATE_FUSED=0``: off, silently)."""
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


def autocast(device: str, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def evaluate(model, x, y, device, precision) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y); NaN for an empty split."""
    if len(y) == 0:
        return math.nan, math.nan
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batch = EVAL_BATCH.get(torch.device(device).type, EVAL_BATCH_DEFAULT)
    for k in range(0, len(y), batch):
        xb, yb = x[k:k + batch], y[k:k + batch]
        with autocast(device, precision):
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return loss.item() / len(y), correct.item() / len(y)


def first_block_maps(model, image: torch.Tensor, norm_image: torch.Tensor) -> dict | None:
    """8 channels of the first residual block's output for one test image (ResNets)."""
    if not hasattr(model, "first_block"):
        return None
    maps = {}
    h = model.first_block().register_forward_hook(lambda m, i, o: maps.setdefault("o", o))
    with torch.inference_mode():
        model.eval()
        model(norm_image[None].float())
    h.remove()
    return {"maps": maps["o"][0, :8].float().cpu().numpy(),  # (8, H, W)
            "image": image.float().cpu().numpy()}              # (3, 32, 32) in [0, 1]


def save_state(model, opt, sched, gen, epoch, history, layer_frames,
               init_loss: float | None = None) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": gen.get_state(), "epoch": epoch,
                "history": history, "layers": layer_frames, "init_loss": init_loss}, buf)
    return buf.getvalue()


# required keys; "init_loss" is optional (checkpoints written before it existed lack it)
STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "layers")


def load_state(path) -> dict | None:
    """The checkpoint at ``path``, or None: none there, or it was unreadable and has just
    been moved aside (``<id>.pt.corrupt``, one warning line), so the trial starts over.

    Starting over, not from an older checkpoint: only one is kept. It is written
    atomically, so a killed process never leaves half of it; a damaged one means the
    storage failed (a machine crash before the data reached the disk, a full or
    failing disk or network filesystem), rare enough not to pay for a second copy
    every epoch. A fresh start repeats the trial exactly (same seeds).
    """
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
        missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) \
            else list(STATE_KEYS)
        if missing:
            raise ValueError(f"not a trial checkpoint: no {', '.join(missing)}")
    except FileNotFoundError:
        return None
    except Exception as e:  # RuntimeError (zip), EOFError, UnpicklingError, OSError, ...
        discard_checkpoint(path, e)
        return None
    return state


def discard_checkpoint(path, error: BaseException) -> None:
    """Move an unusable checkpoint aside (kept for a look) and say so in one line."""
    moved = results.move_aside(path)
    if moved is not None:
        results.warn(f"checkpoint {path} is unusable ({results.brief(error)}); moved aside to "
                     f"{moved.name}; the trial starts over from epoch 1")


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


def run_train_trial(trial, spec, run_dir, reporter=None, tuning: bool = False) -> str:
    """Train ``trial`` and write its fragment; returns its status.

    Checkpoints (model, optimizer, scheduler, history, statistics) go to
    ``<storage>/checkpoints/<trial_id>.pt`` after every epoch, atomically; a trial
    that starts again (a Tune retry, ``--resume``, ``--retry-failed``) continues
    from there, or starts over when that file is unusable (``load_state``).
    ``tuning``: an Optuna sample: metrics go to ``reporter`` only (no fragment, no
    checkpoint; a retried sample starts over).
    """
    from . import recipes, tracking
    started_at = time.time()
    t = spec.train
    recipe = recipes.get(getattr(spec, "recipe", "seed"))
    device = pick_device(t.device)
    precision = pick_precision(device, t.precision)
    kept_heap = keep_freed_memory() if device == "cpu" else False
    data = load_dataset(t, device)
    cfg = trial.model_cfg.with_input(data.in_features, data.num_classes)
    hp = {"lr": t.lr, "weight_decay": t.weight_decay, **trial.hp}

    def fresh():
        """Model, optimizer, schedule and data generator as at epoch 1 (seeded)."""
        model = weights.initial(cfg, trial.seed, device)  # channels_last for conv nets
        opt = SGD(param_groups(model, t.decay, hp["weight_decay"]), lr=hp["lr"],
                  momentum=t.momentum, weight_decay=hp["weight_decay"])
        return (model, opt, StepSchedule(opt, t.milestones, gamma=0.1),
                torch.Generator(device=device).manual_seed(trial.seed))

    model, opt, sched, gen = fresh()
    # the network before its first step, for --keep-weights and measurements at init
    # (taken before a checkpoint is loaded: a resumed trial has it too, bit for bit)
    init_state = weights.snapshot(model) if not tuning and measure_run.needs_init(spec) \
        else None
    params = models.count_params(model)
    conv = hasattr(model, "stages")
    history: list[dict] = []
    layer_frames: list[pd.DataFrame] = []
    start_epoch, resumed_from, init_loss = 1, None, None
    ckpt = results.checkpoint_path(spec.storage_dir, trial.trial_id)
    attempts = 1 if tuning else results.count_attempt(run_dir, trial.trial_id)
    state = None if tuning else load_state(ckpt)
    if state is not None:  # continue from the last checkpoint
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["rng"])  # the data order continues as if never stopped
            history, layer_frames = list(state["history"]), list(state["layers"])
            init_loss = state.get("init_loss")
            start_epoch = resumed_from = int(state["epoch"]) + 1
        except Exception as e:  # readable but not this trial's state: same as unreadable
            discard_checkpoint(ckpt, e)
            model, opt, sched, gen = fresh()  # a half-loaded state must not leak in
            history, layer_frames, start_epoch, resumed_from, init_loss = [], [], 1, None, None
    step_fn = torch.compile(model) if t.compile else model
    fuse = use_fused(model, device, precision, bool(t.compile))
    recorder = LayerStatsRecorder(model)
    tracker = tracking.TrialTracker(
        spec.wandb, run_dir, spec.name, trial.trial_id, tracker_config(trial, spec, hp, params),
        job_type="tune" if tuning else "trial")
    from .trial import layer_frame
    n = len(data.train_y)
    step = (start_epoch - 1) * math.ceil(n / t.batch_size)
    status, diverged_epoch, diverged_why = "completed", None, None
    warm_steps = getattr(t, "warmup_epochs", 0) * math.ceil(n / t.batch_size)
    # He et al. 2016's constant warmup (lr x0.1) for the deepest nets (ablations.recipes)
    low_steps = t.constant_warmup_steps if t.constant_warmup_depth and \
        trial.depth >= t.constant_warmup_depth else 0
    first_loss = None  # the loss of the first batch before any step (diverged_reason)
    padded = pad_images(data.train_x, mode=t.pad_mode)  # (N, C, 40, 40), once
    fmt = torch.channels_last if conv else torch.contiguous_format
    wall0 = time.perf_counter()
    try:
        for epoch in range(start_epoch, t.epochs + 1):
            injected_fault(trial.trial_id, epoch)
            model.train()
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
            for k in range(0, n, t.batch_size):
                idx = perm[k:k + t.batch_size]
                xb = random_crop_flip(padded[idx], gen).contiguous(memory_format=fmt)
                yb = data.train_y[idx]
                # warmups scale the scheduled lr; the epoch's end restores it, and so does
                # step low_steps (a constant warmup may end within an epoch)
                if step < warm_steps or (low_steps and step <= low_steps):
                    factor = warmup_factor(step, warm_steps)
                    if step < low_steps:
                        factor *= CONSTANT_WARMUP_FACTOR
                    opt.set_lr(lr * factor)
                sample = t.stats_every and step % t.stats_every == 0 and not tuning
                with recorder.capture() if sample else contextlib.nullcontext():
                    # fused: batch norm + ReLU as one kernel where it applies (models.fused)
                    with autocast(device, precision), fused.enabled(fuse):
                        # sampled steps run eagerly: the recorder's hooks would make a
                        # compiled step recompile (same modules, same weights)
                        out = (model if sample else step_fn)(xb)
                    loss = F.cross_entropy(out.float(), yb)
                if step == 0:
                    first_loss = loss.detach().clone()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if sample:
                    layer_frames.append(
                        layer_frame(trial, recorder.snapshot(), "train", step, epoch))
                opt.step()
                loss_sum += loss.detach() * len(yb)
                correct += (out.argmax(1) == yb).sum()
                step += 1
            opt.set_lr(lr)  # the schedule's own lr (warmup only scaled it)
            sched.step()
            train_loss = loss_sum.item() / n  # the one host sync of the epoch
            if first_loss is not None:  # epoch 1 only
                init_loss, first_loss = first_loss.item(), None
            seconds = time.perf_counter() - t0
            diverged_why = diverged_reason(train_loss, init_loss, data.num_classes)
            if diverged_why:
                status, diverged_epoch = "diverged", epoch
                history.append({"epoch": epoch, "train_loss": train_loss, "lr": lr,
                                "epoch_seconds": seconds, "train_images_per_s": n / seconds})
                break
            val_loss, val_acc = evaluate(model, data.val_x, data.val_y, device, precision)
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, device, precision)
            row = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / n,
                   "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                   "test_acc": test_acc, "lr": lr, "epoch_seconds": seconds,
                   "train_images_per_s": n / seconds}
            history.append(row)
            if not tuning:
                results.write_bytes(ckpt, save_state(model, opt, sched, gen, epoch, history,
                                                     layer_frames, init_loss))
            tracker.log_epoch(row)
            if reporter:
                reporter.report(row)
    except BaseException:
        tracker.finish({"status": "error"}, failed=True)
        raise
    wall = time.perf_counter() - wall0  # training + per-epoch evaluation, as plain_loop.py times
    recorder.close()
    epochs = pd.DataFrame(history)
    for k, v in reversed(trial.factors().items()):
        epochs.insert(0, k, v)
    row = {**trial.record(), **hp, "params": params,
           "status": status, "diverged_epoch": diverged_epoch,
           "diverged_reason": diverged_why, "init_loss": init_loss,
           # the budget: steps taken, against the recipe's full schedule for this
           # training set (a report reads "X% of the recipe's schedule")
           "recipe": recipe.name, "steps": step,
           "schedule_steps": recipe.schedule_steps(n, t.batch_size), "n_train": n,
           "batch_size": t.batch_size, "decay": t.decay, "device": device,
           "precision": precision, "compiled": bool(t.compile), "heap_kept": kept_heap,
           "fused_norm_relu": fuse,
           "cpu_capability": torch.backends.cpu.get_cpu_capability() if device == "cpu" else None,
           "train_seconds": float(epochs["epoch_seconds"].sum()) if len(epochs) else 0.0,
           "wall_seconds": wall, "threads": torch.get_num_threads(), "attempts": attempts,
           "resumed_from_epoch": resumed_from, **(reporter.where() if reporter else {}),
           "started_at": started_at, "finished_at": time.time(), "pid": os.getpid(),
           **summarize(epochs)}
    if tuning:
        tracker.finish({k: v for k, v in row.items() if k != "trial_id"})
        if reporter:
            last = [r["val_acc"] for r in history if "val_acc" in r]
            reporter.report({"status": status, "diverged_reason": diverged_why,
                             "tune_final": 1,  # no "epoch": not a step
                             "val_acc": 0.0 if status == "diverged" or not last else last[-1]})
        return status
    frames = {"epochs": epochs}
    if layer_frames:
        frames["layers"] = pd.concat(layer_frames, ignore_index=True)
        tracker.log_layers(frames["layers"])
    maps = first_block_maps(model, data.test_images[0], data.test_x[0]) \
        if status == "completed" else None
    if maps is not None:
        results.write_npz(f"{run_dir}/features/{trial.trial_id}.npz", maps)
    row["wandb"] = tracker.url or tracker.run_path
    # kept weights and measurement fragments first: a trial with a row has them
    row.update(measure_run.finish_trial(trial, spec, run_dir, cfg, model, init_state, data,
                                        device, status, row.get("epochs_run", 0),
                                        row.get("final_test_acc")))
    results.write_fragment(run_dir, trial.trial_id, row, frames)
    tracker.finish({k: v for k, v in row.items() if k != "trial_id"})
    if os.path.exists(ckpt):
        os.unlink(ckpt)  # the fragment has everything; weights/ keeps what --keep-weights asks
    return status


def summarize(epochs: pd.DataFrame) -> dict:
    """Final and best values; "best" epoch is chosen on validation accuracy only."""
    if epochs.empty or "test_acc" not in epochs:
        return {}
    done = epochs.dropna(subset=["test_acc"])
    if done.empty:
        return {}
    last = done.iloc[-1]
    out = {f"final_{k}": float(last[k]) for k in
           ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")}
    out["epochs_run"] = int(epochs["epoch"].max())
    out["best_test_acc"] = float(done["test_acc"].max())  # reported, never used to select
    out["best_test_epoch"] = int(done.loc[done["test_acc"].idxmax(), "epoch"])
    if done["val_acc"].notna().any():
        best = done.loc[done["val_acc"].idxmax()]
        out.update(best_val_acc=float(best["val_acc"]), best_val_epoch=int(best["epoch"]),
                   test_acc_at_best_val=float(best["test_acc"]))
    out["mean_train_images_per_s"] = float(epochs["train_images_per_s"].mean())
    return out
