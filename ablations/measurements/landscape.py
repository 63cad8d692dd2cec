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

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ablations.measurements import FigureSpec, Measurement, TableSpec, register, seed_for
from analysis import stats
from analysis.figure_parts import finite, fit_parts, no_data, panels, where
from analysis.measure_parts import DEPTH_PANEL_KEYS, cell_table, depth_panels
from analysis.style import DEFAULT_LOOK, Look, log_axis, message_figure, model_label
from analysis.tables import fmt_ci
from analysis.variants import joined, keyed

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


# --------------------------------------------------------------------------- figures

def _rows(df: pd.DataFrame, kind: str) -> tuple:
    """The rows of ``kind``, keyed (``variant``, ``facet``), ``loss`` numeric."""
    if not {"kind", "loss"} <= set(df.columns):
        df = pd.DataFrame(columns=["kind", "loss", "residual"])
    rows, key = keyed(df[df["kind"] == kind])
    return rows.assign(loss=pd.to_numeric(rows["loss"], errors="coerce")), key


def landscape_1d(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Training loss along 1-D filter-normalized slices (Li et al. 2018), one panel per
    depth (and facet), residual vs plain by colour: every (seed, direction) slice thin, the
    median over them bold, the trained point (alpha = 0) marked; log y."""
    rows, key = _rows(df, "1d")
    rows = finite(rows, "loss", positive=True)
    if rows.empty:
        return message_figure("landscape: no finite positive 1-D losses to draw", look)
    with look.context():
        fig, boxes, width = depth_panels(rows, key, look, key.handles(rows["variant"]))
        for i, (ax, sub) in enumerate(boxes):
            for variant in key.present(sub["variant"]):
                v, color = sub[sub["variant"] == variant], key.color(variant)
                for _, line in v.groupby(["seed", "direction"]):
                    line = line.sort_values("alpha")
                    ax.plot(line["alpha"], line["loss"], color=color, linewidth=0.5, alpha=0.35)
                med = v.groupby("alpha")["loss"].median()
                ax.plot(med.index, med.to_numpy(), color=color, linewidth=1.6)
                if 0.0 in med.index:
                    ax.plot([0.0], [med[0.0]], marker=key.marker(variant), color=color,
                            markeredgecolor="black", markersize=5, linestyle="none", zorder=4)
            ax.axvline(0, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
            log_axis(ax)
            if not ax.lines:
                no_data(ax, "no finite losses", width)
            ax.set_xlabel(r"$\alpha$ (filter-normalized)")
            ax.set_ylabel("train loss" if i % look.columns(len(boxes)) == 0 else "")
    return fig


CONTOUR_LEVELS = 15


def landscape_2d(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Training loss on a 2-D filter-normalized grid (Li et al. 2018) as contours, one
    row per depth (and facet), plain and residual side by side, the same log-spaced levels
    across a row; the trained point starred. Directions differ between seeds: the panel
    shows the lowest seed's grid (named), not an average of unrelated planes."""
    rows, key = _rows(df, "2d")
    if rows.empty:
        return message_figure("landscape: no 2-D grids to draw", look)
    boxes = panels(rows, DEPTH_PANEL_KEYS, key)
    cols = key.present(rows["variant"])
    with look.context():
        width = look.inches / (len(cols) + 0.5)  # square panels and a colour bar
        fig = Figure(figsize=(look.inches, 0.3 + len(boxes) * (
            width + 2 * look.title_line_inches + 0.2)), layout="constrained")
        axes = fig.subplots(len(boxes), len(cols), squeeze=False)
        for r, box in enumerate(boxes):
            sub = where(rows, DEPTH_PANEL_KEYS, box)
            v = sub["loss"].to_numpy(dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            lo, hi = (v.min(), v.max()) if len(v) else (math.nan, math.nan)
            levels = np.geomspace(lo, hi, CONTOUR_LEVELS) if len(v) and hi > lo * (1 + 1e-9) \
                else None
            drawn = None
            for c, variant in enumerate(cols):
                ax = axes[r, c]
                vs = sub[sub["variant"] == variant]
                seed = vs["seed"].min() if len(vs) else None
                ax.set_title(fit_parts(joined(model_label(box[0], box[1]), box[2],
                                              f"depth {box[3]}"),
                                       joined(variant, "" if seed is None else f"seed {seed}"),
                                       width))
                grid = vs[vs["seed"] == seed].pivot_table(index="beta", columns="alpha",
                                                          values="loss", aggfunc="median")
                z = np.ma.masked_invalid(np.where(grid.to_numpy(dtype=float) > 0, grid, np.nan))
                if levels is None or z.count() < 4:
                    no_data(ax, "no grid" if z.count() < 4 else f"flat: loss {lo:.3g}", width)
                    continue
                drawn = ax.contour(grid.columns, grid.index, z, levels=levels, cmap="viridis",
                                   norm=LogNorm(lo, hi), linewidths=0.8)
                ax.plot([0], [0], marker="*", color="black", markersize=6, linestyle="none")
                zlo, zhi = float(z.min()), float(z.max())
                if not ((levels >= zlo) & (levels <= zhi)).any():  # no line crosses it
                    ax.text(0.5, 0.25, f"flat within one level:\nloss {zlo:.4g} to {zhi:.4g}",
                            transform=ax.transAxes, ha="center", va="center", fontsize="small",
                            color="0.4")
                ax.set_aspect("equal")
                ax.set_xticks([-1, 0, 1])
                ax.set_yticks([-1, 0, 1])
                ax.set_xlabel(r"$\alpha$")
                ax.set_ylabel(r"$\beta$" if c == 0 else "")
            if drawn is not None:
                bar = fig.colorbar(mpl.cm.ScalarMappable(norm=LogNorm(lo, hi), cmap="viridis"),
                                   ax=list(axes[r]), shrink=0.9)
                bar.set_label("train loss")
    return fig


# --------------------------------------------------------------------------- table

def _slice_summary(g: pd.DataFrame) -> dict:
    g = g.assign(loss=pd.to_numeric(g["loss"], errors="coerce"))
    rough, centre, rise = [], [], []
    for seed, s in g.groupby("seed"):
        r = [roughness(d["alpha"], d["loss"]) for _, d in s.groupby("direction")]
        rough.append(np.mean(r) if np.isfinite(r).all() else math.nan)
        for _, d in s.groupby("direction"):  # the loss at alpha = 0 and at both ends
            at = d.groupby("alpha")["loss"].mean()
            if 0.0 in at.index:
                centre.append((seed, at[0.0]))
                with np.errstate(invalid="ignore"):  # inf - inf: NaN, left out below
                    rise += [at[e] - at[0.0] for e in (-1.0, 1.0) if e in at.index]
    centre = pd.DataFrame(centre, columns=["seed", "loss"]).groupby("seed")["loss"].mean()
    finite_rise = np.asarray(rise, dtype=float)
    finite_rise = finite_rise[np.isfinite(finite_rise)]
    return {"trained loss": fmt_ci(*stats.mean_ci(centre)[:3], 3, small="sci"),
            "roughness": fmt_ci(*stats.mean_ci(rough)[:3], 2),
            "rise at |alpha|=1 (median)": f"{np.median(finite_rise):.3g}"
            if len(finite_rise) else "—"}


def landscape_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell (family, model, depth, variant and each varying factor): seeds, the loss at
    the trained point and the roughness of the 1-D slices (mean over directions per seed,
    then mean ± 95% t half width over seeds; a seed with a slice of undefined or infinite
    roughness counts as missing), and the median over directions, both ends and seeds of
    the loss increase at |alpha| = 1."""
    rows = df[df["kind"] == "1d"] if "kind" in df else df.iloc[:0]
    return None if rows.empty else cell_table(rows, _slice_summary)


register(Measurement(
    name="landscape", when=("final",), cost="expensive", fn=measure, default=False,
    summary="train loss along 1-D filter-normalized random directions (Li et al. 2018)",
    figures=(FigureSpec("landscape_1d", landscape_1d,
                        "Training loss (256 fixed training images, BN in eval mode) along 3 "
                        "filter-normalized random directions per seed (Li et al. 2018): thin, "
                        "each slice; bold, their median; marker, the trained network."),),
    tables=(TableSpec("landscape", landscape_table,
                      "Loss landscape: training loss at the trained point, roughness of the "
                      "1-D slices (TV / rise - 1; 0 = monotone on each side; mean ± 95% t "
                      "half width over seeds), median loss increase at |alpha| = 1."),),
))
register(Measurement(
    name="landscape2d", when=("final",), cost="expensive", fn=measure_2d, default=False,
    summary="train loss on a 21x21 grid over two filter-normalized directions (Li et al. 2018)",
    figures=(FigureSpec("landscape2d", landscape_2d,
                        "Training loss on a 2-D grid over two filter-normalized random "
                        "directions (Li et al. 2018), the lowest seed of each cell; the same "
                        "log-spaced contour levels across a row; star: the trained network."),),
))
