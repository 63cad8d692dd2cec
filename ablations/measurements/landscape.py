"""Loss-landscape slices (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the loss
landscape of neural nets", arXiv 1712.09913), implemented directly.

A direction d (``filter_normalized_direction``) is Gaussian N(0, 1) in the shape of every
parameter; in every parameter with dim >= 2 (conv and linear weights) each filter (the
slice along dim 0: an output channel, a row) is rescaled to the norm of the matching
filter of the trained weights, ``d_i <- d_i / ||d_i|| * ||w_i||`` (Li et al. Sec. 4);
every parameter with dim <= 1 (biases, norm weights and biases, the 0-dim learned branch
scale) gets direction 0 (their ``ignore='biasbn'``). Buffers (BN running statistics)
stay as trained. The loss at ``theta + alpha d (+ beta e)`` is the mean cross-entropy on a
fixed subset of the *training* split (the first ``EVAL_IMAGES`` of a permutation drawn
from ``SUBSET_SEED``, the same for every trial), BN in eval mode, evaluated with
``torch.func.functional_call`` on a parameter dict: the model is never modified.

``landscape``: 1-D slices, ``POINTS_1D`` values of alpha on [-1, 1] along ``DIRECTIONS``
directions; ``landscape2d``: a ``POINTS_2D`` x ``POINTS_2D`` grid on [-1, 1]^2 over
directions 0 and 1 (the same directions as the 1-D slices 0 and 1). Direction i is drawn
from ``seed_for(trial.seed, "landscape") + i``. ``roughness`` sums up a slice.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations.measurements import Measurement, register, seed_for

EVAL_IMAGES = 256   # training images in the loss (Li et al. use the whole training set)
SUBSET_SEED = 0     # the evaluation subset does not depend on the trial
POINTS_1D = 41      # alpha on [-1, 1] in steps of 0.05
POINTS_2D = 21      # per axis of the 2-D grid
DIRECTIONS = 3      # 1-D slices per trial
CHUNK = 128         # images per forward (small chunks stay in CPU cache: faster)
FLAT_RTOL = 1e-6    # a step below this fraction of the largest |loss| is float noise
COLUMNS = ["kind", "direction", "alpha", "beta", "loss", "images"]


# --------------------------------------------------------------------------- roughness

def roughness(alpha, loss, rtol: float = FLAT_RTOL) -> float:
    """How much a slice wiggles beyond rising from the trained point:
    ``TV(L) / (|L(a_min) - L(0)| + |L(a_max) - L(0)|) - 1`` over the finite points sorted
    by alpha, with L(0) the point nearest alpha = 0 and TV the total variation (the sum
    of |steps|). 0 iff the slice is monotone on each side of the trained point (a bowl);
    every extra bump adds twice its height over the rise. Scale-free: the same for
    ``c * L + b``. Steps smaller than ``rtol`` x max |L| count as flat (float32 rounding
    of a constant loss must not read as rough). Fewer than 3 finite points, or a trained
    point at an end: NaN; a slice that wiggles but has no net rise: inf.

    >>> roughness([-1, 0, 1], [2.0, 1.0, 3.0]), roughness([-1, -.5, 0, .5, 1], [2, 3, 1, 1, 1])
    (0.0, 2.0)
    """
    a, v = np.asarray(alpha, dtype=float), np.asarray(loss, dtype=float)
    ok = np.isfinite(a) & np.isfinite(v)
    order = np.argsort(a[ok], kind="stable")
    a, v = a[ok][order], v[ok][order]
    if len(v) < 3:
        return math.nan
    c = int(np.argmin(np.abs(a)))
    if c in (0, len(v) - 1):
        return math.nan
    steps = np.diff(v)
    steps[np.abs(steps) <= rtol * np.abs(v).max()] = 0.0
    left, right = steps[:c], steps[c:]
    tv = np.abs(left).sum() + np.abs(right).sum()
    rise = abs(left.sum()) + abs(right.sum())
    if tv == 0:
        return 0.0
    return math.inf if rise == 0 else float(tv / rise - 1)


# --------------------------------------------------------------------------- measurement

def filter_normalized_direction(weights: dict, generator) -> dict:
    """A random direction for ``weights`` (name -> tensor): N(0, 1), each filter of a
    dim >= 2 tensor scaled to the norm of the weights' filter, zero for dim <= 1."""
    import torch
    out = {}
    for name, w in weights.items():
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        scale = w.reshape(len(w), -1).norm(dim=1) / (d.reshape(len(d), -1).norm(dim=1) + 1e-10)
        out[name] = d * scale.reshape(-1, *[1] * (w.dim() - 1))  # (out, 1, 1, 1): per filter
    return out


