"""Tables of the ablation: pure statistics on the tidy frames, then text renderers.

``grad_table`` reproduces the seed article's table (mean |dL/dW| per layer
with and without shortcuts, and their ratio); ``degradation_table``,
``contrast_table`` and ``degradation_index_table`` put ``analysis.stats`` and
``analysis.contrasts`` in paper form (mean ± 95% interval, counts of failed
trials, p values adjusted over the report's one multiplicity family:
``analysis.contrasts.report_family``); ``contrast_table`` leads with the depth x
residual interactions and ``factor_effects_table`` gives each factor's main effect and
depth interaction (``analysis.interaction``). ``robust_table``, ``improvement_table``,
``failures_table`` and ``survivorship_table`` put ``analysis.robust`` next to them
(interquartile means, P(improvement), Clopper-Pearson failure rates, diverged trials
counted at chance). Below ``analysis.contrasts.MIN_SEEDS`` seeds a difference is its
mean alone.

Factor columns: ``variant`` (plain/residual) always, as before the factor registry,
then one column per other factor that *varies* in the trials (``norm``, ``block``,
``branch_scale``, ``shortcut``; "n/a" where it does not apply). A factor at one level
throughout is not shown, so a sweep that crosses only residual gives the tables it
always did.

``to_markdown``/``to_latex`` are written by hand so that the report needs
neither tabulate nor jinja2.
"""
from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import contrasts as _contrasts
from ablations import levels as _levels
from analysis import stats
from analysis.style import VARIANT_ORDER, variant_of, with_variant

# --------------------------------------------------------------------------- statistics

def stat_rows(layers: pd.DataFrame, stat: str, phase: str = "init") -> pd.DataFrame:
    """Rows of one statistic and phase; for a phase sampled at many steps, each trial's last step.

    Pooling steps would mix a network at step 0 with the same network at step
    10 000, so a multi-step phase ("train") is reduced to its final sample.
    """
    rows = layers[(layers["stat"] == stat) & (layers["phase"] == phase)]
    if len(rows) and "step" in rows:
        last = rows.groupby("trial_id")["step"].transform("max")
        rows = rows[rows["step"] == last]
    return rows


WHEN = ("init", "late")


def snapshot_rows(layers: pd.DataFrame, stat: str, when: str = "late") -> pd.DataFrame:
    """Rows of one statistic at one moment of every trial: ``when`` = "init" or "late".

    "init": the trial's ``phase == "init"`` rows when it has them (a probe
    sweep measures the untrained network), else its first training sample
    (step 0: the first batch's gradients, taken at the initial weights).
    "late": the trial's last training sample. A trial without the rows a
    moment needs (a probe has no "late") contributes nothing.
    """
    if when not in WHEN:
        raise ValueError(f"when must be one of {', '.join(WHEN)} (got {when!r})")
    rows = layers[layers["stat"] == stat]
    train = rows[rows["phase"] == "train"]
    if when == "late":
        return train[train["step"] == train.groupby("trial_id")["step"].transform("max")]
    init = rows[rows["phase"] == "init"]
    train = train[~train["trial_id"].isin(set(init["trial_id"]))]
    first = train[train["step"] == train.groupby("trial_id")["step"].transform("min")]
    return pd.concat([init, first], ignore_index=True)


def network_order(rows: pd.DataFrame) -> list[str]:
    """Layer names in network order, merged over trials whose layer lists differ.

    The plain ResNet lacks the projection shortcuts (``layer2.0.shortcut.0.weight``),
    so ``layer_index`` of the same layer differs between variants. The longest
    list is the base; a layer missing from it is inserted after its
    predecessor in its own list, so shared layers keep one position.

    >>> network_order(frame)  # residual: a, b, s, c; plain: a, b, c
    ['a', 'b', 's', 'c']
    """
    key = "trial_id" if "trial_id" in rows else "residual"
    seqs: list[list[str]] = []
    for _, g in rows.groupby(key, sort=True):
        seq = list(g.sort_values("layer_index", kind="stable")["layer"].drop_duplicates())
        if seq not in seqs:
            seqs.append(seq)
    seqs.sort(key=len, reverse=True)
    order = list(seqs[0]) if seqs else []
    for seq in seqs[1:]:
        pos = -1
        for name in seq:
            if name in order:
                pos = order.index(name)
            else:
                pos += 1
                order.insert(pos, name)
    return order


