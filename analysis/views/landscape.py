"""The loss-landscape figure and table (``ablations.measurements.landscape``: the
training loss along 1-D filter-normalized slices, Li et al. 2018): every slice and
their median per depth, and a per-cell summary (loss at the trained point, roughness,
rise). The 2-D grid's figure is ``analysis.views.landscape2d``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ablations.measurements.landscape import roughness
from analysis import stats
from analysis.figure_parts import finite, no_data
from analysis.formatting import fmt_ci
from analysis.style import DEFAULT_LOOK, Look, log_axis, message_figure
from analysis.variants import keyed
from analysis.views import FigureSpec, TableSpec
from analysis.views.parts import cell_table, depth_panels


def kind_rows(df: pd.DataFrame, kind: str) -> tuple:
    """The rows of ``kind``, keyed (``variant``, ``facet``), ``loss`` numeric."""
    if not {"kind", "loss"} <= set(df.columns):
        df = pd.DataFrame(columns=["kind", "loss", "residual"])
    rows, key = keyed(df[df["kind"] == kind])
    return rows.assign(loss=pd.to_numeric(rows["loss"], errors="coerce")), key


def landscape_1d(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Training loss along 1-D filter-normalized slices (Li et al. 2018), one panel per
    depth (and facet), residual vs plain by colour: every (seed, direction) slice thin, the
    median over them bold, the trained point (alpha = 0) marked; log y."""
    rows, key = kind_rows(df, "1d")
    rows = finite(rows, "loss", positive=True)
    if rows.empty:
        return message_figure("landscape: no finite positive 1-D losses to draw", look)
    with look.context():
        fig, boxes, width = depth_panels(rows, key, look, key.handles(rows["variant"]))
        for i, (ax, sub) in enumerate(boxes):
            for variant in key.present(sub["variant"]):
                v, color = sub[sub["variant"] == variant], key.color(variant)
                for _, line in v.groupby(["seed", "direction"]):
                    line = line.sort_values("alpha")
                    ax.plot(line["alpha"], line["loss"], color=color, linewidth=0.5, alpha=0.35)
                med = v.groupby("alpha")["loss"].median()
                ax.plot(med.index, med.to_numpy(), color=color, linewidth=1.6)
                if 0.0 in med.index:
                    ax.plot([0.0], [med[0.0]], marker=key.marker(variant), color=color,
                            markeredgecolor="black", markersize=5, linestyle="none", zorder=4)
            ax.axvline(0, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
            log_axis(ax)
            if not ax.lines:
                no_data(ax, "no finite losses", width)
            ax.set_xlabel(r"$\alpha$ (filter-normalized)")
            ax.set_ylabel("train loss" if i % look.columns(len(boxes)) == 0 else "")
    return fig


# --------------------------------------------------------------------------- table

def _slice_summary(g: pd.DataFrame) -> dict:
    g = g.assign(loss=pd.to_numeric(g["loss"], errors="coerce"))
    rough, centre, rise = [], [], []
    for seed, s in g.groupby("seed"):
        r = [roughness(d["alpha"], d["loss"]) for _, d in s.groupby("direction")]
        rough.append(np.mean(r) if np.isfinite(r).all() else math.nan)
        for _, d in s.groupby("direction"):  # the loss at alpha = 0 and at both ends
            at = d.groupby("alpha")["loss"].mean()
            if 0.0 in at.index:
                centre.append((seed, at[0.0]))
                with np.errstate(invalid="ignore"):  # inf - inf: NaN, left out below
                    rise += [at[e] - at[0.0] for e in (-1.0, 1.0) if e in at.index]
    centre = pd.DataFrame(centre, columns=["seed", "loss"]).groupby("seed")["loss"].mean()
    finite_rise = np.asarray(rise, dtype=float)
    finite_rise = finite_rise[np.isfinite(finite_rise)]
    return {"trained loss": fmt_ci(*stats.mean_ci(centre)[:3], 3, small="sci"),
            "roughness": fmt_ci(*stats.mean_ci(rough)[:3], 2),
            "rise at |alpha|=1 (median)": f"{np.median(finite_rise):.3g}"
            if len(finite_rise) else "—"}


def landscape_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell (family, model, depth, variant and each varying factor): seeds, the loss at
    the trained point and the roughness of the 1-D slices (mean over directions per seed,
    then mean ± 95% t half width over seeds; a seed with a slice of undefined or infinite
    roughness counts as missing), and the median over directions, both ends and seeds of
    the loss increase at |alpha| = 1."""
    rows = df[df["kind"] == "1d"] if "kind" in df else df.iloc[:0]
    return None if rows.empty else cell_table(rows, _slice_summary)


FIGURES = (FigureSpec("landscape_1d", landscape_1d,
                      "Training loss (256 fixed training images, BN in eval mode) along 3 "
                      "filter-normalized random directions per seed (Li et al. 2018): thin, "
                      "each slice; bold, their median; marker, the trained network."),)
TABLES = (TableSpec("landscape", landscape_table,
                    "Loss landscape: training loss at the trained point, roughness of the "
                    "1-D slices (TV / rise - 1; 0 = monotone on each side; mean ± 95% t "
                    "half width over seeds), median loss increase at |alpha| = 1."),)
