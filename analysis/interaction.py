"""Depth x factor interactions (differences of differences) and the factor-effects panel.

Pure functions on the trials frame, with the conventions of ``analysis.stats`` (Student t
intervals, only completed trials with a finite metric are samples, counts next to every
statistic, two-sided tests) and the cell matching of ``analysis.contrasts`` (a baseline
cell serves a cell whose other factors are equal, or n/a in the baseline cell).

Statistical choices:

* **The interaction is a difference of differences.** For the shortcut (``interaction``):
  ``DiD(d) = [plain(d) - plain(d0)] - [residual(d) - residual(d0)]`` with d0 the
  shallowest depth that has trials (any status) of both variants; for a loss or an
  error, DiD > 0 means plain degrades with depth more than residual does.
* **Paired by seed when the seeds line up.** Where two or more seeds have a usable value
  in *every* cell of the combination, the combination is computed per seed and the t
  interval and one-sample t test are over seeds (``method = "paired"``); values of seeds
  missing from a cell are then left out (the per-cell ``n_*`` columns still count them).
  Otherwise the cells are taken as independent samples (different seeds, different
  networks): the estimate is the same combination of the cell means, ``se^2 = sum
  w_i^2 s_i^2 / n_i`` and the Welch-Satterthwaite ``df = se^4 / sum (w_i^2 s_i^2 /
  n_i)^2 / (n_i - 1)`` (``method = "welch"``); the interval needs two values in every
  cell, the estimate one. As in ``stats``, a spread at rounding level (se <=
  ``ZERO_SD_RTOL`` max|value|) gives the formula's interval but a NaN p value.
* **Factor effects** (``factor_effects``) pool every matched cell pair of a family (all
  models, depths and contexts of the other factors): a seed's main effect is the mean of
  its ``level - baseline`` differences over the pairs where it has both values, and its
  interaction the mean over contexts of its difference of differences between the
  family's shallowest and deepest depths. The Welch fallback (fewer than two such seeds)
  averages with equal weights the combinations of cell means of the pairs (or contexts)
  whose cells all have a value, a cell shared by several
  pairs (one plain cell for every branch scale) entering once with its summed weight.

A residual cell (or level cell) without a matching baseline cell gives no row here; its
trials are counted in ``analysis.contrasts`` and ``stats.status_counts``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special as _sp

from ablations.status import Status
from ablations import factors as _factors
from ablations import levels as _levels
from analysis.contrasts import (cell_groups, contrasted_factors, matches_baseline,
                                reference_level)
from analysis.pvalues import paired_t_pvalue
from analysis.stats import (ZERO_SD_RTOL, cell_keys, mean_ci, prepare_trials, require_metric,
                            t_quantile, usable_rows, with_derived)

NA = _levels.NA
INTERACTION_COLUMNS = ["depth", "base_depth", "method", "n_seeds", "n_plain", "n_plain_base",
                       "n_residual", "n_residual_base", "n_failed", "n_diverged",
                       "plain_delta", "residual_delta", "did", "ci_lo", "ci_hi", "df",
                       "p_value"]
EFFECT_COLUMNS = ["family", "factor", "level", "baseline", "n_seeds", "main_effect",
                  "main_ci_lo", "main_ci_hi", "main_p", "interaction", "int_ci_lo",
                  "int_ci_hi", "int_p", "depth_lo", "depth_hi", "method", "n_pairs",
                  "main_df", "main_method", "int_n_seeds", "int_contexts", "int_df",
                  "int_method"]


# --------------------------------------------------------------------------- combination

def _values(cell: pd.DataFrame, metric: str) -> pd.Series:
    """Usable values of a cell, indexed by seed."""
    u = usable_rows(cell, metric)
    return pd.Series(u[metric].to_numpy(dtype=float), index=u["seed"].to_numpy())


def _welch(cells: dict, level: float) -> dict:
    """``sum_c w_c mean_c`` over independent cells ``{id: (values, w)}``, Welch interval."""
    nan = math.nan
    out = dict(estimate=nan, ci_lo=nan, ci_hi=nan, df=nan, p_value=nan)
    used = [(v.to_numpy(dtype=float), w) for v, w in cells.values() if w != 0]
    if not used or any(v.size == 0 for v, _ in used):
        return out
    with np.errstate(all="ignore"):
        est = float(sum(w * v.mean() for v, w in used))
        out["estimate"] = est
        if any(v.size < 2 for v, _ in used):
            return out
        q = np.array([w * w * v.var(ddof=1) / v.size for v, w in used])
        se2 = float(q.sum())
        if se2 == 0.0:
            out.update(ci_lo=est, ci_hi=est)
            return out
        df = float(se2 ** 2 / sum(qi ** 2 / (v.size - 1) for qi, (v, _) in zip(q, used)))
        se = math.sqrt(se2)
        half = t_quantile(level, df) if math.isfinite(df) and df > 0 else nan
        out.update(ci_lo=est - half * se, ci_hi=est + half * se,
                   df=df if math.isfinite(df) else nan)
        top = max(float(np.abs(v).max()) for v, _ in used)
        if math.isfinite(df) and df > 0 and se > ZERO_SD_RTOL * top:
            out["p_value"] = float(2.0 * _sp.stdtr(df, -abs(est) / se))
    return out


def combine(units: list[list[tuple]], level: float = 0.95) -> dict:
    """The mean over ``units`` of ``sum_i w_i x_i``; a unit is a list of ``(cell id,
    values by seed, weight)`` (see the module docstring for paired vs welch).

    Returns ``method, n_seeds, seeds, estimate, ci_lo, ci_hi, df, p_value``."""
    per_seed = []
    for unit in units:
        common = None
        for _, v, _ in unit:
            common = v.index if common is None else common.intersection(v.index)
        if common is not None and len(common):
            x = sum(w * v.loc[common].to_numpy(dtype=float) for _, v, w in unit)
            per_seed.append(pd.Series(x, index=common))
    x = pd.concat(per_seed).groupby(level=0).mean() if per_seed else pd.Series(dtype=float)
    if len(x) >= 2:
        m, lo, hi, n = mean_ci(x.to_numpy(), level)
        return dict(method="paired", n_seeds=n, seeds=x.index, estimate=m, ci_lo=lo,
                    ci_hi=hi, df=float(n - 1), p_value=paired_t_pvalue(x.to_numpy()))
    ok = [u for u in units if all(len(v) for _, v, _ in u)]
    cells: dict = {}
    for unit in ok:
        for cid, v, w in unit:
            cells[cid] = (v, cells.get(cid, (v, 0.0))[1] + w / len(ok))
    return dict(method="welch", n_seeds=0, seeds=pd.Index([]), **_welch(cells, level))


# --------------------------------------------------------------------------- matching

def _frame(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    t = with_derived(prepare_trials(trials))
    require_metric(t, metric)
    require_metric(t, "seed")
    dup = t.duplicated(cell_keys(t) + ["seed"], keep=False)
    if dup.any():
        ids = t.loc[dup, "trial_id"].tolist() if "trial_id" in t else t.index[dup].tolist()
        raise ValueError(f"more than one trial per (cell, seed): {ids}")
    return t


def _references(t: pd.DataFrame, name: str) -> dict:
    """family -> reference level, for the families where ``name`` is contrasted."""
    return {f: reference_level(g, name) for f, g in t.groupby("family", sort=False)
            if name == "residual" or len(_levels.levels(g, name)) > 1}


def matched_pairs(t: pd.DataFrame, name: str) -> list[dict]:
    """Every (level cell, matching baseline cell) of factor ``name`` in a prepared frame,
    as ``contrasts`` matches them: ``family, model, depth, level, baseline, ctx`` (the
    level cell's other factor values), ``base_ctx``, ``cell``, ``base``. Unmatched cells
    are left out; a cell matched by two baseline cells raises ValueError."""
    others = [k for k in _levels.present(t) if k != name]
    lv = t[name].map(lambda v: _levels.level_of(name, v))
    refs = _references(t, name)
    out = []
    for (family, model, depth), g in cell_groups(t[(lv != NA) & t["family"].isin(refs)],
                                             list(_levels.BASE_KEYS)):
        ref, glv = refs[family], lv.loc[g.index]
        bases = cell_groups(g[glv == ref], others)
        for key, cell in cell_groups(g[glv != ref], [name] + others):
            found = [(bctx, b) for bctx, b in bases if matches_baseline(bctx, key[1:])]
            if len(found) > 1:
                raise ValueError(f"{name} at {family}/{model}/{depth}: more than one {ref} "
                                 f"cell matches {dict(zip(others, key[1:]))}")
            if found:
                out.append(dict(family=family, model=model, depth=depth,
                                level=_levels.level_of(name, key[0]), baseline=ref,
                                ctx=key[1:], base_ctx=found[0][0], cell=cell,
                                base=found[0][1]))
    return out


def _by_context(pairs: list[dict]) -> dict:
    """(family, model, level, ctx) -> {depth: pair}."""
    out: dict = {}
    for p in pairs:
        out.setdefault((p["family"], p["model"], p["level"], p["ctx"]), {})[p["depth"]] = p
    return out


def _did_unit(lo: dict, hi: dict, metric: str) -> list[tuple]:
    """``[b(hi) - b(lo)] - [l(hi) - l(lo)]`` as a unit of ``combine``."""
    def cid(p, side):
        return (p["model"], p["depth"], side, p["base_ctx"] if side == "b" else p["ctx"])
    return [(cid(hi, "b"), _values(hi["base"], metric), 1.0),
            (cid(lo, "b"), _values(lo["base"], metric), -1.0),
            (cid(hi, "l"), _values(hi["cell"], metric), -1.0),
            (cid(lo, "l"), _values(lo["cell"], metric), 1.0)]


# --------------------------------------------------------------------------- tables

def _mean(v: pd.Series) -> float:
    return float(v.mean()) if len(v) else math.nan


def interaction(trials: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Depth x shortcut interaction per residual cell and depth (module docstring).

    Columns: ``family, model``, the residual cell's factor columns, ``depth, base_depth,
    method`` ("paired" | "welch"), ``n_seeds`` (paired seeds; 0 for welch), ``n_plain,
    n_plain_base, n_residual, n_residual_base`` (usable values at d and d0), ``n_failed``
    (diverged + error trials of the four cells), ``n_diverged``, ``plain_delta,
    residual_delta`` (plain(d) - plain(d0) and residual(d) - residual(d0): over the
    paired seeds when paired, else differences of cell means), ``did, ci_lo, ci_hi, df,
    p_value``. One variant or one depth: an empty frame with these columns.
    """
    t = _frame(trials, metric)
    factors = _levels.present(t)
    rows = []
    for (family, model, _, _), by_depth in _by_context(matched_pairs(t, "residual")).items():
        depths = sorted(by_depth)
        p0 = by_depth[depths[0]]
        for d in depths[1:]:
            p = by_depth[d]
            unit = _did_unit(p0, p, metric)
            (_, pd_, _), (_, p0_, _), (_, rd, _), (_, r0, _) = unit
            c = combine([unit], level)
            s = c["seeds"]
            if c["method"] == "paired":
                plain_delta = float((pd_.loc[s] - p0_.loc[s]).mean())
                residual_delta = float((rd.loc[s] - r0.loc[s]).mean())
            else:
                plain_delta, residual_delta = _mean(pd_) - _mean(p0_), _mean(rd) - _mean(r0)
            four = pd.concat([p["base"], p0["base"], p["cell"], p0["cell"]])
            rows.append({"family": family, "model": model,
                         **p["cell"].iloc[0][factors].to_dict(), "depth": d,
                         "base_depth": depths[0], "method": c["method"],
                         "n_seeds": c["n_seeds"], "n_plain": len(pd_), "n_plain_base": len(p0_),
                         "n_residual": len(rd), "n_residual_base": len(r0),
                         "n_failed": int(four["status"].isin([Status.DIVERGED, Status.ERROR]).sum()),
                         "n_diverged": int((four["status"] == Status.DIVERGED).sum()),
                         "plain_delta": plain_delta, "residual_delta": residual_delta,
                         "did": c["estimate"], "ci_lo": c["ci_lo"], "ci_hi": c["ci_hi"],
                         "df": c["df"], "p_value": c["p_value"]})
    cols = ["family", "model", *factors, *INTERACTION_COLUMNS]
    out = pd.DataFrame(rows, columns=cols)
    for c in cols:
        if c.startswith("n_"):
            out[c] = out[c].astype("int64")
        elif c in ("plain_delta", "residual_delta", "did", "ci_lo", "ci_hi", "df", "p_value"):
            out[c] = out[c].astype(float)
    return _levels.sort_cells(out, ["family", "model", *factors, "depth"])


def _method(main: str | None, inter: str | None) -> str:
    if main == inter or inter is None:
        return main or "none"
    return inter if main is None else f"main {main}, interaction {inter}"


def factor_effects(trials: pd.DataFrame, metric: str, level: float = 0.95) -> pd.DataFrame:
    """Main effect and depth interaction of every contrasted factor level, per family.

    ``main_effect``: mean of ``level - baseline`` over the family's matched cell pairs
    (every model, depth and context), per seed then t over seeds (welch fallback: mean
    of the pairs' differences of cell means). ``interaction``: ``[b(depth_hi) -
    b(depth_lo)] - [l(depth_hi) - l(depth_lo)]`` averaged over the contexts that have
    pairs at both depths; ``depth_lo, depth_hi``: the shallowest and deepest depths with
    a pair among the contexts that have two or more depths (NaN interaction when none).

    Columns: ``family, factor, level, baseline, n_seeds`` (the main effect's paired
    seeds; 0 for welch), ``main_effect, main_ci_lo, main_ci_hi, main_p, interaction,
    int_ci_lo, int_ci_hi, int_p, depth_lo, depth_hi`` (Int64), ``method`` ("paired",
    "welch", "main paired, interaction welch", ...; "none" without pairs), then
    ``n_pairs, main_df, main_method, int_n_seeds, int_contexts, int_df, int_method``.
    """
    t = _frame(trials, metric)
    rows = []
    nan = math.nan
    for name in contrasted_factors(t):
        pairs = matched_pairs(t, name)
        for family, ref in _references(t, name).items():
            present = _levels.levels(t[t["family"] == family], name)
            for lv in [x for x in present if x != ref]:
                mine = [p for p in pairs if p["family"] == family and p["level"] == lv]
                main = combine([[((p["model"], p["depth"], "l", p["ctx"]),
                                  _values(p["cell"], metric), 1.0),
                                 ((p["model"], p["depth"], "b", p["base_ctx"]),
                                  _values(p["base"], metric), -1.0)] for p in mine], level)
                contexts = [c for c in _by_context(mine).values() if len(c) >= 2]
                deep = sorted({d for c in contexts for d in c}) or \
                    sorted({p["depth"] for p in mine})
                lo, hi = (deep[0], deep[-1]) if deep else (pd.NA, pd.NA)
                units = [_did_unit(c[lo], c[hi], metric) for c in contexts
                         if lo in c and hi in c and lo != hi]
                inter = combine(units, level) if units else None
                ie = inter or dict(method=None, n_seeds=0, estimate=nan, ci_lo=nan,
                                   ci_hi=nan, p_value=nan, df=nan)
                mm = main["method"] if mine else None
                rows.append(dict(
                    family=family, factor=name, level=lv, baseline=ref,
                    n_seeds=main["n_seeds"], main_effect=main["estimate"],
                    main_ci_lo=main["ci_lo"], main_ci_hi=main["ci_hi"],
                    main_p=main["p_value"], interaction=ie["estimate"],
                    int_ci_lo=ie["ci_lo"], int_ci_hi=ie["ci_hi"], int_p=ie["p_value"],
                    depth_lo=lo, depth_hi=hi, method=_method(mm, ie["method"]),
                    n_pairs=len(mine), main_df=main["df"], main_method=mm or "none",
                    int_n_seeds=ie["n_seeds"], int_contexts=len(units), int_df=ie["df"],
                    int_method=ie["method"] or "none"))
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    for c in ("n_seeds", "n_pairs", "int_n_seeds", "int_contexts"):
        out[c] = out[c].astype("int64")
    for c in ("depth_lo", "depth_hi"):
        out[c] = out[c].astype("Int64")
    for c in ("main_effect", "main_ci_lo", "main_ci_hi", "main_p", "interaction", "int_ci_lo",
              "int_ci_hi", "int_p", "main_df", "int_df"):
        out[c] = out[c].astype(float)
    order = {n: i for i, n in enumerate(_factors.names())}
    out["_f"] = out["factor"].map(order)
    out["_l"] = [_levels.rank(f, v) for f, v in zip(out["factor"], out["level"])]
    return _levels.sort_cells(out, ["family", "_f", "_l"]).drop(columns=["_f", "_l"])
