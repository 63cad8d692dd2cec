"""Pieces the measurement views (``analysis.views``) share: the headline column of a
measurement whose column changed, per-trial means, the one-row-per-cell table, and the
two panel layouts (one panel per depth; init and trained side by side).

Like the views, this module imports no torch: the report draws their figures and
tables without it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations import levels
from ablations.measurements import WHEN
from analysis import stats
from analysis.figure_parts import (depth_colors, finite, fit_title, label_edges, line_band,
                                   median_iqr, no_data, panels, where)
from analysis.figures_layers import PANEL_KEYS
from analysis.formatting import fmt_ci
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, log_axis, message_figure, variant_of
from analysis.tables import shown_factors, without_redundant_model
from analysis.variants import Variants, joined, keyed

WHEN_TITLE = {"init": "at init", "final": "trained"}
DEPTH_PANEL_KEYS = ["family", "model", "facet", "depth"]   # depth_panels: one per depth
GRID_KEYS = [*PANEL_KEYS, "variant"]                       # when_grid: one row each


# --------------------------------------------------------------------------- columns

def headline(df: pd.DataFrame, new: str, old: str, legacy: str
             ) -> tuple[pd.DataFrame, str, bool]:
    """The column a measurement's figures and tables show, for a measurement whose
    headline column ``new`` was added after files had been written that hold only
    ``legacy``, the quantity now stored as ``old`` (shattering: the uncentred
    autocorrelation, stored as ``autocorr`` before the centred one existed).

    Returns ``(frame, column, fallback)``: ``frame`` has ``new`` and ``old`` (``old``
    filled from ``legacy`` where it is missing, ``new`` NaN in the rows of an old file;
    ``legacy`` dropped). ``column`` is ``new``, unless no row has a value in the new
    columns and some row has a ``legacy`` one (a file written before ``new`` existed):
    then ``old``, and ``fallback`` is True, so a figure or table can say that it shows
    the old quantity. A merged file mixing old and new trials shows ``new`` (the old
    trials' rows are missing values)."""
    out = df.copy()
    for c in (new, old):
        if c not in out:
            out[c] = np.nan
    fresh = out[[new, old]].notna().to_numpy().any()
    if legacy in out:
        out[old] = out[old].fillna(out[legacy])
        old_file = not fresh and out[legacy].notna().any()
        out = out.drop(columns=legacy)
    else:
        old_file = False
    return out, (old if old_file else new), old_file


# --------------------------------------------------------------------------- tables

def per_trial(df: pd.DataFrame, value: str, by=(), own=()) -> pd.DataFrame:
    """Mean of ``value`` per trial, ``when`` and ``by`` (e.g. over segments): one row each,
    with the trial's key columns (every column but ``value`` and ``own``, the other
    measurement columns, which are dropped)."""
    keys = [c for c in df.columns if c not in {value, *own} or c in by]
    keys = list(dict.fromkeys(["trial_id", "when", *by] + keys))
    return df.groupby(keys, sort=False, dropna=False)[value].mean().reset_index()


def cell_table(df: pd.DataFrame, summarize: Callable[[pd.DataFrame], dict]
               ) -> pd.DataFrame | None:
    """One row per cell (``stats.cell_keys``: family, model, depth and each factor column,
    in the registry's level order): family, model, depth, variant, each factor that varies
    (``analysis.tables.shown_factors``; a factor at one level throughout is not shown) by
    its level name, ``seeds`` (distinct seeds of the cell: a trial is a cell and a seed)
    and ``summarize(rows of the cell) -> dict`` of formatted columns, in the dict's order.
    The model column is left out when it only repeats the family (as
    ``analysis.tables.degradation_table``). ``df``: any frame with the key columns (a
    measurement's rows, or ``per_trial``'s); empty: None. ``when_means`` makes the usual
    ``summarize``."""
    if df.empty:
        return None
    keys = stats.cell_keys(df)
    rows = [{**dict(zip(keys, cell)), "seeds": g["seed"].nunique(), **summarize(g)}
            for cell, g in levels.sort_cells(df, keys).groupby(keys, sort=False, dropna=False)]
    cells = pd.DataFrame(rows)
    summary = [c for c in cells.columns if c not in {*keys, "seeds"}]
    shown = shown_factors(df)
    out = pd.DataFrame({"family": cells["family"], "model": cells["model"],
                        "depth": cells["depth"].astype("int64"),
                        "variant": variant_of(cells["residual"]),
                        **{n: [levels.level_of(n, v) for v in cells[n]] for n in shown},
                        "seeds": cells["seeds"],
                        **{c: cells[c] for c in summary}})
    return without_redundant_model(out)


def _decimals(m: float) -> int:
    """Decimals giving ~3 significant digits (0.734, 0.0521, 1234)."""
    if not np.isfinite(m) or m == 0:
        return 3
    return int(np.clip(2 - math.floor(math.log10(abs(m))), 0, 6))


def when_means(columns: list[tuple[str, str, str]]) -> Callable[[pd.DataFrame], dict]:
    """A ``cell_table`` summary of a one-row-per-trial-and-``when`` frame (``per_trial``):
    for each ``(title, when, col)``, the mean ± 95% t half width over seeds of ``col`` at
    ``when`` (``stats.mean_ci``; ~3 significant digits; "—" with no finite value)."""
    def summarize(g: pd.DataFrame) -> dict:
        out = {}
        for title, when, col in columns:
            m, lo, hi, _ = stats.mean_ci(g.loc[g["when"] == when, col])
            out[title] = fmt_ci(m, lo, hi, _decimals(m), small="sci")
        return out
    return summarize


# --------------------------------------------------------------------------- figures

def depth_panels(rows: pd.DataFrame, key: Variants, look: Look, handles: list,
                 extra_row_in: float = 0.0, aspect: float = 0.62):
    """A grid of panels, one per (family, model, facet, depth) of ``rows`` (keyed by
    ``analysis.variants.keyed``, which gave ``key``; facets in registry order), titled, the
    spare ones hidden, ``handles`` as the figure legend. Call inside ``look.context()``.
    Returns ``(fig, [(ax, rows of the panel)], panel width in inches)``."""
    boxes = panels(rows, DEPTH_PANEL_KEYS, key)
    ncols = look.columns(len(boxes))
    nrows = math.ceil(len(boxes) / ncols)
    fig = Figure(figsize=(look.inches, 0.3 + look.legend_inches(handles)
                          + (look.row_height(ncols, aspect) + extra_row_in) * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    width = look.panel_width(ncols)
    out = []
    for ax, box in zip(axes.flat, boxes):
        family, model, facet, depth = box
        ax.set_title(fit_title(joined(network_title(family, model), facet, f"depth {depth}"), width))
        out.append((ax, where(rows, DEPTH_PANEL_KEYS, box)))
    for ax in axes.flat[len(boxes):]:
        ax.set_visible(False)
    look.legend(fig, handles)
    return fig, out, width


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
                ax.set_title(fit_title(joined(network_title(*box[:2]), box[2], box[3],
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
