"""The layer-response figure and table (``ablations.measurements.responses``: the std
of each conv's or Linear's output after its norm, He et al. 2016 Fig. 7), and the
responses as ``layers.parquet`` rows for the report's ``layer_response_std`` figure
(``responses_as_layers``).

They show the per-channel std, or the whole-tensor std of a file measured before the
per-channel one existed, and then say so (``shown``).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements.responses import CHANNEL, LEGACY, OWN, TENSOR
from analysis.figure_parts import finite, fit_title, line_band, median_iqr, panels, where
from analysis.figures_layers import PANEL_KEYS
from ablations.plan import network_title
from analysis.style import DEFAULT_LOOK, Look, depth_linestyles, log_axis, message_figure
from analysis.variants import joined, keyed
from analysis.views import FigureSpec, TableSpec
from analysis.views.parts import cell_table, headline, per_trial, when_means


OLD_FILE = "whole tensor; old file: no per-channel column"


def shown(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """``(rows, column, what)``: the std the figure, the table and ``responses_as_layers``
    show, per channel, or the whole-tensor std of a file measured before the per-channel
    one existed (``analysis.views.parts.headline``), and its name for labels."""
    rows, col, old = headline(df, CHANNEL, TENSOR, LEGACY)
    return rows, col, (f"response std ({OLD_FILE})" if old else
                       "response std (per channel)")


def responses_std(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """He et al. 2016 Fig. 7: per-channel std of each layer response against the layer
    index in network order (top) and sorted by magnitude, largest first (bottom), per
    model and facet; colour and marker = variant, line style = depth; the median over
    seeds (band: the interquartile range, top panel); trained networks, with init as
    faint lines where it was measured (a panel with no trained rows shows init, and says
    so). Log y. An old file (whole-tensor std only) shows that, so labelled."""
    df, col, what = shown(df)
    rows, key = keyed(finite(df, col, positive=True)) if len(df) else (df, None)
    if rows.empty:
        return message_figure("no positive finite responses rows", look)
    boxes = panels(rows, PANEL_KEYS, key)
    ncols = look.columns(len(boxes))
    nblocks = math.ceil(len(boxes) / ncols)
    styles = depth_linestyles(rows["depth"])
    handles = key.handles(rows["variant"]) + [
        Line2D([], [], color="0.3", linestyle=ls, label=f"depth {d}") for d, ls in styles.items()]
    if rows["when"].nunique() > 1:
        handles.append(Line2D([], [], color="0.3", alpha=0.35, linewidth=0.7, label="at init"))
    with look.context():
        width = look.panel_width(ncols)
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + 2 * look.row_height(ncols, 0.8) * nblocks), layout="constrained")
        axes = fig.subplots(2 * nblocks, ncols, squeeze=False)
        for i, box in enumerate(boxes):
            top, bottom = axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
            bottom.sharey(top)
            sub = where(rows, PANEL_KEYS, box)
            main = "final" if (sub["when"] == "final").any() else "init"
            for when in [w for w in ("init", "final") if (sub["when"] == w).any()]:
                faint = when != main
                kw = dict(alpha=0.35, linewidth=0.7) if faint else dict(markersize=2)
                for (variant, depth), g in sub[sub["when"] == when].groupby(["variant", "depth"]):
                    agg = median_iqr(g, "layer_index", col)
                    agg["x"] = agg["layer_index"] + 1  # He et al. count layers from 1
                    style = dict(color=key.color(variant), linestyle=styles[depth],
                                 marker=None if faint else key.marker(variant),
                                 markevery=max(1, len(agg) // 8), **kw)
                    line_band(top, agg, "x", band=not faint, **style)
                    y = np.sort(agg["median"].to_numpy())[::-1]  # largest first, as He et al.
                    bottom.plot(np.arange(1, len(y) + 1), y, **style)
            head = joined(network_title(*box[:2]), box[2]) + ("" if main == "final" else
                                                            " (at init: no trained rows)")
            top.set_title(fit_title(head, width))
            bottom.set_title(fit_title("sorted by magnitude", width))
            for ax, xlabel in ((top, "layer index"), (bottom, "layer index (sorted)")):
                ax.set_xlabel(xlabel)
                ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
            top.set_ylabel(what if i % ncols == 0 else "")
            bottom.set_ylabel(what if i % ncols == 0 else "")
            log_axis(top)
        for j in range(len(boxes), nblocks * ncols):  # empty slots of the last block
            axes[2 * (j // ncols), j % ncols].set_visible(False)
            axes[2 * (j // ncols) + 1, j % ncols].set_visible(False)
        look.legend(fig, handles)
    return fig


def responses_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: the mean per-channel response std over the layers of a trial, trained
    and at init; mean ± 95% interval over seeds. An old file (whole-tensor std only):
    that, each column titled "(whole tensor, old file)"."""
    if df.empty:
        return None
    df, col, _ = shown(df)
    tag = "" if col == CHANNEL else " (whole tensor, old file)"
    t = per_trial(df, col, own=OWN)
    return cell_table(t, when_means([(f"mean std trained{tag}", "final", col),
                                     (f"mean std at init{tag}", "init", col)]))


