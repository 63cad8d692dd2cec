"""Findings about how the trials trained: the ones that failed and why, and what to try
next.

Pure functions, frames in, sentences out (``analysis.report`` renders them):

* ``failure_findings``: a cell where a trial diverged or stayed at chance (final test
  error >= ``AT_CHANCE_ERROR``, or without a test error a final train loss within
  ``LOSS_TOL`` of ln 10, with 10 balanced classes) names the mechanism measured at initialization in
  ``layers.parquet`` (``init_ratios``: activation growth from the first block to the
  last, and first-layer over last-layer gradient), and the cells of the same model
  and depth that trained, by the levels in which they differ.
* ``warmup_findings``: a cell whose first-epoch train loss is above chance (ln 10)
  suggests ``--warmup-epochs`` (and, for a residual network not already at it,
  ``--branch-scale zero``).
* ``tuning_findings``: a cell of a ``--tune`` sweep whose selected hyperparameter lies
  within 10% (log scale) of a bound of its search range (``analysis.tuning.bound_side``:
  the tuning playbook's boundary check) is told to widen the range.

The statistical findings (contrasts, interactions, survivorship) are in
``analysis.findings``, the training budget every finding about trained networks carries
in ``analysis.budget``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations.status import Status
from ablations import levels as _levels
from analysis import stats
from analysis import tuning as _tuning
from analysis.findings import cell_title
from analysis.tables import snapshot_rows

N_CLASSES = 10                  # CIFAR-10 and the synthetic data set
CHANCE_LOSS = math.log(N_CLASSES)  # cross-entropy of the uniform prediction: 2.3026
AT_CHANCE_ERROR = 0.85          # a test error this high with 10 classes (chance: 0.9)
LOSS_TOL = 0.05                 # a final train loss >= ln 10 - 0.05 has learnt nothing
NOTABLE = 10.0                  # a ratio beyond 10x (or below 1/10) is called a mechanism
MAX_AVOIDERS = 4


def _times(r: float) -> str:
    """1,900 / 12 / 1.3 / 3.4e+06; "non-finite" for inf or NaN."""
    if not np.isfinite(r):
        return "non-finite"
    if r >= 1e6:
        return f"{r:.1e}"
    if r >= 10:
        return f"{r:,.0f}"
    return f"{r:.2g}"


def _ratio(r: float) -> str:
    """A ratio as "1,900x" or "0.8x", and as "1/67" below one half (not "0.015x")."""
    if not np.isfinite(r):
        return "non-finite"
    return f"{_times(r)}x" if r >= 0.5 or r <= 0 else f"1/{_times(1 / r)}"


# --------------------------------------------------------------------------- mechanisms

def _ends(rows: pd.DataFrame, interior: bool) -> tuple[float, float, int]:
    """(first, last, count) of one trial's values in network order; ``interior`` drops
    the first and last tap (the stem or input layer, and the head) when at least four."""
    v = rows.sort_values("layer_index", kind="stable")["value"].to_numpy(dtype=float)
    if interior and v.size >= 4:
        v = v[1:-1]
    return (float(v[0]), float(v[-1]), int(v.size)) if v.size else (math.nan, math.nan, 0)


def _divide(num: float, den: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def init_ratios(layers: pd.DataFrame | None) -> pd.DataFrame:
    """Per trial, at initialization (``snapshot_rows(..., "init")``: the probe's init
    phase, or a trained trial's first sample):

    * ``act_ratio``: ``act_std`` (``act_mean_abs`` when the folder has no act_std) of
      the last block over the first, over ``n_blocks`` blocks (the tap points without
      the first and last, i.e. stem/input layer and head, when there are at least four);
    * ``grad_ratio``: ``grad_mean_abs`` of the first weight layer over the last one
      (below 1: gradients vanish toward the input).

    Columns ``trial_id, act_stat, n_blocks, act_ratio, grad_ratio``; NaN where the rows
    are missing, inf for x/0.
    """
    cols = ["trial_id", "act_stat", "n_blocks", "act_ratio", "grad_ratio"]
    if layers is None or not len(layers):
        return pd.DataFrame(columns=cols)
    out: dict[str, dict] = {}
    act_stat = "act_std" if (layers["stat"] == "act_std").any() else "act_mean_abs"
    for tid, g in snapshot_rows(layers, act_stat, "init").groupby("trial_id", sort=True):
        first, last, n = _ends(g, interior=True)
        out.setdefault(tid, {})
        out[tid].update(act_stat=act_stat, n_blocks=n, act_ratio=_divide(last, first))
    for tid, g in snapshot_rows(layers, "grad_mean_abs", "init").groupby("trial_id", sort=True):
        first, last, _ = _ends(g, interior=False)
        out.setdefault(tid, {})["grad_ratio"] = _divide(first, last)
    rows = [{"trial_id": tid, **v} for tid, v in out.items()]
    return pd.DataFrame(rows, columns=cols)


def _cell_ratio(values: pd.Series) -> float:
    """Median over the finite per-trial ratios; inf when every one is inf; else NaN."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isfinite(v).any():
        return float(np.median(v[np.isfinite(v)]))
    return math.inf if np.isinf(v).any() else math.nan


def mechanism(act_ratio: float, n_blocks: int, act_stat: str, grad_ratio: float) -> tuple[str, str]:
    """(sentence, which) for a cell's init ratios; ``which`` is "act", "grad" or ""."""
    if np.isinf(act_ratio) or (n_blocks and np.isnan(act_ratio)
                               and not np.isfinite(grad_ratio)):
        return "activations are already non-finite at init", ""
    if np.isfinite(act_ratio) and act_ratio >= NOTABLE:
        return (f"activations grow {_times(act_ratio)}x over {n_blocks} blocks at init "
                f"({act_stat}, last block / first)", "act")
    if np.isfinite(act_ratio) and 0 < act_ratio <= 1 / NOTABLE:
        return (f"activations shrink {_times(1 / act_ratio)}x over {n_blocks} blocks at init "
                f"({act_stat}, last block / first)", "act")
    if np.isfinite(grad_ratio) and 0 < grad_ratio <= 1 / NOTABLE:
        return (f"gradients vanish toward the input: the first layer's mean |dL/dW| is "
                f"1/{_times(1 / grad_ratio)} of the last layer's at init", "grad")
    if np.isfinite(grad_ratio) and grad_ratio >= NOTABLE:
        return (f"gradients grow toward the input: the first layer's mean |dL/dW| is "
                f"{_times(grad_ratio)}x the last layer's at init", "grad")
    if np.isnan(act_ratio) and np.isnan(grad_ratio):
        return "no layer statistics at init for this cell", ""
    parts = []
    if np.isfinite(act_ratio):
        parts.append(f"activations {_ratio(act_ratio)} over {n_blocks} blocks")
    if np.isfinite(grad_ratio):
        parts.append(f"first/last-layer gradient {_ratio(grad_ratio)}")
    return "no activation growth or vanishing gradient at init (" + ", ".join(parts) + ")", ""


# --------------------------------------------------------------------------- failures

def trial_outcomes(trials: pd.DataFrame) -> pd.Series:
    """Per trial: "trained" (completed, above chance), "chance" (completed with final
    test error >= AT_CHANCE_ERROR; the final train loss >= ln 10 - LOSS_TOL decides only
    for a trial without a test error, so a network that generalises above chance is never
    called at chance for a high averaged train loss), "diverged", or None (errored or
    pending: says nothing about the network)."""
    t = stats.with_derived(trials)
    err = pd.to_numeric(t.get("final_test_error", pd.Series(np.nan, index=t.index)),
                        errors="coerce")
    loss = pd.to_numeric(t.get("final_train_loss", pd.Series(np.nan, index=t.index)),
                         errors="coerce")
    chance = np.where(err.notna(), err >= AT_CHANCE_ERROR, loss >= CHANCE_LOSS - LOSS_TOL)
    out = [("diverged" if st == "diverged" else ("chance" if c else "trained")
            if st == Status.COMPLETED else None) for st, c in zip(t["status"], chance)]
    return pd.Series(out, index=t.index, dtype=object)


def failure_findings(trials: pd.DataFrame | None, layers: pd.DataFrame | None = None) -> list[str]:
    """One sentence per cell with a diverged or at-chance trial, e.g.

    "resnet depth 56 (plain): 3/3 seed(s) diverged; activations grow 1,900x over 27
    blocks at init (act_std, last block / first); trained at this depth: residual
    branch_scale=zero (1x); residual norm=layer (1.3x)."

    The mechanism is the cell's median ``init_ratios``; the cells named after it are
    those of the same model and depth whose finished trials all trained, nearest first,
    described by the levels (of residual and the factors that vary) in which they
    differ, with the same ratio in parentheses (at most ``MAX_AVOIDERS``).
    """
    if trials is None or not len(trials) or "residual" not in trials:
        return []
    t = stats.prepare_trials(trials)
    t["_outcome"] = trial_outcomes(t).to_numpy()
    trained_word = "trained" if "final_test_acc" in t or "final_train_loss" in t else "stayed finite"
    keys = stats.cell_keys(t)
    shown = ["residual"] + [n for n in _levels.varying(t) if n != "residual"]
    ratios = init_ratios(layers)
    t = t.merge(ratios, on="trial_id", how="left") if "trial_id" in t and len(ratios) else \
        t.assign(act_stat=None, n_blocks=np.nan, act_ratio=np.nan, grad_ratio=np.nan)
    cells = []
    for key, g in t.groupby(keys, sort=False, dropna=False):
        o = g["_outcome"]
        cells.append({**dict(zip(keys, key)), "n": int(o.notna().sum()),
                      "diverged": int((o == "diverged").sum()),
                      "chance": int((o == "chance").sum()),
                      "trained": int((o == "trained").sum()),
                      "act_ratio": _cell_ratio(g["act_ratio"]),
                      "grad_ratio": _cell_ratio(g["grad_ratio"]),
                      "n_blocks": int(g["n_blocks"].max()) if g["n_blocks"].notna().any() else 0,
                      "act_stat": next((s for s in g["act_stat"] if isinstance(s, str)), "act_std")})
    cells = _levels.sort_cells(pd.DataFrame(cells), keys)
    out = []
    for _, c in cells.iterrows():
        if not (c["diverged"] or c["chance"]):
            continue
        what = [f"{c[k]}/{c['n']} seed(s) {w}" for k, w in
                (("diverged", "diverged"), ("chance", "stayed at chance")) if c[k]]
        text, which = mechanism(c["act_ratio"], c["n_blocks"], c["act_stat"], c["grad_ratio"])
        peers = cells[(cells["family"] == c["family"]) & (cells["model"] == c["model"])
                      & (cells["depth"] == c["depth"]) & (cells["trained"] > 0)
                      & (cells["diverged"] == 0) & (cells["chance"] == 0)]
        names = []
        # nearest first: the cells that differ from this one in the fewest factors
        peers = peers.assign(_d=[sum(p[n] != c[n] for n in shown) for _, p in peers.iterrows()])
        for _, p in peers.sort_values("_d", kind="stable").iterrows():
            diff = [n for n in shown if p[n] != c[n]]
            desc = _levels.describe(p, diff, sep=" ")
            if not desc:
                continue
            ratio = p["act_ratio"] if which == "act" else p["grad_ratio"] if which == "grad" else None
            names.append(desc + (f" ({_ratio(ratio)})" if ratio is not None and np.isfinite(ratio)
                                 else ""))
        if len(names) > MAX_AVOIDERS:
            names = names[:MAX_AVOIDERS] + [f"{len(names) - MAX_AVOIDERS} more"]
        avoid = (f"{trained_word} at this depth: {'; '.join(names)}" if names
                 else f"no other cell of this sweep {trained_word} at this depth")
        out.append(f"{cell_title(c, shown)}: {' and '.join(what)}; {text}; {avoid}.")
    return out


# --------------------------------------------------------------------------- warmup

def warmup_findings(trials: pd.DataFrame | None, epochs: pd.DataFrame | None,
                    warmup_epochs: int = 0) -> list[str]:
    """One sentence per cell whose median first-epoch train loss is above chance (more
    than ``LOSS_TOL`` above ln 10: a cell stuck at 2.31 is at chance, not overshooting;
    a non-finite loss counts as above), e.g.

    "resnet depth 56 (residual): first-epoch train loss above chance (ln 10 = 2.30) in
    3/3 seed(s) (median 4.12): the first steps overshoot; try --warmup-epochs N or
    --branch-scale zero."

    ``--branch-scale zero`` is suggested for residual cells not already at zero; a sweep
    that already warmed up (``warmup_epochs`` > 0) is told to warm up longer.
    """
    if trials is None or epochs is None or not len(epochs) or "train_loss" not in epochs \
            or "trial_id" not in epochs or "trial_id" not in trials or "residual" not in trials:
        return []
    t = stats.prepare_trials(trials)
    e = epochs[["trial_id", "epoch", "train_loss"]].dropna(subset=["epoch"])
    first = e[e["epoch"] == e.groupby("trial_id")["epoch"].transform("min")]
    first = first.drop_duplicates("trial_id")
    keys = stats.cell_keys(t)
    m = t[["trial_id", *keys]].merge(first, on="trial_id", how="inner")
    shown = ["residual"] + [n for n in _levels.varying(t) if n != "residual"]
    out = []
    for key, g in _levels.sort_cells(m, keys).groupby(keys, sort=False, dropna=False):
        loss = pd.to_numeric(g["train_loss"], errors="coerce").to_numpy(dtype=float)
        loss = np.where(np.isfinite(loss), loss, math.inf)  # NaN or inf: the loss blew up
        if not loss.size or not np.median(loss) > CHANCE_LOSS + LOSS_TOL:
            continue
        c = dict(zip(keys, key))
        med = float(np.median(loss))
        above = int((loss > CHANCE_LOSS + LOSS_TOL).sum())
        shown_loss = ("non-finite: diverged" if not np.isfinite(med)
                      else f"{med:.2f}" if med < 100 else f"{med:.3g}")
        try_ = (f"a longer --warmup-epochs (this sweep used {warmup_epochs})" if warmup_epochs
                else "--warmup-epochs N")
        if bool(c["residual"]) and c.get("branch_scale", "one") not in ("zero", _levels.NA):
            try_ += " or --branch-scale zero"
        out.append(f"{cell_title(c, shown)}: first-epoch train loss above chance (ln {N_CLASSES} = "
                   f"{CHANCE_LOSS:.2f}) in {above}/{loss.size} seed(s) (median {shown_loss}): "
                   f"the first steps overshoot; try {try_}.")
    return out


# --------------------------------------------------------------------------- tuning

def tuning_findings(tuning: pd.DataFrame | None, ranges: dict | None) -> list[str]:
    """One warning per (cell, tuned hyperparameter) whose selected value is at a bound of
    its search range (``analysis.tuning.boundary_rows``), e.g.

    "resnet-20-plain: selected lr 0.93 is within 10% (log scale) of the upper bound 1 of
    its range [0.001, 1]: the range was likely too narrow; widen it with --tune-range
    lr=LOW:HIGH, e.g. lr=0.001:10."

    The example moves the flagged bound one decade out. ``tuning``: the samples of
    tuning.parquet (``analysis.tuning.load_tuning``), ``ranges``: the spec's search
    ranges (``analysis.tuning.search_ranges``); nothing without either.
    """
    out = []
    for _, r in _tuning.boundary_rows(tuning, ranges).iterrows():
        lo, hi, v, name = r["lo"], r["hi"], r["value"], r["name"]
        bound = lo if r["side"] == "lower" else hi
        wide = (lo / 10, hi) if r["side"] == "lower" else (lo, hi * 10)
        where = ("below" if v < lo else "above") if not lo <= v <= hi else None
        what = (f"lies {where} its range" if where else
                f"is within {_tuning.MARGIN:.0%} (log scale) of the {r['side']} bound "
                f"{bound:g} of its range")
        out.append(f"{r['cell']}: selected {name} {v:.3g} {what} "
                   f"{_tuning.fmt_range(lo, hi)}: the range was likely too narrow; widen it "
                   f"with --tune-range {name}=LOW:HIGH, e.g. {name}={wide[0]:g}:{wide[1]:g}.")
    return out
