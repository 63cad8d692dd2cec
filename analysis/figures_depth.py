"""The headline figure: final train loss and test error against depth."""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ablations.status import Status
from analysis import stats
from analysis.figure_parts import fit_title, mean_ci_errorbar, no_data, panels, where
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, message_figure
from analysis.variants import joined, keyed

METRICS = [("final_train_loss", "train loss", 1.0),
           ("final_test_error", "test error (%)", 100.0)]
PANEL_KEYS = ["family", "model", "facet"]
DODGE = 0.16        # x distance between two variants' means at one depth
DODGE_SPAN = 0.5    # most x span of the means at one depth, however many variants


def _failure_note(ax, x: float, text: str, color, k: int) -> None:
    """Print a failure count in the variant's colour at the top of the panel, over ``x``;
    ``k`` stacks the notes of several variants (two lines each)."""
    ax.annotate(text, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, -2 - 15 * k), textcoords="offset points", ha="center", va="top",
                linespacing=0.95, fontsize="x-small", color=color)


def _failure_text(c) -> str:
    bad = int(c["n_diverged"]) + int(c["n_error"]) + int(c["n_pending"])
    kinds = [w for w, n in (("div.", c["n_diverged"]), ("err.", c["n_error"]),
                            ("pend.", c["n_pending"])) if n]
    return f"{bad}/{int(c['n_planned'])}\n{'+'.join(kinds)}" if bad else ""


def _legend_too_wide(handles, width_in: float) -> bool:
    """Whether a legend right of the panels would take over 40% of a ``width_in`` figure
    (~0.55 em a character, plus the handle and padding): "plain", "residual" never do."""
    size = mpl.rcParams["legend.fontsize"]
    size = size if isinstance(size, (int, float)) else 7
    longest = max((len(h.get_label()) for h in handles), default=0)
    return (longest * 0.55 + 4.5) * size / 72 > 0.4 * width_in


