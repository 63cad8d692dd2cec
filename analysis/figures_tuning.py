"""The per-cell hyperparameter search as pictures: isolation plots and search progress.

``tuning_isolation`` is the tuning playbook's isolation plot (Godbole et al., "Deep
Learning Tuning Playbook", Google 2023): for one tuned hyperparameter, one panel per
ablation cell with the final validation accuracy of every Optuna sample against the
hyperparameter's value, the search range and its 10% margins drawn, so a reader sees
whether plain and residual networks were searched equally well and whether a cell's
optimum sits against the edge of its range. Several tuned hyperparameters make one
figure each (``report_items`` in ``analysis.tuning``): a figure per name keeps a
24-cell sweep at one panel per cell, and each panel's x axis is one search range.

Cells are grouped by family, model, depth and facet (the levels plain and residual
share), each group a sub-figure titled with them whose panels are its variants in a
fixed order (plain, then residual levels: ``analysis.variants``), side by side, so
the two networks of one depth are compared along a row. Every panel shares one y
scale and one x scale.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis import tuning
from analysis.figure_parts import fit_title, no_data, panels, where
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, message_figure
from analysis.variants import Variants, joined, keyed

GROUP_KEYS = ["family", "model", "depth", "facet"]
FAILED_ROOM = 0.2      # the share of the y axis below the lowest point: failed samples
WARN = "#a40000"       # the report's colour for a problem
SHADE = "0.88"


def _rows(samples: pd.DataFrame) -> tuple[pd.DataFrame, Variants]:
    """Samples with outcome, shown (in %), selected, variant and facet columns."""
    rows, key = keyed(tuning.classify(samples).assign(_selected=tuning.selected(samples)))
    if "family" not in rows:
        rows = rows.assign(family=rows["model"] if "model" in rows else "")
    for k in ("model", "depth"):
        if k not in rows:
            rows = rows.assign(**{k: rows["family"] if k == "model" else ""})
    return rows.assign(shown=100 * rows["shown"].astype(float)), key


def _group_title(box) -> str:
    family, model, depth, facet = box
    return joined(network_title(str(family), str(model)) + (f" depth {depth}" if model == family
                                                           and str(depth) else ""), str(facet))


def _grid(look: Look, n_groups: int, k: int) -> tuple[int, int, int]:
    """(groups per row, panel columns of a group, panel rows of a group) for ``n_groups``
    groups of ``k`` variants: up to 4 panels across a page, 2 in a column; a group
    wider than that wraps onto more rows."""
    most = 4 if look.width == "double" else 2
    per_group_cols = min(k, most)
    return max(1, min(n_groups, most // per_group_cols)), per_group_cols, math.ceil(k / most)


def _legend_inches(look: Look, handles) -> float:
    """Height of the legend set above the panels (``_legend_above``)."""
    size = FontProperties(size=look.rc["legend.fontsize"]).get_size_in_points()
    return (math.ceil(len(handles) / look.legend_columns(handles)) * 1.4 * size + 6) / 72


def _legend_above(fig, look: Look, handles) -> None:
    """The legend above the panels at either width: right of them it would take a
    quarter of a page from panels that need it."""
    fig.legend(handles=handles, loc="outside upper center", ncols=look.legend_columns(handles),
               columnspacing=1.0, handlelength=1.8)


def _layout(look: Look, boxes: list, variants: list[str], handles):
    """The figure, its grid of group sub-figures (hidden where there is no group), the
    grid's shape (``_grid``), the panel width and the look the figure was sized with
    (a single panel is a column wide, not a page)."""
    per_row, gcols, grows = _grid(look, len(boxes), len(variants))
    if per_row * gcols == 1:
        look = Look(look.style, "single")
    rows = math.ceil(len(boxes) / per_row)
    panel_w = look.inches / (per_row * gcols)
    panel_h = min(max(1.05 if look.style == "paper" else 1.4, 0.62 * panel_w), 1.8)
    fig = Figure(figsize=(look.inches, 0.55 + _legend_inches(look, handles)
                          + rows * grows * (panel_h + 0.45)), layout="constrained")
    subs = fig.subfigures(rows, per_row, squeeze=False)
    for s in subs.flat[len(boxes):]:
        s.set_visible(False)
    return fig, subs, per_row, gcols, grows, panel_w, look


def _log_limits(values: np.ndarray, bounds: tuple | None) -> tuple[float, float]:
    v = values[np.isfinite(values) & (values > 0)]
    pts = np.concatenate([v, np.asarray(bounds or (), dtype=float)])
    if not pts.size:
        return 1e-3, 1.0
    lo, hi = float(pts.min()), float(pts.max())
    pad = max(math.log10(hi / lo), 1.0) * 0.06
    return lo / 10 ** pad, hi * 10 ** pad


class _YScale(NamedTuple):
    """The shared y axis: limits, the value ticks, and the strip below the lowest point
    where failed samples sit (at ``fail``, under a dotted line at ``line``)."""
    lo: float
    hi: float
    ticks: list
    fail: float
    line: float


def _y_scale(shown: np.ndarray) -> _YScale:
    v = shown[np.isfinite(shown)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 100.0)
    span = max(hi - lo, 2.0)
    floor, top = lo - 0.05 * span, hi + 0.08 * span
    bottom = top - (top - floor) / (1 - FAILED_ROOM)
    fail = bottom + 0.35 * (floor - bottom)
    # no value tick so near the "failed" label that the two overlap
    ticks = [float(t) for t in MaxNLocator(nbins=4).tick_values(floor, top)
             if floor <= t <= top and t - fail >= 0.12 * (top - bottom)]
    return _YScale(bottom, top, ticks, fail, bottom + 0.8 * (floor - bottom))


def _y_axis(ax, y: _YScale) -> None:
    ax.set_ylim(y.lo, y.hi)
    ax.set_yticks(y.ticks + [y.fail], [f"{t:g}" for t in y.ticks] + ["failed"])
    ax.axhline(y.line, color="0.75", linestyle=":", linewidth=0.6, zorder=0)


def _draw_range(ax, bounds) -> None:
    lo, hi = bounds
    a, b = tuning.margin_edges(lo, hi)
    ax.axvspan(lo, a, color=SHADE, linewidth=0, zorder=0)
    ax.axvspan(b, hi, color=SHADE, linewidth=0, zorder=0)
    for x in bounds:
        ax.axvline(x, color="0.35", linestyle="--", linewidth=0.8, zorder=1)


def _draw_cell(ax, g: pd.DataFrame, name: str, color, marker: str, bounds, fail_y: float,
               panel_w: float) -> None:
    """One cell's samples: completed filled, pruned hollow, failed as x at the bottom,
    the selected one a star; a note when none completed or the pick is at a bound."""
    x = pd.to_numeric(g[name], errors="coerce").astype(float).to_numpy()
    ok = np.isfinite(x) & (x > 0)
    y = g["shown"].to_numpy(dtype=float)
    out = g["outcome"].to_numpy()
    done, pruned = ok & (out == "completed"), ok & (out == "pruned") & np.isfinite(y)
    bottom = ok & ~done & ~pruned
    ax.scatter(x[done], y[done], s=16, color=color, marker=marker, linewidths=0, alpha=0.85,
               zorder=3)
    ax.scatter(x[pruned], y[pruned], s=16, facecolors="none", edgecolors=color, marker=marker,
               linewidths=0.8, zorder=3)
    ax.scatter(x[bottom], np.full(bottom.sum(), fail_y), s=18, color=color, marker="x",
               linewidths=0.9, zorder=3)
    pick = g["_selected"].to_numpy(dtype=bool) & ok
    if pick.any():
        ax.scatter(x[pick], y[pick], s=70, marker="*", color=color, edgecolors="black",
                   linewidths=0.6, zorder=4)
    notes = []
    if not done.any():
        notes.append(f"no sample completed ({len(g)} ran)")
    elif not pick.any():
        notes.append("no sample selected")
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} without a {name} value")
    side = tuning.bound_side(x[pick][0], *bounds) if pick.any() and bounds else None
    if side:
        notes.append(f"selected at {side} bound")
    # under the panel, where the layout makes room for it and no point is hidden
    ax.set_xlabel(fit_title("; ".join(notes), panel_w, "xtick.labelsize"),
                  fontsize=mpl.rcParams["xtick.labelsize"], color=WARN if side else "0.35")


def _handles(key: Variants, variants: list[str], bounds) -> list:
    grey = dict(color="0.35", linestyle="none")
    out = key.handles(variants) + [
        Line2D([], [], marker="o", markersize=4, label="completed", **grey),
        Line2D([], [], marker="o", markersize=4, markerfacecolor="none",
               label="pruned (last val acc)", **grey),
        Line2D([], [], marker="x", markersize=4, label="diverged / failed", **grey),
        Line2D([], [], marker="*", markersize=8, markeredgecolor="black",
               markeredgewidth=0.5, label="selected", **grey)]
    if bounds:
        out += [Line2D([], [], color="0.35", linestyle="--", linewidth=0.8, label="search range"),
                Patch(color=SHADE, label=f"{tuning.MARGIN:.0%} of range (log) from a bound")]
    return out


def tuning_isolation(samples: pd.DataFrame, name: str | None = None, ranges: dict | None = None,
                     look: Look = DEFAULT_LOOK) -> Figure:
    """Isolation plot of hyperparameter ``name`` (default: the first tuned one): one
    panel per cell, final validation accuracy (%) of every sample against ``name`` (log
    x). Completed samples are filled markers in the variant's colour and shape, pruned
    ones hollow at their last reported validation accuracy, diverged and failed ones an
    x at the bottom of the panel (their objective, 0 or none, would squash the scale),
    the selected sample a star. ``ranges[name]`` (``analysis.tuning.search_ranges``)
    draws the range's bounds as dashed lines and shades the ``MARGIN`` nearest each
    bound on the log scale; a selected value inside the shade is named in red."""
    name = name or next(iter(tuning.tuned_names(samples, ranges)), None)
    if name is None or name not in samples or not len(samples):
        return message_figure(f"no tuning samples of {name or 'any hyperparameter'}", look)
    rows, key = _rows(samples)
    if rows.empty:
        return message_figure("no tuning samples with a plain/residual cell", look)
    bounds = tuple((ranges or {}).get(name, ())) or None
    boxes = panels(rows, GROUP_KEYS, key)
    variants = key.present(rows["variant"])
    xlim = _log_limits(pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float), bounds)
    yscale = _y_scale(rows["shown"].to_numpy(dtype=float))
    with look.context():
        handles = _handles(key, variants, bounds)
        fig, subs, per_row, gcols, grows, panel_w, fig_look = _layout(look, boxes, variants,
                                                                      handles)
        for i, box in enumerate(boxes):
            sub = subs[i // per_row, i % per_row]
            sub.suptitle(fit_title(_group_title(box), panel_w * gcols),
                         fontsize=mpl.rcParams["axes.titlesize"], fontweight="bold")
            axes = sub.subplots(grows, gcols, squeeze=False)
            cell_rows = where(rows, GROUP_KEYS, box)
            for j, variant in enumerate(variants):
                ax = axes[j // gcols, j % gcols]
                ax.set_xscale("log")
                ax.set_xlim(*xlim)
                _y_axis(ax, yscale)
                g = cell_rows[cell_rows["variant"] == variant]
                ax.set_title(fit_title(variant, panel_w), color=key.color(variant))
                if i % per_row or j % gcols:
                    ax.tick_params(labelleft=False)
                if bounds:
                    _draw_range(ax, bounds)
                if g.empty:
                    no_data(ax, f"no {variant} cell", panel_w)
                    continue
                _draw_cell(ax, g, name, key.color(variant), key.marker(variant), bounds,
                           yscale.fail, panel_w)
            for ax in axes.flat[len(variants):]:
                ax.set_visible(False)
        fig.supxlabel(f"{name} (log scale)", fontsize=mpl.rcParams["axes.labelsize"])
        fig.supylabel("final validation accuracy (%)", fontsize=mpl.rcParams["axes.labelsize"])
        _legend_above(fig, fig_look, handles)
    return fig


def best_so_far(g: pd.DataFrame) -> pd.DataFrame:
    """One cell's samples in Optuna order with ``best``: the highest objective among
    the completed samples up to each (NaN before the first completes)."""
    g = g.sort_values("number", kind="stable")
    done = g["shown"].where(g["outcome"] == "completed")
    return g.assign(best=done.cummax().ffill())  # cummax leaves a NaN at each non-completed


def tuning_progress(samples: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Best validation accuracy (%) so far against the sample number, one panel per
    family, model, depth and facet with one step line per variant (its colour and
    marker), every completed sample a faint dot and the selected one a star: whether
    each cell's search had settled, and whether plain and residual had the same
    budget. A cell with no completed sample is named in its panel."""
    if not len(samples):
        return message_figure("no tuning samples", look)
    rows, key = _rows(samples)
    if rows.empty:
        return message_figure("no tuning samples with a plain/residual cell", look)
    boxes = panels(rows, GROUP_KEYS, key)
    ncols = look.columns(len(boxes))
    nrows = math.ceil(len(boxes) / ncols)
    panel_w = look.panel_width(ncols)
    with look.context():
        fig = Figure(figsize=(look.inches, 0.4 + look.legend_inches(key.handles())
                              + nrows * look.row_height(ncols)), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for ax, box in zip(axes.flat, boxes):
            missing, drawn = [], False
            for variant in key.present(where(rows, GROUP_KEYS, box)["variant"]):
                for _, g in where(rows, GROUP_KEYS, box).groupby("cell", sort=True):
                    if g["variant"].iloc[0] != variant:
                        continue
                    g = best_so_far(g)
                    color, marker = key.color(variant), key.marker(variant)
                    done = g[g["outcome"] == "completed"]
                    if done.empty:
                        missing.append(f"{variant}: no sample completed ({len(g)} ran)")
                        continue
                    drawn = True
                    ax.step(g["number"], g["best"], where="post", color=color, linewidth=1.2)
                    ax.scatter(done["number"], done["shown"], s=8, color=color, marker=marker,
                               alpha=0.35, linewidths=0)
                    pick = g[g["_selected"]]
                    ax.scatter(pick["number"], pick["shown"], s=50, marker="*", color=color,
                               edgecolors="black", linewidths=0.5, zorder=4)
            if missing:
                ax.text(0.03, 0.03, fit_title("; ".join(missing), panel_w, "xtick.labelsize"),
                        transform=ax.transAxes, va="bottom", fontsize="x-small", color="0.35")
            if not drawn:
                no_data(ax, "no sample completed", panel_w)
            ax.set_title(fit_title(_group_title(box), panel_w))
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        for ax in axes.flat[len(boxes):]:
            ax.set_visible(False)
        fig.supxlabel("sample (Optuna trial number)", fontsize=mpl.rcParams["axes.labelsize"])
        fig.supylabel("best validation accuracy so far (%)",
                      fontsize=mpl.rcParams["axes.labelsize"])
        grey = dict(color="0.35", linestyle="none")
        look.legend(fig, key.handles(rows["variant"]) + [
            Line2D([], [], marker="o", markersize=3, alpha=0.5, label="completed sample", **grey),
            Line2D([], [], marker="*", markersize=8, markeredgecolor="black",
                   markeredgewidth=0.5, label="selected", **grey)])
    return fig
