"""One function per figure: tidy DataFrame in, ``matplotlib.figure.Figure`` out.

Figures are built on ``Figure`` directly (no pyplot), inside ``paper_context``,
so they look the same whoever calls them; ``analysis.style.save_figure``
writes them. Non-finite values (a diverged trial) are dropped before any
median, and log axes drop values <= 0, so no figure fails on a bad trial: a
panel with nothing left says so instead of staying blank.
"""
from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import seaborn as sns
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.style import (COLUMN_WIDTH, MARKERS, PALETTE, VARIANT_ORDER, depth_linestyles,
                            figure_width, log_axis, message_figure, paper_context,
                            variant_handles, with_variant)
from analysis.tables import network_order, stat_rows

MAX_LR_MARKS = 5      # more drops than this is a smooth schedule, not milestones
MAX_PROGRESS_LINES = 10  # more lines than this in one panel cannot be told apart


# --------------------------------------------------------------------------- helpers

def _finite(df: pd.DataFrame, col: str = "value", positive: bool = False) -> pd.DataFrame:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
    return df[keep]


def _median_iqr(df: pd.DataFrame, x: str, col: str = "value") -> pd.DataFrame:
    """Median and interquartile range of ``col`` over seeds at each ``x``."""
    g = df.groupby(x)[col]
    return pd.DataFrame({"median": g.median(), "q25": g.quantile(0.25),
                         "q75": g.quantile(0.75), "n": g.size()}).reset_index()


def _line_band(ax, agg: pd.DataFrame, x: str, color, band: bool = True, **line_kw) -> None:
    ax.plot(agg[x], agg["median"], color=color, **line_kw)
    if band and (agg["n"] > 1).any():  # one seed: just the line
        ax.fill_between(agg[x], agg["q25"], agg["q75"], where=agg["n"] > 1, color=color,
                        alpha=0.2, linewidth=0)


def _no_data(ax, text: str = "no finite data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.4", transform=ax.transAxes)
    # tick_params, not set_xticks([]): locators are shared with sibling panels.
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)


def _positions(rows: pd.DataFrame) -> pd.Series:
    """x = position in the merged network order, so same-named layers of both variants align."""
    pos = {name: i for i, name in enumerate(network_order(rows))}
    return rows["layer"].map(pos)


def _panels(rows: pd.DataFrame, keys: list[str]) -> list[tuple]:
    return list(rows[keys].drop_duplicates().sort_values(keys).itertuples(index=False, name=None))


# --------------------------------------------------------------------------- per-layer profiles

