"""Per-layer figures over ``layers.parquet``: gradient and activation profiles in
network order, at initialization, late in training, and through training.

One panel (row) per model and facet (``analysis.variants``: each combination of
the levels of norm, block, ... that plain and residual share, named in the
title); within it, colour and marker = hue variant (plain, residual at each
residual-only level), line style = depth. Medians are taken within one variant,
facet and depth, never across two. x is the position in network order, merged
over every line of the panel (``analysis.tables.network_order``), labelled with
the layer names (``analysis.style.layer_ticks``); a "late in training" panel
names the step it shows and exists only when a trial was sampled after step 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.status import Status
from ablations import levels
from analysis.figure_parts import (finite, fit_parts, fit_title, label_edges, layer_axis, line_band,
                                   zero_layers, zero_notes,
                                   median_iqr, no_data, panels, positions, tick_room, where)
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, depth_linestyles, log_axis, message_figure
from analysis.tables import network_order, snapshot_rows, stat_rows
from analysis.variants import Variants, joined, keyed

MAX_PROGRESS_LINES = 10  # more lines than this in one panel cannot be told apart
PANEL_KEYS = ["family", "model", "facet"]


def _depth_handles(styles: dict) -> list[Line2D]:
    return [Line2D([], [], color="0.3", linestyle=ls, label=f"depth {d}") for d, ls in styles.items()]


# --------------------------------------------------------------------------- one moment, one panel per model

def _layer_profile(layers: pd.DataFrame, stat: str, phase: str, ylabel: str,
                   look: Look = DEFAULT_LOOK) -> Figure:
    rows, key = keyed(finite(stat_rows(layers, stat, phase), positive=True))
    if rows.empty:
        return message_figure(f"no positive finite {stat} rows for phase {phase!r}", look)
    # One panel per model and facet: a family's own name ("mlp") and its presets
    # ("seed_mlp5") are different networks and get different panels.
    boxes = panels(rows, PANEL_KEYS, key)
    styles = depth_linestyles(rows["depth"])
    ncols = look.columns(len(boxes))
    nrows = math.ceil(len(boxes) / ncols)
    with look.context():
        fig = Figure(figsize=(look.inches, 0.3 + (look.row_height(ncols, 0.85)
                                                  + tick_room(rows)) * nrows),
                     layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        import seaborn as sns  # here: ~0.45 s of import (scipy.stats) only where drawn
        for i, (ax, box) in enumerate(zip(axes.flat, boxes)):
            sub = where(rows, PANEL_KEYS, box)
            order = network_order(sub)
            for depth, dsub in sub.groupby("depth"):
                dsub = dsub.assign(x=positions(dsub, order))
                for variant in key.present(dsub["variant"]):
                    vsub = dsub[dsub["variant"] == variant]
                    # seaborn: median over seeds, band = interquartile range (50% PI).
                    # ~10 markers a line: enough to tell variants apart in
                    # greyscale, few enough that depth line styles still show.
                    sns.lineplot(data=vsub, x="x", y="value", estimator="median",
                                 errorbar=("pi", 50), color=key.color(variant), ax=ax,
                                 marker=key.marker(variant), linestyle=styles[depth],
                                 markevery=max(1, round(vsub["x"].nunique() / 10)),
                                 markeredgewidth=0, legend=False)
            log_axis(ax)
            ax.set_title(fit_title(joined(box[1], box[2]), look.panel_width(ncols)))
            ax.set_xlabel("layer")
            layer_axis(ax, order)
            ax.set_ylabel(ylabel if i % ncols == 0 else "")  # seaborn labels every panel
        for ax in axes.flat[len(boxes):]:
            ax.set_visible(False)
        look.legend(fig, key.handles(rows["variant"]) + _depth_handles(styles))
    return fig


def grad_by_layer(layers: pd.DataFrame, phase: str = "init", look: Look = DEFAULT_LOOK) -> Figure:
    """Mean |dL/dW| per weight layer, log y; one panel per model and facet, hue =
    variant, style = depth.

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


# --------------------------------------------------------------------------- through training

DEPTH_KEYS = ["family", "model", "facet", "depth"]


