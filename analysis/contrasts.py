"""Contrasts between factor levels, paired by seed, and the multiple-comparison adjustment.

Pure functions on the trials frame (see ``analysis.stats`` for the statistical choices
shared with it: Student t intervals, completed trials with a finite metric as the only
samples, two-sided tests).

**What is contrasted with what** (``contrasts``). For a factor with baseline level b
(``ablations.factors``: residual's is plain, norm's batch, block's post, branch_scale's
one, shortcut's projection), each other level l gives *l minus b*, per family, model
and depth, **within equal levels of the other factors**, paired by seed:

* ``residual``: residual minus plain stays the headline. A plain cell has no branch
  scale or shortcut type (its columns say "n/a"), so every residual cell (branch_scale
  one, invsqrt, zero; shortcut projection, pad) is contrasted with the *same* plain cell
  that matches it on the factors that apply to plain (norm, block). In general a
  baseline cell matches a cell at level l when every other factor column is equal or
  is "n/a" in the baseline cell.
* any other factor that varies in the frame (more than one level, n/a not counted):
  e.g. norm none minus batch within each (residual, block, branch_scale, shortcut)
  combination. Rows where the factor is n/a (branch_scale of plain rows, shortcut of
  MLPs) take no part. When the sweep lacks the baseline level, the first level present
  in the registry's order is the reference (the ``baseline`` column says which). Levels
are compared within a family: a factor that takes one level per family (mlp's default
norm none, resnet's batch) is not contrasted.

A cell at level l without a matching baseline cell, and a baseline cell that no
level-l cell matches, keep a row with ``n_pairs = 0`` (its seeds counted as unpaired):
nothing planned disappears from the table. Residual always gets its rows (a view with
only plain cells says "no seed with both variants"); another factor only when it varies.

**Multiple comparisons.** A report lists many contrasts; the p values are adjusted
with **Holm's step-down method** (``holm``): it controls the family-wise error rate
(the chance of *any* false claim among the findings) under any dependence between the
tests. Our tests are dependent by construction (every residual level is contrasted with
one shared plain cell, and the same seeds recur), which Holm needs no assumption about;
a report's findings are read as separate claims, for which the family-wise rate is the
right guarantee; and with tens of contrasts its loss of power against
Benjamini-Hochberg is small. ``benjamini_hochberg`` (false discovery rate; valid under
independence or positive dependence) is here for comparison. The family is every
contrast with a finite paired-t p value in one call (one metric); NaN p values are
left out of the count and stay NaN.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ablations import factors as _factors
from analysis import levels as _levels
from analysis.stats import (_prepare, _require_metric, _usable, cell_keys, mean_ci,
                            paired_t_pvalue, wilcoxon_exact_pvalue, with_derived)

NA = _levels.NA
ADJUSTMENT = "holm"  # the report's choice (see the module docstring)
ADJUSTMENT_LABEL = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


# --------------------------------------------------------------------------- adjustment

def _finite_order(pvalues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(pd.to_numeric(pd.Series(list(pvalues), dtype=object), errors="coerce"),
                   dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    return p, ok, order


def holm(pvalues: Iterable) -> np.ndarray:
    """Holm's step-down adjusted p values (family-wise error), in the input order.

    With the m finite p values sorted, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Reject at level a where
    ``adj <= a``; this is exactly Holm's procedure. NaN stays NaN and is not counted in m.

    >>> holm([0.01, 0.04, 0.03, 0.005])  # 0.005*4, 0.01*3, 0.03*2, max(0.04*1, 0.06)
    array([0.03, 0.06, 0.06, 0.02])
    """
    p, ok, order = _finite_order(pvalues)
    out = np.full(p.shape, math.nan)
    m = ok.size
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Iterable) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (false discovery rate), in the input order.

    ``adj_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the m finite p values sorted
    ascending; NaN stays NaN and is not counted in m (= ``scipy.stats.
    false_discovery_control`` on the finite values).

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    array([0.02, 0.04, 0.04, 0.02])
    """
    p, ok, order = _finite_order(pvalues)
    out = np.full(p.shape, math.nan)
    m = ok.size
    running = 1.0
    for j in range(m - 1, -1, -1):
        i = order[j]
        running = min(running, min(1.0, m * p[i] / (j + 1)))
        out[i] = running
    return out