def directions(model, seed: int, count: int) -> list[dict]:
    """``count`` filter-normalized directions over the model's weights (dim >= 2 only: the
    others are zero and left out), direction i drawn from ``seed + i``."""
    import torch
    weights = {n: p.detach() for n, p in model.named_parameters() if p.dim() >= 2}
    return [filter_normalized_direction(weights, torch.Generator().manual_seed(seed + i))
            for i in range(count)]


def eval_subset(data):
    """The fixed training subset the loss is computed on: (x, y)."""
    import torch
    n = len(data.train_y)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(SUBSET_SEED))[:EVAL_IMAGES]
    idx = idx.to(data.train_y.device)
    x = data.train_x[idx]
    return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), \
        data.train_y[idx]


def loss_at(model, x, y, dirs: list[dict], coords) -> float:
    """Mean cross-entropy on (x, y) at ``theta + sum(c_j * dirs[j])``, through
    ``functional_call``: the model's own parameters and buffers are not touched."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call
    params = {n: p.detach() for n, p in model.named_parameters() if n in dirs[0]} if dirs else {}
    for c, d in zip(coords, dirs):
        params = {n: w + c * d[n] for n, w in params.items()} if c else params
    total = 0.0
    with torch.inference_mode():
        for a in range(0, len(y), CHUNK):
            logits = functional_call(model, params, (x[a:a + CHUNK],), strict=False)
            total += float(F.cross_entropy(logits.float(), y[a:a + CHUNK], reduction="sum"))
    return total / len(y) if len(y) else math.nan


def _grid(points: int) -> np.ndarray:
    half = points // 2
    return np.arange(-half, half + 1) / half  # exact 0 and +-1


def measure(model, data, trial) -> pd.DataFrame:
    """1-D slices: loss at ``POINTS_1D`` alphas along each of ``DIRECTIONS`` directions."""
    x, y = eval_subset(data)
    dirs = directions(model, seed_for(trial.seed, "landscape"), DIRECTIONS)
    centre = loss_at(model, x, y, [], ())
    rows = [dict(kind="1d", direction=i, alpha=float(a), beta=math.nan, images=len(y),
                 loss=centre if a == 0 else loss_at(model, x, y, [d], (a,)))
            for i, d in enumerate(dirs) for a in _grid(POINTS_1D)]
    return pd.DataFrame(rows, columns=COLUMNS)


def measure_2d(model, data, trial) -> pd.DataFrame:
    """A 2-D grid: loss at ``POINTS_2D`` x ``POINTS_2D`` points over directions 0 and 1."""
    x, y = eval_subset(data)
    dirs = directions(model, seed_for(trial.seed, "landscape"), 2)
    centre = loss_at(model, x, y, [], ())
    rows = [dict(kind="2d", direction=-1, alpha=float(a), beta=float(b), images=len(y),
                 loss=centre if a == b == 0 else loss_at(model, x, y, dirs, (a, b)))
            for a in _grid(POINTS_2D) for b in _grid(POINTS_2D)]
    return pd.DataFrame(rows, columns=COLUMNS)


register(Measurement(
    name="landscape", when=("final",), cost="expensive", fn=measure, default=False,
    summary="train loss along 1-D filter-normalized random directions (Li et al. 2018)",
))
register(Measurement(
    name="landscape2d", when=("final",), cost="expensive", fn=measure_2d, default=False,
    summary="train loss on a 21x21 grid over two filter-normalized directions (Li et al. 2018)",
))
