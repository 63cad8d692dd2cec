"""Signal propagation (Brock, De & Smith 2021, arXiv 2101.08692, "signal propagation
plots"): per unit, how large the residual branch is next to the skip, and how the
activation statistics grow or shrink with depth, at init and trained.

Brock et al. plot, at each residual block's output on a batch, the average squared
channel mean and the average channel variance (and the variance at the end of each
residual branch). A normalized ResNet keeps the variance flat across a stage because
batch norm downscales each branch relative to the skip; without normalization the
variance grows with depth unless the branches are scaled down.

Per unit (``models.units``: every block, residual or plain, in network order), walking
the network from ``model.stem(x)`` with ``units.split``/``units.join`` on the first
``IMAGES`` = 500 test images, in eval mode (float32 statistics, reduced where the
network runs):

* ``branch_norm``: RMS ``sqrt(mean(branch^2))`` of the branch just before the addition
  (after its branch scale); ``skip_norm``: the skip's RMS (NaN without a skip);
  ``ratio = branch_norm / skip_norm``.
* of the unit's output: ``act_mean_sq = mean(out^2)``; ``act_channel_mean_sq``: the
  mean over channels of the squared per-channel mean (over images and positions),
  Brock et al.'s "average squared channel mean"; ``act_var``: the per-channel variance
  (population, over images and positions) averaged over channels, their "average
  channel variance". An MLP layer's features are its channels.

Also here, for every measurement of this kind (one line per depth, init and trained):
``per_trial``, ``cell_table`` and ``when_grid``; ``shattering`` and ``responses`` use them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements import WHEN, FigureSpec, Measurement, TableSpec, register
from analysis import levels, stats
from analysis.figure_parts import (depth_colors, finite, fit_title, label_edges, line_band,
                                   median_iqr, no_data, panels, where)
from analysis.figures_layers import PANEL_KEYS
from analysis.style import DEFAULT_LOOK, Look, log_axis, message_figure, model_label, variant_of
from analysis.tables import fmt_ci, shown_factors, without_redundant_model
from analysis.variants import joined, keyed

IMAGES = 500
COLUMNS = ["unit", "unit_index", "has_skip", "branch_norm", "skip_norm", "ratio",
           "act_mean_sq", "act_channel_mean_sq", "act_var"]
WHEN_TITLE = {"init": "at init", "final": "trained"}


def walk(model, x):
    """Yield ``(name, unit, input, branch, skip, output)`` unit by unit from ``model.stem(x)``;
    ``output = units.join(unit, branch, skip)`` is the next unit's input."""
    from models import units
    h = model.stem(x)
    for name, unit in model.units():
        branch, skip = units.split(unit, h)
        out = units.join(unit, branch, skip)
        yield name, unit, h, branch, skip, out
        h = out


def rms(t) -> float:
    """``sqrt(mean(t^2))``."""
    import torch
    return float(torch.linalg.vector_norm(t) / math.sqrt(t.numel()))


def activation_stats(out) -> tuple[float, float, float]:
    """``(mean(out^2), mean_c(mu_c^2), mean_c(var_c))`` of a (B, C, ...) tensor: channels
    on dim 1, each channel's mean mu_c and population variance var_c over every other dim.
    One pass: ``mean(out^2) = mean_c(var_c + mu_c^2)``, every channel having as many
    elements."""
    import torch
    dims = [0, *range(2, out.dim())]                        # all but channels
    var, mu = torch.var_mean(out, dims, correction=0)       # (C,), (C,)
    channel_mean_sq, act_var = float(mu.pow(2).mean()), float(var.mean())
    return channel_mean_sq + act_var, channel_mean_sq, act_var


def _ratio(b: float, s: float) -> float:
    if s > 0:
        return b / s
    return math.nan if b == 0 or math.isnan(s) else math.inf


