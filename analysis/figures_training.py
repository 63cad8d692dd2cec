"""Training figures over ``epochs.parquet``: loss and accuracy curves per panel, and
error per epoch by depth (He et al. 2016 Fig. 6).

Variants, facets and their styles come from ``analysis.variants``: one panel per
model x facet (the levels of norm, block, ... that plain and residual share), one
line or column per hue variant (plain, residual at each residual-only level).
"""
from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.figure_parts import (depth_colors, epoch_axis, finite, fit_parts, fit_title,
                                   label_edges, line_band, mark_diverged, median_iqr, no_data,
                                   panels, where)
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, log_axis, message_figure
from analysis.variants import Style, joined, keyed

MAX_LR_MARKS = 5      # more drops than this is a smooth schedule, not milestones


def _lr_drops(sub: pd.DataFrame) -> list[float]:
    """Where the learning rate drops: between the last epoch at the old rate and the
    first at the new one (``lr`` is the rate used during an epoch), so a drop after
    milestone 15 is drawn at 15.5, between the two points it separates."""
    if "lr" not in sub:
        return []
    lr = finite(sub, "lr").groupby("epoch")["lr"].median().sort_index()
    drops = lr.index[1:][lr.to_numpy()[1:] < lr.to_numpy()[:-1] * (1 - 1e-9)]
    return [d - 0.5 for d in drops] if len(drops) <= MAX_LR_MARKS else []


