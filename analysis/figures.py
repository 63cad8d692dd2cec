"""One function per figure: tidy DataFrame in, ``matplotlib.figure.Figure`` out.

Figures are built on ``Figure`` directly (no pyplot), inside ``look.context()``
(``analysis.style.Look``: paper or slides, single or double column), so they
look the same whoever calls them; ``analysis.style.save_figure``
writes them. Non-finite values (a diverged trial) are dropped before any
median, and log axes drop values <= 0, so no figure fails on a bad trial: a
panel with nothing left says so instead of staying blank. Panels that share
an axis share one log-or-linear decision, made over all their data
(``analysis.style.log_axis``). Per-layer panels name their layers on the x
axis (``analysis.style.layer_ticks``), and a "late in training" panel names
the step it shows and exists only when a trial was sampled after step 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import seaborn as sns
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis import stats
from analysis.style import (DEFAULT_LOOK, MARKERS, PALETTE, VARIANT_ORDER, Look,
                            depth_linestyles, layer_tick_inches, layer_ticks, log_axis,
                            message_figure, model_label, variant_handles, with_variant)
from analysis.tables import network_order, snapshot_rows, stat_rows

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


def _fits(text: str, width_in: float, size="axes.titlesize") -> bool:
    """Whether one line of ``text`` fits over a panel of a column ``width_in`` wide, less
    its y tick labels (~0.55 em a character): text does not wrap itself, and a title
    that overruns its neighbour's is unreadable. ``size``: an rcParams key or a size."""
    size = FontProperties(size=mpl.rcParams.get(size, size)).get_size_in_points()
    return len(text) * 0.55 * size <= (width_in - 0.3) * 72


def _wrap(text: str, width_in: float, size="axes.titlesize") -> list[str]:
    """``text`` as lines that fit the panel, broken at the strongest separator first
    ("; " then ", " then ": " then spaces): "resnet: small_resnet18, plain" in a
    narrow panel is "resnet:", "small_resnet18", "plain". A word wider than the
    panel stays whole."""
    if _fits(text, width_in, size):
        return [text]
    sep = next((s for s in ("; ", ", ", ": ", " ") if s in text), None)
    if sep is None:
        return [text]
    parts = text.split(sep)
    pieces = [p + sep.strip() for p in parts[:-1]] + [parts[-1]]
    lines: list[str] = []
    for piece in pieces:
        if lines and _fits(f"{lines[-1]} {piece}", width_in, size):
            lines[-1] = f"{lines[-1]} {piece}"
        else:
            lines.append(piece)
    return [w.removesuffix(",") for line in lines for w in _wrap(line, width_in, size)]


def _fit_title(text: str, width_in: float) -> str:
    return "\n".join(_wrap(text, width_in))


def _no_data(ax, text: str = "no finite data", width_in: float | None = None) -> None:
    if width_in is not None:
        text = "\n".join(w for line in text.split("\n") for w in _wrap(line, width_in, "font.size"))
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.4", transform=ax.transAxes)
    # tick_params, not set_xticks([]): locators are shared with sibling panels.
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)


def _positions(rows: pd.DataFrame, order: list[str]) -> pd.Series:
    """x = position in ``order``, a merged network order (``network_order``) over every
    line of a panel, so same-named layers of both variants, and of all depths, align
    and each tick's name is true of every line through it."""
    pos = {name: i for i, name in enumerate(order)}
    return rows["layer"].map(pos)


def _tick_name(layer: str) -> str:
    # "layers.3.weight" -> "layers.3": the panel's y label already says weight.
    return layer.removesuffix(".weight")


def _layer_axis(ax, order: list[str]) -> None:
    layer_ticks(ax, [_tick_name(n) for n in order])


def _tick_room(rows: pd.DataFrame) -> float:
    """Extra inches per row for the rotated layer names of ``rows``."""
    return layer_tick_inches([_tick_name(n) for n in rows["layer"].unique()]) if len(rows) else 0.0