def responses_as_layers(df: pd.DataFrame, layers: pd.DataFrame | None = None,
                        trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """The merged responses frame as ``layers.parquet`` rows (stat ``act_std``, value: the
    per-channel std, or an old file's whole-tensor one: ``shown``), for
    ``analysis.figures_layers.layer_response_std``: ``init`` rows are phase "init" at
    step 0, epoch 0; ``final`` rows phase "train" at the trial's last training step and
    epoch in ``layers`` (what that figure calls "late"), or step 1, epoch 1 for a trial
    ``layers`` lacks (then the figure's titles name step 1). With ``trials`` holding
    ``steps`` and ``epochs_run`` (folders since recipes), ``final`` rows are at the step
    the network was measured at: the end of training, not the last statistics sample."""
    from ablations.results import factor_columns
    df, col, _ = shown(df)
    keys = [c for c in factor_columns() if c in df]
    last: dict = {}  # trial -> (step, epoch) of its last training sample
    if layers is not None and len(layers):
        train = layers[layers["phase"] == "train"].sort_values("step")
        last = {t: (int(s), int(e)) for t, s, e in
                train.groupby("trial_id")[["step", "epoch"]].last().itertuples()}
    if trials is not None and {"trial_id", "steps", "epochs_run"} <= set(trials.columns):
        done = trials.dropna(subset=["steps", "epochs_run"])
        last.update({t: (int(s), int(e)) for t, s, e in
                     zip(done["trial_id"], done["steps"], done["epochs_run"])})
    final = (df["when"] == "final").to_numpy()
    moment = np.array([last.get(t, (1, 1)) for t in df["trial_id"]], dtype=np.int64)
    moment = np.where(final[:, None], moment.reshape(-1, 2), 0)  # init: step 0, epoch 0
    out = df.assign(phase=np.where(final, "train", "init"), step=moment[:, 0],
                    epoch=moment[:, 1], stat="act_std", value=df[col].astype(float),
                    layer_index=df["layer_index"].astype("int64"))
    return out[keys + ["phase", "step", "epoch", "layer", "layer_index", "stat", "value"]] \
        .reset_index(drop=True)


FIGURES = (FigureSpec("responses_std", responses_std,
                      "Std of the layer responses (conv/Linear output after its norm, before "
                      "the ReLU and the addition; pre-activation: conv2's output), per "
                      "channel over images and positions and averaged over channels, on "
                      "500 test images, in network order (top) and sorted (bottom), as He "
                      "et al. 2016 Fig. 7; median over seeds, faint: at init. A file "
                      "measured before the per-channel column existed shows the "
                      "whole-tensor std, and its axis says so."),)
TABLES = (TableSpec("responses", responses_table,
                    "Mean per-channel layer-response std per trial, mean ± 95% t half "
                    "width over seeds; columns marked \"whole tensor, old file\": a file "
                    "measured before the per-channel column existed."),)
