"""A training trial's checkpoint: model, optimizer, schedule, data generator, every
other RNG state, history and per-layer statistics after an epoch, or within one
(``Position``: a SIGTERM, ``--checkpoint-every``; ``ablations.preempt``), written by
``ablations.train`` to ``<storage>/checkpoints/<trial_id>.pt``
(``results.checkpoint_path``) and read back when the trial starts again.
"""
from __future__ import annotations

import dataclasses
import io
import random
import time
from typing import Any

import numpy as np
import torch

from . import files, results


@dataclasses.dataclass
class Position:
    """Where a mid-epoch checkpoint stopped: the data loader's place in ``epoch`` (its
    permutation and the index of the next batch's first image) and what the epoch had
    summed so far, so the rest of the epoch runs exactly as it would have."""
    epoch: int
    next_index: int              # perm[next_index:] is still to train on
    perm: torch.Tensor           # the epoch's order of the training images
    loss_sum: torch.Tensor       # sum of per-batch loss x batch size so far
    correct: torch.Tensor        # correct predictions so far
    first_loss: Any              # the trial's step-0 loss (epoch 1), or None
    lr: float                    # the epoch's scheduled learning rate (before warmup)
    step: int                    # optimizer steps taken in the trial
    seconds: float               # training seconds of this epoch so far

    def on(self, device) -> Position:
        """This position with its tensors on ``device``."""
        move = (lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})


def rng_states() -> dict:
    """Every global RNG a trial may touch: torch (CPU and, when in use, CUDA), NumPy,
    Python's ``random``."""
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict | None) -> None:
    """Restore ``rng_states()`` (None: a checkpoint written before they were saved)."""
    if not states:
        return
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(model, opt, sched, gen, epoch, history, layer_frames,
               init_loss: float | None = None, position: Position | None = None) -> bytes:
    """The checkpoint after ``epoch`` (and, with ``position``, within epoch + 1) as
    bytes (``torch.save``), for an atomic write."""
    buf = io.BytesIO()
    pos = None if position is None else dataclasses.asdict(position.on("cpu"))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": gen.get_state(), "epoch": epoch,
                "history": history, "layers": layer_frames, "init_loss": init_loss,
                "rngs": rng_states(), "position": pos}, buf)
    return buf.getvalue()


def write(run, epoch: int, position: Position | None = None) -> None:
    """Write the checkpoint of training ``run`` (``ablations.train.Training``)
    atomically: after ``epoch``, or at ``position`` within the next one."""
    files.write_bytes(run.ckpt, save_state(run.model, run.opt, run.sched, run.gen, epoch,
                                           run.history, run.layer_frames, run.init_loss,
                                           position))
    run.saved_at = time.monotonic()


def epoch_start(run, n: int):
    """Where training ``run``'s epoch starts: ``(first index, permutation, loss sum,
    correct count, first loss)`` on its device; a fresh epoch draws its permutation
    from the run's generator, a resumed one (``run.position``, consumed) continues."""
    pos, run.position = run.position, None
    if pos is not None:
        pos = pos.on(run.device)
        return pos.next_index, pos.perm, pos.loss_sum, pos.correct, pos.first_loss
    perm = torch.randperm(n, generator=run.gen, device=run.gen.device).to(run.device)
    return (0, perm, torch.zeros((), device=run.device),
            torch.zeros((), device=run.device, dtype=torch.long), None)


def position_of(state: dict) -> Position | None:
    """The mid-epoch position a loaded checkpoint holds (None: an epoch's end)."""
    pos = state.get("position")
    return Position(**pos) if pos else None


# required keys; "init_loss", "rngs" and "position" are optional (checkpoints written
# before they existed lack them)
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
