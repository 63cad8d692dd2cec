"""A network as ``stem``, units, ``head``: what the measurements read (lesion study,
signal propagation) without knowing the family.

Every family's network (``models.interface.Network``) has ``stem(x)``,
``units() -> [(name, module)]`` in network order and ``head(x)``, with
``forward(x) == head(units[-1](...units[0](stem(x))))``. A unit is a
``models.interface.Unit`` (a block, residual or plain) or a bare layer (an MLP's
pre-activation projection, a bare ``nn.Linear``), which has no skip and never keeps
its shape. The functions below read either.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .interface import Unit


def split(unit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(branch, skip) just before the addition; skip None where the unit has none."""
    return unit.split(x) if isinstance(unit, Unit) else (unit(x), None)


def join(unit: nn.Module, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """The unit's output from its branch and skip: ``join(u, *split(u, x)) == u(x)``."""
    return unit.join(branch, skip) if isinstance(unit, Unit) else branch


def keeps_shape(unit: nn.Module) -> bool:
    """Whether the unit's output has its input's shape (a plain unit can be deleted)."""
    return isinstance(unit, Unit) and bool(unit.keeps_shape)


def has_skip(unit: nn.Module) -> bool:
    return isinstance(unit, Unit) and unit.shortcut is not None and unit.shortcut is not False


def deletable(unit: nn.Module) -> bool:
    """A residual unit (deleted: its shortcut alone) or a plain unit that keeps its shape
    (deleted: the identity)."""
    return has_skip(unit) or keeps_shape(unit)


def lesioned(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unit with its branch deleted (Veit et al. 2016); ValueError if not deletable."""
    if not isinstance(unit, Unit):
        raise ValueError(f"{type(unit).__name__} has no identity to fall back to")
    return unit.lesioned(x)


def forward_units(model: nn.Module, x: torch.Tensor, deleted=frozenset(), start: int = 0,
                  h: torch.Tensor | None = None) -> torch.Tensor:
    """The model's output with the units at ``deleted`` (indices) lesioned. ``start``/``h``:
    resume at unit ``start`` from its input ``h`` (a cached prefix), else from ``x``."""
    if h is None:
        h, start = model.stem(x), 0
    for i, (_, unit) in enumerate(model.units()[start:], start):
        h = lesioned(unit, h) if i in deleted else unit(h)
    return model.head(h)