GRAD_TABLE_FORMAT = {"plain": "sci", "residual": "sci", "ratio": "sig"}


def grad_table(layers: pd.DataFrame, model: str, depth: int, phase: str = "init",
               when: str | None = None, levels: dict | None = None) -> pd.DataFrame:
    """Mean |dL/dW| per weight layer without (``plain``) and with (``residual``) shortcuts.

    ``plain`` and ``residual`` are medians over seeds of ``grad_mean_abs``;
    ``ratio`` is the median over seeds of the per-seed ratio residual/plain
    (paired by seed, so seed-to-seed spread that both variants share cancels).
    Rows follow network order; a layer only one variant has (a projection
    shortcut) gets NaN in the other column and in ``ratio``. NaN values are
    skipped; +-inf are kept (a diverged seed shows as inf rather than vanish).

    ``when`` ("init"/"late", see ``snapshot_rows``) replaces ``phase``: a
    trained sweep has no "init" phase, and its first training step is the
    seed article's measurement at initialization.

    ``levels``: ``{factor: column value}`` to compare plain and residual at, e.g.
    ``{"norm": "none", "branch_scale": "zero"}``; a row whose factor is "n/a" (a plain
    network's branch scale) counts as matching. Without it, rows of every level are
    pooled, so pin every factor that varies.

    Raises ValueError if either variant has no rows for this model and depth.
    """
    rows = (snapshot_rows(layers, "grad_mean_abs", when) if when
            else stat_rows(layers, "grad_mean_abs", phase))
    phase = when or phase
    rows = rows[(rows["model"] == model) & (rows["depth"] == depth)]
    for k, v in (levels or {}).items():
        if k in rows:
            rows = rows[(rows[k] == v) | (rows[k] == _levels.NA)]
    rows = with_variant(rows)
    missing = [v for v in VARIANT_ORDER if not (rows["variant"] == v).any()]
    if missing:
        raise ValueError(f"no {phase!r} grad_mean_abs rows for model {model!r} depth {depth} "
                         f"with variant(s) {', '.join(missing)}")
    by_seed = (rows.groupby(["layer", "seed", "variant"])["value"].median()
               .unstack("variant"))  # (layer, seed) x variant
    # inf/inf and 0/0 are NaN and drop out of the median; x/0 is inf and stays.
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed_ratio = by_seed["residual"] / by_seed["plain"]
    order = network_order(rows)
    out = pd.DataFrame({
        "plain": by_seed["plain"].groupby("layer").median(),
        "residual": by_seed["residual"].groupby("layer").median(),
        "ratio": per_seed_ratio.groupby("layer").median(),
    }).reindex(order)
    return out.rename_axis("layer").reset_index()


# --------------------------------------------------------------------------- paper tables
#
# Cells are pre-formatted strings ("0.523 ± 0.012"), so that Markdown and
# LaTeX show the same digits; the numbers behind them are the frames of
# ``analysis.stats``. Rounding: losses to 3 decimals, accuracies and errors
# in percent to 1 decimal, p values to 2 significant digits (< 0.001 below).

# metric -> (column title, scale, decimals)
METRICS = {"final_train_loss": ("train loss", 1.0, 3),
           "final_test_acc": ("test acc (%)", 100.0, 1),
           "final_test_error": ("test error (%)", 100.0, 1)}


BIG = 1e6  # from here on, fixed point is a wall of digits