def measure(model, data, trial) -> pd.DataFrame:
    """Branch/skip RMS and output statistics of every unit on the first 500 test images."""
    import torch
    rows = []
    with torch.no_grad():
        for i, (name, _, _, branch, skip, out) in enumerate(walk(model, data.test_x[:IMAGES])):
            b = rms(branch)
            s = rms(skip) if skip is not None else math.nan
            rows.append((name, i, skip is not None, b, s, _ratio(b, s), *activation_stats(out)))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- shared: shattering, responses

def per_trial(df: pd.DataFrame, value: str, by=(), own=()) -> pd.DataFrame:
    """Mean of ``value`` per trial, ``when`` and ``by`` (e.g. over segments): one row each,
    with the trial's key columns (every column but ``value`` and ``own``, the other
    measurement columns, which are dropped)."""
    keys = [c for c in df.columns if c not in {value, *own} or c in by]
    keys = list(dict.fromkeys(["trial_id", "when", *by] + keys))
    return df.groupby(keys, sort=False, dropna=False)[value].mean().reset_index()


def _decimals(m: float) -> int:
    """Decimals giving ~3 significant digits (0.734, 0.0521, 1234)."""
    if not np.isfinite(m) or m == 0:
        return 3
    return int(np.clip(2 - math.floor(math.log10(abs(m))), 0, 6))


def cell_table(trials: pd.DataFrame, columns: list[tuple[str, str, str]]) -> pd.DataFrame | None:
    """One row per cell (``stats.cell_keys``: family, model, depth, factor columns) of a
    one-row-per-trial-and-``when`` frame: for each ``(title, when, col)``, the mean ± 95%
    t half width over seeds of ``col`` at ``when`` (``stats.mean_ci``; "—" with no
    finite value); ``seeds``: the trials of the cell."""
    if trials.empty:
        return None
    keys = stats.cell_keys(trials)
    rows = []
    for key, g in trials.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key), seeds=g["trial_id"].nunique())
        for title, when, col in columns:
            m, lo, hi, _ = stats.mean_ci(g.loc[g["when"] == when, col])
            row[title] = fmt_ci(m, lo, hi, _decimals(m), small="sci")
        rows.append(row)
    cells = levels.sort_cells(pd.DataFrame(rows), keys)
    shown = shown_factors(trials)
    out = pd.DataFrame({"family": cells["family"], "model": cells["model"],
                        "depth": cells["depth"].astype("int64"),
                        "variant": variant_of(cells["residual"]),
                        **{n: [levels.level_of(n, v) for v in cells[n]] for n in shown},
                        "seeds": cells["seeds"],
                        **{title: cells[title] for title, _, _ in columns}})
    return without_redundant_model(out)


GRID_KEYS = [*PANEL_KEYS, "variant"]


