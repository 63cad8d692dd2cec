"""The contrast tables: depth x residual interactions, factor-level contrasts paired by
seed, and each factor's main effect and depth interaction.

``contrast_table`` leads with the depth x residual interactions (``interactions``,
``analysis.interaction``) and goes on with each level minus its factor's baseline
(``analysis.contrasts``); ``factor_effects_table`` gives each factor's main effect and
depth interaction. Differences read as mean ± 95% t half width, the mean alone below
``analysis.contrasts.MIN_SEEDS`` seeds; every p value is adjusted over the report's one
multiplicity family (``analysis.multiplicity.report_family``). The shared column
helpers are in ``analysis.tables``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ablations import levels as _levels
from analysis import contrasts as _contrasts
from analysis import interaction as _interaction
from analysis import stats
from analysis.formatting import fmt_p
from analysis.multiplicity import (contrast_key, factor_effect_key, family_lookup,
                                   interaction_key, report_family)
from analysis.pvalues import ADJUSTMENT, ADJUSTMENT_LABEL
from analysis.tables import (METRICS, depth_span, diff_title, fmt_diff,
                             without_redundant_model)

P_HOLM = "p (t, Holm)"          # the paired t (or Welch t) p, adjusted over the report's family
P_WILCOXON_HOLM = "p (Wilcoxon, Holm)"
Q_BH = "q (t, BH)"              # Benjamini-Hochberg over the same family: a discovery rate
INTERACTION_FACTOR = "depth x residual"


def p_adjusted_title(method: str = ADJUSTMENT) -> str:
    """Column title of the adjusted paired-t p value: "p (t, Holm)"."""
    return f"p (t, {ADJUSTMENT_LABEL[method]})"


def adjusted_cells(family: pd.DataFrame | None, key: str, p_raw, n: int) -> tuple[str, str]:
    """(Holm, BH) text of one test: "—" without pairs or without a p value (constant
    differences), ``means_only_text`` below ``MIN_SEEDS`` seeds, "n/a (view)" for a
    test that a ``--where`` view changed (not in the report's family), else the
    family's adjusted p values."""
    if not n:
        return "—", "—"
    if _contrasts.means_only(n):
        return _contrasts.means_only_text(n), "n/a"
    holm_p, bh_p = family_lookup(family, key, p_raw)
    if not np.isfinite(holm_p) and p_raw is not None and pd.notna(p_raw) \
            and np.isfinite(float(p_raw)):
        return "n/a (view)", "n/a (view)"
    return fmt_p(holm_p), fmt_p(bh_p)


def interactions(trials: pd.DataFrame, metrics=_contrasts.DEPTH_METRICS
                 ) -> dict[str, pd.DataFrame]:
    """``analysis.interaction.interaction`` of each of ``metrics`` that the trials have
    (accuracies derived into errors), when both variants and two depths are there; {}
    otherwise."""
    if trials is None or not len(trials) or "residual" not in trials \
            or trials["depth"].nunique() < 2 or trials["residual"].nunique() < 2:
        return {}
    out = {}
    for m in metrics:
        if stats.DERIVED.get(m, m) in trials:
            d = _interaction.interaction(trials, m)
            if len(d):
                out[m] = d
    return out


def _unpaired(r) -> int:
    counts = [int(r[c]) for c in ("n_plain", "n_plain_base", "n_residual", "n_residual_base")
              if c in r and pd.notna(r[c])]
    return max(0, max(counts, default=0) - int(r["n_seeds"]))


def contrast_table(trials: pd.DataFrame, family: pd.DataFrame | None = None) -> pd.DataFrame:
    """The depth x residual interactions, then each factor level minus its baseline,
    paired by seed, per family x depth and metric.

    First rows: per residual cell and depth d above the shallowest d0, the difference of
    differences ``[plain(d) - plain(d0)] - [residual(d) - residual(d0)]`` of final train
    loss and test error (``analysis.interaction.interaction``; factor "depth x
    residual", depth "d0 -> d"; positive: plain degrades more). Then the contrasts of
    test accuracy and train loss (``analysis.contrasts.contrasts``): mean difference ±
    95% t half width, pairs used, unpaired seeds.

    Every p value is adjusted over the report's family (``family``, see
    ``analysis.multiplicity.report_family``; computed from ``trials`` when None): ``p (t,
    Holm)`` the paired t (interactions: paired or Welch t) p, ``p (Wilcoxon, Holm)``
    the exact signed-rank p, ``q (t, BH)`` the Benjamini-Hochberg q of the t test. Below
    ``MIN_SEEDS`` pairs a row shows its mean only and "n/a (2 seeds: means only)".

    Columns: ``family, model, depth, factor, contrast`` ("residual - plain", "zero -
    one"; "batch only" for a baseline cell without a counterpart; "plain change -
    residual change" for an interaction), ``within`` (the levels of the other varying
    factors, e.g. "residual, norm=none"; dropped when empty throughout), ``metric,
    difference, pairs, unpaired, p (t, Holm), p (Wilcoxon, Holm), q (t, BH)``.
    ``model`` is dropped when it only repeats ``family``.
    """
    if family is None:
        family = report_family(trials)
    factors = _contrasts.contrasted_factors(trials) if "residual" in trials else []
    varying = _levels.varying(trials)
    parts = []
    for k, (m, d) in enumerate(interactions(trials).items()):
        _, scale, decimals = METRICS[m]
        for i, r in d.iterrows():
            n = _contrasts.interaction_n(r)
            holm_t, bh_t = adjusted_cells(family, interaction_key(r, m),
                                          r["p_value"], n)
            within = _levels.describe(r, [v for v in varying if v != "residual"])
            parts.append({"_part": 0, "_row": i, "_metric": k, "family": r["family"],
                          "model": r["model"], "depth": depth_span(r["base_depth"], r["depth"]),
                          "factor": INTERACTION_FACTOR,
                          "contrast": "plain change - residual change"
                                      + (" (Welch)" if r["method"] == "welch" else ""),
                          "within": within or "—", "metric": diff_title(m),
                          "difference": fmt_diff(r["did"], r["ci_lo"], r["ci_hi"], n,
                                                 decimals, scale),
                          "pairs": int(r["n_seeds"]), "unpaired": _unpaired(r),
                          P_HOLM: holm_t, P_WILCOXON_HOLM: "—", Q_BH: bh_t})
    for k, m in enumerate(_contrasts.CONTRAST_METRICS):
        if m not in trials:
            continue
        _, scale, decimals = METRICS[m]
        d = _contrasts.contrasts(trials, m, factors=factors)
        for i, r in d.iterrows():
            n = int(r["n_pairs"])
            holm_t, bh_t = adjusted_cells(family, contrast_key(r, m, "t"),
                                          r["p_value"], n)
            holm_w, _ = adjusted_cells(family, contrast_key(r, m, "wilcoxon"),
                                       r["p_wilcoxon"], n)
            within = _levels.describe(r, [v for v in varying if v != r["factor"]])
            parts.append({"_part": 1, "_row": i, "_metric": k, "family": r["family"],
                          "model": r["model"], "depth": int(r["depth"]), "factor": r["factor"],
                          "contrast": (f"{r['level']} - {r['baseline']}" if pd.notna(r["level"])
                                       else f"{r['baseline']} only"),
                          "within": within or "—", "metric": diff_title(m),
                          "difference": fmt_diff(r["mean_diff"], r["ci_lo"], r["ci_hi"], n,
                                                 decimals, scale),
                          "pairs": n, "unpaired": int(r["n_unpaired"]),
                          P_HOLM: holm_t, P_WILCOXON_HOLM: holm_w, Q_BH: bh_t})
    cols = ["family", "model", "depth", "factor", "contrast", "within", "metric", "difference",
            "pairs", "unpaired", P_HOLM, P_WILCOXON_HOLM, Q_BH]
    out = pd.DataFrame(parts, columns=["_part", "_row", "_metric"] + cols)
    out = out.sort_values(["_part", "_row", "_metric"], kind="stable").drop(
        columns=["_part", "_row", "_metric"])
    if len(out) and (out["within"] == "—").all():
        out = out.drop(columns="within")
    return without_redundant_model(out.reset_index(drop=True))


def factor_effects_table(trials: pd.DataFrame, family: pd.DataFrame | None = None
                         ) -> pd.DataFrame:
    """Per family and contrasted factor level (``analysis.interaction.factor_effects``)
    and each of final train loss and test error: the main effect (level - baseline,
    pooled over every matched cell pair: models, depths and the other factors' levels)
    and the depth x factor interaction (baseline's change minus the level's change from
    the shallowest to the deepest depth; positive: the baseline degrades more), each
    mean ± 95% t half width with its p adjusted over the report's family (Holm).

    Columns: ``family, factor, contrast, metric, seeds, main effect, p (main, Holm),
    depths, depth x factor, p (interaction, Holm), method``. Empty when nothing is
    contrasted."""
    if trials is None or not len(trials) or "residual" not in trials:
        return pd.DataFrame()
    if family is None:
        family = report_family(trials)
    rows = []
    for k, m in enumerate(_contrasts.DEPTH_METRICS):
        if stats.DERIVED.get(m, m) not in trials:
            continue
        _, scale, decimals = METRICS[m]
        for i, r in _interaction.factor_effects(trials, m).iterrows():
            n_main = _contrasts.factor_effect_n(r, "main", trials, m)
            n_int = _contrasts.factor_effect_n(r, "interaction", trials, m)
            p_main, _ = adjusted_cells(family, factor_effect_key(r, m, "main"),
                                       r["main_p"], n_main)
            p_int, _ = adjusted_cells(family, factor_effect_key(
                r, m, "interaction"), r["int_p"], n_int)
            span = (depth_span(r["depth_lo"], r["depth_hi"])
                    if pd.notna(r["depth_lo"]) and pd.notna(r["depth_hi"])
                    and r["depth_lo"] != r["depth_hi"] else "—")
            rows.append({"_row": i, "_metric": k, "family": r["family"], "factor": r["factor"],
                         "contrast": f"{r['level']} - {r['baseline']}",
                         "metric": diff_title(m), "seeds": int(r["n_seeds"]),
                         "main effect": fmt_diff(r["main_effect"], r["main_ci_lo"],
                                                 r["main_ci_hi"], n_main, decimals, scale),
                         "p (main, Holm)": p_main, "depths": span,
                         "depth x factor": fmt_diff(r["interaction"], r["int_ci_lo"],
                                                    r["int_ci_hi"], n_int, decimals, scale),
                         "p (interaction, Holm)": p_int, "method": str(r["method"])})
    cols = ["family", "factor", "contrast", "metric", "seeds", "main effect", "p (main, Holm)",
            "depths", "depth x factor", "p (interaction, Holm)", "method"]
    out = pd.DataFrame(rows, columns=["_row", "_metric"] + cols)
    out = out.sort_values(["_row", "_metric"], kind="stable").drop(columns=["_row", "_metric"])
    return out.reset_index(drop=True)