def fmt_ci(mean: float, lo: float, hi: float, decimals: int, scale: float = 1.0,
           small: str = "zero") -> str:
    """"m ± h" with the t interval's half width h; just "m" when there is no interval
    (one value), "—" when there is no value. ``scale`` converts (100: to percent).

    Fixed point with ``decimals``, except in scientific notation with 3
    significant digits (both numbers alike) when the mean or the half width
    reaches ``BIG`` (a diverging loss of 1e30 would print 31 digits), and, with
    ``small="sci"``, when a non-zero mean would read as zero: a converged
    train loss of 4e-05 is not "0.000". Differences keep the default
    ``small="zero"``: a residual-minus-plain gap of 1e-5 pp *is* no gap.
    """
    if mean is None or not np.isfinite(mean):
        return "—"
    m = mean * scale
    half = ((hi - lo) / 2 * scale if lo is not None and hi is not None
            and np.isfinite(lo) and np.isfinite(hi) else None)
    big = max(abs(m), abs(half or 0.0)) >= BIG
    hidden = small == "sci" and m != 0 and float(f"{m:.{decimals}f}") == 0
    spec = ".2e" if big or hidden else f".{decimals}f"
    return f"{m:{spec}}" + (f" ± {half:{spec}}" if half is not None else "")


def fmt_p(p: float) -> str:
    """Two significant digits; "< 0.001" below; "—" when the test is undefined."""
    if p is None or not np.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def _diff_title(metric: str) -> str:
    """Column title of a difference of ``metric``: percentages become points ("test acc (pp)")."""
    title, scale, _ = METRICS[metric]
    return title.replace(" (%)", "") + (" (pp)" if scale == 100.0 else "")


