"""One function per figure: tidy DataFrame in, ``matplotlib.figure.Figure`` out.

Figures are built on ``Figure`` directly (no pyplot), inside ``look.context()``
(``analysis.style.Look``: paper or slides, single or double column), so they
look the same whoever calls them; ``analysis.saving.save_figure``
writes them. Non-finite values (a diverged trial) are dropped before any
median, and log axes drop values <= 0, so no figure fails on a bad trial: a
panel with nothing left says so instead of staying blank. Panels that share
an axis share one log-or-linear decision, made over all their data
(``analysis.style.log_axis``). Per-layer panels name their layers on the x
axis (``analysis.style.layer_ticks``), and a "late in training" panel names
the step it shows and exists only when a trial was sampled after step 0.

Every figure is keyed by the factors that vary in its frame
(``analysis.variants``): the levels that plain and residual networks share
(norm, block) get panels of their own, named in the title; plain and each
residual-only level (branch scale, shortcut) are lines, with the same colour,
marker and legend label (the registry's ``Level.label``) in every figure. A
sweep that varies only ``residual`` is drawn as it always was: blue circles
residual, orange squares plain.

The figures live by subject: ``figures_interaction`` (the headline: the depth x
shortcut interaction), ``figures_depth`` (the degradation figure),
``figures_training`` (curves over epochs), ``figures_layers````
(per-layer profiles); this module is the one place callers import them from.
"""
from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from analysis.figures_depth import degradation_vs_depth
from analysis.figures_interaction import depth_interaction
from analysis.figures_layers import (MAX_PROGRESS_LINES, NO_LATE_PANEL, NO_LATER_SAMPLE,
                                     act_by_layer, act_through_training, grad_by_layer,
                                     gradient_flow, layer_response_std)
from analysis.figures_training import MAX_LR_MARKS, training_curves, training_curves_by_depth
from analysis.style import DEFAULT_LOOK, Look

__all__ = ["MAX_LR_MARKS", "MAX_PROGRESS_LINES", "NO_LATER_SAMPLE", "NO_LATE_PANEL",
           "act_by_layer", "act_through_training", "degradation_vs_depth", "depth_interaction",
           "feature_maps",
           "grad_by_layer", "gradient_flow", "layer_response_std", "training_curves",
           "training_curves_by_depth"]


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
