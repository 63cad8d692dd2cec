"""Paper-ready statistics on the trials frame: pure functions, DataFrame in, DataFrame out.

Statistical choices (the same in every function):

* **Intervals are Student t intervals** of the mean, ``mean +- t_{1-(1-level)/2, n-1}
  * sd / sqrt(n)`` with the sample standard deviation (``ddof=1``); the
  quantile is exact (``scipy.stats.t.ppf``). ``level`` defaults to 0.95.
* **Only completed trials with a finite metric are samples.** A diverged or
  errored run's metric is not a draw from the same distribution, so it never
  enters a mean; but it is never dropped silently either: every output
  carries the counts (``n_planned``, ``n_completed``, ``n_diverged``,
  ``n_error``, ``n_pending``, ``n_unpaired``) next to the statistic, and ``n`` columns count
  the values the statistic actually used. +-inf counts as not finite.
* **Contrasts are paired by seed** (``analysis.contrasts``): the difference is
  e.g. *residual minus plain* within one seed, and the interval and the test are
  on those per-seed differences. A seed with only one usable side is counted in
  ``n_unpaired``.
* **Tests are two-sided** (``analysis.pvalues``). The paired t test (equivalent to
  ``scipy.stats.ttest_rel``) and an exact Wilcoxon signed-rank test, whose ties are
  ties of the measurement (|d| on a resolution grid, or equal up to rounding), not of
  the floats' last bits.
* **Depth degradation uses Welch** (``degradation_index``): different depths
  are different networks trained independently, so the samples at two depths
  are independent (not paired by seed) with possibly unequal variances; the
  interval of the difference of means uses the Welch-Satterthwaite degrees of
  freedom.
* **Degenerate cases**: no value gives NaN everywhere; one value gives the
  value with a NaN interval (no variance to estimate); zero variance with
  two or more values gives the zero-width interval ``[mean, mean]`` (what the
  formula yields) while the t test's p value is NaN (its statistic is 0/0 or
  +-inf: the test has no noise estimate to compare against; differences equal
  up to rounding, relative spread <= ``ZERO_SD_RTOL``, count as constant).

Input frame: one row per trial with ``family`` (``model`` is used when the
column is missing, as in a preset-only sweep), ``model``, ``depth``, ``residual``,
``seed``, ``status`` in {"completed", "diverged", "error", "pending"} (pending: not
finished yet, in a sweep still running; any other status raises ValueError rather than
being miscounted) and, in folders written since the factor registry, one column per
other factor (``norm``, ``block``, ``branch_scale``, ``shortcut``: level strings,
"n/a" where the factor does not apply).

**Cells are keyed by the factors present** (``cell_keys``): family, model, depth and
every factor column the frame has, in registry order. A folder from before the
registry has only ``residual``, so its keys are today's (family, model, depth,
residual) and its outputs are unchanged. A missing value in a present factor column
(old rows concatenated with new ones) is the family's default level
(``ablations.levels.with_levels``). Output rows are sorted by family, model, depth,
then the factors in their registry level order (plain before residual, batch before
layer before none). Contrasts between levels (residual minus plain, and every other
factor's levels against its baseline) are in ``analysis.contrasts``; the tests and the
multiple-comparison adjustment in ``analysis.pvalues``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import special as _sp  # not scipy.stats: ~0.3 s more import per report

from ablations.status import STATUSES, Status
from ablations import levels as _levels

# Relative spread below which paired differences count as constant (floating-point noise).
ZERO_SD_RTOL = 1e-9
# Today's keys (a frame with no factor column but residual); ``cell_keys(frame)`` and
# ``degradation_keys(frame)`` add the factor columns a frame has.
CELL_KEYS = ("family", "model", "depth", "residual")
PAIR_KEYS = _levels.BASE_KEYS
DEGRADATION_KEYS = ("family", "model", "residual")
# Derived error columns: name -> the accuracy column it is 1 - of.
DERIVED = {"final_train_error": "final_train_acc",
           "final_test_error": "final_test_acc",
           "final_val_error": "final_val_acc"}


# --------------------------------------------------------------------------- helpers

def check_level(level: float) -> float:
    """``level`` as a float, checked to lie in (0, 1) (ValueError otherwise)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return level