def without_redundant_model(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its ``model`` column when every model is its family's own network
    (``model == family``; rows with an empty model, such as a total row, do not count):
    a family sweep has no presets, and the column would only repeat ``family``."""
    rows = df[df["model"].astype(str) != ""]
    return df.drop(columns="model") if len(rows) and (rows["family"] == rows["model"]).all() else df


def _status_text(row) -> str:
    """"3" when all planned trials completed, else "1/3 (2 diverged)" and so on."""
    parts = [f"{int(row[f'n_{s}'])} {s}" for s in ("diverged", "error", "pending")
             if int(row.get(f"n_{s}", 0))]
    done, planned = int(row["n_completed"]), int(row["n_planned"])
    return str(done) if done == planned else f"{done}/{planned} ({', '.join(parts)})"


def shown_factors(trials: pd.DataFrame) -> list[str]:
    """The factors other than residual that vary in ``trials`` (registry order): the
    factor columns a table shows after ``variant``."""
    return [n for n in _levels.varying(trials) if n != "residual"]


def _factor_cells(frame: pd.DataFrame, shown: list[str]) -> dict[str, list]:
    """``variant`` and each shown factor's level, per row of a stats frame."""
    out = {"variant": list(variant_of(frame["residual"]))}
    for n in shown:
        out[n] = [_levels.level_of(n, v) for v in frame[n]] if n in frame else [_levels.NA] * len(frame)
    return out


def degradation_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per family x depth x variant (x each other factor that varies): params,
    completed/planned with the failures named, final train loss and test accuracy as
    mean ± 95% t half width over completed seeds."""
    metrics = [m for m in ("final_train_loss", "final_test_acc") if m in trials]
    cells = stats.cell_summary(trials, metrics=metrics)
    out = pd.DataFrame({"family": cells["family"], "model": cells["model"],
                        "depth": cells["depth"].astype("int64"),
                        **_factor_cells(cells, shown_factors(trials)),
                        "params": cells["params"],
                        "n": [_status_text(r) for _, r in cells.iterrows()]})
    for m in metrics:
        title, scale, decimals = METRICS[m]
        out[title] = [fmt_ci(r[f"{m}_mean"], r[f"{m}_ci_lo"], r[f"{m}_ci_hi"], decimals, scale,
                             small="sci") for _, r in cells.iterrows()]
    return without_redundant_model(out)


P_HOLM = "p (t, Holm)"          # the paired t (or Welch t) p, adjusted over the report's family
P_WILCOXON_HOLM = "p (Wilcoxon, Holm)"
Q_BH = "q (t, BH)"              # Benjamini-Hochberg over the same family: a discovery rate
CONTRAST_METRICS = _contrasts.CONTRAST_METRICS
DEPTH_METRICS = _contrasts.DEPTH_METRICS
INTERACTION_FACTOR = "depth x residual"


def p_adjusted_title(method: str = _contrasts.ADJUSTMENT) -> str:
    """Column title of the adjusted paired-t p value: "p (t, Holm)"."""
    return f"p (t, {_contrasts.ADJUSTMENT_LABEL[method]})"


def adjusted_cells(family: pd.DataFrame | None, key: str, p_raw, n: int) -> tuple[str, str]:
    """(Holm, BH) text of one test: "—" without pairs or without a p value (constant
    differences), ``means_only_text`` below ``MIN_SEEDS`` seeds, "n/a (view)" for a
    test that a ``--where`` view changed (not in the report's family), else the
    family's adjusted p values."""
    if not n:
        return "—", "—"
    if _contrasts.means_only(n):
        return _contrasts.means_only_text(n), "n/a"
    holm_p, bh_p = _contrasts.family_lookup(family, key, p_raw)
    if not np.isfinite(holm_p) and p_raw is not None and pd.notna(p_raw) \
            and np.isfinite(float(p_raw)):
        return "n/a (view)", "n/a (view)"
    return fmt_p(holm_p), fmt_p(bh_p)


def fmt_diff(mean: float, lo: float, hi: float, n: int, decimals: int, scale: float) -> str:
    """A difference as ``fmt_ci``, its interval left out below ``MIN_SEEDS`` seeds."""
    if _contrasts.means_only(n):
        lo = hi = math.nan
    return fmt_ci(mean, lo, hi, decimals, scale)


def depth_span(base, depth) -> str:
    """"20 -> 56": the depths a difference of differences compares."""
    return f"{int(base)} -> {int(depth)}"


def interactions(trials: pd.DataFrame, metrics=DEPTH_METRICS) -> dict[str, pd.DataFrame]:
    """``analysis.interaction.interaction`` of each of ``metrics`` that the trials have
    (accuracies derived into errors), when both variants and two depths are there; {}
    otherwise."""
    if trials is None or not len(trials) or "residual" not in trials \
            or trials["depth"].nunique() < 2 or trials["residual"].nunique() < 2:
        return {}
    from analysis import interaction as _interaction
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
    ``analysis.contrasts.report_family``; computed from ``trials`` when None): ``p (t,
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
        family = _contrasts.report_family(trials)
    factors = _contrasts.contrasted_factors(trials) if "residual" in trials else []
    varying = _levels.varying(trials)
    parts = []
    for k, (m, d) in enumerate(interactions(trials).items()):
        _, scale, decimals = METRICS[m]
        for i, r in d.iterrows():
            n = _contrasts.interaction_n(r)
            holm_t, bh_t = adjusted_cells(family, _contrasts.interaction_key(r, m),
                                          r["p_value"], n)
            within = _levels.describe(r, [v for v in varying if v != "residual"])
            parts.append({"_part": 0, "_row": i, "_metric": k, "family": r["family"],
                          "model": r["model"], "depth": depth_span(r["base_depth"], r["depth"]),
                          "factor": INTERACTION_FACTOR,
                          "contrast": "plain change - residual change"
                                      + (" (Welch)" if r["method"] == "welch" else ""),
                          "within": within or "—", "metric": _diff_title(m),
                          "difference": fmt_diff(r["did"], r["ci_lo"], r["ci_hi"], n,
                                                 decimals, scale),
                          "pairs": int(r["n_seeds"]), "unpaired": _unpaired(r),
                          P_HOLM: holm_t, P_WILCOXON_HOLM: "—", Q_BH: bh_t})
    for k, m in enumerate(CONTRAST_METRICS):
        if m not in trials:
            continue
        _, scale, decimals = METRICS[m]
        d = _contrasts.contrasts(trials, m, factors=factors)
        for i, r in d.iterrows():
            n = int(r["n_pairs"])
            holm_t, bh_t = adjusted_cells(family, _contrasts.contrast_key(r, m, "t"),
                                          r["p_value"], n)
            holm_w, _ = adjusted_cells(family, _contrasts.contrast_key(r, m, "wilcoxon"),
                                       r["p_wilcoxon"], n)
            within = _levels.describe(r, [v for v in varying if v != r["factor"]])
            parts.append({"_part": 1, "_row": i, "_metric": k, "family": r["family"],
                          "model": r["model"], "depth": int(r["depth"]), "factor": r["factor"],
                          "contrast": (f"{r['level']} - {r['baseline']}" if pd.notna(r["level"])
                                       else f"{r['baseline']} only"),
                          "within": within or "—", "metric": _diff_title(m),
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
        family = _contrasts.report_family(trials)
    from analysis import interaction as _interaction
    rows = []
    for k, m in enumerate(DEPTH_METRICS):
        if stats.DERIVED.get(m, m) not in trials:
            continue
        _, scale, decimals = METRICS[m]
        for i, r in _interaction.factor_effects(trials, m).iterrows():
            n_main = _contrasts.factor_effect_n(r, "main", trials, m)
            n_int = _contrasts.factor_effect_n(r, "interaction", trials, m)
            p_main, _ = adjusted_cells(family, _contrasts.factor_effect_key(r, m, "main"),
                                       r["main_p"], n_main)
            p_int, _ = adjusted_cells(family, _contrasts.factor_effect_key(
                r, m, "interaction"), r["int_p"], n_int)
            span = (depth_span(r["depth_lo"], r["depth_hi"])
                    if pd.notna(r["depth_lo"]) and pd.notna(r["depth_hi"])
                    and r["depth_lo"] != r["depth_hi"] else "—")
            rows.append({"_row": i, "_metric": k, "family": r["family"], "factor": r["factor"],
                         "contrast": f"{r['level']} - {r['baseline']}",
                         "metric": _diff_title(m), "seeds": int(r["n_seeds"]),
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


def degradation_index_table(trials: pd.DataFrame) -> pd.DataFrame:
    """How much worse each deeper network is than the shallowest of its combination of
    levels: change in final train loss and test error (pp) vs the base depth, mean ±
    95% Welch half width (the mean alone below ``MIN_SEEDS`` values on either side); a
    positive change is degradation. Per variant: these changes do not by themselves
    compare variants (the depth x residual interaction in ``contrast_table`` does)."""
    parts = {}
    for m in ("final_train_loss", "final_test_error"):
        acc = stats.DERIVED.get(m, m)
        if acc in trials:
            parts[m] = stats.degradation_index(trials, m)
    if not parts:
        return pd.DataFrame()
    base = next(iter(parts.values()))
    out = pd.DataFrame({"family": base["family"], "model": base["model"],
                        **_factor_cells(base, shown_factors(trials)),
                        "depth": base["depth"].astype("int64"),
                        "vs depth": base["base_depth"].astype("int64"),
                        "n": [_status_text(r) for _, r in base.iterrows()],
                        "n base": base["n_base"].astype("int64")})
    for m, d in parts.items():
        _, scale, decimals = METRICS[m]
        out["change in " + _diff_title(m)] = [
            "0 (base)" if r["depth"] == r["base_depth"] and np.isfinite(r["delta"])
            else fmt_diff(r["delta"], r["ci_lo"], r["ci_hi"], min(r["n"], r["n_base"]),
                          decimals, scale)
            for _, r in d.iterrows()]
    out = out[out["model"].map(out.groupby("model")["depth"].nunique()) > 1]
    return without_redundant_model(out.reset_index(drop=True))


# --------------------------------------------------------------------------- robust summaries

def fmt_interval(v: float, lo: float, hi: float, decimals: int, scale: float = 1.0,
                 show_interval: bool = True) -> str:
    """"0.512 [0.490, 0.530]": a value and an interval that need not be symmetric
    (bootstrap, Clopper-Pearson); the value alone without a finite interval; "—"
    without a value."""
    if v is None or not np.isfinite(v):
        return "—"
    text = f"{v * scale:.{decimals}f}"
    if show_interval and lo is not None and hi is not None and np.isfinite(lo) \
            and np.isfinite(hi):
        text += f" [{lo * scale:.{decimals}f}, {hi * scale:.{decimals}f}]"
    return text


def _cell_head(frame: pd.DataFrame, trials: pd.DataFrame) -> dict:
    return {"family": frame["family"], "model": frame["model"],
            "depth": frame["depth"].astype("int64"), **_factor_cells(frame, shown_factors(trials))}


def robust_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell: usable seeds and the interquartile mean (``analysis.robust.iqm``: the
    mean of the middle 50% of seeds) of final train loss and test error with its 95%
    stratified percentile bootstrap interval (``robust.robust_summary``), next to the
    summary's mean ± t interval."""
    from analysis import robust
    parts = {m: robust.robust_summary(trials, m) for m in DEPTH_METRICS
             if stats.DERIVED.get(m, m) in trials}
    if not parts:
        return pd.DataFrame()
    base = next(iter(parts.values()))
    out = pd.DataFrame({**_cell_head(base, trials), "n": base["n"].astype("int64")})
    for m, d in parts.items():
        title, scale, decimals = METRICS[m]
        out[f"IQM {title}"] = [fmt_interval(r["iqm"], r["iqm_ci_lo"], r["iqm_ci_hi"], decimals,
                                            scale) for _, r in d.iterrows()]
    return without_redundant_model(out)


def improvement_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per contrast (``analysis.contrasts.contrasts``, each level against its baseline
    cell) and each of final train loss and test error: P(improvement), the chance that a
    run of the level beats a run of the baseline (lower loss or error; ties 1/2), with its
    95% stratified bootstrap interval (``analysis.robust.improvement``); the estimate
    alone below ``MIN_SEEDS`` runs on either side."""
    from analysis import robust
    if "residual" not in trials:
        return pd.DataFrame()
    varying = _levels.varying(trials)
    rows = []
    for k, m in enumerate(DEPTH_METRICS):
        if stats.DERIVED.get(m, m) not in trials:
            continue
        for i, r in robust.improvement(trials, m).iterrows():
            if pd.isna(r["level"]):
                continue
            few = _contrasts.means_only(min(r["n_level"], r["n_baseline"]))
            rows.append({"_row": i, "_metric": k, "family": r["family"], "model": r["model"],
                         "depth": int(r["depth"]), "factor": r["factor"],
                         "contrast": f"{r['level']} vs {r['baseline']}",
                         "within": _levels.describe(r, [v for v in varying
                                                        if v != r["factor"]]) or "—",
                         "metric": METRICS[m][0].replace(" (%)", ""),
                         "runs": f"{int(r['n_level'])} vs {int(r['n_baseline'])}",
                         "P(improvement)": fmt_interval(r["prob_improvement"], r["prob_ci_lo"],
                                                        r["prob_ci_hi"], 2,
                                                        show_interval=not few)})
    cols = ["family", "model", "depth", "factor", "contrast", "within", "metric", "runs",
            "P(improvement)"]
    out = pd.DataFrame(rows, columns=["_row", "_metric"] + cols)
    out = out.sort_values(["_row", "_metric"], kind="stable").drop(columns=["_row", "_metric"])
    if len(out) and (out["within"] == "—").all():
        out = out.drop(columns="within")
    return without_redundant_model(out.reset_index(drop=True))


def _rate(k: int, n: int, lo: float, hi: float) -> str:
    """"1/3 = 33% [0.84%, 91%]"."""
    if not n:
        return "—"
    def pct(x):
        v = 100 * x
        return f"{v:.0f}%" if v >= 10 or v == 0 else f"{v:.2g}%"
    return f"{int(k)}/{int(n)} = {pct(k / n)} [{pct(lo)}, {pct(hi)}]"


def failures_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell: finished trials (pending left out), and the diverged and failed
    (diverged + errored) counts as rates with exact 95% Clopper-Pearson intervals
    (``analysis.robust.failure_rates``): with 3 seeds, 0/3 is compatible with a rate up to
    71%. Empty when no trial has finished."""
    from analysis import robust
    d = robust.failure_rates(trials)
    if not len(d) or not d["n_planned"].sum():
        return pd.DataFrame()
    out = pd.DataFrame({**_cell_head(d, trials), "finished": d["n_planned"].astype("int64"),
                        "diverged": [_rate(r["n_diverged"], r["n_planned"], r["diverged_ci_lo"],
                                           r["diverged_ci_hi"]) for _, r in d.iterrows()],
                        "failed": [_rate(r["n_diverged"] + r["n_error"], r["n_planned"],
                                         r["failed_ci_lo"], r["failed_ci_hi"])
                                   for _, r in d.iterrows()]})
    return without_redundant_model(out)


def survivorship_label(r, varying=()) -> str:
    """"resnet depth 56 (branch_scale=zero): residual minus plain" or "resnet 20 -> 56:
    depth x residual": what a ``robust.survivorship`` row tests."""
    model = str(r["model"]) if r["model"] == r["family"] else f"{r['family']}: {r['model']}"
    within = _levels.describe(r, [v for v in varying if v != r["factor"]
                                  and v != "residual"] if r["kind"] == "interaction"
                              else [v for v in varying if v != r["factor"]])
    ctx = f" ({within})" if within else ""
    if r["kind"] == "interaction":
        return f"{model} {depth_span(r['base_depth'], r['depth'])}{ctx}: depth x residual"
    what = ("residual minus plain" if r["factor"] == "residual"
            else f"{r['factor']} {r['level']} minus {r['baseline']}")
    return f"{model} depth {int(r['depth'])}{ctx}: {what}"


def survivorship_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """``analysis.robust.survivorship`` of final train loss and test error, with a
    ``metric`` column, only the rows with a diverged trial in their cells."""
    from analysis import robust
    parts = []
    if "residual" not in trials or not (trials["status"] == "diverged").any():
        return pd.DataFrame()
    for m in DEPTH_METRICS:
        if stats.DERIVED.get(m, m) in trials:
            s = robust.survivorship(trials, m)
            # a baseline cell that nothing was contrasted with (level NaN) tests nothing
            parts.append(s[(s["n_diverged"] > 0) & s["level"].notna()].assign(metric=m))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def survivorship_few(trials: pd.DataFrame) -> dict[str, tuple[bool, bool]]:
    """Per metric: whether the survivors, and the trials with diverged runs at chance,
    have a cell with fewer than ``MIN_SEEDS`` usable seeds (then the survivorship table
    and findings give estimates without intervals, as every contrast does)."""
    from analysis import robust
    out = {}
    for m in DEPTH_METRICS:
        if stats.DERIVED.get(m, m) in trials:
            chance = robust.at_chance(trials, m) if robust.chance_value(m) is not None \
                else trials
            out[m] = (0 < _contrasts.smallest_cell(trials, m) < _contrasts.MIN_SEEDS,
                      0 < _contrasts.smallest_cell(chance, m) < _contrasts.MIN_SEEDS)
    return out


def survivorship_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Every contrast and depth x residual interaction whose cells hold a diverged trial:
    its estimate as is (survivors only) and with every diverged trial counted as a
    completed run at chance (``analysis.robust.survivorship``: train loss ln 10, test
    error 90%), each with its 95% t interval, and whether the conclusion changes (sign,
    or which side of 0 the interval lies). Empty without diverged trials."""
    s = survivorship_frame(trials)
    if not len(s):
        return pd.DataFrame()
    varying = _levels.varying(trials)
    few = survivorship_few(trials)
    rows = []
    for _, r in s.iterrows():
        _, scale, decimals = METRICS[r["metric"]]
        few_as_is, few_chance = few[r["metric"]]
        rows.append({"test": survivorship_label(r, varying),
                     "metric": _diff_title(r["metric"]),
                     "diverged": int(r["n_diverged"]),
                     "survivors only": fmt_interval(r["estimate"], r["ci_lo"], r["ci_hi"],
                                                    decimals, scale,
                                                    show_interval=not few_as_is),
                     "diverged at chance": fmt_interval(r["estimate_chance"], r["ci_lo_chance"],
                                                        r["ci_hi_chance"], decimals, scale,
                                                        show_interval=not few_chance),
                     "conclusion changes": bool(r["sign_flips"])})
    return pd.DataFrame(rows, columns=["test", "metric", "diverged", "survivors only",
                                       "diverged at chance", "conclusion changes"])


# --------------------------------------------------------------------------- rendering

def _auto_spec(col: pd.Series) -> str:
    """"sig" when every finite non-zero value is in [1e-2, 1e3), else "sci".

    One spec per column keeps a column's digits aligned: gradients spanning
    1e-2..1e-5 all read as 4.81e-05, ratios and accuracies read as 1.23 or 12.3.
    """
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    return "sig" if v.size == 0 or ((v >= 1e-2) & (v < 1e3)).all() else "sci"


def _format_float(v: float, spec: str) -> str:
    """"sci": 3 significant digits in scientific notation (4.81e-05); "sig": 3 significant
    digits in fixed point inside [1e-3, 1e3) (0.00115, 4.20, 129), scientific outside;
    anything else is a Python format spec."""
    if spec == "sci":
        return f"{v:.2e}"
    if spec == "sig":
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e3:
            return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"
        return f"{v:.2e}"
    return format(v, spec)


def _specs(df: pd.DataFrame, floatfmt) -> dict:
    specs = {}
    for c in df.columns:
        if not (pd.api.types.is_float_dtype(df[c]) or df[c].dtype == object):
            continue
        specs[c] = floatfmt.get(c, "auto") if isinstance(floatfmt, dict) else floatfmt
        if specs[c] == "auto":
            specs[c] = _auto_spec(df[c])
    return specs


def _cell(v, spec: str | None, target: str = "md") -> str:
    """One table cell as text for ``target`` "md" (``|`` escaped), "tex" (LaTeX
    escaped, math for 1e-5 and inf) or "html" (raw text: the caller escapes it)."""
    latex = target == "tex"
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "--" if latex else "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, Integral):
        return f"{int(v):,}".replace(",", "{,}") if latex else f"{int(v):,}"
    if isinstance(v, Real):
        v = float(v)
        if math.isinf(v):
            sign = "-" if v < 0 else ""
            return f"${sign}\\infty$" if latex else f"{sign}inf"
        text = _format_float(v, spec or "sig")
        if latex and "e" in text:
            mant, exp = text.split("e")
            return f"${mant}\\times10^{{{int(exp)}}}$"
        return text
    if latex:
        return escape_latex(str(v))
    return str(v).replace("|", "\\|") if target == "md" else str(v)


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters (``_`` in layer and model names above all)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
            "±": r"$\pm$", "−": "-"}
    return "".join(repl.get(ch, ch) for ch in text)


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def to_markdown(df: pd.DataFrame, floatfmt="auto") -> str:
    """GitHub-flavoured Markdown table; numbers right-aligned.

    ``floatfmt``: "auto" (per column: "sig" if every value is in [1e-2, 1e3),
    else "sci"), "sci" (4.81e-05), "sig" (3 significant digits: 0.00115, 4.20),
    any Python format spec (".4f"), or a dict column -> one of those.
    """
    specs = _specs(df, floatfmt)
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if _numeric(df[c]) else ":---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, specs.get(c), "md") for c, v in zip(df.columns, row))
            + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str, floatfmt="auto") -> str:
    """A booktabs ``table`` float (\\toprule, \\midrule, \\bottomrule).

    ``caption`` is LaTeX source and is not escaped (use ``escape_latex`` on
    names); cells and headers are escaped. Scientific numbers render as
    ``$4.81\\times10^{-5}$``. Needs ``\\usepackage{booktabs}``.
    """
    specs = _specs(df, floatfmt)
    cols = "".join("r" if _numeric(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}",
             f"  \\label{{{label}}}", f"  \\begin{{tabular}}{{{cols}}}", r"    \toprule",
             "    " + " & ".join(escape_latex(str(c)) for c in df.columns) + r" \\",
             r"    \midrule"]
    for row in df.itertuples(index=False, name=None):
        lines.append("    " + " & ".join(_cell(v, specs.get(c), "tex")
                                         for c, v in zip(df.columns, row)) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writers

def write_text(path, text: str) -> str:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def write_table(df: pd.DataFrame, path_without_suffix, caption: str, label: str,
                floatfmt="auto") -> list[str]:
    """Write ``<path>.md`` and ``<path>.tex``; return both paths."""
    base = Path(path_without_suffix)
    return [write_text(base.with_name(base.name + ".md"), to_markdown(df, floatfmt)),
            write_text(base.with_name(base.name + ".tex"), to_latex(df, caption, label, floatfmt))]