def adjust(pvalues: Iterable, method: str = ADJUSTMENT) -> np.ndarray:
    """``holm`` (method "holm") or ``benjamini_hochberg`` ("bh")."""
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    raise ValueError(f"unknown adjustment {method!r}; valid: holm, bh")


# --------------------------------------------------------------------------- contrasts

def contrasted_factors(trials: pd.DataFrame) -> list[str]:
    """residual (when a column) and every other factor column with more than one level
    within a family (``levels.varying``)."""
    present = _levels.present(trials)
    return [n for n in present if n == "residual" or n in _levels.varying(trials, [n])]


def reference_level(trials: pd.DataFrame, name: str) -> str:
    """The factor's baseline when ``trials`` (one family's) has it (residual: always
    plain), else the first level present in registry order."""
    f = _factors.get(name)
    found = _levels.levels(trials, name)
    if name == "residual" or f.baseline in found or not found:
        return f.baseline
    return found[0]


def _groups(df: pd.DataFrame, keys: list[str]):
    """``(key tuple, frame)`` per group; one group with key ``()`` when ``keys`` is empty."""
    if not len(df):
        return []
    if not keys:
        return [((), df)]
    return [(k if isinstance(k, tuple) else (k,), g)
            for k, g in df.groupby(keys, sort=False, dropna=False)]


def _matches(base_ctx: tuple, ctx: tuple) -> bool:
    """A baseline cell serves a cell when each other factor is equal or n/a at the baseline."""
    return all(b == c or b == NA for b, c in zip(base_ctx, ctx))


def _pair(treat: pd.DataFrame, base: pd.DataFrame, metric: str, level: float,
          wilcoxon: bool) -> dict:
    """Seed-paired statistics of ``treat - base`` (either frame may be empty)."""
    a = _usable(treat, metric).set_index("seed")[metric].astype(float)
    b = _usable(base, metric).set_index("seed")[metric].astype(float)
    both = a.index.intersection(b.index)
    diffs = (a.loc[both] - b.loc[both]).to_numpy(dtype=float)
    mean, lo, hi, n = mean_ci(diffs, level)
    n_seeds = len(set(treat["seed"]) | set(base["seed"]))
    row = dict(n_seeds=n_seeds, n_pairs=n, n_unpaired=n_seeds - n, mean_diff=mean,
               ci_lo=lo, ci_hi=hi, p_value=paired_t_pvalue(diffs))
    if wilcoxon:
        row["p_wilcoxon"] = wilcoxon_exact_pvalue(diffs)
    return row


def _factor_rows(t: pd.DataFrame, name: str, metric: str, level: float,
                 wilcoxon: bool) -> list[dict]:
    keys = cell_keys(t)
    others = [k for k in _levels.present(t) if k != name]
    lv = t[name].map(lambda v: _levels.level_of(name, v))
    # per family: its own reference level; a family where the factor takes one level
    # (mlp's norm none beside resnet's batch) has nothing to contrast, except residual
    refs = {f: reference_level(g, name) for f, g in t.groupby("family", sort=False)
            if name == "residual" or len(_levels.levels(g, name)) > 1}
    rows = []
    for base_key, g in _groups(t[(lv != NA) & t["family"].isin(refs)],
                               list(_levels.BASE_KEYS)):
        ref = refs[base_key[0]]
        glv = lv.loc[g.index]
        base_cells = _groups(g[glv == ref], others)
        used = set()
        for key, cell in _groups(g[glv != ref], [name] + others):
            ctx = key[1:]
            found = [i for i, (bctx, _) in enumerate(base_cells) if _matches(bctx, ctx)]
            if len(found) > 1:
                raise ValueError(f"{name} {_levels.level_of(name, key[0])} at "
                                 f"{dict(zip(_levels.BASE_KEYS, base_key))}: more than one "
                                 f"{ref} cell matches {dict(zip(others, ctx))}")
            base = base_cells[found[0]][1] if found else g.iloc[:0]
            used.update(found)
            rows.append({"factor": name, "level": _levels.level_of(name, key[0]),
                         "baseline": ref, **cell.iloc[0][keys].to_dict(),
                         **_pair(cell, base, metric, level, wilcoxon)})
        for i, (_, base) in enumerate(base_cells):
            if i not in used:
                rows.append({"factor": name, "level": None, "baseline": ref,
                             **base.iloc[0][keys].to_dict(),
                             **_pair(base.iloc[:0], base, metric, level, wilcoxon)})
    return rows


