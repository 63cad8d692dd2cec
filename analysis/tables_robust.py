"""The robust tables: ``analysis.robust`` next to the t-based ones.

``robust_table`` (interquartile means with bootstrap intervals), ``improvement_table``
(P(improvement) of each contrast), ``failures_table`` (Clopper-Pearson failure rates)
and ``survivorship_table`` (each contrast and interaction as is and with the diverged
trials counted at chance). ``survivorship_frame``, ``survivorship_few`` and
``survivorship_label`` are shared with the survivorship findings
(``analysis.findings``). The shared column helpers are in ``analysis.tables``.
"""
from __future__ import annotations

import pandas as pd

from ablations.status import Status
from ablations import levels as _levels
from analysis import contrasts as _contrasts
from analysis import robust, stats
from analysis.formatting import fmt_interval
from analysis.tables import (METRICS, depth_span, diff_title, factor_cells, shown_factors,
                             without_redundant_model)


def _cell_head(frame: pd.DataFrame, trials: pd.DataFrame) -> dict:
    """The key columns of a per-cell table: family, model, depth and the factor columns."""
    return {"family": frame["family"], "model": frame["model"],
            "depth": frame["depth"].astype("int64"), **factor_cells(frame, shown_factors(trials))}


def robust_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cell: usable seeds and the interquartile mean (``analysis.robust.iqm``: the
    mean of the middle 50% of seeds) of final train loss and test error with its 95%
    stratified percentile bootstrap interval (``robust.robust_summary``), next to the
    summary's mean ± t interval."""
    parts = {m: robust.robust_summary(trials, m) for m in _contrasts.DEPTH_METRICS
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
    if "residual" not in trials:
        return pd.DataFrame()
    varying = _levels.varying(trials)
    rows = []
    for k, m in enumerate(_contrasts.DEPTH_METRICS):
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
    parts = []
    if "residual" not in trials or not (trials["status"] == Status.DIVERGED).any():
        return pd.DataFrame()
    for m in _contrasts.DEPTH_METRICS:
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
    out = {}
    for m in _contrasts.DEPTH_METRICS:
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
                     "metric": diff_title(r["metric"]),
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