def when_grid(df: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str,
              look: Look = DEFAULT_LOOK, log: bool = False, zero_line: bool = False,
              empty: str = "no rows") -> Figure:
    """One row of panels per model, facet and variant (title in the variant's colour), one
    column per ``when`` present (init, trained); in a panel one line per depth (colour,
    light to dark), the median over seeds of ``y`` against ``x`` with the interquartile
    band. Panels of one model and facet share y, so plain and residual compare directly.
    ``df``: one row per trial, ``when`` and ``x``. ``log``: log y (positive values only;
    a panel whose values are all 0 says so)."""
    rows, key = keyed(df) if len(df) else (df, None)
    if rows.empty:
        return message_figure(empty, look)
    shown = finite(rows, y, positive=log)
    whens = [w for w in WHEN if (rows["when"] == w).any()]
    boxes = panels(rows, GRID_KEYS, key)
    colors = depth_colors(rows["depth"])
    handles = [Line2D([], [], color=c, label=f"depth {d}") for d, c in colors.items()]
    with look.context():
        width = look.panel_width(len(whens))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + look.row_height(len(whens)) * len(boxes)), layout="constrained")
        axes = fig.subplots(len(boxes), len(whens), squeeze=False)
        leads: dict = {}
        empty = []
        for r, box in enumerate(boxes):
            lead = leads.setdefault(box[:3], axes[r, 0])
            for c, when in enumerate(whens):
                ax = axes[r, c]
                if ax is not lead:
                    ax.sharey(lead)
                sub = where(shown, GRID_KEYS, box)
                for depth, dsub in sub[sub["when"] == when].groupby("depth"):
                    agg = median_iqr(dsub, x, y)
                    line_band(ax, agg, x, colors[depth], marker=key.marker(box[3]),
                              markersize=2, markevery=max(1, len(agg) // 8))
                ax.set_title(fit_title(joined(model_label(*box[:2]), box[2], box[3],
                                              WHEN_TITLE[when]), width), color=key.color(box[3]))
                ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
                if not ax.lines:
                    had = where(rows, GRID_KEYS, box)
                    had = pd.to_numeric(had.loc[had["when"] == when, y], errors="coerce")
                    no_data(ax, "not measured" if had.empty else "all values are 0"
                            if (had == 0).all() else "no finite values", width)
                    empty.append(ax)
                elif zero_line:
                    ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
        if log:
            for lead in leads.values():
                log_axis(lead)
        for ax in empty:  # log_axis labels minor ticks too, on every panel sharing y
            ax.tick_params(which="both", left=False, labelleft=False)
        label_edges(axes, xlabel, "")
        fig.supylabel(ylabel, fontsize="medium")  # one label: a row is too short for it
        look.legend(fig, handles)
    return fig


# --------------------------------------------------------------------------- figures and table

def _with_skip(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["has_skip"].astype(bool)] if len(df) else df


def signal_ratio(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Branch-to-skip RMS ratio per unit (units with a skip: residual networks), one row of
    panels per model, facet and variant, init and trained, one line per depth; median
    over seeds, log y. A zero-initialized branch scale gives exactly 0 at init."""
    return when_grid(_with_skip(df), "unit_index", "ratio", "unit (network order)",
                     "branch RMS / skip RMS", look, log=True, empty="no units with a skip")


def signal_variance(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Brock et al.'s signal propagation plot: the average channel variance of each unit's
    output, plain and residual per depth, init and trained; median over seeds, log y."""
    return when_grid(df, "unit_index", "act_var", "unit (network order)",
                     "average channel variance of the unit output", look,
                     log=True, empty="no signal rows")


def signal_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: the mean branch/skip ratio over a trial's units with a skip, and the
    average channel variance of its last unit's output, at init and trained; mean ± 95%
    interval over seeds ("—" for plain networks' ratio)."""
    if df.empty:
        return None
    last = df[df["unit_index"] == df.groupby(["trial_id", "when"])["unit_index"].transform("max")]
    t = per_trial(last, "act_var", own=COLUMNS)
    ratio = per_trial(_with_skip(df), "ratio", own=COLUMNS)[["trial_id", "when", "ratio"]]
    t = t.merge(ratio, on=["trial_id", "when"], how="left")
    return cell_table(t, [("branch/skip at init", "init", "ratio"),
                          ("branch/skip trained", "final", "ratio"),
                          ("last-unit variance at init", "init", "act_var"),
                          ("last-unit variance trained", "final", "act_var")])


register(Measurement(
    name="signal", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="per unit: branch/skip RMS ratio and output channel mean and variance "
            "(Brock et al. 2021 signal propagation plots)",
    figures=(FigureSpec("signal_ratio", signal_ratio,
                        "RMS of the residual branch over the RMS of the skip, per unit, at "
                        "init and trained; median over seeds (500 test images)."),
             FigureSpec("signal_variance", signal_variance,
                        "Average channel variance of each unit's output (Brock et al. 2021's "
                        "signal propagation plot), plain and residual, at init and trained; "
                        "median over seeds (500 test images).")),
    tables=(TableSpec("signal", signal_table,
                      "Mean branch/skip RMS ratio over the units with a skip, and the last "
                      "unit's average channel variance, mean ± 95% t half width over "
                      "seeds."),),
))
