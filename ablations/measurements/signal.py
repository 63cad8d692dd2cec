"""Signal propagation (Brock, De & Smith 2021, arXiv 2101.08692, "signal propagation
plots"): per unit, how large the residual branch is next to the skip, and how the
activation statistics grow or shrink with depth, at init and trained.

Brock et al. plot, at each residual block's output on a batch, the average squared
channel mean and the average channel variance (and the variance at the end of each
residual branch). A normalized ResNet keeps the variance flat across a stage because
batch norm downscales each branch relative to the skip; without normalization the
variance grows with depth unless the branches are scaled down.

Per unit (``models.units``: every block, residual or plain, in network order), walking
the network from ``model.stem(x)`` with ``units.split``/``units.join`` on the first
``IMAGES`` = 500 test images, in eval mode (float32 statistics, reduced where the
network runs):

* ``branch_norm``: RMS ``sqrt(mean(branch^2))`` of the branch just before the addition
  (after its branch scale); ``skip_norm``: the skip's RMS (NaN without a skip);
  ``ratio = branch_norm / skip_norm``.
* of the unit's output: ``act_mean_sq = mean(out^2)``; ``act_channel_mean_sq``: the
  mean over channels of the squared per-channel mean (over images and positions),
  Brock et al.'s "average squared channel mean"; ``act_var``: the per-channel variance
  (population, over images and positions) averaged over channels, their "average
  channel variance". An MLP layer's features are its channels.
"""
from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from ablations.measurements import FigureSpec, Measurement, TableSpec, register
from analysis.measure_parts import cell_table, per_trial, when_grid, when_means
from analysis.style import DEFAULT_LOOK, Look

IMAGES = 500
COLUMNS = ["unit", "unit_index", "has_skip", "branch_norm", "skip_norm", "ratio",
           "act_mean_sq", "act_channel_mean_sq", "act_var"]


def walk(model, x):
    """Yield ``(name, unit, input, branch, skip, output)`` unit by unit from ``model.stem(x)``;
    ``output = units.join(unit, branch, skip)`` is the next unit's input."""
    from models import units
    h = model.stem(x)
    for name, unit in model.units():
        branch, skip = units.split(unit, h)
        out = units.join(unit, branch, skip)
        yield name, unit, h, branch, skip, out
        h = out


def rms(t) -> float:
    """``sqrt(mean(t^2))``."""
    import torch
    return float(torch.linalg.vector_norm(t) / math.sqrt(t.numel()))


def activation_stats(out) -> tuple[float, float, float]:
    """``(mean(out^2), mean_c(mu_c^2), mean_c(var_c))`` of a (B, C, ...) tensor: channels
    on dim 1, each channel's mean mu_c and population variance var_c over every other dim.
    One pass: ``mean(out^2) = mean_c(var_c + mu_c^2)``, every channel having as many
    elements."""
    import torch
    dims = [0, *range(2, out.dim())]                        # all but channels
    var, mu = torch.var_mean(out, dims, correction=0)       # (C,), (C,)
    channel_mean_sq, act_var = float(mu.pow(2).mean()), float(var.mean())
    return channel_mean_sq + act_var, channel_mean_sq, act_var


def _ratio(b: float, s: float) -> float:
    if s > 0:
        return b / s
    return math.nan if b == 0 or math.isnan(s) else math.inf


def measure(model, data, trial) -> pd.DataFrame:
    """Branch/skip RMS and output statistics of every unit on the first 500 test images."""
    import torch
    rows = []
    with torch.no_grad():
        for i, (name, _, _, branch, skip, out) in enumerate(walk(model, data.test_x[:IMAGES])):
            b = rms(branch)
            s = rms(skip) if skip is not None else math.nan
            rows.append((name, i, skip is not None, b, s, _ratio(b, s), *activation_stats(out)))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- figures and table

def _with_skip(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["has_skip"].astype(bool)] if len(df) else df


def signal_ratio(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Branch-to-skip RMS ratio per unit (units with a skip: residual networks), one row of
    panels per model, facet and variant, init and trained, one line per depth; median
    over seeds, log y. A zero-initialized branch scale gives exactly 0 at init."""
    return when_grid(_with_skip(df), "unit_index", "ratio", "unit (network order)",
                     "branch RMS / skip RMS", look, log=True, empty="no units with a skip")


def signal_variance(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Brock et al.'s signal propagation plot: the average channel variance of each unit's
    output, plain and residual per depth, init and trained; median over seeds, log y."""
    return when_grid(df, "unit_index", "act_var", "unit (network order)",
                     "average channel variance of the unit output", look,
                     log=True, empty="no signal rows")


def signal_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: the mean branch/skip ratio over a trial's units with a skip, and the
    average channel variance of its last unit's output, at init and trained; mean ± 95%
    interval over seeds ("—" for plain networks' ratio)."""
    if df.empty:
        return None
    last = df[df["unit_index"] == df.groupby(["trial_id", "when"])["unit_index"].transform("max")]
    t = per_trial(last, "act_var", own=COLUMNS)
    ratio = per_trial(_with_skip(df), "ratio", own=COLUMNS)[["trial_id", "when", "ratio"]]
    t = t.merge(ratio, on=["trial_id", "when"], how="left")
    return cell_table(t, when_means([("branch/skip at init", "init", "ratio"),
                                     ("branch/skip trained", "final", "ratio"),
                                     ("last-unit variance at init", "init", "act_var"),
                                     ("last-unit variance trained", "final", "act_var")]))


register(Measurement(
    name="signal", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="per unit: branch/skip RMS ratio and output channel mean and variance "
            "(Brock et al. 2021 signal propagation plots)",
    figures=(FigureSpec("signal_ratio", signal_ratio,
                        "RMS of the residual branch over the RMS of the skip, per unit, at "
                        "init and trained; median over seeds (500 test images)."),
             FigureSpec("signal_variance", signal_variance,
                        "Average channel variance of each unit's output (Brock et al. 2021's "
                        "signal propagation plot), plain and residual, at init and trained; "
                        "median over seeds (500 test images).")),
    tables=(TableSpec("signal", signal_table,
                      "Mean branch/skip RMS ratio over the units with a skip, and the last "
                      "unit's average channel variance, mean ± 95% t half width over "
                      "seeds."),),
))
