"""The shattered-gradients figures and table (``ablations.measurements.shattering``:
the autocorrelation of the input gradient along lines of inputs, Balduzzi et al. 2017):
the autocorrelation against lag, lag 1 against depth with Balduzzi et al.'s rates, and
a per-cell summary at lag 1 and the longest lag.

They show the centred autocorrelation, or the uncentred one of a file measured before
the centred one existed, and then say so (``shown``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements import WHEN
from ablations.measurements.shattering import CENTRED, LEGACY, OWN, UNCENTRED
from analysis import stats
from analysis.figure_parts import finite, fit_title, label_edges, no_data, panels, where
from analysis.figures_layers import PANEL_KEYS
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, message_figure
from analysis.variants import joined, keyed
from analysis.views import FigureSpec, TableSpec
from analysis.views.parts import (WHEN_TITLE, cell_table, headline, per_trial, when_grid,
                                  when_means)


OLD_FILE = "old file: no centred column"


def shown(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """``(rows, column, what)``: the column the figures and the table show, the centred
    autocorrelation, or the uncentred one of a file measured before the centred one
    existed (``analysis.views.parts.headline``), and its name for labels."""
    rows, col, old = headline(df, CENTRED, UNCENTRED, LEGACY)
    return rows, col, (f"UNCENTRED gradient autocorrelation\n({OLD_FILE})" if old
                       else "centred gradient autocorrelation")


def shattering_acf(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Centred autocorrelation of the input gradient against lag (as Balduzzi et al.'s
    ACF plots): one row of panels per model, facet and variant, init and trained side by
    side, one line per depth; per trial the mean over segments, then the median over
    seeds. An old file (uncentred only) shows the uncentred one, so labelled."""
    rows, col, what = shown(df)
    return when_grid(per_trial(rows, col, by=("lag",), own=OWN), "lag", col,
                     "lag (points)", what, look, zero_line=True, empty="no shattering rows")


REFERENCES = {False: (r"plain: $\propto 2^{-\mathrm{depth}}$", lambda d, d0: 2.0 ** -(d - d0)),
              True: (r"residual: $\propto \mathrm{depth}^{-1/2}$", lambda d, d0: np.sqrt(d0 / d))}


def _lag1_points(sub: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths, means over seeds and their (2, n) interval half widths (0 for one seed)."""
    cis = [stats.mean_ci(g[col]) for _, g in sub.groupby("depth")]  # sorted depths
    m = np.array([c[0] for c in cis])
    err = np.array([[c[0] - c[1], c[2] - c[0]] if np.isfinite(c[1]) else [0.0, 0.0]
                    for c in cis]).T
    return np.array(sorted(sub["depth"].unique()), dtype=float), m, err


def shattering_lag1(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Lag-1 centred gradient autocorrelation against depth, plain vs residual, init and
    trained: per trial the mean over segments; per depth the mean over seeds with its 95%
    t interval, each seed a dot. Dotted: Balduzzi et al.'s rates, 2^-depth (plain) and
    depth^-1/2 (residual), through each variant's shallowest mean, drawn within the
    data's y range (a rate that leaves it decays faster than any measured value). An old
    file (uncentred only) shows the uncentred one, so labelled."""
    df, col, what = shown(df)
    t = per_trial(df[df["lag"] == 1], col, own=OWN) if len(df) else df
    rows, key = keyed(t) if len(t) else (t, None)
    if rows.empty:
        return message_figure("no shattering rows at lag 1", look)
    whens = [w for w in WHEN if (rows["when"] == w).any()]
    boxes = panels(rows, PANEL_KEYS, key)
    residual = {key.styles[v].residual for v in key.present(rows["variant"])}
    handles = key.handles(rows["variant"]) + [
        Line2D([], [], color="0.4", linestyle=":", label=REFERENCES[r][0])
        for r in sorted(residual)]
    with look.context():
        width = look.panel_width(len(whens))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + look.row_height(len(whens)) * len(boxes)), layout="constrained")
        axes = fig.subplots(len(boxes), len(whens), squeeze=False, sharey=True)
        curves = []  # (ax, depths, means, colour, residual): drawn once the y range is known
        for r, box in enumerate(boxes):
            for c, when in enumerate(whens):
                ax, sub = axes[r, c], where(rows, PANEL_KEYS, box)
                had = (sub["when"] == when).any()
                sub = finite(sub[sub["when"] == when], col)
                variants = key.present(sub["variant"])
                for i, variant in enumerate(variants):
                    v = sub[sub["variant"] == variant]
                    depths, m, err = _lag1_points(v, col)
                    dx = 0.15 * (i - (len(variants) - 1) / 2)  # dodge: intervals side by side
                    color = key.color(variant)
                    ax.errorbar(depths + dx, m, yerr=err, color=color, marker=key.marker(variant),
                                capsize=2, markersize=3)
                    ax.scatter(v["depth"] + dx, v[col], s=4, color=color, alpha=0.4,
                               linewidths=0)
                    curves.append((ax, depths, m, color, key.styles[variant].residual))
                ax.set_title(fit_title(joined(network_title(*box[:2]), box[2], WHEN_TITLE[when]),
                                       width))
                ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
                if not variants:
                    no_data(ax, "no finite values" if had else "not measured", width)
        ylim = axes[0, 0].get_ylim()  # shared: the data of every panel
        for ax, depths, m, color, res in curves:
            if len(depths) > 1 and m[0] > 0:
                d = np.linspace(depths[0], depths[-1], 100)
                ax.plot(d, m[0] * REFERENCES[res][1](d, depths[0]), color=color,
                        linestyle=":", linewidth=0.8, zorder=1)
        axes[0, 0].set_ylim(ylim)
        label_edges(axes, "depth", "")
        fig.supylabel(f"lag-1 {what}", fontsize="medium")
        look.legend(fig, handles)
    return fig


