"""Contrasts between factor levels, paired by seed, and the rule for too few seeds.

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

**Multiple comparisons.** ``contrasts`` adjusts the p values of one call (one metric)
over every contrast with a finite paired-t p value, with Holm's step-down method by
default (``analysis.pvalues``, which says why Holm); the report's p values are adjusted
over its whole family of tests instead (``analysis.multiplicity``).

**Seeds enough to test** (``MIN_SEEDS``, ``means_only``): below three seeds a contrast,
an interaction or a factor effect gives its mean alone; ``smallest_cell``,
``interaction_n`` and ``factor_effect_n`` count the seeds behind each.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ablations import factors as _factors
from ablations import levels as _levels
from analysis.pvalues import ADJUSTMENT, adjust, paired_t_pvalue, wilcoxon_exact_pvalue
from analysis.stats import (cell_keys, mean_ci, prepare_trials, require_metric, usable_rows,
                            with_derived)

NA = _levels.NA


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


def cell_groups(df: pd.DataFrame, keys: list[str]):
    """``(key tuple, frame)`` per group of ``df`` by ``keys`` (missing values kept, first-seen
    order); one group with key ``()`` when ``keys`` is empty, none when ``df`` is."""
    if not len(df):
        return []
    if not keys:
        return [((), df)]
    return [(k if isinstance(k, tuple) else (k,), g)
            for k, g in df.groupby(keys, sort=False, dropna=False)]


def matches_baseline(base_ctx: tuple, ctx: tuple) -> bool:
    """A baseline cell serves a cell when each other factor is equal or n/a at the baseline."""
    return all(b == c or b == NA for b, c in zip(base_ctx, ctx))


def _pair(treat: pd.DataFrame, base: pd.DataFrame, metric: str, level: float,
          wilcoxon: bool, resolution: float | None = None) -> dict:
    """Seed-paired statistics of ``treat - base`` (either frame may be empty)."""
    a = usable_rows(treat, metric).set_index("seed")[metric].astype(float)
    b = usable_rows(base, metric).set_index("seed")[metric].astype(float)
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
    for base_key, g in cell_groups(t[(lv != NA) & t["family"].isin(refs)],
                               list(_levels.BASE_KEYS)):
        ref = refs[base_key[0]]
        glv = lv.loc[g.index]
        base_cells = cell_groups(g[glv == ref], others)
        used = set()
        for key, cell in cell_groups(g[glv != ref], [name] + others):
            ctx = key[1:]
            found = [i for i, (bctx, _) in enumerate(base_cells) if matches_baseline(bctx, ctx)]
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
    t = with_derived(prepare_trials(trials))
    require_metric(t, metric)
    require_metric(t, "seed")
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


# --------------------------------------------------------------------------- seeds enough to test
#
# The report's rule for small samples, shared by its tables, findings and figures: a
# test with fewer than MIN_SEEDS seeds shows its mean alone, and is left out of the
# report's multiplicity family (``analysis.multiplicity``).

MIN_SEEDS = 3  # below this many seeds (pairs) a contrast shows its mean only
# The metrics of the report's tests: contrasts of test accuracy and train loss (the
# paired table, the findings); interactions and factor effects of train loss and test
# error (the degradation metrics: higher is worse).
CONTRAST_METRICS = ("final_test_acc", "final_train_loss")
DEPTH_METRICS = ("final_train_loss", "final_test_error")
TEST_SIZE_COLUMN = "n_test"  # test-set images per trial, where the sweep records it


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


def interaction_n(row) -> int:
    """Seeds behind an interaction: the pairs when paired, else the smallest of its four
    cells (plain and residual at both depths)."""
    if str(row.get("method", "")) == "paired":
        return int(row.get("n_seeds", 0) or 0)
    counts = [row.get(c) for c in ("n_plain", "n_plain_base", "n_residual", "n_residual_base")]
    counts = [int(c) for c in counts if c is not None and pd.notna(c)]
    return min(counts) if counts else int(row.get("n_seeds", 0) or 0)


def effect_method(row, part: str) -> str:
    """"paired", "welch" or "none": how a factor effect's main effect (``part="main"``) or
    depth interaction was computed."""
    col = "main_method" if part == "main" else "int_method"
    return str(row.get(col, row.get("method", "")))


def smallest_cell(trials: pd.DataFrame, metric: str, family=None) -> int:
    """The fewest usable values (completed, finite ``metric``) of any cell of ``family``
    (all families: None) that has one; 0 when none has."""
    t = with_derived(prepare_trials(trials))
    if metric not in t:
        return 0
    if family is not None:
        t = t[t["family"] == family]
    u = usable_rows(t, metric)
    if not len(u):
        return 0
    return int(u.groupby(cell_keys(u), dropna=False).size().min())


def factor_effect_n(row, part: str, trials: pd.DataFrame, metric: str) -> int:
    """Seeds behind a factor effect's main effect (``part="main"``) or depth interaction:
    its paired seeds when paired, else (Welch over cells) the smallest usable cell of the
    family, so that the ``MIN_SEEDS`` rule holds for either method."""
    method = effect_method(row, part)
    if method == "paired":
        col = "n_seeds" if part == "main" else "int_n_seeds"
        return int(row.get(col, 0) or 0)
    if method == "none":
        return 0
    return smallest_cell(trials, metric, row.get("family"))
