"""The report's one multiplicity family: every test a report prints, keyed, with its p
value adjusted over a pre-declared set of tests.

Every p value a report prints is adjusted over a pre-declared set of tests computed on
the run's FULL trials (``report_family``). The PRIMARY family holds one test per
hypothesis: each contrast's paired t (``analysis.contrasts``), each depth x residual
interaction, and each other factor's main effect and depth x factor interaction
(``analysis.interaction``). Tests that restate a primary hypothesis form a SECONDARY
family, adjusted among themselves so that they cannot dilute the primary one: each
contrast's exact Wilcoxon p (a distribution-free check of the same contrast) and the
residual factor's summary effects (its depth interaction is the deepest depth x
residual interaction again). Both are adjusted with Holm and, for comparison,
Benjamini-Hochberg (``analysis.pvalues``).

A ``--where`` view filters the trials it shows but looks its adjusted p values up in
this family (``family_lookup``), so the same contrast reads the same adjusted p in the
full report and in any view. A test the view changes (fewer seeds: another raw p) is
not a member, and its adjusted p is not shown. A test below ``contrasts.MIN_SEEDS``
seeds has no p value here and is not counted.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations import factors as _factors
from ablations import levels as _levels
from analysis import interaction as _interaction
from analysis.contrasts import (CONTRAST_METRICS, DEPTH_METRICS, MIN_SEEDS, contrasts,
                                effect_method, factor_effect_n, interaction_n, means_only)
from analysis.pvalues import benjamini_hochberg, holm
from analysis.stats import prepare_trials, with_derived

_FAMILY_COLUMNS = ["key", "kind", "test", "metric", "n", "p_value", "family", "p_holm",
                   "p_bh"]
PRIMARY, SECONDARY = "primary", "secondary"


# --------------------------------------------------------------------------- keys

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


# --------------------------------------------------------------------------- the family

def _masked(p, n) -> float:
    p = float(p) if p is not None and pd.notna(p) else math.nan
    return math.nan if means_only(n) else p


def report_family(trials: pd.DataFrame | None, contrast_metrics=CONTRAST_METRICS,
                  depth_metrics=DEPTH_METRICS, level: float = 0.95) -> pd.DataFrame:
    """Every test of a report, keyed, with its raw and adjusted p (see the module docstring).

    Rows: each contrast (``contrasts``) of each of ``contrast_metrics``, twice (kind
    "contrast", test "paired t" and "Wilcoxon"); each depth x residual interaction
    (``analysis.interaction.interaction``, kind "interaction", test its method) and
    each factor's main effect and depth x factor interaction
    (``analysis.interaction.factor_effects``, kind "factor effect") of each of
    ``depth_metrics``. Columns ``key`` (``contrast_key``, ``interaction_key``,
    ``factor_effect_key``: unique), ``kind, test, metric, n`` (seeds),
    ``p_value`` (raw; NaN when undefined or below ``MIN_SEEDS`` seeds: such a test is
    not printed and not counted), ``family`` ("primary" or "secondary": the module docstring),
    ``p_holm`` (Holm over the finite p values of the row's family) and ``p_bh``
    (Benjamini-Hochberg over the same). Metrics that are not columns
    are skipped; an empty frame (same columns) without trials or results.
    """
    rows: list[dict] = []
    if trials is not None and len(trials) and "residual" in trials:
        t = with_derived(prepare_trials(trials))
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
                                         test=f"{part} ({effect_method(r, part)})", metric=m,
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