def degradation_vs_depth(trials: pd.DataFrame, look: Look = DEFAULT_LOOK,
                         chance_error: float | None = None) -> Figure:
    """The headline figure: final train loss and test error against depth, per family.

    One column per family (or preset model) and facet (each combination of the
    levels of norm, block, ... that plain and residual networks share, named
    in the title), rows: final training loss, final test error (%). Within a
    panel one line per variant: plain, and residual at each level of the
    residual-only factors (branch scale, shortcut), styled by
    ``analysis.variants``. Each is its mean over completed seeds with a 95%
    Student t interval (``analysis.stats.cell_summary``), and every completed
    seed as a small dot. Variants are dodged left to right so the intervals
    do not overlap. A cell with diverged, errored or pending trials says so at
    the top of the panel ("2/3 div."), in the variant's colour, so a depth
    where plain never finished is visible rather than missing. A dashed line
    marks ``chance_error`` (0.9 for 10 balanced classes) when given.
    """
    need = {"final_train_loss", "final_test_acc"}
    if not need <= set(trials.columns):
        return message_figure("degradation vs depth needs trained trials "
                              "(final_train_loss, final_test_acc)", look)
    cells = stats.cell_summary(trials, ("final_train_loss", "final_test_error"))
    done = stats.with_derived(trials[trials["status"] == Status.COMPLETED])
    if "family" not in done:
        done = done.assign(family=done["model"])
    cells, key = keyed(cells)
    done, _ = keyed(done, like=key)
    boxes = panels(cells, PANEL_KEYS, key)
    ncols = look.columns(len(boxes)) if len(boxes) > 1 else 1
    blocks = math.ceil(len(boxes) / ncols)
    with look.context():  # handles too: their marker size is the look's
        handles = key.handles(cells["variant"]) + [
            Line2D([], [], color="0.4", marker="o", linestyle="none", markersize=2, alpha=0.6,
                   label="one seed")]
        width = look.inches if ncols > 1 else min(look.inches, Look(look.style, "single").inches)
        panel_w = look.panel_width(ncols) if ncols > 1 else width
        row_h = min(look.row_height(ncols), max(1.1, 0.3 * look.inches))
        # A legend of long labels ("residual, x1/sqrt(blocks)") right of a one-column
        # figure would leave the panels no width: it goes above them instead.
        legend_look = Look(look.style, "single") if _legend_too_wide(handles, width) else look
        fig = Figure(figsize=(width, 0.3 + legend_look.legend_inches(handles)
                              + row_h * len(METRICS) * blocks), layout="constrained")
        axes = fig.subplots(len(METRICS) * blocks, ncols, squeeze=False)
        for i, box in enumerate(boxes):
            family, model, facet = box
            cell, runs = where(cells, PANEL_KEYS, box), where(done, PANEL_KEYS, box)
            depths = sorted(cell["depth"].unique())
            pos = {d: j for j, d in enumerate(depths)}  # even spacing: 5, 18, 34 all readable
            variants = key.present(cell["variant"])
            # a variant sits at the same offset in every panel (its place in the figure's order)
            step = min(DODGE, DODGE_SPAN / len(key.order))
            failed = cell[["n_diverged", "n_error", "n_pending"]].sum(axis=1) > 0
            noted = [v for v in variants if (failed & (cell["variant"] == v)).any()]
            for r, (metric, ylabel, scale) in enumerate(METRICS):
                ax = axes[len(METRICS) * (i // ncols) + r, i % ncols]
                for variant in variants:
                    vc = cell[cell["variant"] == variant]
                    style = key.styles[variant]
                    dx = (key.order.index(variant) - (len(key.order) - 1) / 2) * step
                    x = vc["depth"].map(pos).to_numpy(dtype=float) + dx
                    mean_ci_errorbar(ax, vc, metric, x, scale, style, variant)
                    # each seed beside its mean, on the side away from the panel's middle
                    side = dx + 0.4 * step * (1 if dx >= 0 else -1)
                    vr = runs[runs["variant"] == variant]
                    vals = pd.to_numeric(vr[metric], errors="coerce").to_numpy(dtype=float)
                    ok = np.isfinite(vals)
                    ax.scatter(vr["depth"].map(pos).to_numpy(dtype=float)[ok] + side,
                               vals[ok] * scale, s=5, color=style.color, alpha=0.45,
                               linewidths=0, zorder=2)
                    if r == 0:
                        for _, c in vc.iterrows():
                            if text := _failure_text(c):
                                _failure_note(ax, pos[c["depth"]] + dx, text, style.color,
                                              noted.index(variant))
                ax.margins(y=0.12)
                if r == 0 and ax.texts:  # headroom, so the notes never sit on a point
                    ax.autoscale_view()
                    lo, hi = ax.get_ylim()
                    # two lines of x-small text per variant with notes, over ~65% of the
                    # row height that the axes itself gets
                    lines = 2 * len(noted)
                    need = (lines * 0.85 * mpl.rcParams["font.size"] + 4) / (0.65 * row_h * 72)
                    need = min(need, 0.6)
                    ax.set_ylim(lo, hi + need / (1 - need) * (hi - lo))
                if metric == "final_test_error" and chance_error is not None:
                    ax.axhline(chance_error * scale, color="0.6", linestyle="--", linewidth=0.8,
                               zorder=0)
                    ax.annotate("chance", xy=(1.0, chance_error * scale),
                                xycoords=("axes fraction", "data"), ha="right", va="bottom",
                                fontsize="x-small", color="0.5")
                ax.set_xticks(range(len(depths)), [str(d) for d in depths])
                ax.set_xlim(-0.5, len(depths) - 0.5)
                if not any(ln.get_visible() for ln in ax.lines):
                    no_data(ax, "no completed trials", panel_w)
                if r == 0:
                    ax.set_title(fit_title(joined(network_title(family, model), facet), panel_w))
                if i % ncols == 0:
                    ax.set_ylabel(f"final {ylabel}" if look.width == "double" else ylabel)
        for j in range(len(boxes), blocks * ncols):
            for r in range(len(METRICS)):
                axes[len(METRICS) * (j // ncols) + r, j % ncols].set_visible(False)
        fig.supxlabel("depth (weighted layers)", fontsize=mpl.rcParams["axes.labelsize"])
        legend_look.legend(fig, handles)
    return fig
