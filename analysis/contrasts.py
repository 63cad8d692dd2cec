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
from ablations import levels as _levels
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
          wilcoxon: bool, resolution: float | None = None) -> dict:
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
        row["p_wilcoxon"] = (wilcoxon_exact_pvalue(diffs, resolution=resolution)
                             if resolution else wilcoxon_exact_pvalue(diffs))
    return row


def _factor_rows(t: pd.DataFrame, name: str, metric: str, level: float,
                 wilcoxon: bool, resolution: float | None = None) -> list[dict]:
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
                         **_pair(cell, base, metric, level, wilcoxon, resolution)})
        for i, (_, base) in enumerate(base_cells):
            if i not in used:
                rows.append({"factor": name, "level": None, "baseline": ref,
                             **base.iloc[0][keys].to_dict(),
                             **_pair(base.iloc[:0], base, metric, level, wilcoxon,
                                     resolution)})
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
    res = metric_resolution(t, metric)
    rows = [r for n in names for r in _factor_rows(t, n, metric, level, wilcoxon, res)]
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


# --------------------------------------------------------------------------- the report's family
#
# One multiplicity family per report. Every p value a report prints is adjusted over a
# pre-declared set of tests computed on the run's FULL trials. The PRIMARY family holds
# one test per hypothesis: each contrast's paired t, each depth x residual interaction,
# and each other factor's main effect and depth x factor interaction. Tests that restate
# a primary hypothesis form a SECONDARY family, adjusted among themselves so that they
# cannot dilute the primary one: each contrast's exact Wilcoxon p (a distribution-free
# check of the same contrast) and the residual factor's summary effects (its depth
# interaction is the deepest depth x residual interaction again).
# A ``--where`` view filters the trials it shows but looks its adjusted p values up in
# this family (``family_lookup``), so the same contrast reads the same adjusted p in
# the full report and in any view. A test the view changes (fewer seeds: another raw p)
# is not a member, and its adjusted p is not shown.

MIN_SEEDS = 3  # below this many seeds (pairs) a contrast shows its mean only
# The metrics of the report's tests: contrasts of test accuracy and train loss (the
# paired table, the findings); interactions and factor effects of train loss and test
# error (the degradation metrics: higher is worse).
CONTRAST_METRICS = ("final_test_acc", "final_train_loss")
DEPTH_METRICS = ("final_train_loss", "final_test_error")
TEST_SIZE_COLUMN = "n_test"  # test-set images per trial, where the sweep records it
_FAMILY_COLUMNS = ["key", "kind", "test", "metric", "n", "p_value", "family", "p_holm",
                   "p_bh"]
PRIMARY, SECONDARY = "primary", "secondary"


def means_only(n) -> bool:
    """Whether ``n`` seeds (pairs) are too few for an interval or a p value: with 2, a t
    interval has one degree of freedom (t = 12.7) and the smallest exact Wilcoxon p is
    0.5, so neither can resolve anything; the report gives the mean alone."""
    try:
        return int(n) < MIN_SEEDS
    except (TypeError, ValueError):
        return True


def means_only_text(n) -> str:
    """"n/a (2 seeds: means only)": what a table prints instead of a p value."""
    return f"n/a ({int(n)} seed{'s' if int(n) != 1 else ''}: means only)"


MEANS_ONLY_WHY = (f"Contrasts with fewer than {MIN_SEEDS} seeds give means only (no interval, "
                  "no p value): with 2 seeds a 95% t interval has one degree of freedom "
                  "(t = 12.7, intervals wider than the effects) and the smallest possible "
                  "exact Wilcoxon p is 0.5.")


def metric_resolution(trials: pd.DataFrame, metric: str) -> float | None:
    """The grid of an accuracy or error metric: ``1 / n_test`` when the trials record
    one test-set size (``TEST_SIZE_COLUMN``), else None (ties found by tolerance)."""
    if not (metric.endswith("_acc") or metric.endswith("_error")) or \
            TEST_SIZE_COLUMN not in trials:
        return None
    n = pd.to_numeric(trials[TEST_SIZE_COLUMN], errors="coerce").dropna().unique()
    return 1.0 / float(n[0]) if len(n) == 1 and n[0] > 0 else None


def _key_value(name: str, v) -> str:
    if name in _factors.names():
        return _levels.level_of(name, v)
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return "-"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def make_key(kind: str, metric: str, row, names) -> str:
    """A stable name of one test: its kind, metric and the values of ``names`` in ``row``
    (factor columns by level name), e.g. ``t|final_test_acc|factor=residual|...``."""
    parts = [kind, metric] + [f"{n}={_key_value(n, row[n])}" for n in names if n in row]
    return "|".join(parts)