def _layer_profile(layers: pd.DataFrame, stat: str, phase: str, ylabel: str) -> Figure:
    rows = with_variant(_finite(stat_rows(layers, stat, phase), positive=True))
    if rows.empty:
        return message_figure(f"no positive finite {stat} rows for phase {phase!r}")
    # One panel per model: a family's own name ("mlp") and its presets
    # ("seed_mlp5") are different networks and get different panels.
    panels = _panels(rows, ["family", "model"])
    styles = depth_linestyles(rows["depth"])
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    with paper_context():
        fig = Figure(figsize=(figure_width(ncols), 0.3 + 2.0 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, (ax, (family, model)) in enumerate(zip(axes.flat, panels)):
            sub = rows[(rows["family"] == family) & (rows["model"] == model)]
            for depth, dsub in sub.groupby("depth"):
                dsub = dsub.assign(x=_positions(dsub))
                for variant in VARIANT_ORDER:
                    vsub = dsub[dsub["variant"] == variant]
                    if len(vsub):
                        # seaborn: median over seeds, band = interquartile range (50% PI).
                        # ~10 markers a line: enough to tell variants apart in
                        # greyscale, few enough that depth line styles still show.
                        sns.lineplot(data=vsub, x="x", y="value", estimator="median",
                                     errorbar=("pi", 50), color=PALETTE[variant], ax=ax,
                                     marker=MARKERS[variant], linestyle=styles[depth],
                                     markevery=max(1, round(vsub["x"].nunique() / 10)),
                                     markeredgewidth=0, legend=False)
            log_axis(ax)
            ax.set_title(model)
            ax.set_xlabel("layer (network order)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ylabel if i % ncols == 0 else "")  # seaborn labels every panel
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        handles = variant_handles(rows["variant"]) + [
            Line2D([], [], color="0.3", linestyle=ls, label=f"depth {d}") for d, ls in styles.items()]
        fig.legend(handles=handles, loc="outside right upper")
    return fig


def grad_by_layer(layers: pd.DataFrame, phase: str = "init") -> Figure:
    """Mean |dL/dW| per weight layer, log y; one panel per model, hue = variant, style = depth.

    Line = median over seeds, band = interquartile range over seeds (none with
    one seed). x is the position in network order, merged over variants so a
    layer sits at the same x in both (the plain ResNet lacks projection
    shortcuts). A multi-step phase ("train") uses each trial's last sample.
    """
    return _layer_profile(layers, "grad_mean_abs", phase, r"mean $|\partial L / \partial W|$")


def act_by_layer(layers: pd.DataFrame, phase: str = "init") -> Figure:
    """Mean |activation| per block output, log y; same layout as ``grad_by_layer``."""
    return _layer_profile(layers, "act_mean_abs", phase, "mean |activation|")


# --------------------------------------------------------------------------- training

def _lr_drops(sub: pd.DataFrame) -> list[float]:
    """Where the learning rate drops: between the last epoch at the old rate and the
    first at the new one (``lr`` is the rate used during an epoch), so a drop after
    milestone 15 is drawn at 15.5, between the two points it separates."""
    if "lr" not in sub:
        return []
    lr = _finite(sub, "lr").groupby("epoch")["lr"].median().sort_index()
    drops = lr.index[1:][lr.to_numpy()[1:] < lr.to_numpy()[:-1] * (1 - 1e-9)]
    return [d - 0.5 for d in drops] if len(drops) <= MAX_LR_MARKS else []


def _curve(ax, sub: pd.DataFrame, col: str, variant: str, bold: bool, scale: float = 1.0,
           positive: bool = False) -> None:
    if col not in sub:
        return
    pts = _finite(sub, col, positive=positive)
    if pts.empty:
        return
    agg = _median_iqr(pts.assign(v=pts[col].astype(float) * scale), "epoch", "v")
    style = (dict(linewidth=1.8, marker=MARKERS[variant], markevery=max(1, len(agg) // 6))
             if bold else dict(linewidth=0.7, alpha=0.8))
    _line_band(ax, agg, "epoch", PALETTE[variant], band=bold, **style)


def _mark_diverged(ax, sub: pd.DataFrame) -> None:
    """Say which variant's trials diverged, and when: a diverged run has no finite
    points to draw, and must not silently vanish from the figure."""
    loss = pd.to_numeric(sub["train_loss"], errors="coerce").to_numpy(dtype=float)
    bad = sub[~np.isfinite(loss)]
    for k, (variant, vbad) in enumerate(bad.groupby("variant")):
        n = vbad["trial_id"].nunique() if "trial_id" in vbad else 1
        ax.text(0.02, 0.04 + 0.12 * k, f"{variant}: {n} diverged (epoch {int(vbad['epoch'].min())})",
                color=PALETTE[variant], transform=ax.transAxes, ha="left", va="bottom",
                fontsize="small")


def training_curves(epochs: pd.DataFrame) -> Figure:
    """Loss (log) and accuracy per epoch; train thin, test bold; one column per model x depth.

    Lines are medians over seeds (test with its interquartile band). Dotted
    verticals mark epochs where the learning rate drops (grey when both
    variants drop there, else in the variant's colour); a smooth schedule with
    more than ``MAX_LR_MARKS`` drops is not marked.
    """
    ep = with_variant(epochs)
    if ep.empty or "epoch" not in ep:
        return message_figure("no epoch rows")
    combos = _panels(ep, ["family", "model", "depth"])
    ncols = min(len(combos), 3)
    blocks = math.ceil(len(combos) / ncols)
    with paper_context():
        fig = Figure(figsize=(figure_width(ncols), 0.3 + 3.0 * blocks), layout="constrained")
        axes = fig.subplots(2 * blocks, ncols, squeeze=False)
        for i, (family, model, depth) in enumerate(combos):
            ax_loss, ax_acc = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
            ax_acc.sharex(ax_loss)
            sub = ep[(ep["family"] == family) & (ep["model"] == model) & (ep["depth"] == depth)]
            drops: dict[float, list[str]] = {}
            for variant, vsub in sub.groupby("variant"):
                for bold, split in ((False, "train"), (True, "test")):
                    _curve(ax_loss, vsub, f"{split}_loss", variant, bold, positive=True)
                    _curve(ax_acc, vsub, f"{split}_acc", variant, bold, scale=100.0)
                for e in _lr_drops(vsub):
                    drops.setdefault(e, []).append(variant)
            if ax_loss.lines:
                log_axis(ax_loss)
            _mark_diverged(ax_loss, sub)
            for ax in (ax_loss, ax_acc):
                if not ax.lines:
                    _no_data(ax)
                    continue
                for e, vs in drops.items():
                    color = "0.5" if len(vs) == sub["variant"].nunique() else PALETTE[vs[0]]
                    ax.axvline(e, color=color, linestyle=":", linewidth=0.8, zorder=0)
            ax_loss.set_title(f"{model}, depth {depth}")
            if ax_loss.lines:
                ax_loss.tick_params(labelbottom=False)
            ax_acc.set_xlabel("epoch")
            ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i % ncols == 0:
                ax_loss.set_ylabel("loss")
                ax_acc.set_ylabel("accuracy (%)")
        for j in range(len(combos), blocks * ncols):
            axes[2 * (j // ncols), j % ncols].set_visible(False)
            axes[2 * (j // ncols) + 1, j % ncols].set_visible(False)
        handles = variant_handles(ep["variant"]) + [
            Line2D([], [], color="0.3", linewidth=0.7, label="train"),
            Line2D([], [], color="0.3", linewidth=1.8, label="test"),
            Line2D([], [], color="0.5", linewidth=0.8, linestyle=":", label="LR drop")]
        fig.legend(handles=handles, loc="outside right upper")
    return fig


def act_through_training(layers: pd.DataFrame, progress: str = "step") -> Figure:
    """Mean |activation| per layer at sampled training steps, colour = progress (log y).

    One panel per (model, depth) row and variant column, rows sharing y;
    median over seeds. At most ``MAX_PROGRESS_LINES`` evenly spaced samples
    are drawn. ``progress`` is "step" or "epoch".
    """
    if progress not in ("step", "epoch"):
        raise ValueError(f"progress must be 'step' or 'epoch' (got {progress!r})")
    rows = layers[(layers["stat"] == "act_mean_abs") & (layers["phase"] == "train")]
    rows = with_variant(_finite(rows, positive=True))
    if rows.empty:
        return message_figure("no positive finite train-phase act_mean_abs rows")
    ticks = np.sort(rows[progress].unique())
    if len(ticks) > MAX_PROGRESS_LINES:
        ticks = ticks[np.unique(np.linspace(0, len(ticks) - 1, MAX_PROGRESS_LINES).round().astype(int))]
    norm = Normalize(ticks.min(), max(ticks.max(), ticks.min() + 1))
    cmap = mpl.colormaps["viridis"]
    combos = _panels(rows, ["family", "model", "depth"])
    variants = [v for v in VARIANT_ORDER if (rows["variant"] == v).any()]
    with paper_context():
        fig = Figure(figsize=(figure_width(len(variants), 2.8), 0.4 + 1.9 * len(combos)),
                     layout="constrained")
        axes = fig.subplots(len(combos), len(variants), squeeze=False, sharey="row")
        for r, (family, model, depth) in enumerate(combos):
            sub = rows[(rows["family"] == family) & (rows["model"] == model) & (rows["depth"] == depth)]
            sub = sub.assign(x=_positions(sub))
            for c, variant in enumerate(variants):
                ax = axes[r, c]
                vsub = sub[(sub["variant"] == variant) & sub[progress].isin(ticks)]
                for t, tsub in vsub.groupby(progress):
                    agg = _median_iqr(tsub, "x")
                    ax.plot(agg["x"], agg["median"], color=cmap(norm(t)), linewidth=1.0,
                            marker=MARKERS[variant], markersize=2)
                if not ax.lines:
                    _no_data(ax)
                ax.set_title(f"{model}, depth {depth}: {variant}", color=PALETTE[variant])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if r == len(combos) - 1:
                    ax.set_xlabel("layer (network order)")
                if c == 0:
                    ax.set_ylabel("mean |activation|")
            for ax in axes[r]:  # after the whole row: the panels share y
                if ax.lines:
                    log_axis(ax)
        fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label=f"training {progress}", aspect=30)
    return fig


# --------------------------------------------------------------------------- feature maps

def feature_maps(maps, image=None, title: str | None = None, cmap: str = "viridis") -> Figure:
    """Up to 8 channel maps ``(C, H, W)`` in a 2x4 grid, with the input image on the left if given.

    Each map has its own colour scale (channels differ in magnitude by
    orders); non-finite pixels are drawn light grey. ``image`` is ``(3, H, W)``
    in [0, 1]. No ticks.
    """
    maps = np.asarray(maps, dtype=float)
    if maps.ndim == 2:
        maps = maps[None]  # (1, H, W)
    maps = maps[:8]
    bad = mpl.colormaps[cmap].with_extremes(bad="0.85")
    with paper_context("single"):
        lead = 2 if image is not None else 0
        fig = Figure(figsize=(COLUMN_WIDTH["single"] * (1.0 if lead else 0.85), 1.75),
                     layout="constrained")
        grid = fig.add_gridspec(2, 4 + lead)
        if image is not None:
            img = np.nan_to_num(np.asarray(image, dtype=float), nan=0.0, posinf=1.0, neginf=0.0)
            img = np.clip(img, 0.0, 1.0)
            img = img.transpose(1, 2, 0) if img.ndim == 3 else img  # (H, W, C)
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            ax = fig.add_subplot(grid[:, :lead])
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title("input")
            ax.set_axis_off()
        for k in range(8):
            ax = fig.add_subplot(grid[k // 4, lead + k % 4])
            ax.set_axis_off()
            if k >= len(maps):
                continue
            m = np.ma.masked_invalid(maps[k])
            lo, hi = (float(m.min()), float(m.max())) if m.count() else (0.0, 1.0)
            ax.imshow(m, cmap=bad, vmin=lo, vmax=hi)
            ax.set_title(f"ch {k}", fontsize=6, pad=2)
        if title:
            fig.suptitle(title)
    return fig
