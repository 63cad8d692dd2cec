"""Layer responses (He et al. 2016, arXiv 1512.03385, Sec. 4.2 and Fig. 7): the standard
deviation of each 3x3 convolution's output after its batch norm, before the ReLU and the
addition (per channel, averaged over channels: below), on the trained network, in
network order and sorted by magnitude. He et al. find smaller responses in ResNets
than in their plain counterparts, and smaller the deeper the ResNet: the residual
functions are "generally closer to zero".

The taps (``response_taps``), in network order, per trial, at init and trained:

* ResNet, post-activation (He et al.'s network): the stem conv after its norm, then per
  block the outputs of ``bn1`` and ``bn2`` (``bn2``: before the branch scale and the
  addition). With ``norm="none"`` the norms are ``nn.Identity``: the conv output itself.
* ResNet, pre-activation: the bare stem conv, then per block the output of conv1's
  following norm (``bn2``) and conv2's output, which no norm follows: the branch just
  before the branch scale and the addition. (``bn1`` normalizes the previous sum, not a
  conv's output, and is not a response.)
* MLP: each hidden layer's Linear output after its norm, before the ReLU and the addition
  (post: ``norm(W h + b)``, or ``W h + b`` without a norm); pre-activation layers, which
  no norm follows: ``W h + b`` of the normalized, rectified input, the branch before the
  addition; a bare ``nn.Linear`` (a pre-activation net's projection): its output.

Projection shortcuts and the classifier are not responses (He et al.'s Fig. 7 shows the
3x3 layers). The headline std (column ``std_channel``) is per channel: each channel's
std over the images and positions (n-1, float32), averaged over the channels (an MLP's
features are its channels): the spread that BN normalises (~|gamma| after a BN in train
mode), not inflated by the differences between channels' means (BN's shifts). Also the
std over every element of a tap at once (images, channels, positions: ``std_tensor``),
the only std of files measured before the per-channel one existed (their column
``std``): the figure and the table then show it and say so
(``analysis.measure_parts.headline``). On the first ``IMAGES`` = 500 test images, in
eval mode. Forward hooks
read the tensors of the network's own forward; a DenseBlock's response, not a module
output when it has no norm, is computed in its hook from its input with its own pieces
(``F.linear(h, weight, bias)``, ``norm``): the same operations as its forward, tested
equal. Each hook reduces its tensor at once: a post stem's in-place ReLU overwrites it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements import FigureSpec, Measurement, TableSpec, register
from analysis.figure_parts import finite, fit_title, line_band, median_iqr, panels, where
from analysis.figures_layers import PANEL_KEYS
from analysis.measure_parts import cell_table, headline, per_trial, when_means
from analysis.style import (DEFAULT_LOOK, Look, depth_linestyles, log_axis, message_figure,
                            model_label)
from analysis.variants import joined, keyed

IMAGES = 500
CHANNEL, TENSOR = "std_channel", "std_tensor"
LEGACY = "std"  # files measured before the per-channel std: the whole-tensor one
COLUMNS = ["layer", "layer_index", CHANNEL, TENSOR]
OWN = (*COLUMNS, LEGACY)  # the measurement's own columns, old and new (``per_trial``)


def _output(module, inputs, output):
    return output


def _dense_response(m, inputs, output):
    """A DenseBlock's Linear output after its norm (site "after"), or of its activated input
    (site "before"): ``DenseBlock.run``'s operations up to the activation/addition."""
    import torch.nn.functional as F
    x = inputs[0]
    z = F.linear(m.activate(x) if m.site == "before" else x, m.weight, m.bias)
    return m.norm(z) if m.site == "after" and m.norm is not None else z


def response_taps(model) -> list[tuple[str, object, object]]:
    """``(name, module to hook, response(module, inputs, output))`` in network order."""
    import torch.nn as nn
    from models.mlp import DenseBlock
    found = []
    if isinstance(model.stem, nn.Sequential):  # ResNet: [conv] (pre) or [conv, norm, ReLU]
        found.append(model.stem[1] if len(model.stem) > 1 else model.stem[0])
    for _, unit in model.units():
        if hasattr(unit, "conv2"):  # ResNet block
            found += [unit.bn2, unit.conv2] if unit.preact else [unit.bn1, unit.bn2]
        else:  # MLP: DenseBlock or bare nn.Linear
            found.append(unit)
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m, _dense_response if isinstance(m, DenseBlock) else _output)
            for m in found]


def trace(model, x, reduce) -> list[tuple[str, object]]:
    """``[(tap name, reduce(response))]`` in the order the hooks fired during ``model(x)``
    (no grad). ``reduce`` runs inside the hook: keep a clone, not the tensor."""
    import torch
    fired: list = []

    def hook(name, fn):
        return lambda mod, inputs, out: fired.append((name, reduce(fn(mod, inputs, out))))
    handles = [m.register_forward_hook(hook(name, fn)) for name, m, fn in response_taps(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return fired


def stds(t) -> tuple[float, float]:
    """``(per-channel std averaged over channels, std of every element)`` of a response
    ``t`` (N, C, ...): channel c's std is over ``t[:, c]`` (images and positions), n-1."""
    import torch
    per_channel = t.transpose(0, 1).flatten(1).std(1).mean()
    return tuple(torch.stack([per_channel, t.std()]).tolist())


def measure(model, data, trial) -> pd.DataFrame:
    """Per-channel and whole-tensor std of every response tap on the first 500 test
    images."""
    order = {name: i for i, (name, _, _) in enumerate(response_taps(model))}
    fired = trace(model, data.test_x[:IMAGES], stds)
    return pd.DataFrame([(name, order[name], *s) for name, s in fired], columns=COLUMNS)


# --------------------------------------------------------------------------- figure, table, layers

OLD_FILE = "whole tensor; old file: no per-channel column"


def shown(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """``(rows, column, what)``: the std the figure, the table and ``responses_as_layers``
    show, per channel, or the whole-tensor std of a file measured before the per-channel
    one existed (``analysis.measure_parts.headline``), and its name for labels."""
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
            head = joined(model_label(*box[:2]), box[2]) + ("" if main == "final" else
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


register(Measurement(
    name="responses", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="std of each 3x3 conv's (or Linear's) output after its norm, before the "
            "ReLU and the addition, per channel and averaged over channels (He et al. "
            "2016 Fig. 7); the whole-tensor std is stored too",
    figures=(FigureSpec("responses_std", responses_std,
                        "Std of the layer responses (conv/Linear output after its norm, before "
                        "the ReLU and the addition; pre-activation: conv2's output), per "
                        "channel over images and positions and averaged over channels, on "
                        "500 test images, in network order (top) and sorted (bottom), as He "
                        "et al. 2016 Fig. 7; median over seeds, faint: at init. A file "
                        "measured before the per-channel column existed shows the "
                        "whole-tensor std, and its axis says so."),),
    tables=(TableSpec("responses", responses_table,
                      "Mean per-channel layer-response std per trial, mean ± 95% t half "
                      "width over seeds; columns marked \"whole tensor, old file\": a file "
                      "measured before the per-channel column existed."),),
))