def contrast_key(row, metric: str, test: str = "t") -> str:
    """Key of a ``contrasts`` row's paired t (``test="t"``) or Wilcoxon test."""
    names = ["factor", "level", "baseline", *_levels.BASE_KEYS,
             *[n for n in _factors.names() if n in row]]
    return make_key(test, metric, row, names)


def interaction_key(row, metric: str) -> str:
    """Key of an ``analysis.interaction.interaction`` row."""
    names = ["family", "model", *[n for n in _factors.names() if n in row],
             "depth", "base_depth"]
    return make_key("depth x residual", metric, row, names)


def factor_effect_key(row, metric: str, part: str) -> str:
    """Key of an ``analysis.interaction.factor_effects`` row's main effect
    (``part="main"``) or depth x factor interaction (``part="interaction"``)."""
    names = ["family", "factor", "level", "baseline", "depth_lo", "depth_hi"]
    return make_key(f"factor {part}", metric, row, names)


def interaction_n(row) -> int:
    """Seeds behind an interaction: the pairs when paired, else the smallest of its four
    cells (plain and residual at both depths)."""
    if str(row.get("method", "")) == "paired":
        return int(row.get("n_seeds", 0) or 0)
    counts = [row.get(c) for c in ("n_plain", "n_plain_base", "n_residual", "n_residual_base")]
    counts = [int(c) for c in counts if c is not None and pd.notna(c)]
    return min(counts) if counts else int(row.get("n_seeds", 0) or 0)


def _effect_method(row, part: str) -> str:
    col = "main_method" if part == "main" else "int_method"
    return str(row.get(col, row.get("method", "")))


def smallest_cell(trials: pd.DataFrame, metric: str, family=None) -> int:
    """The fewest usable values (completed, finite ``metric``) of any cell of ``family``
    (all families: None) that has one; 0 when none has."""
    t = with_derived(_prepare(trials))
    if metric not in t:
        return 0
    if family is not None:
        t = t[t["family"] == family]
    u = _usable(t, metric)
    if not len(u):
        return 0
    return int(u.groupby(cell_keys(u), dropna=False).size().min())


def factor_effect_n(row, part: str, trials: pd.DataFrame, metric: str) -> int:
    """Seeds behind a factor effect's main effect (``part="main"``) or depth interaction:
    its paired seeds when paired, else (Welch over cells) the smallest usable cell of the
    family, so that the ``MIN_SEEDS`` rule holds for either method."""
    method = _effect_method(row, part)
    if method == "paired":
        col = "n_seeds" if part == "main" else "int_n_seeds"
        return int(row.get(col, 0) or 0)
    if method == "none":
        return 0
    return smallest_cell(trials, metric, row.get("family"))


def _masked(p, n) -> float:
    p = float(p) if p is not None and pd.notna(p) else math.nan
    return math.nan if means_only(n) else p


