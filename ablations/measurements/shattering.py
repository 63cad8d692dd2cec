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
* the uncentred autocorrelation of ``g_1..g_256`` for lags 0..``MAX_LAG`` = 64
  (``autocorrelation``): a linear function's constant gradient gives 1 at every lag,
  white noise ~0 beyond lag 0. Lag 1 is the headline number.

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
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements import WHEN, FigureSpec, Measurement, TableSpec, register, seed_for
from analysis import stats
from analysis.figure_parts import finite, fit_title, label_edges, no_data, panels, where
from analysis.figures_layers import PANEL_KEYS
from analysis.measure_parts import WHEN_TITLE, cell_table, per_trial, when_grid, when_means
from analysis.style import DEFAULT_LOOK, Look, message_figure, model_label
from analysis.variants import joined, keyed

SEGMENTS, POINTS, MAX_LAG = 4, 256, 64
COLUMNS = ["segment", "lag", "autocorr", "points"]


# --------------------------------------------------------------------------- measurement

def autocorrelation(g: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """Uncentred autocorrelation of a sequence of vectors ``g`` (T, D) (or scalars (T,)),
    lags 0..min(max_lag, T-1):
    ``r(k) = sum_t <g_t, g_{t+k}> / sqrt(sum_t |g_t|^2 * sum_t |g_{t+k}|^2)``, both sums
    over the T-k overlapping terms. r(0) = 1 for any nonzero sequence, |r| <= 1
    (Cauchy-Schwarz; clipped to [-1, 1] against rounding); NaN where a sum of squares is 0.
    Scale-invariant: g is divided by its largest |entry| first, so tiny gradients do not
    underflow.

    >>> autocorrelation(np.ones((5, 3)), 2)
    array([1., 1., 1.])
    """
    g = np.asarray(g, dtype=np.float64)
    g = g.reshape(len(g), -1)                               # (T,) -> (T, 1)
    top = np.abs(g).max() if g.size else 0.0
    if top > 0 and np.isfinite(top):
        g = g / top
    sq = np.einsum("td,td->t", g, g)                        # |g_t|^2, (T,)
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
    """Autocorrelation (lags 0..64) of the input gradient along each of 4 segments."""
    rows = []
    pairs = segment_pairs(len(data.test_x), seed_for(trial.seed, "shattering"))
    for s, (i, j) in enumerate(pairs):
        g = line_gradients(model, data.test_x[i], data.test_x[j], int(data.test_y[i]))
        r = autocorrelation(g.detach().double().cpu().numpy())
        rows += [(s, k, float(v), POINTS) for k, v in enumerate(r)]
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- figures and table

def shattering_acf(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Autocorrelation of the input gradient against lag (as Balduzzi et al.'s ACF plots):
    one row of panels per model, facet and variant, init and trained side by side, one
    line per depth; per trial the mean over segments, then the median over seeds."""
    return when_grid(per_trial(df, "autocorr", by=("lag",), own=COLUMNS), "lag", "autocorr",
                     "lag (points)", "gradient autocorrelation", look,
                     zero_line=True, empty="no shattering rows")


REFERENCES = {False: (r"plain: $\propto 2^{-\mathrm{depth}}$", lambda d, d0: 2.0 ** -(d - d0)),
              True: (r"residual: $\propto \mathrm{depth}^{-1/2}$", lambda d, d0: np.sqrt(d0 / d))}


def _lag1_points(sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths, means over seeds and their (2, n) interval half widths (0 for one seed)."""
    cis = [stats.mean_ci(g["autocorr"]) for _, g in sub.groupby("depth")]  # sorted depths
    m = np.array([c[0] for c in cis])
    err = np.array([[c[0] - c[1], c[2] - c[0]] if np.isfinite(c[1]) else [0.0, 0.0]
                    for c in cis]).T
    return np.array(sorted(sub["depth"].unique()), dtype=float), m, err


def shattering_lag1(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Lag-1 gradient autocorrelation against depth, plain vs residual, init and trained:
    per trial the mean over segments; per depth the mean over seeds with its 95% t
    interval, each seed a dot. Dotted: Balduzzi et al.'s rates, 2^-depth (plain) and
    depth^-1/2 (residual), through each variant's shallowest mean, drawn within the
    data's y range (a rate that leaves it decays faster than any measured value)."""
    t = per_trial(df[df["lag"] == 1], "autocorr", own=COLUMNS) if len(df) else df
    rows, key = keyed(t) if len(t) else (t, None)
    if rows.empty:
        return message_figure("no shattering rows at lag 1", look)
    whens = [w for w in WHEN if (rows["when"] == w).any()]
    boxes = panels(rows, PANEL_KEYS, key)
    residual = {key.styles[v].residual for v in key.present(rows["variant"])}
    handles = key.handles(rows["variant"]) + [
        Line2D([], [], color="0.4", linestyle=":", label=REFERENCES[r][0])
        for r in sorted(residual)]
    with look.context():
        width = look.panel_width(len(whens))
        fig = Figure(figsize=(look.inches, 0.35 + look.legend_inches(handles)
                              + look.row_height(len(whens)) * len(boxes)), layout="constrained")
        axes = fig.subplots(len(boxes), len(whens), squeeze=False, sharey=True)
        curves = []  # (ax, depths, means, colour, residual): drawn once the y range is known
        for r, box in enumerate(boxes):
            for c, when in enumerate(whens):
                ax, sub = axes[r, c], where(rows, PANEL_KEYS, box)
                had = (sub["when"] == when).any()
                sub = finite(sub[sub["when"] == when], "autocorr")
                variants = key.present(sub["variant"])
                for i, variant in enumerate(variants):
                    v = sub[sub["variant"] == variant]
                    depths, m, err = _lag1_points(v)
                    dx = 0.15 * (i - (len(variants) - 1) / 2)  # dodge: intervals side by side
                    color = key.color(variant)
                    ax.errorbar(depths + dx, m, yerr=err, color=color, marker=key.marker(variant),
                                capsize=2, markersize=3)
                    ax.scatter(v["depth"] + dx, v["autocorr"], s=4, color=color, alpha=0.4,
                               linewidths=0)
                    curves.append((ax, depths, m, color, key.styles[variant].residual))
                ax.set_title(fit_title(joined(model_label(*box[:2]), box[2], WHEN_TITLE[when]),
                                       width))
                ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
                if not variants:
                    no_data(ax, "no finite values" if had else "not measured", width)
        ylim = axes[0, 0].get_ylim()  # shared: the data of every panel
        for ax, depths, m, color, res in curves:
            if len(depths) > 1 and m[0] > 0:
                d = np.linspace(depths[0], depths[-1], 100)
                ax.plot(d, m[0] * REFERENCES[res][1](d, depths[0]), color=color,
                        linestyle=":", linewidth=0.8, zorder=1)
        axes[0, 0].set_ylim(ylim)
        label_edges(axes, "depth", "")
        fig.supylabel("lag-1 gradient autocorrelation", fontsize="medium")
        look.legend(fig, handles)
    return fig


def shattering_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: lag-1 autocorrelation at init and trained (per trial the mean over
    segments; mean ± 95% interval over seeds)."""
    if df.empty:
        return None
    far = int(df["lag"].max())
    one = per_trial(df[df["lag"] == 1], "autocorr", own=COLUMNS)
    last = per_trial(df[df["lag"] == far], "autocorr", own=COLUMNS).rename(
        columns={"autocorr": "autocorr_far"})
    keys = [c for c in one.columns if c != "autocorr"]
    t = one.merge(last, on=keys, how="outer")
    # lag 1 on a 256-point segment between two images is close to 1 for every network
    # (neighbouring inputs are 1/255 of the segment apart): the decay shows at long lags
    return cell_table(t, when_means([("lag-1 at init", "init", "autocorr"),
                                     ("lag-1 trained", "final", "autocorr"),
                                     (f"lag-{far} at init", "init", "autocorr_far"),
                                     (f"lag-{far} trained", "final", "autocorr_far")]))


register(Measurement(
    name="shattering", when=("init", "final"), cost="cheap", fn=measure, default=True,
    summary="input-gradient autocorrelation along 4 segments of 256 points between test "
            "images (Balduzzi et al. 2017)",
    figures=(FigureSpec("shattering_acf", shattering_acf,
                        "Autocorrelation of the input gradient along a line of 256 inputs "
                        "between two test images, against lag (Balduzzi et al. 2017): mean "
                        "over 4 segments, median over seeds, band = interquartile range."),
             FigureSpec("shattering_lag1", shattering_lag1,
                        "Lag-1 gradient autocorrelation against depth, mean and 95% interval "
                        "over seeds; dotted: 2^-depth (plain) and depth^-1/2 (residual), "
                        "Balduzzi et al.'s rates, through the shallowest depth.")),
    tables=(TableSpec("shattering", shattering_table,
                      "Lag-1 and lag-64 autocorrelation of the input gradient (mean over 4 "
                      "segments per trial), mean ± 95% t half width over seeds."),),
))
