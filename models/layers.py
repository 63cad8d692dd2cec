"""Factor levels -> layers: the lookup tables every model family builds from.

A study factor reaches a network as a plain string field on its frozen config
(``norm="layer"``), resolved here in one table each (timm's ``_NORM_MAP`` +
``get_norm_layer``), never by an ``if`` per factor in the model code. Adding a
level is one entry.

- ``norm``: the normalization layer (``get_norm_layer``).
- ``block``: where a residual block puts its norm-ReLU: ``post`` (He et al. 2016,
  arXiv 1512.03385, weight-norm-ReLU) or ``pre`` (He et al. 2016b, arXiv
  1603.05027, norm-ReLU-weight, nothing after the addition). The family modules
  hold what each order means for their layers.
- ``branch_scale``: what multiplies every residual branch (``make_branch_scale``).
- ``shortcut``: a ResNet's shortcut on a shape change (``models.resnet``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# level -> (factory for (B, F) features, factory for (B, C, H, W) maps); None: no module.
# "layer" on maps is GroupNorm with one group (Wu & He 2018, arXiv 1803.08494): LayerNorm
# statistics over (C, H, W) with a per-channel affine, the usual LayerNorm for conv nets.
_NORM_MAP: dict[str, tuple[Callable[[int], nn.Module] | None, ...]] = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d),
    "layer": (nn.LayerNorm, partial(nn.GroupNorm, 1)),
    "none": (None, None),
}
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)

BLOCK_LEVELS = ("post", "pre")

# Fields that only change a network that has shortcuts: a plain network ignores them
# (it has no residual branch to scale and no shortcut to choose), so it builds the
# same whatever they say, and ``layout()`` does not name them for it.
RESIDUAL_ONLY = ("branch_scale", "shortcut")


def check_level(field: str, value: str, levels) -> str:
    """``value`` if it is one of ``levels``, else ValueError naming the valid levels."""
    if value not in levels:
        raise ValueError(f"{field} {value!r} is not a level; valid levels: "
                         f"{', '.join(levels)}")
    return value


def get_norm_layer(level: str, dim: int) -> Callable[[int], nn.Module] | None:
    """``channels -> norm module`` for a ``norm`` level on 1-d features or 2-d maps;
    None for ``"none"``.

    >>> get_norm_layer("layer", 2)(16)
    GroupNorm(1, 16, eps=1e-05, affine=True)
    """
    return _NORM_MAP[check_level("norm", level, tuple(_NORM_MAP))][dim - 1]


def conv_norm(level: str) -> tuple[Callable[[int], nn.Module], bool]:
    """(norm factory, conv bias) for a norm level on maps. none: ``nn.Identity`` (keeps
    the module names and Sequential indices of the other levels) and a conv bias, which
    stands in for the norm's shift (torchvision's ``Conv2dNormActivation`` rule:
    a bias exactly when there is no norm layer)."""
    make = get_norm_layer(level, 2)
    return (nn.Identity, True) if make is None else (make, False)


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
SHORTCUT_LEVELS = tuple(_SHORTCUTS)


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
BRANCH_SCALE_LEVELS = tuple(_BRANCH_SCALES)


def make_branch_scale(level: str, num_blocks: int) -> nn.Module | None:
    """The module one residual branch is multiplied by, in a network of ``num_blocks``
    residual blocks; None for ``"one"`` (no module, today's networks unchanged)."""
    make = _BRANCH_SCALES[check_level("branch_scale", level, BRANCH_SCALE_LEVELS)]
    return None if make is None else make(num_blocks)


def norm_levels(*order: str) -> tuple[str, ...]:
    """Every norm level, in a family's order (its default first)."""
    if sorted(order) != sorted(_NORM_MAP):
        raise ValueError(f"norm levels {order} are not {tuple(_NORM_MAP)} reordered")
    return order


def check_levels(cfg) -> None:
    """Every factor field of a config (``cfg.FACTORS``) holds one of its levels."""
    for field, levels in cfg.FACTORS.items():
        check_level(field, getattr(cfg, field), levels)


def level_suffix(cfg) -> str:
    """``", norm=none, block=pre"``: the factor fields not at their default (the first
    level of ``cfg.FACTORS``), minus those a plain network ignores; "" for defaults."""
    return "".join(f", {field}={getattr(cfg, field)}" for field, levels in cfg.FACTORS.items()
                   if getattr(cfg, field) != levels[0]
                   and (cfg.residual or field not in RESIDUAL_ONLY))
