"""A training trial's checkpoint: model, optimizer, schedule, data generator, history
and per-layer statistics after an epoch, written by ``ablations.train`` to
``<storage>/checkpoints/<trial_id>.pt`` (``results.checkpoint_path``) and read back
when the trial starts again.
"""
from __future__ import annotations

import io

import torch

from . import results


def save_state(model, opt, sched, gen, epoch, history, layer_frames,
               init_loss: float | None = None) -> bytes:
    """The checkpoint after ``epoch`` as bytes (``torch.save``), for an atomic write."""
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
