"""Robust summaries in the manner of Agarwal et al. (2021, "Deep RL at the edge of the
statistical precipice", the rliable library), failure rates, and a survivorship check.

Pure functions on the trials frame (numpy/scipy only; rliable is not a dependency), with
the conventions of ``analysis.stats``: only completed trials with a finite metric are
samples, counts next to every statistic, cells keyed by ``stats.cell_keys``.

Statistical choices:

* **Interquartile mean** (``iqm``): the mean of the middle 50% of the values,
  ``scipy.stats.trim_mean(x, 0.25)`` (``int(0.25 n)`` values cut at each end): robust
  to one outlying seed, less noisy than the median.
* **Probability of improvement** (``probability_of_improvement``): P(X_A better than
  X_B) for one run of each, over all ``n_A n_B`` pairs of runs, ties counted 1/2 (the
  Mann-Whitney U statistic over ``n_A n_B``). "Better" is lower for a metric whose name
  contains "loss" or "error", higher otherwise (``higher_is_better``).
* **Stratified percentile bootstrap** (``bootstrap_ci``): each sample (a cell's runs) is
  resampled with replacement independently of the others, the statistic recomputed
  ``reps`` times, and the interval is the ``(1 - level)/2`` and ``(1 + level)/2``
  quantiles of those values (numpy's linear interpolation). Deterministic for a seed;
  (NaN, NaN) when a stratum has fewer than two values (no spread to resample).
* **Failure rates** (``failure_rates``): exact Clopper-Pearson binomial intervals (no
  normal approximation: with 3 to 10 seeds a rate is often 0 or 1). Pending trials are
  not finished, so they are not in the denominator.
* **Survivorship** (``survivorship``): a diverged run is left out of every mean, which
  can make a fragile variant look better (only its lucky seeds survive). The contrasts
  and the depth interactions are recomputed with every diverged trial counted as a
  completed one at chance (``chance_value``: ln(10) loss, 0.9 error, 0.1 accuracy for
  10 classes, a lower bound on what the run achieved), and a row is flagged where the
  conclusion changes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ablations.status import Status
from analysis import interaction as _interaction
from ablations import levels as _levels
from analysis.contrasts import contrasts, matches_baseline
from analysis.stats import (DERIVED, cell_keys, check_level, count_statuses, finite_values,
                            prepare_trials, require_metric, usable_rows, with_derived)

NAN = math.nan


# --------------------------------------------------------------------------- primitives

def _values(values) -> np.ndarray:
    """The finite values as float64 (``stats.finite_values``; a fast path for a numeric array,
    which the bootstrap passes thousands of times)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        v = values.astype(float, copy=False).ravel()
        return v[np.isfinite(v)]
    return finite_values(values)


def higher_is_better(metric: str) -> bool:
    """False for a loss or an error (the name contains "loss" or "error"), else True."""
    m = metric.lower()
    return not ("loss" in m or "error" in m)


def iqm(values) -> float:
    """Interquartile mean of the finite values: ``scipy.stats.trim_mean(x, 0.25)`` (cut
    ``int(0.25 n)`` values at each end, mean of the rest), computed in numpy since the
    bootstrap calls it thousands of times and scipy's costs ~50x more per call."""
    v = _values(values)
    if not v.size:
        return NAN
    cut = int(0.25 * v.size)
    return float(np.sort(v)[cut:v.size - cut].mean())


def probability_of_improvement(a, b, higher_is_better: bool) -> float:
    """P(a run of A is better than a run of B) over all pairs, ties 1/2; NaN if either
    has no finite value."""
    a, b = _values(a), _values(b)
    if not a.size or not b.size:
        return NAN
    if not higher_is_better:
        a, b = -a, -b
    s = np.sort(b)
    below = np.searchsorted(s, a, side="left")   # b < a
    tied = np.searchsorted(s, a, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (a.size * b.size))