def _label_edges(axes, xlabels, ylabel: str) -> None:
    """x labels under the bottom row (one string, or one per column), the y label left of
    the first column: a grid labels its edges, not every panel."""
    if isinstance(xlabels, str):
        xlabels = [xlabels] * axes.shape[1]
    for ax, xlabel in zip(axes[-1], xlabels):
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def _panels(rows: pd.DataFrame, keys: list[str]) -> list[tuple]:
    return list(rows[keys].drop_duplicates().sort_values(keys).itertuples(index=False, name=None))


# --------------------------------------------------------------------------- per-layer profiles

def _layer_profile(layers: pd.DataFrame, stat: str, phase: str, ylabel: str,
                   look: Look = DEFAULT_LOOK) -> Figure:
    rows = with_variant(_finite(stat_rows(layers, stat, phase), positive=True))
    if rows.empty:
        return message_figure(f"no positive finite {stat} rows for phase {phase!r}", look)
    # One panel per model: a family's own name ("mlp") and its presets
    # ("seed_mlp5") are different networks and get different panels.
    panels = _panels(rows, ["family", "model"])
    styles = depth_linestyles(rows["depth"])
    ncols = look.columns(len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with look.context():
        fig = Figure(figsize=(look.inches, 0.3 + (look.row_height(ncols, 0.85)
                                                  + _tick_room(rows)) * nrows),
                     layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, (ax, (family, model)) in enumerate(zip(axes.flat, panels)):
            sub = rows[(rows["family"] == family) & (rows["model"] == model)]
            order = network_order(sub)
            for depth, dsub in sub.groupby("depth"):
                dsub = dsub.assign(x=_positions(dsub, order))
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
            ax.set_xlabel("layer")
            _layer_axis(ax, order)
            ax.set_ylabel(ylabel if i % ncols == 0 else "")  # seaborn labels every panel
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        handles = variant_handles(rows["variant"]) + [
            Line2D([], [], color="0.3", linestyle=ls, label=f"depth {d}") for d, ls in styles.items()]
        look.legend(fig, handles)
    return fig


def grad_by_layer(layers: pd.DataFrame, phase: str = "init", look: Look = DEFAULT_LOOK) -> Figure:
    """Mean |dL/dW| per weight layer, log y; one panel per model, hue = variant, style = depth.

    Line = median over seeds, band = interquartile range over seeds (none with
    one seed). x is the position in network order, merged over variants and
    depths so a layer sits at the same x in every line (the plain ResNet lacks
    projection shortcuts), labelled with the layer names (thinned to fit). A
    multi-step phase ("train") uses each trial's last sample.
    """
    return _layer_profile(layers, "grad_mean_abs", phase, r"mean $|\partial L / \partial W|$", look)


def act_by_layer(layers: pd.DataFrame, phase: str = "init", look: Look = DEFAULT_LOOK) -> Figure:
    """Mean |activation| per block output, log y; same layout as ``grad_by_layer``."""
    return _layer_profile(layers, "act_mean_abs", phase, "mean |activation|", look)


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


def _mark_diverged(ax, sub: pd.DataFrame, width_in: float, name_variant: bool = True) -> None:
    """Say which variant's trials diverged, and when: a diverged run has no finite
    points to draw, and must not silently vanish from the figure. Notes stack up
    from the bottom left, on two lines where one is wider than the panel."""
    loss = pd.to_numeric(sub["train_loss"], errors="coerce").to_numpy(dtype=float)
    bad = sub[~np.isfinite(loss)]
    size = FontProperties(size="small").get_size_in_points()
    lines = 0
    for variant, vbad in bad.groupby("variant"):
        n = vbad["trial_id"].nunique() if "trial_id" in vbad else 1
        text = f"{variant + ': ' if name_variant else ''}{n} diverged (epoch {int(vbad['epoch'].min())})"
        text = "\n".join(_wrap(text, width_in, size))
        note = ax.annotate(text, xy=(0.02, 0.04), xycoords="axes fraction",
                           xytext=(0, 1.2 * size * lines), textcoords="offset points",
                           color=PALETTE[variant], ha="left", va="bottom", fontsize=size)
        # a note that overruns the panel must not make the layout squeeze the panel to nothing
        note.set_in_layout(False)
        lines += text.count("\n") + 1


def training_curves(epochs: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Loss (log) and accuracy per epoch; train thin, test bold; one column per model x depth.

    Lines are medians over seeds (test with its interquartile band). Dotted
    verticals mark epochs where the learning rate drops (grey when both
    variants drop there, else in the variant's colour); a smooth schedule with
    more than ``MAX_LR_MARKS`` drops is not marked.
    """
    ep = with_variant(epochs)
    if ep.empty or "epoch" not in ep:
        return message_figure("no epoch rows", look)
    combos = _panels(ep, ["family", "model", "depth"])
    ncols = look.columns(len(combos))
    blocks = math.ceil(len(combos) / ncols)
    with look.context():
        fig = Figure(figsize=(look.inches, 0.3 + 2 * look.row_height(ncols, 0.7) * blocks),
                     layout="constrained")
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
            _mark_diverged(ax_loss, sub, look.panel_width(ncols))
            for ax in (ax_loss, ax_acc):
                if not ax.lines:
                    _no_data(ax, width_in=look.panel_width(ncols))
                    continue
                for e, vs in drops.items():
                    color = "0.5" if len(vs) == sub["variant"].nunique() else PALETTE[vs[0]]
                    ax.axvline(e, color=color, linestyle=":", linewidth=0.8, zorder=0)
            ax_loss.set_title(_fit_title(f"{model}, depth {depth}", look.panel_width(ncols)))
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
        look.legend(fig, handles)
    return fig


def act_through_training(layers: pd.DataFrame, progress: str = "step",
                         look: Look = DEFAULT_LOOK) -> Figure:
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
        return message_figure("no positive finite train-phase act_mean_abs rows", look)
    ticks = np.sort(rows[progress].unique())
    if len(ticks) > MAX_PROGRESS_LINES:
        ticks = ticks[np.unique(np.linspace(0, len(ticks) - 1, MAX_PROGRESS_LINES).round().astype(int))]
    norm = Normalize(ticks.min(), max(ticks.max(), ticks.min() + 1))
    cmap = mpl.colormaps["viridis"]
    combos = _panels(rows, ["family", "model", "depth"])
    variants = [v for v in VARIANT_ORDER if (rows["variant"] == v).any()]
    with look.context():
        fig = Figure(figsize=(look.inches, 0.4 + (look.row_height(len(variants), 0.65)
                                                  + _tick_room(rows)) * len(combos)),
                     layout="constrained")
        axes = fig.subplots(len(combos), len(variants), squeeze=False, sharey="row")
        for r, (family, model, depth) in enumerate(combos):
            sub = rows[(rows["family"] == family) & (rows["model"] == model) & (rows["depth"] == depth)]
            order = network_order(sub)
            sub = sub.assign(x=_positions(sub, order))
            for c, variant in enumerate(variants):
                ax = axes[r, c]
                vsub = sub[(sub["variant"] == variant) & sub[progress].isin(ticks)]
                for t, tsub in vsub.groupby(progress):
                    agg = _median_iqr(tsub, "x")
                    ax.plot(agg["x"], agg["median"], color=cmap(norm(t)), linewidth=1.0,
                            marker=MARKERS[variant], markersize=2,
                            markevery=max(1, round(len(agg) / 12)))
                if not ax.lines:
                    _no_data(ax, width_in=look.panel_width(len(variants)))
                ax.set_title(_fit_title(f"{model}, depth {depth}: {variant}",
                                        look.panel_width(len(variants))), color=PALETTE[variant])
                _layer_axis(ax, order)
            log_axis(axes[r, 0])  # once the whole row is drawn: its panels share y
        _label_edges(axes, "layer", "mean |activation|")
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label=f"training {progress}",
                           aspect=40, shrink=min(1.0, 4.0 / fig.get_size_inches()[1]))
        # the sampled steps themselves when few (one sample: just its step, not a 0..1 scale)
        if len(ticks) <= 6:
            bar.set_ticks([float(t) for t in ticks], labels=[str(int(t)) for t in ticks])
        else:
            bar.locator = MaxNLocator(integer=True)
    return fig


# --------------------------------------------------------------------------- feature maps

def feature_maps(maps, image=None, title: str | None = None, cmap: str = "viridis",
                 look: Look = DEFAULT_LOOK) -> Figure:
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
    with look.context():
        lead = 2 if image is not None else 0
        # The 8-map grid is a single-column figure whatever the look's width.
        w = Look(look.style, "single").inches * (1.0 if lead else 0.85)
        fig = Figure(figsize=(w, 0.53 * w), layout="constrained")
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


# --------------------------------------------------------------------------- He et al.-style figures

def _model_panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return _panels(frame, ["family", "model"])


def _depth_colors(depths) -> dict:
    """Depth -> colour, light to dark in depth order (a sequential, colour-blind safe map)."""
    depths = sorted(set(depths))
    cmap = mpl.colormaps["viridis"]
    # 0.85 .. 0.05: avoid viridis' pale yellow end, which vanishes on white.
    stops = np.linspace(0.85, 0.05, len(depths)) if len(depths) > 1 else [0.35]
    return {d: cmap(float(x)) for d, x in zip(depths, stops)}


def _failure_note(ax, x: float, text: str, variant: str, k: int) -> None:
    """Print a failure count in the variant's colour at the top of the panel, over ``x``;
    ``k`` stacks the notes of several variants (two lines each)."""
    ax.annotate(text, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, -2 - 15 * k), textcoords="offset points", ha="center", va="top",
                linespacing=0.95,
                fontsize="x-small", color=PALETTE[variant])


def degradation_vs_depth(trials: pd.DataFrame, look: Look = DEFAULT_LOOK,
                         chance_error: float | None = None) -> Figure:
    """The headline figure: final train loss and test error against depth, per family.

    One column per family (or preset model), rows: final training loss, final
    test error (%). Each variant is its mean over completed seeds with a 95%
    Student t interval (``analysis.stats.cell_summary``), and every completed
    seed as a small dot. Variants are dodged left/right so the intervals do
    not overlap. A cell with diverged, errored or pending trials says so at
    the top of the panel ("2/3 div."), in the variant's colour, so a depth
    where plain never finished is visible rather than missing. A dashed line
    marks ``chance_error`` (0.9 for 10 balanced classes) when given.
    """
    need = {"final_train_loss", "final_test_acc"}
    if not need <= set(trials.columns):
        return message_figure("degradation vs depth needs trained trials "
                              "(final_train_loss, final_test_acc)", look)
    cells = stats.cell_summary(trials, ("final_train_loss", "final_test_error"))
    done = stats.with_derived(trials[trials["status"] == "completed"])
    if "family" not in done:
        done = done.assign(family=done["model"])
    panels = _model_panels(cells)
    metrics = [("final_train_loss", "train loss", 1.0),
               ("final_test_error", "test error (%)", 100.0)]
    ncols = look.columns(len(panels)) if len(panels) > 1 else 1
    blocks = math.ceil(len(panels) / ncols)
    with look.context():
        width = look.inches if ncols > 1 else min(look.inches, Look(look.style, "single").inches)
        row_h = min(look.row_height(ncols), max(1.1, 0.3 * look.inches))
        fig = Figure(figsize=(width, 0.3 + row_h * len(metrics) * blocks), layout="constrained")
        axes = fig.subplots(len(metrics) * blocks, ncols, squeeze=False)
        for i, (family, model) in enumerate(panels):
            cell = with_variant(cells[(cells["family"] == family) & (cells["model"] == model)])
            runs = with_variant(done[(done["family"] == family) & (done["model"] == model)])
            depths = sorted(cell["depth"].unique())
            pos = {d: j for j, d in enumerate(depths)}  # even spacing: 5, 18, 34 all readable
            failed = cell[["n_diverged", "n_error", "n_pending"]].sum(axis=1) > 0
            noted = [v for v in VARIANT_ORDER if (failed & (cell["variant"] == v)).any()]
            for r, (metric, ylabel, scale) in enumerate(metrics):
                ax = axes[len(metrics) * (i // ncols) + r, i % ncols]
                for k, variant in enumerate(VARIANT_ORDER):
                    vc = cell[cell["variant"] == variant]
                    if vc.empty:
                        continue
                    dx = (k - 0.5) * 0.16
                    x = vc["depth"].map(pos).to_numpy(dtype=float) + dx
                    mean = vc[f"{metric}_mean"].to_numpy(dtype=float) * scale
                    lo = vc[f"{metric}_ci_lo"].to_numpy(dtype=float) * scale
                    hi = vc[f"{metric}_ci_hi"].to_numpy(dtype=float) * scale
                    err = np.vstack([mean - lo, hi - mean])
                    err = np.where(np.isfinite(err), err, 0.0)
                    # No finite mean (every completed seed's metric NaN): no line at all,
                    # so the panel's "no completed trials" note below sees it as empty.
                    if np.isfinite(mean).any():
                        ax.errorbar(x, mean, yerr=err, color=PALETTE[variant],
                                    marker=MARKERS[variant], capsize=2, linewidth=1.2,
                                    markersize=4, label=variant, zorder=3)
                    vr = runs[runs["variant"] == variant]
                    vals = pd.to_numeric(vr[metric], errors="coerce").to_numpy(dtype=float)
                    ok = np.isfinite(vals)
                    ax.scatter(vr["depth"].map(pos).to_numpy(dtype=float)[ok] + 1.8 * dx,
                               vals[ok] * scale, s=5, color=PALETTE[variant], alpha=0.45,
                               linewidths=0, zorder=2)
                    if r == 0:
                        for _, c in vc.iterrows():
                            bad = int(c["n_diverged"]) + int(c["n_error"]) + int(c["n_pending"])
                            if bad:
                                kinds = [w for w, n in (("div.", c["n_diverged"]),
                                                        ("err.", c["n_error"]),
                                                        ("pend.", c["n_pending"])) if n]
                                _failure_note(ax, pos[c["depth"]] + dx,
                                              f"{bad}/{int(c['n_planned'])}\n{'+'.join(kinds)}",
                                              variant, noted.index(variant))
                ax.margins(y=0.12)
                if r == 0 and ax.texts:  # headroom, so the notes never sit on a point
                    ax.autoscale_view()
                    lo, hi = ax.get_ylim()
                    # two lines of x-small text per variant with notes, over ~65% of the
                    # row height that the axes itself gets
                    lines = 2 * len({t.get_color() for t in ax.texts})
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
                    _no_data(ax, "no completed trials",
                             look.panel_width(ncols) if ncols > 1 else width)
                if r == 0:
                    ax.set_title(_fit_title(model_label(family, model),
                                            look.panel_width(ncols) if ncols > 1 else width))
                if i % ncols == 0:
                    ax.set_ylabel(f"final {ylabel}" if look.width == "double" else ylabel)
        for j in range(len(panels), blocks * ncols):
            for r in range(len(metrics)):
                axes[len(metrics) * (j // ncols) + r, j % ncols].set_visible(False)
        fig.supxlabel("depth (weighted layers)", fontsize=mpl.rcParams["axes.labelsize"])
        handles = variant_handles(with_variant(cells)["variant"]) + [
            Line2D([], [], color="0.4", marker="o", linestyle="none", markersize=2, alpha=0.6,
                   label="one seed")]
        look.legend(fig, handles)
    return fig


def training_curves_by_depth(epochs: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Error per epoch, plain left and residual right, one colour per depth (He et al. Fig. 6).

    Thin lines are training error, bold lines test error (%), medians over
    seeds; one row per family (or preset model), the two panels of a row
    share y. Diverged trials have no finite points: the panel names them.
    """
    ep = with_variant(epochs)
    if ep.empty or not {"epoch", "train_acc", "test_acc"} <= set(ep.columns):
        return message_figure("no epoch rows with train_acc and test_acc", look)
    panels = _model_panels(ep)
    variants = [v for v in VARIANT_ORDER if (ep["variant"] == v).any()]
    with look.context():
        fig = Figure(figsize=(look.inches, 0.35 + look.row_height(len(variants)) * len(panels)),
                     layout="constrained")
        axes = fig.subplots(len(panels), len(variants), squeeze=False, sharey="row")
        colors = _depth_colors(ep["depth"])  # one mapping for every panel and the legend
        for r, (family, model) in enumerate(panels):
            sub = ep[(ep["family"] == family) & (ep["model"] == model)]
            for c, variant in enumerate(variants):
                ax = axes[r, c]
                vsub = sub[sub["variant"] == variant]
                for depth, dsub in vsub.groupby("depth"):
                    for bold, split in ((False, "train"), (True, "test")):
                        pts = _finite(dsub, f"{split}_acc")
                        if pts.empty:
                            continue
                        agg = _median_iqr(pts.assign(err=100.0 * (1.0 - pts[f"{split}_acc"].astype(float))),
                                          "epoch", "err")
                        ax.plot(agg["epoch"], agg["median"], color=colors[depth],
                                linewidth=1.8 if bold else 0.8, alpha=1.0 if bold else 0.75,
                                linestyle="-" if bold else "--")
                if "train_loss" in vsub:
                    _mark_diverged(ax, vsub, look.panel_width(len(variants)), name_variant=False)
                if not ax.lines:
                    _no_data(ax, width_in=look.panel_width(len(variants)))
                ax.set_title(_fit_title(f"{model_label(family, model)}, {variant}",
                                        look.panel_width(len(variants))), color=PALETTE[variant])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label_edges(axes, "epoch", "error (%)")
        handles = [Line2D([], [], color=colors[d], linewidth=1.8, label=f"depth {d}")
                   for d in sorted(colors)]
        handles += [Line2D([], [], color="0.3", linewidth=0.8, linestyle="--", label="train"),
                    Line2D([], [], color="0.3", linewidth=1.8, label="test")]
        look.legend(fig, handles)
    return fig


class _Column(NamedTuple):
    """One column of a ``_profile_grid``: a moment's rows and how to draw and title them."""
    title: str
    rows: pd.DataFrame
    sort: bool = False      # each line's values sorted by magnitude, x = rank (He et al. Fig. 7)
    moment: bool = False    # name each panel's sampled step(s) under its title
    subtitle: str = ""      # a line under every panel's title
    notes: dict = {}        # (family, model) -> why some trials are not shown
    missing: str = "no finite data"  # what a panel of this column with no rows says


def _span(values: pd.Series, word: str) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{word} {lo}" if lo == hi else f"{word}s {lo}-{hi}"


def _moment(rows: pd.DataFrame) -> str:
    """"step 120 (epoch 3)"; a range when the trials' last samples differ."""
    text = _span(rows["step"], "step")
    return f"{text} ({_span(rows['epoch'], 'epoch')})" if "epoch" in rows else text


def _late_rows(late: pd.DataFrame, init: pd.DataFrame,
               trials: pd.DataFrame | None) -> tuple[pd.DataFrame, dict, bool]:
    """The ``late`` rows fit to be called late in training, a note per (family, model)
    naming the trials left out, and whether any trial was sampled after initialization.

    Left out: a trial whose last sample is no later than its ``init`` snapshot
    (a smoke run samples only step 0: drawn as "late" that is the initial
    network under a false name) and, with ``trials``, a trial that did not
    complete (a diverged trial's last sample is its state just before it blew
    up, or for one that diverged in its first epoch, the initial network).
    """
    start = init.groupby("trial_id")["step"].max()
    after = late["step"].to_numpy(dtype=float) > \
        late["trial_id"].map(start).to_numpy(dtype=float, na_value=-np.inf)
    later = bool(after.any())
    cols = ["trial_id", "family", "model", "residual"]
    out = late[~after].drop_duplicates("trial_id")[cols].assign(reason="sampled only at init")
    if trials is not None and "status" in trials:
        t = trials if "family" in trials else trials.assign(family=trials["model"])
        bad = t.loc[t["status"] != "completed", cols + ["status"]].rename(columns={"status": "reason"})
        out = pd.concat([bad, out]).drop_duplicates("trial_id")  # a failure is the reason given
    out = with_variant(out)
    notes = {}
    for (family, model), g in out.groupby(["family", "model"]):
        parts = [f"{v}: " + ", ".join(f"{n} {reason}" for reason, n in
                                      gv["reason"].astype(str).value_counts(sort=False).items())
                 for v, gv in g.groupby("variant")]
        notes[(family, model)] = "not shown: " + "; ".join(parts)
    return late[after & ~late["trial_id"].isin(set(out["trial_id"]))], notes, later


def _title(label: str, col: _Column, rows: pd.DataFrame, key: tuple, width_in: float) -> str:
    lines = [f"{label}: {col.title}"]
    if col.moment and len(rows):
        lines.append(_moment(rows))
    if col.subtitle:
        lines.append(col.subtitle)
    if key in col.notes:
        lines.append(f"({col.notes[key]})")
    return "\n".join(_fit_title(line, width_in) for line in lines)


def _profile_grid(columns: list[_Column], ylabel: str, look: Look, empty: str = "no rows") -> Figure:
    """Rows = models, one column per ``_Column``; per panel one line per variant x depth
    (colour = variant, line style = depth), median over seeds, log y; x = layer names
    in network order, or the rank for a sorted column.
    """
    cols = [c._replace(rows=with_variant(_finite(c.rows, positive=True))) for c in columns]
    cols = [c for c in cols if not c.rows.empty or c.notes or c.moment]
    if all(c.rows.empty for c in cols):
        return message_figure(empty, look)
    allrows = pd.concat([c.rows for c in cols if not c.rows.empty])
    panels = _model_panels(allrows)
    styles = depth_linestyles(allrows["depth"])
    handles = variant_handles(allrows["variant"]) + [
        Line2D([], [], color="0.3", linestyle=ls, label=f"depth {d}") for d, ls in styles.items()]
    with look.context():
        width = look.panel_width(len(cols))
        subs = {(r, c): col.rows[(col.rows["family"] == family) & (col.rows["model"] == model)]
                for r, (family, model) in enumerate(panels) for c, col in enumerate(cols)}
        titles = {(r, c): _title(model_label(*panels[r]), cols[c], sub, panels[r], width)
                  for (r, c), sub in subs.items()}
        # Rows grow with their titles' extra lines (a step, a note) rather than squeezing
        # the panels, and the figure with a legend set above the panels.
        extra = sum(max(titles[r, c].count("\n") for c in range(len(cols)))
                    for r in range(len(panels)))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(len(handles))
                              + extra * look.title_line_inches
                              + (look.row_height(len(cols), 0.75) + _tick_room(allrows)) * len(panels)),
                     layout="constrained")
        axes = fig.subplots(len(panels), len(cols), squeeze=False, sharey="row")
        for r, (family, model) in enumerate(panels):
            for c, col in enumerate(cols):
                ax, sub = axes[r, c], subs[r, c]
                order = network_order(sub) if len(sub) else []
                for depth, dsub in sub.groupby("depth"):
                    dsub = dsub.assign(x=_positions(dsub, order))
                    for variant in VARIANT_ORDER:
                        vsub = dsub[dsub["variant"] == variant]
                        if vsub.empty:
                            continue
                        agg = _median_iqr(vsub, "x")
                        if col.sort:
                            y = np.sort(agg["median"].to_numpy())[::-1]
                            ax.plot(np.arange(1, len(y) + 1), y, color=PALETTE[variant],
                                    linestyle=styles[depth], marker=MARKERS[variant],
                                    markevery=max(1, len(y) // 8), markersize=2.5)
                        else:
                            _line_band(ax, agg, "x", PALETTE[variant], linestyle=styles[depth],
                                       marker=MARKERS[variant],
                                       markevery=max(1, len(agg) // 8), markersize=2.5)
                ax.set_title(titles[r, c])
                if col.sort:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                else:
                    _layer_axis(ax, order)
                if not ax.lines:
                    _no_data(ax, col.missing, width)
            log_axis(axes[r, 0])  # once the whole row is drawn: its panels share y
        _label_edges(axes, ["rank by magnitude" if c.sort else "layer" for c in cols], ylabel)
        look.legend(fig, handles)
    return fig


NO_LATER_SAMPLE = "no sample after initialization"
NO_LATE_PANEL = "no completed trial\nsampled after initialization"


def layer_response_std(layers: pd.DataFrame, look: Look = DEFAULT_LOOK,
                       when: str = "late", trials: pd.DataFrame | None = None) -> Figure:
    """Std of each tapped layer's output, in network order (left) and sorted by
    magnitude (right), residual vs plain per depth: He et al. 2016 Fig. 7.

    He et al. take the 3x3 convolutions' outputs after BN, before the
    nonlinearity; here the responses are the model's tap points (block
    outputs, ``analysis.hooks.default_taps``), over the whole batch. ``when``
    "late" (default: the trained network, like the paper, titled with the step
    it was sampled at) or "init". With ``trials``, "late" shows completed
    trials only and names the others. A run sampled only at initialization
    (a smoke run) has no late moment: its init is shown and titled so.
    """
    init = snapshot_rows(layers, "act_std", "init")
    kw: dict = {}
    if when == "late":
        rows, note, later = _late_rows(snapshot_rows(layers, "act_std", "late"), init, trials)
        if later:
            kw = dict(moment=True, notes=note, missing=NO_LATE_PANEL)
        elif len(rows := init):
            kw = dict(subtitle="at init: no later sample")
    else:
        rows = snapshot_rows(layers, "act_std", when)
    return _profile_grid([_Column("in network order", rows, **kw),
                          _Column("sorted", rows, sort=True, **kw)],
                         "std of layer response", look, empty=f"no act_std rows at {when!r}")


def gradient_flow(layers: pd.DataFrame, look: Look = DEFAULT_LOOK,
                  trials: pd.DataFrame | None = None) -> Figure:
    """Mean |dL/dW| per weight layer at initialization and late in training, log y.

    Columns: "at init" (the probe, or each trial's first training step) and
    "late in training" (each trial's last sampled step, named in the title); a
    probe-only sweep has only the first, and so has a run sampled only at
    step 0 (a smoke run), which says so. Median over seeds with the
    interquartile band. With ``trials``, "late" shows completed trials only
    and names the others (a diverged trial's last finite sample is not a
    trained network).
    """
    init = snapshot_rows(layers, "grad_mean_abs", "init")
    late = snapshot_rows(layers, "grad_mean_abs", "late")
    shown, note, later = _late_rows(late, init, trials)
    if later:
        cols = [_Column("at init", init),
                _Column("late in training", shown, moment=True, notes=note, missing=NO_LATE_PANEL)]
    else:  # a probe has no late moment; a trained run sampled only at step 0 says so
        cols = [_Column("at init", init, subtitle=f"({NO_LATER_SAMPLE})" if len(late) else "")]
    return _profile_grid(cols, r"mean $|\partial L / \partial W|$", look,
                         empty="no grad_mean_abs rows")
