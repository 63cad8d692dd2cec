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

from ablations.measurements import Measurement, register

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


register(Measurement(
    name="signal", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="per unit: branch/skip RMS ratio and output channel mean and variance "
            "(Brock et al. 2021 signal propagation plots)",
))