def finite_values(values) -> np.ndarray:
    """The finite values as float64 (NaN, None, pd.NA, non-numbers and +-inf removed)."""
    v = pd.to_numeric(pd.Series(np.asarray(values, dtype=object).ravel(), dtype=object),
                      errors="coerce").astype("float64").to_numpy()
    return v[np.isfinite(v)]


def t_quantile(level: float, df: float) -> float:
    """Two-sided Student t critical value: ``t.ppf(1 - (1 - level) / 2, df)``; NaN if df <= 0."""
    level = check_level(level)
    if not df > 0:  # also catches NaN
        return float("nan")
    return float(_sp.stdtrit(df, 0.5 + level / 2.0))  # = scipy.stats.t.ppf


def cell_keys(trials: pd.DataFrame) -> list[str]:
    """family, model, depth and every factor column of ``trials`` (registry order):
    ``["family", "model", "depth", "residual"]`` for a folder from before the registry,
    ``[..., "residual", "norm", "block", "branch_scale", "shortcut"]`` after it."""
    return [*_levels.BASE_KEYS, *_levels.present(trials)]


def degradation_keys(trials: pd.DataFrame) -> list[str]:
    """``cell_keys`` without depth: the groups whose depths are compared."""
    return [k for k in cell_keys(trials) if k != "depth"]


def prepare_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials frame every statistic starts from: columns and statuses checked,
    ``family`` (= model) added when it is missing, and a missing value in a factor column
    made the family's default level."""
    need = {"model", "depth", "residual", "status"}
    missing = sorted(need - set(trials.columns))
    if missing:
        raise KeyError(f"trials frame lacks column(s) {missing}; has {sorted(trials.columns)}")
    t = trials.reset_index(drop=True)  # a concatenated frame may repeat index labels
    if "family" not in t:
        t["family"] = t["model"]
    bad = sorted(set(map(str, t["status"][~t["status"].isin(STATUSES)])))
    if bad:
        raise ValueError(f"unknown trial status(es) {bad}; expected one of {', '.join(STATUSES)}")
    return _levels.with_levels(t, _levels.present(t))


def require_metric(t: pd.DataFrame, metric: str) -> None:
    """KeyError naming the frame's columns when ``metric`` (or any needed column, such as
    ``seed``) is not one of them."""
    if metric not in t:
        raise KeyError(f"metric {metric!r} is not a column of the trials frame "
                       f"(columns: {sorted(t.columns)})")


def count_statuses(g: pd.DataFrame) -> dict:
    """``n_planned, n_completed, n_diverged, n_error, n_pending`` of one group of trials."""
    s = g["status"]
    return {"n_planned": len(g), "n_completed": int((s == "completed").sum()),
            "n_diverged": int((s == "diverged").sum()), "n_error": int((s == "error").sum()),
            "n_pending": int((s == "pending").sum())}


