"""The 2-D loss-landscape figure (measurement ``landscape2d`` of
``ablations.measurements.landscape``: the training loss on a grid over two
filter-normalized directions, Li et al. 2018), as contours per depth.
"""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.figure_parts import fit_parts, no_data, panels, where
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, message_figure
from analysis.variants import joined
from analysis.views import FigureSpec
from analysis.views.landscape import kind_rows
from analysis.views.parts import DEPTH_PANEL_KEYS


CONTOUR_LEVELS = 15


def landscape_2d(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Training loss on a 2-D filter-normalized grid (Li et al. 2018) as contours, one
    row per depth (and facet), plain and residual side by side, the same log-spaced levels
    across a row; the trained point starred. Directions differ between seeds: the panel
    shows the lowest seed's grid (named), not an average of unrelated planes."""
    rows, key = kind_rows(df, "2d")
    if rows.empty:
        return message_figure("landscape: no 2-D grids to draw", look)
    boxes = panels(rows, DEPTH_PANEL_KEYS, key)
    cols = key.present(rows["variant"])
    with look.context():
        width = look.inches / (len(cols) + 0.5)  # square panels and a colour bar
        fig = Figure(figsize=(look.inches, 0.3 + len(boxes) * (
            width + 2 * look.title_line_inches + 0.2)), layout="constrained")
        axes = fig.subplots(len(boxes), len(cols), squeeze=False)
        for r, box in enumerate(boxes):
            sub = where(rows, DEPTH_PANEL_KEYS, box)
            v = sub["loss"].to_numpy(dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            lo, hi = (v.min(), v.max()) if len(v) else (math.nan, math.nan)
            levels = np.geomspace(lo, hi, CONTOUR_LEVELS) if len(v) and hi > lo * (1 + 1e-9) \
                else None
            drawn = None
            for c, variant in enumerate(cols):
                ax = axes[r, c]
                vs = sub[sub["variant"] == variant]
                seed = vs["seed"].min() if len(vs) else None
                ax.set_title(fit_parts(joined(network_title(box[0], box[1]), box[2],
                                              f"depth {box[3]}"),
                                       joined(variant, "" if seed is None else f"seed {seed}"),
                                       width))
                grid = vs[vs["seed"] == seed].pivot_table(index="beta", columns="alpha",
                                                          values="loss", aggfunc="median")
                z = np.ma.masked_invalid(np.where(grid.to_numpy(dtype=float) > 0, grid, np.nan))
                if levels is None or z.count() < 4:
                    no_data(ax, "no grid" if z.count() < 4 else f"flat: loss {lo:.3g}", width)
                    continue
                drawn = ax.contour(grid.columns, grid.index, z, levels=levels, cmap="viridis",
                                   norm=LogNorm(lo, hi), linewidths=0.8)
                ax.plot([0], [0], marker="*", color="black", markersize=6, linestyle="none")
                zlo, zhi = float(z.min()), float(z.max())
                if not ((levels >= zlo) & (levels <= zhi)).any():  # no line crosses it
                    ax.text(0.5, 0.25, f"flat within one level:\nloss {zlo:.4g} to {zhi:.4g}",
                            transform=ax.transAxes, ha="center", va="center", fontsize="small",
                            color="0.4")
                ax.set_aspect("equal")
                ax.set_xticks([-1, 0, 1])
                ax.set_yticks([-1, 0, 1])
                ax.set_xlabel(r"$\alpha$")
                ax.set_ylabel(r"$\beta$" if c == 0 else "")
            if drawn is not None:
                bar = fig.colorbar(mpl.cm.ScalarMappable(norm=LogNorm(lo, hi), cmap="viridis"),
                                   ax=list(axes[r]), shrink=0.9)
                bar.set_label("train loss")
    return fig


FIGURES = (FigureSpec("landscape2d", landscape_2d,
                      "Training loss on a 2-D grid over two filter-normalized random "
                      "directions (Li et al. 2018), the lowest seed of each cell; the same "
                      "log-spaced contour levels across a row; star: the trained network."),)
TABLES = ()
