"""Factor levels -> layers: the shortcut and branch-scale tables every family builds from.

A study factor reaches a network as a plain string field on its frozen config
(``shortcut="pad"``), resolved in one table each (timm's ``_NORM_MAP`` +
``get_norm_layer``), never by an ``if`` per factor in the model code. Adding a level
is one entry here and its name in ``models.levels``.

- ``branch_scale``: what multiplies every residual branch (``make_branch_scale``).
- ``shortcut``: a ResNet's shortcut on a shape change (``make_shortcut``).
- ``norm`` and ``activation``: ``models.norm_act``.
- ``block``: where a residual block puts its norm-activation: ``post`` (He et al. 2016,
  arXiv 1512.03385, weight-norm-ReLU) or ``pre`` (He et al. 2016b, arXiv 1603.05027,
  norm-ReLU-weight, nothing after the addition). The family modules hold what each
  order means for their layers.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .levels import BRANCH_SCALE_LEVELS, SHORTCUT_LEVELS, check_level
from .norm_act import conv_norm


class PadShortcut(nn.Module):
    """Option A (He et al. 2016, arXiv 1512.03385, Sec. 3.3): identity with
    stride-``stride`` subsampling and ``out_ch - in_ch`` zero channels appended;
    no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C, ceil(H/s), ceil(W/s)), as a 1x1/s conv
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # (B, C + extra, ...): new channels 0

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


def _projection(in_ch: int, out_ch: int, stride: int, *, norm: str, with_norm: bool):
    """Option B: 1x1 conv (+ norm when ``with_norm``: post blocks; a pre block's
    shortcut input is pre-activated already, so its projection is a bare conv)."""
    make_norm, bias = conv_norm(norm)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias),
                         *([make_norm(out_ch)] if with_norm else []))


# level -> the shortcut of a block that changes channels or stride (else nn.Identity)
_SHORTCUTS = {
    "projection": _projection,
    "pad": lambda in_ch, out_ch, stride, **_: PadShortcut(in_ch, out_ch, stride),
}
if tuple(_SHORTCUTS) != SHORTCUT_LEVELS:
    raise ImportError("models.layers' shortcut table and models.levels' names differ")


def make_shortcut(level: str, in_ch: int, out_ch: int, stride: int, *, norm: str,
                  with_norm: bool) -> nn.Module:
    """``nn.Identity`` when the shape stays, else the ``shortcut`` level's module."""
    make = _SHORTCUTS[check_level("shortcut", level, SHORTCUT_LEVELS)]
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return make(in_ch, out_ch, stride, norm=norm, with_norm=with_norm)


class FixedScale(nn.Module):
    """Multiplies the branch by a constant (not a parameter)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value

    def extra_repr(self) -> str:
        return f"value={self.value!r}"


class LearnedScale(nn.Module):
    """A learnable scalar initialized at 0: SkipInit (De & Smith 2020, arXiv 2002.10444),
    ReZero (Bachlechner et al. 2020, arXiv 2003.04887). The block starts as its shortcut."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha


# level -> (number of residual blocks -> module multiplying each branch); None: nothing.
_BRANCH_SCALES: dict[str, Callable[[int], nn.Module] | None] = {
    "one": None,
    # keeps the output variance of n summed unit-variance branches O(1) at init: a
    # constant (not learned) depth-scaled branch multiplier, the residual-module scaling
    # of Hanin & Rolnick 2018. Not Fixup (Zhang et al. 2019), which instead rescales each
    # branch's weight initialisation by L^(-1/(2m-2)) (m layers per branch) and
    # zero-initialises each branch's last layer
    "invsqrt": lambda n: FixedScale(1 / math.sqrt(n)),
    "zero": lambda n: LearnedScale(),
}
if tuple(_BRANCH_SCALES) != BRANCH_SCALE_LEVELS:
    raise ImportError("models.layers' branch-scale table and models.levels' names differ")


def make_branch_scale(level: str, num_blocks: int) -> nn.Module | None:
    """The module one residual branch is multiplied by, in a network of ``num_blocks``
    residual blocks; None for ``"one"`` (no module, today's networks unchanged)."""
    make = _BRANCH_SCALES[check_level("branch_scale", level, BRANCH_SCALE_LEVELS)]
    return None if make is None else make(num_blocks)
