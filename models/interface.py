"""The model interface: everything ``ablations/`` reads from a family, and nothing else.

The trainer, the probe, the estimate, the kept weights and the measurements never ask
which family a network is; they read these parts. A family missing one fails with a
TypeError naming it, where the network is built or the family registered, never by
being treated as some other family.

A family's **config** (a frozen dataclass, registered with
``models.register_family(name, ConfigClass)``; its class is checked there,
``models.registry.CONFIG_PARTS``):

- fields ``family``, ``depth``, ``residual`` (bool: with or without shortcuts) and
  ``num_classes``;
- ``FACTORS``: factor name -> ``models.levels.FactorLevels(levels, default)``, every
  study factor it supports (``residual`` included); ``ablations.factors`` reads a
  factor's families and defaults from here;
- ``input_shape``: one example the probe draws, ``(features,)`` for a network on
  feature vectors or ``(channels, 32, 32)`` for one on images;
- ``build()`` -> its ``Network``; ``layout()`` -> a one-line description;
  ``with_input(in_features, num_classes)`` -> the config for a data set.

Its **network** (a ``Network``):

- ``stem(x)``, ``units()`` -> ``[(name, unit)]`` in network order, ``head(x)``, with
  ``forward(x) == head(u_n(...u_1(stem(x))))``; ``stem`` may be a method or a
  submodule. A unit is a ``Unit`` (a block, residual or plain: branch and skip) or a
  bare layer, which has no skip and never keeps its shape (``models.units``);
- ``memory_format``: the layout the trainer puts the network and its inputs in
  (``torch.channels_last`` for a conv net, else ``torch.contiguous_format``);
- ``tap_points()`` -> ``[(name, module)]``: whose outputs the per-layer statistics
  record (``ablations.hooks``), the same names at every factor level;
- ``response_taps()`` -> ``[(name, module, response)]``: what the ``responses``
  measurement hooks, ``response(module, inputs, output)`` giving the layer response
  (He et al. 2016, Fig. 7: a weight layer's output after its norm, before the
  addition and the nonlinearity);
- ``first_block()`` -> the unit whose output maps the trainer keeps for one test image
  (``features/<trial>.npz``), or None where the network has no maps (the default).
"""
from __future__ import annotations

import abc
from typing import Callable

import torch
import torch.nn as nn

Response = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]


def output_response(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """The hooked module's own output as its response (a norm's, a weight layer's)."""
    return output


def named_taps(model: nn.Module, found: list[tuple[nn.Module, Response]]
               ) -> list[tuple[str, nn.Module, Response]]:
    """``(name in model, module, response)`` for ``(module, response)`` pairs."""
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m, fn) for m, fn in found]


class Unit(nn.Module, metaclass=abc.ABCMeta):
    """A block as branch and skip (signal propagation, the lesion study). Besides the
    methods below it has ``shortcut`` (its shortcut: a module, or True; None/False for a
    plain unit) and ``keeps_shape`` (whether its output has its input's shape), as
    attributes, so a subclass may keep them as submodules or plain values."""

    @abc.abstractmethod
    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition; skip None for a plain unit."""

    @abc.abstractmethod
    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """The unit's output from its branch and skip: ``join(*split(x)) == forward(x)``."""

    @abc.abstractmethod
    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with its branch deleted (Veit et al. 2016); ValueError where it has no
        identity to fall back to."""


class Network(nn.Module, metaclass=abc.ABCMeta):
    """Base class of every family's network (see the module docstring)."""

    memory_format = torch.contiguous_format

    @abc.abstractmethod
    def units(self) -> list[tuple[str, nn.Module]]:
        """Every unit, residual or plain, in network order."""

    @abc.abstractmethod
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the last unit."""

    @abc.abstractmethod
    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Modules whose outputs the statistics recorder reads, in network order."""

    @abc.abstractmethod
    def response_taps(self) -> list[tuple[str, nn.Module, Response]]:
        """``(name, module to hook, response(module, inputs, output))`` in network order."""

    def first_block(self) -> nn.Module | None:
        """The unit whose output maps are kept for one test image; None: no maps."""
        return None


def check_network(model: nn.Module, family: str | None = None) -> Network:
    """``model`` if it is a ``Network`` with a ``stem``; TypeError naming what is missing."""
    who = f"family {family!r} builds {type(model).__name__}" if family else \
        type(model).__name__
    if not isinstance(model, Network):
        raise TypeError(f"{who}, which is not a models.interface.Network: a network needs "
                        "stem, units, head, memory_format, tap_points, response_taps "
                        "(models/interface.py)")
    if not callable(getattr(model, "stem", None)):
        raise TypeError(f"{who} has no stem(x) (a method or a submodule; "
                        "models/interface.py)")
    return model