def report_family(trials: pd.DataFrame | None, contrast_metrics=CONTRAST_METRICS,
                  depth_metrics=DEPTH_METRICS, level: float = 0.95) -> pd.DataFrame:
    """Every test of a report, keyed, with its raw and adjusted p (see above).

    Rows: each contrast (``contrasts``) of each of ``contrast_metrics``, twice (kind
    "contrast", test "paired t" and "Wilcoxon"); each depth x residual interaction
    (``analysis.interaction.interaction``, kind "interaction", test its method) and
    each factor's main effect and depth x factor interaction
    (``analysis.interaction.factor_effects``, kind "factor effect") of each of
    ``depth_metrics``. Columns ``key`` (``contrast_key``, ``interaction_key``,
    ``factor_effect_key``: unique), ``kind, test, metric, n`` (seeds),
    ``p_value`` (raw; NaN when undefined or below ``MIN_SEEDS`` seeds: such a test is
    not printed and not counted), ``family`` ("primary" or "secondary", see above),
    ``p_holm`` (Holm over the finite p values of the row's family) and ``p_bh``
    (Benjamini-Hochberg over the same). Metrics that are not columns
    are skipped; an empty frame (same columns) without trials or results.
    """
    rows: list[dict] = []
    if trials is not None and len(trials) and "residual" in trials:
        t = with_derived(_prepare(trials))
        for m in contrast_metrics:
            if m not in t or "seed" not in t:
                continue
            for _, r in contrasts(t, m).iterrows():
                n = int(r["n_pairs"])
                rows.append(dict(key=contrast_key(r, m, "t"), kind="contrast", test="paired t",
                                 metric=m, n=n, p_value=_masked(r["p_value"], n),
                                 family=PRIMARY))
                rows.append(dict(key=contrast_key(r, m, "wilcoxon"), kind="contrast",
                                 test="Wilcoxon", metric=m, n=n,
                                 p_value=_masked(r["p_wilcoxon"], n), family=SECONDARY))
        depth_metrics = [m for m in depth_metrics if m in t and "seed" in t]
        if depth_metrics:  # one depth: no interaction, but the factors' main effects
            from analysis import interaction as _interaction  # noqa: PLC0415
            for m in depth_metrics:
                for _, r in _interaction.interaction(t, m, level).iterrows():
                    n = interaction_n(r)
                    rows.append(dict(key=interaction_key(r, m), kind="interaction",
                                     test=str(r.get("method", "")), metric=m, n=n,
                                     p_value=_masked(r["p_value"], n), family=PRIMARY))
                for _, r in _interaction.factor_effects(t, m, level).iterrows():
                    for part, col in (("main", "main_p"), ("interaction", "int_p")):
                        n = factor_effect_n(r, part, t, m)
                        rows.append(dict(key=factor_effect_key(r, m, part),
                                         kind="factor effect",
                                         test=f"{part} ({_effect_method(r, part)})", metric=m,
                                         n=n, p_value=_masked(r[col], n),
                                         family=SECONDARY if r["factor"] == "residual"
                                         else PRIMARY))
    out = pd.DataFrame(rows, columns=_FAMILY_COLUMNS[:7])
    dup = out["key"].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"tests with the same key in the report's family: "
                         f"{sorted(set(out.loc[dup, 'key']))[:3]}")
    out["n"] = out["n"].astype("int64")
    out["p_value"] = out["p_value"].astype(float)
    out["p_holm"] = math.nan
    out["p_bh"] = math.nan
    for fam in (PRIMARY, SECONDARY):
        rows_ = out["family"] == fam
        out.loc[rows_, "p_holm"] = holm(out.loc[rows_, "p_value"])
        out.loc[rows_, "p_bh"] = benjamini_hochberg(out.loc[rows_, "p_value"])
    return out


def family_size(family: pd.DataFrame | None, which: str = PRIMARY) -> int:
    """Tests of the primary (or secondary) family with a p value (the m of Holm's
    adjustment)."""
    if family is None or not len(family):
        return 0
    return int((np.isfinite(family["p_value"]) & (family["family"] == which)).sum())


def family_lookup(family: pd.DataFrame | None, key: str, p_raw=None) -> tuple[float, float]:
    """``(p_holm, p_bh)`` of the test ``key``; NaN when it is not in the family, and when
    ``p_raw`` (the raw p the caller computed on its own, possibly filtered, trials) is
    not the family's raw p: a view that changed the test is not a member."""
    if family is None or not len(family):
        return (math.nan, math.nan)
    hit = family[family["key"] == key]
    if not len(hit):
        return (math.nan, math.nan)
    r = hit.iloc[0]
    if p_raw is not None:
        a, b = float(p_raw) if pd.notna(p_raw) else math.nan, float(r["p_value"])
        same = (math.isnan(a) and math.isnan(b)) or (
            not math.isnan(a) and not math.isnan(b) and math.isclose(a, b, rel_tol=1e-9,
                                                                     abs_tol=1e-15))
        if not same:
            return (math.nan, math.nan)
    return (float(r["p_holm"]), float(r["p_bh"]))


def family_caption(family: pd.DataFrame | None) -> str:
    """"Holm over all 24 tests of this report: ..." (the family the adjusted p values
    of a caption's table belong to)."""
    m = family_size(family)
    if not m:
        return (f"no test of this report has a p value (none has {MIN_SEEDS} or more seeds "
                "with a spread to test), so nothing is adjusted")
    parts = []
    if family is not None and len(family):
        have = family[np.isfinite(family["p_value"]) & (family["family"] == PRIMARY)]
        for kind, what in (("contrast", "contrasts' paired t"),
                           ("interaction", "depth x residual interactions"),
                           ("factor effect", "other factors' main and depth effects")):
            k = int((have["kind"] == kind).sum())
            if k:
                parts.append(f"{k} {what}")
    m2 = family_size(family, SECONDARY)
    return (f"Holm over the {m} primary tests of this report (" + "; ".join(parts or ["none"])
            + f"; computed on the run's full trials, tests with fewer than {MIN_SEEDS} seeds "
            "left out), the same in every --where view" + (
                f"; Wilcoxon p values and the residual factor's summary effects restate "
                f"primary tests and are adjusted among themselves (Holm over {m2})"
                if m2 else ""))
