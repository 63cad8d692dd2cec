"""Norm + activation: the one place a family gets its normalization, its nonlinearity,
and the fused kernel that runs the two as one (timm's ``create_norm_act`` /
``BatchNormAct2d`` are the model).

A level of ``norm`` (``get_norm_layer``, ``conv_norm``) and a level of ``activation``
(``act_fn``, ``act_layer``) resolve here, each in one table (timm's ``_NORM_MAP`` +
``get_norm_layer``): adding a level is one entry. Unlike timm's ``BatchNormAct2d``, the
norm stays a plain norm module and the activation holds no parameters, so parameter
names, initialization and the hooks on a norm's output (the ``responses``
measurement reads norms before their activation) are the same at every activation
level. The two meet in:

- ``norm_act(norm, x, skip, act)``: ``act(norm(x) + skip)`` for a block's forward;
  with ``act="relu"`` it is ``models.fused.norm_relu``, one fused kernel where it
  applies (a BatchNorm2d training on a CPU, ``fused.enabled()``), PyTorch's ops
  elsewhere; any other activation always runs PyTorch's ops.
- ``NormActSequential`` / ``norm_act_layers``: a Sequential ending in norm +
  activation module (a ResNet's stem, the final norm-ReLU of a pre-activation one),
  its last pair run as ``norm_act``.

Norms: ``batch`` (BatchNorm1d / BatchNorm2d), ``layer`` (LayerNorm on features; on
maps GroupNorm with one group, Wu & He 2018, arXiv 1803.08494: LayerNorm statistics
over (C, H, W) with a per-channel affine, the usual LayerNorm for conv nets), ``none``.
Activations: ``relu``; ``gelu`` (Hendrycks & Gimpel 2016, arXiv 1606.08415, the exact
erf form). Neither draws random numbers, so one seed gives the same weights at every
level of either.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fused
from .levels import ACTIVATION_LEVELS, NORM_LEVELS, check_level

# level -> (factory for (B, F) features, factory for (B, C, H, W) maps); None: no module.
_NORM_MAP: dict[str, tuple[Callable[[int], nn.Module] | None, ...]] = {
    "batch": (nn.BatchNorm1d, nn.BatchNorm2d),
    "layer": (nn.LayerNorm, partial(nn.GroupNorm, 1)),
    "none": (None, None),
}
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)

# level -> (function, module class); the module takes ``inplace`` where it has one.
_ACT_MAP: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], type[nn.Module]]] = {
    "relu": (F.relu, nn.ReLU),
    "gelu": (F.gelu, nn.GELU),
}
ACT_MODULES = tuple(cls for _, cls in _ACT_MAP.values())

if tuple(_NORM_MAP) != NORM_LEVELS or tuple(_ACT_MAP) != ACTIVATION_LEVELS:
    raise ImportError("models.norm_act's tables and models.levels' level names differ")


def get_norm_layer(level: str, dim: int) -> Callable[[int], nn.Module] | None:
    """``channels -> norm module`` for a ``norm`` level on 1-d features or 2-d maps;
    None for ``"none"``.

    >>> get_norm_layer("layer", 2)(16)
    GroupNorm(1, 16, eps=1e-05, affine=True)
    """
    return _NORM_MAP[check_level("norm", level, NORM_LEVELS)][dim - 1]


def conv_norm(level: str) -> tuple[Callable[[int], nn.Module], bool]:
    """(norm factory, conv bias) for a norm level on maps. none: ``nn.Identity`` (keeps
    the module names and Sequential indices of the other levels) and a conv bias, which
    stands in for the norm's shift (torchvision's ``Conv2dNormActivation`` rule:
    a bias exactly when there is no norm layer)."""
    make = get_norm_layer(level, 2)
    return (nn.Identity, True) if make is None else (make, False)


def act_fn(level: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation of a level as a function: ``F.relu``, ``F.gelu``."""
    return _ACT_MAP[check_level("activation", level, ACTIVATION_LEVELS)][0]


def act_layer(level: str, inplace: bool = False) -> nn.Module:
    """The activation of a level as a module; ``inplace`` where the module has it (ReLU)."""
    cls = _ACT_MAP[check_level("activation", level, ACTIVATION_LEVELS)][1]
    return cls(inplace=True) if inplace and cls is nn.ReLU else cls()


def norm_act(norm: nn.Module | None, x: torch.Tensor, skip: torch.Tensor | None = None,
             act: str = "relu") -> torch.Tensor:
    """``act(norm(x) + skip)`` (``skip`` None: ``act(norm(x))``; ``norm`` None: no norm).
    ReLU after a norm is ``fused.norm_relu``: one kernel where it applies."""
    if act == "relu" and norm is not None:
        return fused.norm_relu(norm, x, skip)
    out = x if norm is None else norm(x)
    return act_fn(act)(out if skip is None else out + skip)


def norm_act_layers(norm: str, act: str, channels: int, inplace: bool = False
                    ) -> tuple[nn.Module, nn.Module]:
    """(norm module, activation module) on ``channels`` maps, for ``NormActSequential``;
    norm ``none`` is ``nn.Identity`` (the Sequential keeps its indices)."""
    make_norm, _ = conv_norm(norm)
    return make_norm(channels), act_layer(act, inplace)


def uses_kernel(seq: nn.Sequential) -> bool:
    """Whether a ``NormActSequential`` can run its last pair as the fused kernel: it ends
    in a ReLU (the kernel computes ReLU only) and the kernel is on."""
    return isinstance(seq[-1], nn.ReLU) and fused.is_enabled()


class NormActSequential(nn.Sequential):
    """``nn.Sequential(..., norm, activation)`` whose last two run as ``norm_act``: fused
    for a ReLU while the kernel is on, PyTorch's ops for any other activation. Same
    modules, names and state dict as the plain Sequential."""

    def __init__(self, *mods: nn.Module):
        if len(mods) < 2 or not isinstance(mods[-1], ACT_MODULES):
            raise ValueError("NormActSequential ends with a norm and an activation module "
                             f"({', '.join(c.__name__ for c in ACT_MODULES)})")
        super().__init__(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not uses_kernel(self):
            return super().forward(x)
        mods = list(self)
        for m in mods[:-2]:
            x = m(x)
        return fused.norm_relu(mods[-2], x)
