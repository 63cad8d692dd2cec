"""Kept networks: ``<run_dir>/weights/<trial_id>/{init,final}.pt``.

Each file holds everything needed to measure the network later without the sweep's
code state (nanoGPT keeps ``model_args`` beside its weights the same way)::

    {"state_dict": ..., "model_config": {"class": "ResNetConfig", **fields},
     "factors": trial.factors(), "trial": dataclasses.asdict(trial),
     "seed": ..., "epoch": 0 for init.pt / the last epoch, "test_acc": final only}

Plain values and tensors only, so ``torch.load(weights_only=True)`` reads it.
Written atomically (``ablations.files.atomic_write``). ``init.pt`` is the network as the
trial's seed builds it before the first step (``initial``): rebuilding it from the
seed gives the same bits, so a missing ``init.pt`` costs nothing but a rebuild.

``--keep-weights``: ``final`` (default) keeps ``final.pt`` of every completed trial,
plus ``init.pt`` when a requested measurement runs at init; ``all`` keeps both
always; ``none`` keeps nothing (measurements still run in the worker, but not after
the fact). A damaged file is moved aside (``<name>.corrupt``) with one warning line
and counts as missing.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import models

from . import files, results

KEEP_CHOICES = ("final", "all", "none")
FILES = ("init", "final")
KEYS = ("state_dict", "model_config", "seed")
BYTES_PER_PARAM = 4  # float32


def trial_weights_dir(run_dir, trial_id: str) -> Path:
    return Path(run_dir) / "weights" / trial_id


def weights_path(run_dir, trial_id: str, when: str) -> Path:
    """``<run_dir>/weights/<trial_id>/<when>.pt``; ``when`` is "init" or "final"."""
    if when not in FILES:
        raise ValueError(f"when must be one of {', '.join(FILES)} (got {when!r})")
    return trial_weights_dir(run_dir, trial_id) / f"{when}.pt"


def files_to_keep(keep: str, init_measured: bool, completed: bool) -> list[str]:
    """Which of init/final a trial keeps: ``final.pt`` only of a completed trial (a
    diverged network's weights are not finite); ``init.pt`` with ``all``, or with
    ``final`` when a requested measurement runs at init."""
    if keep == "none":
        return []
    out = ["init"] if keep == "all" or init_measured else []
    return out + (["final"] if completed else [])


# --------------------------------------------------------------------------- configs

def config_record(cfg) -> dict:
    """A model config as plain values: ``{"class": "MLPConfig", **fields}``."""
    return {"class": type(cfg).__name__, **dataclasses.asdict(cfg)}


def config_from_record(rec: dict):
    """The config a ``config_record`` describes, through the family's config class
    (``models`` registry); ValueError when the record does not fit this code."""
    fields = {k: v for k, v in rec.items() if k != "class"}
    try:
        cls = type(models.get_config(fields["family"], depth=fields["depth"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"model config {rec} names no buildable family ({e})") from None
    if cls.__name__ != rec.get("class"):
        raise ValueError(f"model config class {rec.get('class')!r} does not match family "
                         f"{fields['family']!r} ({cls.__name__})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"model config fields {', '.join(unknown)} are unknown to "
                         f"{cls.__name__} (weights written by another version?)")
    return cls(**fields)


def trial_record(trial) -> dict:
    """``dataclasses.asdict(trial)`` with the model config as a ``config_record``."""
    rec = dataclasses.asdict(trial)
    rec["model_cfg"] = config_record(trial.model_cfg)
    return rec


# --------------------------------------------------------------------------- networks

def place(model, device: str, family: str | None = None):
    """On ``device``, in the network's own ``memory_format`` (channels_last for a conv
    net): the layout the trainer uses. TypeError for a model that is not a
    ``models.interface.Network`` (naming ``family``)."""
    from models.interface import check_network  # torch: only where a network is placed
    model = check_network(model, family).to(device)
    return model.to(memory_format=model.memory_format)


def initial(cfg, seed: int, device: str = "cpu"):
    """The trial's network before its first step: ``torch.manual_seed(seed);
    cfg.build()``, placed on ``device`` (what ``train.run_train_trial`` starts from)."""
    import torch
    torch.manual_seed(seed)
    return place(cfg.build(), device, cfg.family)


def network(cfg, state_dict: dict, device: str = "cpu"):
    """A network of ``cfg`` holding ``state_dict``, in eval mode, placed like in training.
    The same function builds it in the worker and after the fact, so a measurement sees
    the same network (same layout, same bits) either way."""
    model = place(cfg.build(), device, cfg.family)
    model.load_state_dict(state_dict)
    return model.eval()


def snapshot(model) -> dict:
    """A CPU copy of ``model``'s state dict (standard layout: the values are the same)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in
            model.state_dict().items()}