def contrasts(trials: pd.DataFrame, metric: str, factors: Sequence[str] | None = None,
              level: float = 0.95, wilcoxon: bool = True,
              method: str = ADJUSTMENT) -> pd.DataFrame:
    """Each level minus its factor's baseline, paired by seed (see the module docstring).

    ``factors``: which factors to contrast (default ``contrasted_factors``: residual and
    every other factor that varies). Columns: ``factor, level`` (missing, NaN, on a row
    for a baseline cell nothing was contrasted with), ``baseline``, the cell keys of the
    level's cell (``family, model, depth``, then every factor column: what the contrast
    is *within*), ``n_seeds`` (seeds seen on either side), ``n_pairs``, ``n_unpaired``,
    ``mean_diff, ci_lo, ci_hi`` (t interval of the per-seed differences), ``p_value``
    (two-sided paired t; NaN below two pairs or for constant differences),
    ``p_wilcoxon`` (exact signed-rank, with ``wilcoxon``) and ``p_adjusted``
    (``adjust(p_value, method)`` over every row of this frame: Holm by default).

    Raises ValueError when a (cell, seed) has more than one trial; KeyError when
    ``metric`` (after ``with_derived``) or ``seed`` is not a column.

    >>> contrasts(trials, "final_test_acc")[["factor", "level", "depth", "mean_diff"]]
    """
    t = with_derived(_prepare(trials))
    _require_metric(t, metric)
    _require_metric(t, "seed")
    keys = cell_keys(t)
    dup = t.duplicated(keys + ["seed"], keep=False)
    if dup.any():
        ids = t.loc[dup, "trial_id"].tolist() if "trial_id" in t else t.index[dup].tolist()
        raise ValueError(f"more than one trial per (cell, seed): {ids}")
    names = contrasted_factors(t) if factors is None else list(factors)
    for n in names:
        if n not in t:
            raise KeyError(f"factor {n!r} is not a column of the trials frame")
    rows = [r for n in names for r in _factor_rows(t, n, metric, level, wilcoxon)]
    stats_cols = ["n_seeds", "n_pairs", "n_unpaired", "mean_diff", "ci_lo", "ci_hi",
                  "p_value"] + (["p_wilcoxon"] if wilcoxon else [])
    out = pd.DataFrame(rows, columns=["factor", "level", "baseline", *keys, *stats_cols])
    for c in ("n_seeds", "n_pairs", "n_unpaired"):
        out[c] = out[c].astype("int64")
    out["p_adjusted"] = adjust(out["p_value"], method)
    order = {n: i for i, n in enumerate(_factors.names())}
    out["_f"] = out["factor"].map(order)
    out["_l"] = [_levels.rank(f, lv) if pd.notna(lv) else (99, "")
                 for f, lv in zip(out["factor"], out["level"])]
    out = _levels.sort_cells(out, ["_f", *keys, "_l"]).drop(columns=["_f", "_l"])
    return out


def paired_differences(trials: pd.DataFrame, metric: str, level: float = 0.95,
                       wilcoxon: bool = True) -> pd.DataFrame:
    """Residual minus plain, paired by seed: ``contrasts(..., factors=["residual"])``
    without the ``factor, level, baseline, residual`` and ``p_adjusted`` columns.

    For a folder from before the factor registry the columns are today's ``family,
    model, depth, n_seeds, n_pairs, n_unpaired, mean_diff, ci_lo, ci_hi, p_value``
    (``p_wilcoxon`` with ``wilcoxon``), one row per (family, model, depth); with factor
    columns, one row per residual cell (each branch_scale/shortcut level against the
    shared plain cell), its factor columns after depth.
    """
    d = contrasts(trials, metric, factors=["residual"], level=level, wilcoxon=wilcoxon)
    return d.drop(columns=["factor", "level", "baseline", "residual", "p_adjusted"])