def act_through_training(layers: pd.DataFrame, progress: str = "step",
                         look: Look = DEFAULT_LOOK) -> Figure:
    """Mean |activation| per layer at sampled training steps, colour = progress (log y).

    One panel per (model, facet, depth) row and variant column, rows sharing
    y; median over seeds. At most ``MAX_PROGRESS_LINES`` evenly spaced samples
    are drawn. ``progress`` is "step" or "epoch".
    """
    if progress not in ("step", "epoch"):
        raise ValueError(f"progress must be 'step' or 'epoch' (got {progress!r})")
    rows = layers[(layers["stat"] == "act_mean_abs") & (layers["phase"] == "train")]
    rows, key = keyed(finite(rows, positive=True))
    if rows.empty:
        return message_figure("no positive finite train-phase act_mean_abs rows", look)
    ticks = np.sort(rows[progress].unique())
    if len(ticks) > MAX_PROGRESS_LINES:
        ticks = ticks[np.unique(np.linspace(0, len(ticks) - 1, MAX_PROGRESS_LINES).round().astype(int))]
    norm = Normalize(ticks.min(), max(ticks.max(), ticks.min() + 1))
    cmap = mpl.colormaps["viridis"]
    combos = panels(rows, DEPTH_KEYS, key)
    variants = key.present(rows["variant"])
    width = look.panel_width(len(variants))
    with look.context():
        # "mlp, depth 8: plain" on one line where it fits; else the model and facet
        # over "depth 8: residual, x1/sqrt(blocks)", and the row grows by those lines
        titles = {(r, c): fit_parts(joined(model, facet), f"depth {depth}: {variant}", width)
                  for r, (_, model, facet, depth) in enumerate(combos)
                  for c, variant in enumerate(variants)}
        extra = sum(max(titles[r, c].count("\n") for c in range(len(variants)))
                    for r in range(len(combos)))
        fig = Figure(figsize=(look.inches, 0.4 + extra * look.title_line_inches
                              + (look.row_height(len(variants), 0.65) + tick_room(rows)) * len(combos)),
                     layout="constrained")
        axes = fig.subplots(len(combos), len(variants), squeeze=False, sharey="row")
        for r, combo in enumerate(combos):
            sub = where(rows, DEPTH_KEYS, combo)
            order = network_order(sub)
            sub = sub.assign(x=positions(sub, order))
            for c, variant in enumerate(variants):
                ax = axes[r, c]
                vsub = sub[(sub["variant"] == variant) & sub[progress].isin(ticks)]
                for t, tsub in vsub.groupby(progress):
                    agg = median_iqr(tsub, "x")
                    ax.plot(agg["x"], agg["median"], color=cmap(norm(t)), linewidth=1.0,
                            marker=key.marker(variant), markersize=2,
                            markevery=max(1, round(len(agg) / 12)))
                if not ax.lines:
                    no_data(ax, "no finite data" if (sub["variant"] == variant).any() else "no runs",
                            width_in=width)
                ax.set_title(titles[r, c], color=key.color(variant))
                layer_axis(ax, order)
            log_axis(axes[r, 0])  # once the whole row is drawn: its panels share y
        label_edges(axes, "layer", "mean |activation|")
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, label=f"training {progress}",
                           aspect=40, shrink=min(1.0, 4.0 / fig.get_size_inches()[1]))
        # the sampled steps themselves when few (one sample: just its step, not a 0..1 scale)
        if len(ticks) <= 6:
            bar.set_ticks([float(t) for t in ticks], labels=[str(int(t)) for t in ticks])
        else:
            bar.locator = MaxNLocator(integer=True)
    return fig


# --------------------------------------------------------------------------- init and late, side by side

class _Column(NamedTuple):
    """One column of a ``_profile_grid``: a moment's rows and how to draw and title them."""
    title: str
    rows: pd.DataFrame
    sort: bool = False      # each line's values sorted by magnitude, x = rank (He et al. Fig. 7)
    moment: bool = False    # name each panel's sampled step(s) under its title
    subtitle: str = ""      # a line under every panel's title
    left_out: pd.DataFrame | None = None  # trials not shown, with a "reason" column
    missing: str = "no finite data"  # what a panel of this column with no rows says
    zeros: pd.DataFrame | None = None  # layers at exactly 0 (``zero_layers``), named in titles


def _span(values: pd.Series, word: str) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{word} {lo}" if lo == hi else f"{word}s {lo}-{hi}"


def _moment(rows: pd.DataFrame) -> str:
    """"step 120 (epoch 3)"; a range when the trials' last samples differ."""
    text = _span(rows["step"], "step")
    return f"{text} ({_span(rows['epoch'], 'epoch')})" if "epoch" in rows else text