# --------------------------------------------------------------------------- files

def save(run_dir, trial, when: str, state_dict: dict, cfg, epoch: int,
         test_acc: float | None = None) -> Path:
    """Write ``weights/<trial_id>/<when>.pt`` atomically; returns its path."""
    import torch
    path = weights_path(run_dir, trial.trial_id, when)
    rec = {"state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()},
           "model_config": config_record(cfg), "factors": trial.factors(),
           "trial": trial_record(trial), "seed": int(trial.seed), "epoch": int(epoch),
           "test_acc": None if test_acc is None else float(test_acc)}
    files.atomic_write(path, lambda tmp: torch.save(rec, tmp))
    return path


def load(path) -> dict | None:
    """The record at ``path``, or None: not there, or unreadable and just moved aside
    (``<name>.corrupt``, one warning line), so it counts as missing."""
    import torch
    try:
        rec = torch.load(path, weights_only=True, map_location="cpu")
        missing = [k for k in KEYS if k not in rec] if isinstance(rec, dict) else list(KEYS)
        if missing:
            raise ValueError(f"not a kept network: no {', '.join(missing)}")
    except FileNotFoundError:
        return None
    except Exception as e:  # RuntimeError (zip), EOFError, UnpicklingError, OSError, ...
        moved = results.move_aside(path)
        if moved is not None:
            results.warn(f"kept network {path} is unusable ({results.brief(e)}); moved aside "
                         f"to {moved.name}; it counts as not kept")
        return None
    return rec


def load_network(path, device: str = "cpu"):
    """``(model in eval mode, record)`` from a kept file, or None (see ``load``)."""
    rec = load(path)
    if rec is None:
        return None
    return network(config_from_record(rec["model_config"]), rec["state_dict"], device), rec


def kept_any(run_dir) -> bool:
    """Whether ``<run_dir>/weights`` holds any kept network."""
    return any((Path(run_dir) / "weights").glob("*/*.pt"))


# --------------------------------------------------------------------------- the plan

def param_count(cfg) -> int:
    """Parameters of ``cfg``'s network, built on the meta device (no memory, no init)."""
    import torch
    with torch.device("meta"):
        return models.count_params(cfg.build())


def plan_lines(keep: str, measured: list, trials, run_dir) -> list[str]:
    """What the plan says about kept weights and measurements. ``measured``: the
    requested ``Measurement`` objects (``ablations.measurements``)."""
    init_measured = [m.name for m in measured if "init" in m.when]
    lines = []
    if measured:
        lines.append("measurements at the end of each trial: " + "; ".join(
            f"{m.name} ({', '.join(m.when)}, {m.cost})" for m in measured)
            + " (a diverged trial: its init points only)")
    else:
        lines.append("measurements at the end of each trial: none")
    if keep == "none":
        lines.append("weights: none kept (--keep-weights none): measuring these networks "
                     "after the fact (python -m ablations.measure) is impossible")
        return lines
    sizes = {}
    for t in trials:
        if t.model_cfg not in sizes:
            sizes[t.model_cfg] = param_count(t.model_cfg) * BYTES_PER_PARAM
    per_trial = len(files_to_keep(keep, bool(init_measured), True))
    total = sum(sizes[t.model_cfg] for t in trials) * per_trial
    what = ("init.pt and final.pt of each trial" if keep == "all" else
            "final.pt of each completed trial" + (
                f" + init.pt (measured at init: {', '.join(init_measured)})"
                if init_measured else ""))
    lines.append(f"weights: {what} in {Path(run_dir) / 'weights'}: about {_size(total)} "
                 f"for {len(trials)} trial(s) (parameters x 4 bytes); measure later with "
                 f"python -m ablations.measure {run_dir} --measure NAME")
    return lines


def _size(n: float) -> str:
    """Bytes as ``"812 B"``, ``"1.2 KB"``, ... ``"3.4 TB"`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
