"""The training budget of a sweep against He et al.'s CIFAR-10 schedule.

``budgets`` reads the budget from the trials (steps run, schedule length, batch size,
training images) or, for a folder from before those columns, estimates it from
spec.json; ``budget_text`` words it for the report, with the tag that every finding
about trained networks carries (``analysis.findings``).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations.status import Status

HE_ITERATIONS = 64_000   # He et al. 2016, CIFAR-10: 64k iterations ...
HE_BATCH = 128           # ... of mini-batches of 128 ...
HE_TRAIN_IMAGES = 45_000  # ... on a 45k/5k train/val split
HE_EPOCHS = HE_ITERATIONS * HE_BATCH / HE_TRAIN_IMAGES  # 182 epochs
ARTICLE_RECIPE_EPOCHS = 30  # the seed and default recipes' full length (ablations.recipes)
BUDGET_COLUMNS = ("steps", "schedule_steps", "batch_size", "n_train")
CIFAR_TRAIN_IMAGES = 50_000


def _pct(x: float) -> str:
    v = 100 * x
    return f"{v:.2g}%" if v < 10 else f"{v:.0f}%"


def _median(col: pd.Series) -> float | None:
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def budgets(trials: pd.DataFrame | None, spec: dict | None) -> list[dict]:
    """The training budget: one dict per recipe (``recipe`` column; one without it) with
    ``recipe, steps, steps_lo, steps_hi, schedule_steps, batch_size, n_train, about``.

    From the trials' columns ``steps, schedule_steps, batch_size, n_train`` when they
    have ``steps`` (completed trials first; the median, with the range over trials); else
    estimated from spec.json's ``train`` (``about``: True): ``n_train = subset - round(
    val_fraction * subset)`` (CIFAR-10's 50,000 without a subset), ``ceil(n_train /
    batch_size)`` steps per epoch, the trials' median ``epochs_run`` (else the spec's
    epochs) for the steps run and the spec's epochs for the schedule. [] when neither
    says.
    """
    out = []
    if trials is not None and len(trials) and "steps" in trials and \
            pd.to_numeric(trials["steps"], errors="coerce").notna().any():
        t = trials[pd.to_numeric(trials["steps"], errors="coerce").notna()]
        done = t[t["status"] == Status.COMPLETED] if "status" in t else t
        t = done if len(done) else t
        groups = (t.groupby(t["recipe"].astype(str), sort=True) if "recipe" in t
                  and t["recipe"].notna().any() else [(None, t)])
        for recipe, g in groups:
            steps = pd.to_numeric(g["steps"], errors="coerce")
            out.append(dict(recipe=recipe, steps=_median(steps), steps_lo=float(steps.min()),
                            steps_hi=float(steps.max()),
                            **{c: _median(g[c]) if c in g else None
                               for c in ("schedule_steps", "batch_size", "n_train")},
                            about=False))
        return out
    train = ((spec or {}).get("spec") or {}).get("train") or {}
    if not isinstance(train, dict) or not train.get("epochs") or not train.get("batch_size"):
        return []
    try:
        epochs, batch = float(train["epochs"]), float(train["batch_size"])
        subset = train.get("subset")
        vf = float(train.get("val_fraction") or 0.0)
        images = float(subset) if subset else (CIFAR_TRAIN_IMAGES if str(
            train.get("dataset", "cifar10")).startswith("cifar") else None)
    except (TypeError, ValueError):
        return []
    if not images or batch <= 0:
        return []
    n_train = images - (0 if vf <= 0 else max(1, round(vf * images)))
    per_epoch = math.ceil(n_train / batch)
    run = None
    if trials is not None and "epochs_run" in trials:
        done = trials[trials["status"] == Status.COMPLETED] if "status" in trials else trials
        run = _median(done["epochs_run"])
    steps = (run or epochs) * per_epoch
    # A folder without these columns was written before recipes existed, so it ran the
    # replicated article's recipe, whose full length is 30 epochs (ablations.recipes; not
    # imported: it needs torch). Another recipe's length is unknown here.
    recipe = (spec or {}).get("recipe") or ((spec or {}).get("spec") or {}).get("recipe")
    schedule = ARTICLE_RECIPE_EPOCHS * per_epoch if recipe in (None, "seed", "default") else None
    return [dict(recipe=recipe, steps=steps, steps_lo=steps, steps_hi=steps,
                 schedule_steps=schedule, batch_size=batch, n_train=n_train, about=True)]


def _budget_label(frac: float) -> str:
    return ("early training" if frac < 0.25 else "partial training" if frac < 1
            else "full-length training")


def budget_text(trials: pd.DataFrame | None, spec: dict | None) -> tuple[str, str]:
    """(statement, tag): the report's budget against He et al.'s CIFAR-10 schedule
    (64k iterations at batch 128 on 45k images = 182 epochs), e.g.

    "early training: 360 steps = 0.56% of He et al.'s 64k iterations (100% of this
    recipe's 360-step schedule); 10 epochs of 4,500 images = 5.5% of He et al.'s 182
    epochs", and the tag the findings about trained networks carry:
    " [early training: 360 steps = 0.56% of He et al.'s 64k iterations]". "about" where
    estimated from spec.json. ("", "") when nothing records the budget."""
    found = [b for b in budgets(trials, spec) if b["steps"]]
    if not found:
        return "", ""
    parts = []
    for b in found:
        about = "about " if b["about"] else ""
        frac = b["steps"] / HE_ITERATIONS
        steps = (f"{b['steps']:,.0f} steps" if b["steps_lo"] == b["steps_hi"] else
                 f"{b['steps']:,.0f} steps (median; {b['steps_lo']:,.0f} to "
                 f"{b['steps_hi']:,.0f})")
        text = (f"{_budget_label(frac)}: {about}{steps} = {_pct(frac)} of He et al.'s 64k "
                "iterations")
        if b["schedule_steps"]:
            text += (f" ({_pct(b['steps'] / b['schedule_steps'])} of this recipe's "
                     f"{b['schedule_steps']:,.0f}-step schedule)")
        if b["n_train"] and b["batch_size"]:
            ep = b["steps"] * b["batch_size"] / b["n_train"]
            text += (f"; {about}{ep:.3g} epochs of {b['n_train']:,.0f} images = "
                     f"{_pct(ep / HE_EPOCHS)} of He et al.'s {HE_EPOCHS:.0f} epochs")
        if b["about"]:
            text += " (estimated from spec.json: epochs x ceil(images / batch))"
        parts.append((f"recipe {b['recipe']}: " if b["recipe"] is not None else "") + text)
    lo = min(b["steps"] for b in found)
    hi = max(b["steps"] for b in found)
    about = "about " if any(b["about"] for b in found) else ""
    span = f"{lo:,.0f} steps" if lo == hi else f"{lo:,.0f} to {hi:,.0f} steps"
    fr = (_pct(lo / HE_ITERATIONS) if lo == hi
          else f"{_pct(lo / HE_ITERATIONS)} to {_pct(hi / HE_ITERATIONS)}")
    tag = f" [{_budget_label(hi / HE_ITERATIONS)}: {about}{span} = {fr} of He et al.'s 64k iterations]"
    return "; ".join(parts), tag