def _late_rows(late: pd.DataFrame, init: pd.DataFrame,
               trials: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """The ``late`` rows fit to be called late in training, the trials left out (one row
    each, with a ``reason``), and whether any trial was sampled after initialization.

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
    cols = ["trial_id", "family", "model", *levels.present(late)]
    out = late[~after].drop_duplicates("trial_id")[cols].assign(reason="sampled only at init")
    if trials is not None and "status" in trials:
        t = trials if "family" in trials else trials.assign(family=trials["model"])
        bad = t.loc[t["status"] != Status.COMPLETED, [c for c in cols if c in t] + ["status"]]
        out = pd.concat([bad.rename(columns={"status": "reason"}), out])
        out = out.drop_duplicates("trial_id")  # a failure is the reason given
    return late[after & ~late["trial_id"].isin(set(out["trial_id"]))], out, later


def _notes(left_out: pd.DataFrame | None, key: Variants) -> dict:
    """(family, model, facet) -> "not shown: plain: 1 diverged; residual, x1: 2 error"."""
    if left_out is None or left_out.empty:
        return {}
    out, _ = keyed(left_out, like=key)
    notes = {}
    for box in panels(out, PANEL_KEYS, key):
        g = where(out, PANEL_KEYS, box)
        variants = key.present(g["variant"]) + sorted(set(g["variant"]) - set(key.order))
        parts = [f"{v}: " + ", ".join(f"{n} {reason}" for reason, n in
                                      g.loc[g["variant"] == v, "reason"].astype(str)
                                      .value_counts(sort=False).items())
                 for v in variants]
        notes[box] = "not shown: " + "; ".join(parts)
    return notes


def _joined_notes(*notes: dict) -> dict:
    return {box: "; ".join(n[box] for n in notes if box in n)
            for box in dict.fromkeys(b for n in notes for b in n)}


def _title(label: str, col: _Column, rows: pd.DataFrame, note: str | None, width_in: float) -> str:
    lines = [f"{label}: {col.title}"]
    if col.moment and len(rows):
        lines.append(_moment(rows))
    if col.subtitle:
        lines.append(col.subtitle)
    if note:
        lines.append(f"({note})")
    return "\n".join(fit_title(line, width_in) for line in lines)


def _profile_grid(columns: list[_Column], ylabel: str, look: Look, empty: str = "no rows") -> Figure:
    """Rows = model x facet, one column per ``_Column``; per panel one line per variant x
    depth (colour and marker = variant, line style = depth), median over seeds, log y;
    x = layer names in network order, or the rank for a sorted column.
    """
    # values <= 0 stay in the rows (their layers keep their places on x) but are not drawn:
    # a line breaks there, and the title names layers with no positive value at all
    cols = [c._replace(rows=finite(c.rows), zeros=zero_layers(c.rows)) for c in columns]
    found = [c.rows for c in cols if not c.rows.empty]
    key = keyed(pd.concat(found))[1] if found else Variants()
    cols = [c._replace(rows=keyed(c.rows, like=key)[0]) for c in cols]
    cols = [c for c in cols if not c.rows.empty or c.moment
            or (c.left_out is not None and len(c.left_out))]
    if all(c.rows.empty for c in cols):
        return message_figure(empty, look)
    allrows = pd.concat([c.rows for c in cols if not c.rows.empty])
    boxes = panels(allrows, PANEL_KEYS, key)
    styles = depth_linestyles(allrows["depth"])
    handles = key.handles(allrows["variant"]) + _depth_handles(styles)
    with look.context():
        width = look.panel_width(len(cols))
        subs = {(r, c): where(col.rows, PANEL_KEYS, box)
                for r, box in enumerate(boxes) for c, col in enumerate(cols)}
        notes = [_joined_notes(_notes(col.left_out, key), zero_notes(col.zeros, key, PANEL_KEYS))
                 for col in cols]
        titles = {(r, c): _title(joined(network_title(*boxes[r][:2]), boxes[r][2]), cols[c], sub,
                                 notes[c].get(boxes[r]), width)
                  for (r, c), sub in subs.items()}
        # Rows grow with their titles' extra lines (a step, a note) rather than squeezing
        # the panels, and the figure with a legend set above the panels.
        extra = sum(max(titles[r, c].count("\n") for c in range(len(cols)))
                    for r in range(len(boxes)))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + extra * look.title_line_inches
                              + (look.row_height(len(cols), 0.75) + tick_room(allrows)) * len(boxes)),
                     layout="constrained")
        axes = fig.subplots(len(boxes), len(cols), squeeze=False, sharey="row")
        for r in range(len(boxes)):
            for c, col in enumerate(cols):
                ax, sub = axes[r, c], subs[r, c]
                order = network_order(sub) if len(sub) else []
                for depth, dsub in sub.groupby("depth"):
                    dsub = dsub.assign(x=positions(dsub, order))
                    for variant in key.present(dsub["variant"]):
                        agg = median_iqr(dsub[dsub["variant"] == variant], "x")
                        agg[["median", "q25", "q75"]] = agg[["median", "q25", "q75"]].where(
                            agg[["median", "q25", "q75"]] > 0)  # a log axis: gaps, not 0
                        if agg["median"].isna().all():
                            continue  # every layer at 0: named in the title
                        kw = dict(color=key.color(variant), linestyle=styles[depth],
                                  marker=key.marker(variant), markersize=2.5)
                        if col.sort:
                            y = np.sort(agg["median"].dropna().to_numpy())[::-1]
                            ax.plot(np.arange(1, len(y) + 1), y, markevery=max(1, len(y) // 8), **kw)
                        else:
                            line_band(ax, agg, "x", markevery=max(1, len(agg) // 8), **kw)
                ax.set_title(titles[r, c])
                if col.sort:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                else:
                    layer_axis(ax, order)
                if not ax.lines:
                    no_data(ax, col.missing, width)
            log_axis(axes[r, 0])  # once the whole row is drawn: its panels share y
        label_edges(axes, ["rank by magnitude" if c.sort else "layer" for c in cols], ylabel)
        look.legend(fig, handles)
    return fig


NO_LATER_SAMPLE = "no sample after initialization"
NO_LATE_PANEL = "no completed trial\nsampled after initialization"


BLOCK_OUTPUT_STD = "std of block output"
RESPONSE_STD = "std of layer response (per channel)"


def layer_response_std(layers: pd.DataFrame, look: Look = DEFAULT_LOOK,
                       when: str = "late", trials: pd.DataFrame | None = None,
                       ylabel: str = BLOCK_OUTPUT_STD) -> Figure:
    """Std of each tapped layer's output (``act_std`` rows), in network order (left) and
    sorted by magnitude (right), per variant and depth: the layout of He et al. 2016
    Fig. 7.

    What it shows depends on the rows. ``layers.parquet``'s ``act_std`` is of the
    model's tap points (``ablations.hooks.default_taps``: the stem, every block's output,
    i.e. after the addition of branch and shortcut where there is one and after a
    post-activation ResNet block's final ReLU, and the classifier), over the whole
    batch: NOT He et al.'s responses, which are the 3x3 convs' outputs after
    BN, before the ReLU and the addition (``ablations.measurements.responses``, whose
    ``responses_as_layers`` gives rows for this figure, with ``ylabel=RESPONSE_STD``).
    ``ylabel`` names the quantity (default: the block outputs). ``when`` "late"
    (default: the trained network, like the paper, titled with the step it was sampled
    at) or "init". With ``trials``, "late" shows completed trials only and names the
    others. A run sampled only at initialization (a smoke run) has no late moment: its
    init is shown and titled so.
    """
    init = snapshot_rows(layers, "act_std", "init")
    kw: dict = {}
    if when == "late":
        rows, left_out, later = _late_rows(snapshot_rows(layers, "act_std", "late"), init, trials)
        if later:
            kw = dict(moment=True, left_out=left_out, missing=NO_LATE_PANEL)
        elif len(rows := init):
            kw = dict(subtitle="at init: no later sample")
    else:
        rows = snapshot_rows(layers, "act_std", when)
    return _profile_grid([_Column("in network order", rows, **kw),
                          _Column("sorted", rows, sort=True, **kw)],
                         ylabel, look, empty=f"no act_std rows at {when!r}")


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
    shown, left_out, later = _late_rows(late, init, trials)
    if later:
        cols = [_Column("at init", init),
                _Column("late in training", shown, moment=True, left_out=left_out,
                        missing=NO_LATE_PANEL)]
    else:  # a probe has no late moment; a trained run sampled only at step 0 says so
        cols = [_Column("at init", init, subtitle=f"({NO_LATER_SAMPLE})" if len(late) else "")]
    return _profile_grid(cols, r"mean $|\partial L / \partial W|$", look,
                         empty="no grad_mean_abs rows")