def bootstrap_ci(fn: Callable[..., float], samples: Sequence, level: float = 0.95,
                 reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of ``fn(*samples)``.

    Each sample's finite values are a stratum; for stratum j the ``(reps, n_j)`` indices
    are drawn at once, in order, from ``np.random.default_rng(seed)``, and replicate r is
    ``fn(*(x_j[idx_j[r]]))``. Non-finite replicates are dropped (NaN if none is left).
    (NaN, NaN) when any stratum has fewer than two values or there is no stratum.
    """
    level = check_level(level)
    strata = [_values(s) for s in samples]
    if not strata or any(x.size < 2 for x in strata):
        return (NAN, NAN)
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, x.size, size=(int(reps), x.size)) for x in strata]
    vals = np.array([fn(*(x[i[r]] for x, i in zip(strata, idx))) for r in range(int(reps))],
                    dtype=float)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return (NAN, NAN)
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of k successes in n trials (``scipy.stats.beta``);
    lower 0 at k = 0, upper 1 at k = n, (NaN, NaN) for n = 0."""
    from scipy.stats import beta
    level = check_level(level)
    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (NAN, NAN)
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (lo, hi)


def chance_value(metric: str, n_classes: int = 10) -> float | None:
    """The metric of a network that guesses uniformly: ln(n_classes) for a train, val or
    test loss, 1 - 1/n_classes for ``*_error``, 1/n_classes for ``*_acc``; else None."""
    m = metric.lower()
    if any(f"{s}_loss" in m for s in ("train", "val", "test")):
        return math.log(n_classes)
    if m.endswith("_error"):
        return 1.0 - 1.0 / n_classes
    if m.endswith("_acc"):
        return 1.0 / n_classes
    return None


# --------------------------------------------------------------------------- frames

def _cells(t: pd.DataFrame) -> dict:
    keys = cell_keys(t)
    return {k if isinstance(k, tuple) else (k,): g
            for k, g in t.groupby(keys, sort=False, dropna=False)}


def robust_summary(trials: pd.DataFrame, metric: str, level: float = 0.95,
                   reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell (``cell_keys``): ``n`` (usable values), ``iqm, iqm_ci_lo, iqm_ci_hi``
    (stratified bootstrap, one stratum), then ``n_planned, n_completed, n_diverged,
    n_error, n_pending``."""
    t = with_derived(prepare_trials(trials))
    require_metric(t, metric)
    keys = cell_keys(t)
    rows = []
    for key, g in _cells(t).items():
        v = usable_rows(g, metric)[metric].to_numpy(dtype=float)
        lo, hi = bootstrap_ci(iqm, [v], level, reps, seed)
        rows.append({**dict(zip(keys, key)), "n": int(v.size), "iqm": iqm(v),
                     "iqm_ci_lo": lo, "iqm_ci_hi": hi, **count_statuses(g)})
    cols = keys + ["n", "iqm", "iqm_ci_lo", "iqm_ci_hi", "n_planned", "n_completed",
                   "n_diverged", "n_error", "n_pending"]
    return _levels.sort_cells(pd.DataFrame(rows, columns=cols), keys)


def _contrast_cells(t: pd.DataFrame, rows: pd.DataFrame) -> list[tuple]:
    """(level cell, baseline cell) of each ``contrasts`` row (empty frames where absent)."""
    keys = cell_keys(t)
    cells = _cells(t)
    empty = t.iloc[:0]
    out = []
    for _, r in rows.iterrows():
        key = tuple(r[k] for k in keys)
        mine = cells.get(key, empty)
        if pd.isna(r["level"]):  # a baseline cell nothing was contrasted with
            out.append((empty, mine))
            continue
        name = r["factor"]
        others = [i for i, k in enumerate(keys) if k in _levels.present(t) and k != name]
        at = keys.index(name)
        base = [g for k, g in cells.items() if k[:3] == key[:3]
                and _levels.level_of(name, k[at]) == r["baseline"]
                and matches_baseline(tuple(k[i] for i in others), tuple(key[i] for i in others))]
        out.append((mine, base[0] if base else empty))
    return out


def improvement(trials: pd.DataFrame, metric: str, level: float = 0.95,
                reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per ``contrasts.contrasts`` row: ``prob_improvement`` = P(a run of the level cell
    is better than a run of the baseline cell), ``prob_ci_lo, prob_ci_hi`` (stratified
    bootstrap over the two cells), ``n_level, n_baseline`` (usable values).

    Columns: ``factor, level, baseline``, the cell keys, ``n_level, n_baseline,
    prob_improvement, prob_ci_lo, prob_ci_hi``; rows in ``contrasts``' order."""
    t = with_derived(prepare_trials(trials))
    rows = contrasts(t, metric, wilcoxon=False)
    keys = cell_keys(t)
    hib = higher_is_better(metric)

    def prob(a, b):
        return probability_of_improvement(a, b, hib)
    out = rows[["factor", "level", "baseline", *keys]].copy()
    stats = []
    for cell, base in _contrast_cells(t, rows):
        a = usable_rows(cell, metric)[metric].to_numpy(dtype=float)
        b = usable_rows(base, metric)[metric].to_numpy(dtype=float)
        lo, hi = bootstrap_ci(prob, [a, b], level, reps, seed)
        stats.append((a.size, b.size, prob(a, b), lo, hi))
    cols = ["n_level", "n_baseline", "prob_improvement", "prob_ci_lo", "prob_ci_hi"]
    s = pd.DataFrame(stats, columns=cols, index=out.index)
    out = pd.concat([out, s], axis=1)
    for c in ("n_level", "n_baseline"):
        out[c] = out[c].astype("int64")
    return out


def failure_rates(trials: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per cell: ``n_planned`` (finished trials: pending excluded), ``n_diverged,
    n_error, diverged_rate, diverged_ci_lo, diverged_ci_hi, failed_rate`` (diverged +
    error), ``failed_ci_lo, failed_ci_hi`` (Clopper-Pearson), then ``n_completed,
    n_pending``. A cell with only pending trials has NaN rates."""
    t = prepare_trials(trials)
    keys = cell_keys(t)
    rows = []
    for key, g in _cells(t).items():
        c = count_statuses(g)
        n = c["n_planned"] - c["n_pending"]
        failed = c["n_diverged"] + c["n_error"]
        dlo, dhi = clopper_pearson(c["n_diverged"], n, level)
        flo, fhi = clopper_pearson(failed, n, level)
        rows.append({**dict(zip(keys, key)), "n_planned": n, "n_diverged": c["n_diverged"],
                     "n_error": c["n_error"],
                     "diverged_rate": c["n_diverged"] / n if n else NAN,
                     "diverged_ci_lo": dlo, "diverged_ci_hi": dhi,
                     "failed_rate": failed / n if n else NAN, "failed_ci_lo": flo,
                     "failed_ci_hi": fhi, "n_completed": c["n_completed"],
                     "n_pending": c["n_pending"]})
    cols = keys + ["n_planned", "n_diverged", "n_error", "diverged_rate", "diverged_ci_lo",
                   "diverged_ci_hi", "failed_rate", "failed_ci_lo", "failed_ci_hi",
                   "n_completed", "n_pending"]
    return _levels.sort_cells(pd.DataFrame(rows, columns=cols), keys)


def at_chance(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A copy where every diverged trial is completed with ``metric`` at chance (for a
    derived error, its accuracy at 1 - chance, so ``with_derived`` keeps it)."""
    chance = chance_value(metric)
    if chance is None:
        raise ValueError(f"no chance level for metric {metric!r}")
    t = with_derived(trials)
    div = t["status"] == Status.DIVERGED
    t.loc[div, "status"] = Status.COMPLETED
    t.loc[div, metric] = chance
    if metric in DERIVED and DERIVED[metric] in t:
        t.loc[div, DERIVED[metric]] = 1.0 - chance
    return t


def _side(lo: float, hi: float) -> int:
    """+1: interval above 0, -1: below 0, 0: contains 0 (or NaN)."""
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _flips(e1, lo1, hi1, e2, lo2, hi2) -> bool:
    signs = (math.isfinite(e1) and math.isfinite(e2) and np.sign(e1) != np.sign(e2))
    return bool(signs or _side(lo1, hi1) != _side(lo2, hi2))


def _same_rows(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> None:
    """Both runs list the same rows in the same order (their cells and depths are the
    same: only statuses and values changed)."""
    if len(a) != len(b) or not (a[cols].map(str).values == b[cols].map(str).values).all():
        raise AssertionError("survivorship: the rows at chance differ from the rows as is")


def survivorship(trials: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Contrasts and depth interactions as they are and with diverged runs at chance.

    Columns: ``kind`` ("contrast" | "interaction"), ``factor, level, baseline`` (the
    interaction rows: residual vs plain), ``family, model, depth, base_depth`` (NA for
    contrasts), the factor columns, ``estimate, ci_lo, ci_hi`` (contrast: ``mean_diff``;
    interaction: ``did``), ``estimate_chance, ci_lo_chance, ci_hi_chance``,
    ``n_diverged`` (diverged trials of the row's cells) and ``sign_flips``: the two
    estimates have opposite signs, or one interval excludes 0 and the other does not, or
    they exclude it on opposite sides. A metric without ``chance_value``: the chance
    columns are NaN and nothing flips.
    """
    t = with_derived(prepare_trials(trials))
    require_metric(t, metric)
    factors = _levels.present(t)
    chance = at_chance(t, metric) if chance_value(metric) is not None else None
    ids = ["factor", "level", "baseline", "family", "model", "depth", "base_depth", *factors]

    def part(kind, a, b, est, n_div):
        if b is not None:
            _same_rows(a, b, [k for k in ids if k in a and k != "baseline"])
        out = pd.DataFrame({"kind": kind, **{k: a[k] for k in ids if k in a},
                            "estimate": a[est], "ci_lo": a["ci_lo"], "ci_hi": a["ci_hi"]},
                           index=a.index)
        for col, src in (("estimate", est), ("ci_lo", "ci_lo"), ("ci_hi", "ci_hi")):
            out[f"{col}_chance"] = NAN if b is None else b[src].to_numpy()
        out["n_diverged"] = n_div
        return out.reindex(columns=["kind", *ids, "estimate", "ci_lo", "ci_hi",
                                    "estimate_chance", "ci_lo_chance", "ci_hi_chance",
                                    "n_diverged"])
    c = contrasts(t, metric, level=level, wilcoxon=False)
    n_div = [int((a["status"] == Status.DIVERGED).sum() + (b["status"] == Status.DIVERGED).sum())
             for a, b in _contrast_cells(t, c)]
    parts = [part("contrast", c, None if chance is None else
                  contrasts(chance, metric, level=level, wilcoxon=False), "mean_diff", n_div)]
    i = _interaction.interaction(t, metric, level)
    ic = None if chance is None else _interaction.interaction(chance, metric, level)
    tag = dict(factor="residual", level="residual", baseline="plain")
    parts.append(part("interaction", i.assign(**tag), None if ic is None else ic.assign(**tag),
                      "did", i["n_diverged"].to_numpy()))
    out = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    for col in ("estimate", "ci_lo", "ci_hi", "estimate_chance", "ci_lo_chance",
                "ci_hi_chance"):
        out[col] = out[col].astype(float)
    out["n_diverged"] = out["n_diverged"].astype("int64")
    out["base_depth"] = out["base_depth"].astype("Int64")
    out["sign_flips"] = [False if chance is None else _flips(*r) for r in zip(
        out["estimate"], out["ci_lo"], out["ci_hi"], out["estimate_chance"],
        out["ci_lo_chance"], out["ci_hi_chance"])]
    return out
