"""The headline figure of a depth sweep: the depth x shortcut interaction.

``depth_interaction(trials)``: final train loss and test error against depth, one line
per variant (plain, and residual at each level of the residual-only factors), each its
mean over completed seeds with a 95% Student t interval, and in each panel the
difference of differences ``DiD = [plain(d) - plain(d0)] - [residual(d) - residual(d0)]``
(``analysis.interaction.interaction``) of each residual variant from the shallowest to
the deepest depth, with its 95% interval, written in the variant's colour. For a loss or
an error a positive DiD means plain degrades with depth more than residual does.
Below ``analysis.contrasts.MIN_SEEDS`` seeds the DiD is written without an interval
("means only"). Tidy frame in, ``matplotlib.figure.Figure`` out; no pyplot.
"""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import contrasts as _contrasts
from analysis import stats
from analysis.figure_parts import fit_title, mean_ci_errorbar, no_data, panels, where
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, message_figure
from analysis.variants import joined, keyed

METRICS = [("final_train_loss", "train loss", 1.0, ""),
           ("final_test_error", "test error (%)", 100.0, " pp")]
PANEL_KEYS = ["family", "model", "facet"]
DODGE = 0.08  # x distance between two variants' means at one depth


def _num(v: float, scale: float, unit: str) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v * scale:+.1f}" if unit else f"{v:+.3g}"


def did_label(row, scale: float, unit: str) -> str:
    """"DiD 20→56: +0.47 [+0.21, +0.73]" (or "... +0.47, 2 seeds: means only")."""
    head = f"DiD {int(row['base_depth'])}\u2192{int(row['depth'])}: "
    if not np.isfinite(row["did"]):
        return head + "n/a (no completed seed in a cell)"
    n = _contrasts.interaction_n(row)
    text = head + _num(row["did"], scale, unit) + unit
    if _contrasts.means_only(n):
        return text + f" ({n} seed{'s' if n != 1 else ''}: means only)"
    if np.isfinite(row["ci_lo"]) and np.isfinite(row["ci_hi"]):
        text += f" [{_num(row['ci_lo'], scale, unit)}, {_num(row['ci_hi'], scale, unit)}]"
    return text


def _interactions(trials: pd.DataFrame) -> dict:
    from analysis.tables_contrasts import interactions
    return interactions(trials)


def depth_interaction(trials: pd.DataFrame, look: Look = DEFAULT_LOOK,
                      interactions: dict | None = None) -> Figure:
    """Metric vs depth per variant with 95% t intervals, and each residual variant's
    DiD (deepest depth against the shallowest) and its 95% interval in every panel.

    One column per family (or preset model) and facet (the levels that plain and
    residual share, as in ``degradation_vs_depth``), rows: final train loss, final test
    error (%). ``interactions``: ``{metric: analysis.interaction.interaction(...)}``
    (computed from ``trials`` when None). A frame without both variants at two depths
    gives a figure that says so.
    """
    have = [m for m in METRICS if stats.DERIVED.get(m[0], m[0]) in trials]
    if not have or "residual" not in trials or "depth" not in trials:
        return message_figure("the depth x shortcut interaction needs trained trials "
                              "(final_train_loss, final_test_acc)", look)
    ints = _interactions(trials) if interactions is None else interactions
    if not ints:
        return message_figure("the depth x shortcut interaction needs plain and residual "
                              "networks at two or more depths", look)
    cells = stats.cell_summary(trials, tuple(m for m, *_ in have))
    cells, key = keyed(cells)
    keyed_ints = {}
    for m, d in ints.items():
        if len(d):
            k, _ = keyed(d, like=key)
            keyed_ints[m] = k
    boxes = panels(cells, PANEL_KEYS, key)
    ncols = look.columns(len(boxes)) if len(boxes) > 1 else 1
    blocks = math.ceil(len(boxes) / ncols)
    with look.context():
        handles = key.handles(cells["variant"])
        width = look.inches if ncols > 1 else min(look.inches, Look(look.style, "single").inches)
        panel_w = look.panel_width(ncols) if ncols > 1 else width
        row_h = min(look.row_height(ncols), max(1.25, 0.34 * look.inches))
        legend_look = Look(look.style, "single") if ncols == 1 else look
        fig = Figure(figsize=(width, 0.3 + legend_look.legend_inches(handles)
                              + row_h * len(have) * blocks), layout="constrained")
        axes = fig.subplots(len(have) * blocks, ncols, squeeze=False)
        small = mpl.rcParams["font.size"] * 0.8
        for i, box in enumerate(boxes):
            family, model, facet = box
            cell = where(cells, PANEL_KEYS, box)
            depths = sorted(cell["depth"].unique())
            pos = {d: j for j, d in enumerate(depths)}
            variants = key.present(cell["variant"])
            for r, (metric, ylabel, scale, unit) in enumerate(have):
                ax = axes[len(have) * (i // ncols) + r, i % ncols]
                for variant in variants:
                    vc = cell[cell["variant"] == variant]
                    style = key.styles[variant]
                    dx = (key.order.index(variant) - (len(key.order) - 1) / 2) * DODGE
                    x = vc["depth"].map(pos).to_numpy(dtype=float) + dx
                    mean_ci_errorbar(ax, vc, metric, x, scale, style, variant)
                # the DiD of each residual variant, deepest depth against the shallowest
                notes = []
                d = keyed_ints.get(metric)
                if d is not None and len(d):
                    mine = where(d, PANEL_KEYS, box)
                    for variant in key.present(mine["variant"]):
                        rows = mine[mine["variant"] == variant]
                        deepest = rows.loc[rows["depth"].astype(float).idxmax()]
                        notes.append((did_label(deepest, scale, unit),
                                      key.styles[variant].color))
                for k, (text, color) in enumerate(notes):
                    note = ax.annotate(text, xy=(0.02, 0.98), xycoords="axes fraction",
                                       xytext=(0, -1.25 * small * k), textcoords="offset points",
                                       ha="left", va="top", fontsize=small, color=color,
                                       bbox=dict(facecolor="white", alpha=0.75,
                                                 edgecolor="none", pad=0.2))
                    note.set_in_layout(False)
                ax.margins(y=0.12)
                if notes:  # headroom for the notes over the highest interval
                    ax.autoscale_view()
                    y0, y1 = ax.get_ylim()
                    need = (len(notes) * 1.25 * small + 4) / (0.7 * row_h * 72)
                    need = min(need, 0.6)
                    if np.isfinite(y0) and np.isfinite(y1) and y1 > y0:
                        ax.set_ylim(y0, y1 + need / (1 - need) * (y1 - y0))
                ax.set_xticks(range(len(depths)), [str(dd) for dd in depths])
                ax.set_xlim(-0.5, len(depths) - 0.5)
                if not any(ln.get_visible() for ln in ax.lines):
                    no_data(ax, "no completed trials", panel_w)
                if r == 0:
                    ax.set_title(fit_title(joined(network_title(family, model), facet), panel_w))
                if i % ncols == 0:
                    ax.set_ylabel(f"final {ylabel}" if look.width == "double" else ylabel)
        for j in range(len(boxes), blocks * ncols):
            for r in range(len(have)):
                axes[len(have) * (j // ncols) + r, j % ncols].set_visible(False)
        fig.supxlabel("depth (weighted layers)", fontsize=mpl.rcParams["axes.labelsize"])
        legend_look.legend(fig, handles)
    return fig