def _curve(ax, sub: pd.DataFrame, col: str, style: Style, bold: bool, scale: float = 1.0,
           positive: bool = False) -> None:
    if col not in sub:
        return
    pts = finite(sub, col, positive=positive)
    if pts.empty:
        return
    agg = median_iqr(pts.assign(v=pts[col].astype(float) * scale), "epoch", "v")
    kw = (dict(linewidth=1.8, marker=style.marker, markevery=max(1, len(agg) // 6))
          if bold else dict(linewidth=0.7, alpha=0.8))
    line_band(ax, agg, "epoch", style.color, band=bold, **kw)


PANEL_KEYS = ["family", "model", "facet", "depth"]


def training_curves(epochs: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Loss (log) and accuracy per epoch; train thin, test bold; one column per model x
    facet x depth, one colour per variant.

    Lines are medians over seeds (test with its interquartile band). Dotted
    verticals mark epochs where the learning rate drops (grey when every
    variant drops there, else in the variant's colour); a smooth schedule with
    more than ``MAX_LR_MARKS`` drops is not marked.
    """
    ep, key = keyed(epochs)
    if ep.empty or "epoch" not in ep:
        return message_figure("no epoch rows", look)
    combos = panels(ep, PANEL_KEYS, key)
    ncols = look.columns(len(combos))
    blocks = math.ceil(len(combos) / ncols)
    with look.context():
        fig = Figure(figsize=(look.inches, 0.3 + 2 * look.row_height(ncols, 0.7) * blocks),
                     layout="constrained")
        axes = fig.subplots(2 * blocks, ncols, squeeze=False)
        for i, combo in enumerate(combos):
            _, model, facet, depth = combo
            ax_loss, ax_acc = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
            ax_acc.sharex(ax_loss)
            sub = where(ep, PANEL_KEYS, combo)
            drops: dict[float, list[str]] = {}
            last: dict[str, float] = {}  # each variant's last epoch with a learning rate
            for variant in key.present(sub["variant"]):
                vsub = sub[sub["variant"] == variant]
                for bold, split in ((False, "train"), (True, "test")):
                    _curve(ax_loss, vsub, f"{split}_loss", key.styles[variant], bold, positive=True)
                    _curve(ax_acc, vsub, f"{split}_acc", key.styles[variant], bold, scale=100.0)
                for e in _lr_drops(vsub):
                    drops.setdefault(e, []).append(variant)
                if "lr" in vsub and len(lr := finite(vsub, "lr")):
                    last[variant] = float(lr["epoch"].max())
            if ax_loss.lines:
                log_axis(ax_loss)
            mark_diverged(ax_loss, sub, look.panel_width(ncols), key)
            for ax in (ax_loss, ax_acc):
                if not ax.lines:
                    no_data(ax, width_in=look.panel_width(ncols))
                    continue
                for e, vs in drops.items():
                    # grey: every variant still running then drops there (a diverged one
                    # that stopped before has no say)
                    running = {v for v, end in last.items() if end > e}
                    color = "0.5" if running <= set(vs) else key.color(vs[0])
                    ax.axvline(e, color=color, linestyle=":", linewidth=0.8, zorder=0)
            ax_loss.set_title(fit_title(joined(model, facet, f"depth {depth}"),
                                        look.panel_width(ncols)))
            if ax_loss.lines:
                ax_loss.tick_params(labelbottom=False)
            ax_acc.set_xlabel("epoch")
            epoch_axis(ax_acc)
            if i % ncols == 0:
                ax_loss.set_ylabel("loss")
                ax_acc.set_ylabel("accuracy (%)")
        for j in range(len(combos), blocks * ncols):
            axes[2 * (j // ncols), j % ncols].set_visible(False)
            axes[2 * (j // ncols) + 1, j % ncols].set_visible(False)
        handles = key.handles(ep["variant"]) + [
            Line2D([], [], color="0.3", linewidth=0.7, label="train"),
            Line2D([], [], color="0.3", linewidth=1.8, label="test"),
            Line2D([], [], color="0.5", linewidth=0.8, linestyle=":", label="LR drop")]
        look.legend(fig, handles)
    return fig


ROW_KEYS = ["family", "model", "facet"]


def training_curves_by_depth(epochs: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Error per epoch, one column per variant (plain first), one colour per depth
    (He et al. Fig. 6).

    Thin lines are training error, bold lines test error (%), medians over
    seeds; one row per family (or preset model) and facet, the panels of a row
    share y. Diverged trials have no finite points: the panel names them.
    """
    ep, key = keyed(epochs)
    if ep.empty or not {"epoch", "train_acc", "test_acc"} <= set(ep.columns):
        return message_figure("no epoch rows with train_acc and test_acc", look)
    rows = panels(ep, ROW_KEYS, key)
    variants = key.present(ep["variant"])
    width = look.panel_width(len(variants))
    colors = depth_colors(ep["depth"])  # one mapping for every panel and the legend
    with look.context():
        handles = [Line2D([], [], color=colors[d], linewidth=1.8, label=f"depth {d}")
                   for d in sorted(colors)]
        handles += [Line2D([], [], color="0.3", linewidth=0.8, linestyle="--", label="train"),
                    Line2D([], [], color="0.3", linewidth=1.8, label="test")]
        titles = {(r, c): fit_parts(joined(network_title(*row[:2]), row[2]), variant, width)
                  for r, row in enumerate(rows) for c, variant in enumerate(variants)}
        # rows grow with their titles' extra lines (a facet and a long variant name in a
        # narrow panel) rather than squeezing the panels
        extra = sum(max(titles[r, c].count("\n") for c in range(len(variants)))
                    for r in range(len(rows)))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + extra * look.title_line_inches
                              + look.row_height(len(variants)) * len(rows)),
                     layout="constrained")
        axes = fig.subplots(len(rows), len(variants), squeeze=False, sharey="row")
        for r, row in enumerate(rows):
            sub = where(ep, ROW_KEYS, row)
            for c, variant in enumerate(variants):
                ax = axes[r, c]
                vsub = sub[sub["variant"] == variant]
                for depth, dsub in vsub.groupby("depth"):
                    for bold, split in ((False, "train"), (True, "test")):
                        pts = finite(dsub, f"{split}_acc")
                        if pts.empty:
                            continue
                        agg = median_iqr(pts.assign(err=100.0 * (1.0 - pts[f"{split}_acc"].astype(float))),
                                         "epoch", "err")
                        # a lone epoch (diverged in the next) is a dot, not an invisible line
                        ax.plot(agg["epoch"], agg["median"], color=colors[depth],
                                linewidth=1.8 if bold else 0.8, alpha=1.0 if bold else 0.75,
                                linestyle="-" if bold else "--",
                                marker="o" if len(agg) == 1 else None, markersize=2.5)
                if "train_loss" in vsub:
                    mark_diverged(ax, vsub, width, key, name_variant=False)
                if not ax.lines:
                    no_data(ax, "no finite data" if len(vsub) else "no runs", width_in=width)
                ax.set_title(titles[r, c], color=key.color(variant))
                epoch_axis(ax)
        label_edges(axes, "epoch", "error (%)")
        look.legend(fig, handles)
    return fig