def shattering_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: lag-1 and longest-lag centred autocorrelation at init and trained (per
    trial the mean over segments; mean ± 95% interval over seeds). An old file
    (uncentred only): the uncentred one, each column titled "(uncentred, old file)"."""
    if df.empty:
        return None
    df, col, _ = shown(df)
    tag = "" if col == CENTRED else " (uncentred, old file)"
    far = int(df["lag"].max())
    one = per_trial(df[df["lag"] == 1], col, own=OWN)
    last = per_trial(df[df["lag"] == far], col, own=OWN).rename(columns={col: "far"})
    keys = [c for c in one.columns if c != col]
    t = one.merge(last, on=keys, how="outer")
    # neighbouring inputs are 1/255 of the segment apart: a smooth network's lag 1 can
    # be near 1 however deep it is; the decay shows at long lags too
    return cell_table(t, when_means([(f"lag-1 at init{tag}", "init", col),
                                     (f"lag-1 trained{tag}", "final", col),
                                     (f"lag-{far} at init{tag}", "init", "far"),
                                     (f"lag-{far} trained{tag}", "final", "far")]))


FIGURES = (FigureSpec("shattering_acf", shattering_acf,
                      "Centred autocorrelation of the input gradient (mean gradient of "
                      "the line subtracted) along a line of 256 inputs between two test "
                      "images, against lag (Balduzzi et al. 2017): mean over 4 segments, "
                      "median over seeds, band = interquartile range. A file measured "
                      "before the centred column existed shows the uncentred one, and its "
                      "axis says so."),
           FigureSpec("shattering_lag1", shattering_lag1,
                      "Lag-1 centred gradient autocorrelation against depth, mean and 95% "
                      "interval over seeds; dotted: 2^-depth (plain) and depth^-1/2 "
                      "(residual), Balduzzi et al.'s rates, through the shallowest depth. "
                      "An old file (no centred column) shows the uncentred one, and its "
                      "axis says so."))
TABLES = (TableSpec("shattering", shattering_table,
                    "Lag-1 and lag-64 centred autocorrelation of the input gradient (mean "
                    "over 4 segments per trial), mean ± 95% t half width over seeds; "
                    "columns marked \"uncentred, old file\": a file measured before the "
                    "centred column existed."),)
