"""Shattered gradients (Balduzzi et al. 2017, arXiv 1702.08591): how fast the gradient of a
network's output with respect to its input decorrelates along a line of inputs.

Balduzzi et al. show that in plain rectifier networks the correlation between the
gradients at nearby inputs decays exponentially with depth (~2^-L: the gradient looks
like white noise), and in networks with skip connections only sublinearly (their
batch-normalized resnets: ~1/sqrt(L)). They feed a scalar input at 256 points of a line
and plot the gradient's autocorrelation. On images, per trial, at init and trained:

* a line of inputs: ``POINTS`` = 256 equally spaced points ``x(t) = (1-t) a + t b``,
  t = 0, 1/255, ..., 1, on the segment between two test images a and b; ``SEGMENTS`` = 4
  segments, their pairs drawn with ``seed_for(trial.seed, "shattering")`` (the same pairs
  at init and trained, in the worker and post hoc);
* the scalar ``f(x)`` = the logit of a's class (its label), and ``g_t = df/dx(x(t))``;
* the CENTRED autocorrelation of ``g_1..g_256`` for lags 0..``MAX_LAG`` = 64
  (``autocorrelation``, column ``autocorr_centred``): the mean gradient over the 256
  points of the line is subtracted first, so it is the autocorrelation of the
  gradient's fluctuation around its mean, as Balduzzi et al.'s (a smooth gradient gives
  values near 1 at short lags, white noise ~0 beyond lag 0; a linear function's
  constant gradient has no fluctuation: NaN). Lag 1 is the headline number. Also the
  UNCENTRED autocorrelation (``centred=False``, column ``autocorr_uncentred``): it
  counts the mean gradient as correlation, so a constant gradient plus white noise
  with 98% of its energy in the constant gives 0.98 at every lag with no smoothness at
  all; kept for comparison and for files measured before the centred one existed
  (their only column, ``autocorr``, is the uncentred one: the report's figures and
  table, ``analysis.views.shattering``, then show it and say so).

The 256 gradients come from one forward/backward of the 256 points with the network
in eval mode: batch norm then uses its running statistics, so output i depends on
input i alone and the gradient of the sum of the outputs is exactly the per-input
gradients (tested against a loop). With batch statistics (train mode) the points would
be coupled and the same backward would not give per-input gradients. Gradients are
taken with respect to the input only: the parameters enter as detached tensors
(``torch.func.functional_call``), so autograd records no path to them (a backward that
also reached the weights costs ~1.5x as much) and they get no ``.grad``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations.measurements import Measurement, register, seed_for

SEGMENTS, POINTS, MAX_LAG = 4, 256, 64
CENTRED, UNCENTRED = "autocorr_centred", "autocorr_uncentred"
LEGACY = "autocorr"  # files measured before the centred column: the uncentred one
COLUMNS = ["segment", "lag", CENTRED, UNCENTRED, "points"]
OWN = (*COLUMNS, LEGACY)  # the measurement's own columns, old and new (``per_trial``)
# centred energy below this fraction of the uncentred: the deviations from the mean are
# float64 rounding of the mean (a constant gradient), not a fluctuation -> NaN. A float32
# gradient's own resolution is ~1e-14 of its energy, far above.
ROUNDING = 1e-24


# --------------------------------------------------------------------------- measurement

def _rescaled(g: np.ndarray) -> np.ndarray:
    """``g`` divided by its largest |entry| (so tiny gradients do not underflow)."""
    top = np.abs(g).max() if g.size else 0.0
    return g / top if top > 0 and np.isfinite(top) else g


def autocorrelation(g: np.ndarray, max_lag: int = MAX_LAG, centred: bool = True) -> np.ndarray:
    """Autocorrelation of a sequence of vectors ``g`` (T, D) (or scalars (T,)), lags
    0..min(max_lag, T-1). ``centred`` (default, Balduzzi et al.): of the deviations
    ``c_t = g_t - mean_s g_s`` from the sequence's mean vector; else of ``c_t = g_t``:
    ``r(k) = sum_t <c_t, c_{t+k}> / sqrt(sum_t |c_t|^2 * sum_t |c_{t+k}|^2)``, both sums
    over the T-k overlapping terms. r(0) = 1 for any nonzero sequence, |r| <= 1
    (Cauchy-Schwarz; clipped to [-1, 1] against rounding); NaN where a sum of squares is
    0, and, centred, everywhere for a constant sequence (deviations at rounding level,
    ``ROUNDING``). Scale-invariant.

    >>> autocorrelation(np.ones((5, 3)), 2, centred=False)
    array([1., 1., 1.])
    >>> autocorrelation(np.array([1.0, 2.0, 4.0]))  # deviations -4/3, -1/3, 5/3
    array([ 1.        , -0.04756515, -1.        ])
    """
    g = np.asarray(g, dtype=np.float64)
    g = _rescaled(g.reshape(len(g), -1))                    # (T,) -> (T, 1)
    if centred and len(g):
        total = np.einsum("td,td->", g, g)
        g = g - g.mean(axis=0)
        if np.einsum("td,td->", g, g) <= ROUNDING * total:
            g = np.zeros_like(g)                            # a constant sequence: NaN
        g = _rescaled(g)
    sq = np.einsum("td,td->t", g, g)                        # |c_t|^2, (T,)
    out = []
    for k in range(min(max_lag, len(g) - 1) + 1):
        dots = np.einsum("td,td->t", g[:len(g) - k], g[k:])  # k = 0: exactly sq
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(dots.sum() / math.sqrt(sq[:len(g) - k].sum() * sq[k:].sum()))
    return np.clip(np.array(out, dtype=np.float64), -1.0, 1.0)


def segment_pairs(n: int, seed: int, segments: int = SEGMENTS) -> list[tuple[int, int]]:
    """``segments`` pairs (a, b) of distinct indices into ``n`` test images, from ``seed``."""
    import torch
    if n < 2:
        raise ValueError(f"shattering needs at least 2 test images (got {n})")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(n, (segments,), generator=gen)
    b = (a + 1 + torch.randint(n - 1, (segments,), generator=gen)) % n  # b != a
    return list(zip(a.tolist(), b.tolist()))


def line_gradients(model, a, b, cls: int, points: int = POINTS):
    """(points, D) gradients of the logit ``cls`` with respect to the input at the points
    ``(1-t) a + t b`` of the segment from image ``a`` to ``b``, one forward/backward
    (exact per-input gradients in eval mode: see the module docstring)."""
    import torch
    from torch.func import functional_call
    t = torch.linspace(0, 1, points, dtype=a.dtype, device=a.device)
    t = t.view(-1, *[1] * a.dim())                          # (T, 1, 1, 1) for (C, H, W) images
    x = ((1 - t) * a + t * b).detach().requires_grad_(True)  # (T, C, H, W)
    weights = {name: p.detach() for name, p in model.named_parameters()}
    with torch.enable_grad():
        (g,) = torch.autograd.grad(functional_call(model, weights, (x,))[:, cls].sum(), x)
    return g.flatten(1)                                     # (T, C*H*W)


def measure(model, data, trial) -> pd.DataFrame:
    """Centred and uncentred autocorrelation (lags 0..64) of the input gradient along
    each of 4 segments."""
    rows = []
    pairs = segment_pairs(len(data.test_x), seed_for(trial.seed, "shattering"))
    for s, (i, j) in enumerate(pairs):
        g = line_gradients(model, data.test_x[i], data.test_x[j], int(data.test_y[i]))
        g = g.detach().double().cpu().numpy()
        rc, ru = autocorrelation(g), autocorrelation(g, centred=False)
        rows += [(s, k, float(c), float(u), POINTS) for k, (c, u) in enumerate(zip(rc, ru))]
    return pd.DataFrame(rows, columns=COLUMNS)


register(Measurement(
    name="shattering", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="centred autocorrelation of the input gradient (its fluctuation around the "
            "line's mean gradient) along 4 segments of 256 points between test images "
            "(Balduzzi et al. 2017); the uncentred one is stored too",
))