def usable_rows(g: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of ``g`` that are samples of ``metric``: completed, with a finite value."""
    v = pd.to_numeric(g[metric], errors="coerce").astype(float)
    return g[(g["status"] == Status.COMPLETED) & np.isfinite(v)]


# --------------------------------------------------------------------------- intervals

def mean_ci(values: Iterable, level: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, lo, hi, n)``: Student t interval of the mean over the finite values.

    Non-finite values (NaN, None, +-inf) are ignored and not counted in ``n``.
    ``n == 0`` -> ``(nan, nan, nan, 0)``; ``n == 1`` -> ``(v, nan, nan, 1)``
    (a single value has no variance estimate); zero variance with ``n >= 2``
    -> ``(m, m, m, n)``, the zero-width interval the formula gives.

    >>> mean_ci([1, 2, 3])  # 2 +- 4.3027 * 1 / sqrt(3)
    (2.0, -0.4841..., 4.4841..., 3)
    """
    level = check_level(level)
    v = finite_values(values)
    n = int(v.size)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n == 1:
        return (m, math.nan, math.nan, 1)
    half = t_quantile(level, n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return (m, m - half, m + half, n)


def welch_ci(a: Iterable, b: Iterable, level: float = 0.95) -> dict:
    """Welch interval of ``mean(a) - mean(b)`` for independent samples.

    Returns ``{"diff", "ci_lo", "ci_hi", "df", "n_a", "n_b"}`` over the
    finite values. ``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` and the
    Welch-Satterthwaite ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``.
    ``diff`` is NaN when either side is empty; the interval (and df) is NaN
    when either side has fewer than two values (its variance cannot be
    estimated). If both variances are zero, df is undefined (0/0): the
    interval is ``[diff, diff]`` and df NaN, as in ``mean_ci``.
    """
    level = check_level(level)
    va, vb = finite_values(a), finite_values(b)
    na, nb = int(va.size), int(vb.size)
    out = {"diff": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "df": math.nan,
           "n_a": na, "n_b": nb}
    if na == 0 or nb == 0:
        return out
    diff = float(va.mean() - vb.mean())
    out["diff"] = diff
    if na < 2 or nb < 2:
        return out
    qa, qb = float(va.var(ddof=1)) / na, float(vb.var(ddof=1)) / nb
    se2 = qa + qb
    if se2 == 0.0:
        out["ci_lo"] = out["ci_hi"] = diff
        return out
    df = se2 ** 2 / (qa ** 2 / (na - 1) + qb ** 2 / (nb - 1))
    half = t_quantile(level, df) * math.sqrt(se2)
    out.update(ci_lo=diff - half, ci_hi=diff + half, df=float(df))
    return out


# --------------------------------------------------------------------------- frames

def with_derived(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``final_{train,test,val}_error = 1 - final_{train,test,val}_acc``.

    Only for the accuracy columns that exist; an existing error column is
    recomputed from its accuracy (so the function is idempotent). NaN
    accuracy (diverged or errored runs) stays NaN.
    """
    t = trials.copy()
    for err, acc in DERIVED.items():
        if acc in t:
            t[err] = 1.0 - pd.to_numeric(t[acc], errors="coerce").astype(float)
    return t


def _sorted(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return _levels.sort_cells(df, keys)


def cell_summary(trials: pd.DataFrame,
                 metrics: Sequence[str] = ("final_train_loss", "final_test_error"),
                 level: float = 0.95) -> pd.DataFrame:
    """One row per cell (``cell_keys``: family, model, depth, residual and any other
    factor columns): counts, params and metric intervals.

    Columns: the cell keys, then ``n_planned, n_completed,
    n_diverged, n_error, params``, then for each metric ``<metric>_mean``,
    ``<metric>_ci_lo``, ``<metric>_ci_hi``, ``<metric>_n`` (``mean_ci`` over
    the completed trials with a finite value; ``<metric>_n`` can be below
    ``n_completed`` when a completed trial lacks the metric).
    ``n_planned`` is every row of the cell, so ``n_planned = n_completed +
    n_diverged + n_error + n_pending``. ``params`` is the first non-missing value of the
    cell (identical across seeds; an errored trial may lack it), ``<NA>`` if none.

    Derived error columns (``with_derived``) are added first. A metric that
    is not a column (after derivation) raises KeyError rather than giving
    silent NaN: a probe-only frame has no training metrics, pass ``metrics=()``.
    """
    t = with_derived(prepare_trials(trials))
    for m in metrics:
        require_metric(t, m)
    keys = cell_keys(t)
    rows = []
    for key, g in t.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key), **count_statuses(g))
        params = g["params"].dropna() if "params" in g else pd.Series(dtype=float)
        row["params"] = int(params.iloc[0]) if len(params) else pd.NA
        done = g[g["status"] == Status.COMPLETED]
        for m in metrics:
            mean, lo, hi, n = mean_ci(done[m], level)
            row.update({f"{m}_mean": mean, f"{m}_ci_lo": lo, f"{m}_ci_hi": hi, f"{m}_n": n})
        rows.append(row)
    cols = keys + ["n_planned", "n_completed", "n_diverged", "n_error", "n_pending",
                   "params"] + \
        [f"{m}_{s}" for m in metrics for s in ("mean", "ci_lo", "ci_hi", "n")]
    out = pd.DataFrame(rows, columns=cols)
    out["params"] = out["params"].astype("Int64")
    return _sorted(out, keys)


def degradation_index(trials: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Increase of ``metric`` with depth, relative to the shallowest depth of each variant.

    Per combination of levels (``degradation_keys``: family, model, residual and any
    other factor columns) and each depth d present in the frame:
    ``delta = depth_mean - base_mean = mean(metric at d) - mean(metric at the
    shallowest depth)``,
    over completed trials with a finite value, with a Welch t interval
    (``welch_ci``: depths are independently trained networks, so the samples
    are independent, not paired by seed, and variances may differ).
    The shallowest depth is the smallest depth with any trial of that
    family/model/variant, whatever its statuses: if every run there diverged,
    every delta of the group is NaN rather than silently re-based.

    Columns: ``family, model``, the factor columns (``residual, ...``), ``depth,
    base_depth, n_planned,
    n_completed, n_diverged, n_error`` (at depth d), ``n`` and ``n_base``
    (values used at d and at the base), ``depth_mean, base_mean, delta, ci_lo,
    ci_hi, df`` (Welch df; ``depth_mean``, not ``mean``, so that ``row.depth_mean``
    is not ``Series.mean``). The base row has ``delta = 0`` (NaN if its mean
    is NaN) and a NaN interval. A depth where all runs diverged keeps its row
    with ``delta`` NaN and its counts. A preset model has one depth, hence
    only its base row. For a loss or an error, ``delta > 0`` is degradation.
    """
    t = with_derived(prepare_trials(trials))
    require_metric(t, metric)
    keys = degradation_keys(t)
    rows = []
    for key, g in t.groupby(keys, sort=False, dropna=False):
        depths = sorted(g["depth"].unique())
        base_depth = depths[0]
        base = usable_rows(g[g["depth"] == base_depth], metric)[metric].to_numpy(dtype=float)
        base_mean = float(base.mean()) if base.size else math.nan
        for d in depths:
            gd = g[g["depth"] == d]
            vals = usable_rows(gd, metric)[metric].to_numpy(dtype=float)
            row = dict(zip(keys, key), depth=d, base_depth=base_depth,
                       **count_statuses(gd), n=int(vals.size), n_base=int(base.size),
                       depth_mean=float(vals.mean()) if vals.size else math.nan,
                       base_mean=base_mean)
            if d == base_depth:
                row.update(delta=0.0 if base.size else math.nan, ci_lo=math.nan,
                           ci_hi=math.nan, df=math.nan)
            else:
                w = welch_ci(vals, base, level)
                row.update(delta=w["diff"], ci_lo=w["ci_lo"], ci_hi=w["ci_hi"], df=w["df"])
            rows.append(row)
    cols = keys + ["depth", "base_depth", "n_planned", "n_completed", "n_diverged", "n_error",
                   "n_pending", "n", "n_base", "depth_mean", "base_mean", "delta", "ci_lo",
                   "ci_hi", "df"]
    return _sorted(pd.DataFrame(rows, columns=cols), keys + ["depth"])


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials per status per cell (``cell_keys``), then a total row.

    Columns: the cell keys (``family, model, depth, residual``, then any other factor
    columns), ``n_planned, n_completed, n_diverged, n_error, n_pending``
    (``n_planned`` = all rows of the cell = the sum of the others). The last row has
    ``family = "total"``, ``model = ""`` (and ``""`` for the other factors), ``<NA>``
    depth and residual, with the column sums; so ``depth`` is ``Int64`` and
    ``residual`` is ``boolean``.
    """
    t = prepare_trials(trials)
    keys = cell_keys(t)
    rows = [dict(zip(keys, key), **count_statuses(g))
            for key, g in t.groupby(keys, sort=False, dropna=False)]
    counts = ["n_planned", "n_completed", "n_diverged", "n_error", "n_pending"]
    out = _sorted(pd.DataFrame(rows, columns=keys + counts), keys)
    total = {**{k: "" for k in keys}, "family": "total", "depth": pd.NA, "residual": pd.NA,
             **{c: int(out[c].sum()) for c in counts}}
    out = pd.concat([out.astype({"depth": "Int64", "residual": "boolean"}),
                     pd.DataFrame([total]).astype({"depth": "Int64", "residual": "boolean"})],
                    ignore_index=True)
    for c in counts:
        out[c] = out[c].astype("int64")
    return out
