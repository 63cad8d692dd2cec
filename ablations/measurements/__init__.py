"""Measurements of kept networks, as registered units: one file each.

A measurement is a name, when it runs (``init``: the network as initialized, from
the trial's seed; ``final``: the trained network), a cost class and a function
``fn(model, data, trial) -> tidy DataFrame``: numbers only. Its rows get the trial's
key columns (``ablations.results.factor_columns()``) and ``when`` added by the
framework and go to ``RESULTS/measurements/<name>.parquet``. The figures and tables
drawn from that file are its view, in ``analysis.views`` (matched by name); the
report shows them when the file is there.

This module and every measurement module import no torch at module level (the
report reads the registry without torch; a measurement's ``fn`` imports torch
inside), and no plotting library and nothing of ``analysis``: a training worker
that measures loads neither.

Adding a measurement = one file in this folder (see README "Adding a
measurement"), listed in ``BUILTINS``, or any module that calls ``register``; its
view = one module in ``analysis/views/`` or ``analysis.views.register_view``.
"""
from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

WHEN = ("init", "final")
COSTS = ("cheap", "moderate", "expensive")
BUILTINS = ("lesion", "shattering", "landscape", "responses", "signal")


@dataclass
class MeasureData:
    """What a measurement reads besides the network: the trial's splits as the model
    takes them (normalized, on ``device``; images (N, C, H, W), features (N, F)).
    ``train_x``/``train_y``: the training split (no augmentation); ``test_x``/``test_y``:
    the test split."""
    train_x: Any
    train_y: Any
    test_x: Any
    test_y: Any
    device: str = "cpu"


@dataclass(frozen=True)
class Measurement:
    name: str
    when: tuple[str, ...]
    cost: str
    fn: Callable[..., pd.DataFrame]
    summary: str                       # one line: what it measures (help, docs)
    default: bool = False              # in the default ``--measure`` set

    def __post_init__(self):
        if not self.when or any(w not in WHEN for w in self.when):
            raise ValueError(f"measurement {self.name!r}: when {self.when} must be a "
                             f"non-empty subset of {WHEN}")
        if self.cost not in COSTS:
            raise ValueError(f"measurement {self.name!r}: cost {self.cost!r} is not one of "
                             f"{', '.join(COSTS)}")


_REGISTRY: dict[str, Measurement] = {}
_loaded = False


def register(m: Measurement) -> Measurement:
    """Add a measurement; a second one under the same name raises."""
    if m.name in _REGISTRY:
        raise ValueError(f"measurement {m.name!r} is already registered")
    _REGISTRY[m.name] = m
    return m


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def load_builtins() -> None:
    """Import the built-in measurement modules (each registers itself) once. The
    registry then lists the built-in measurements in ``BUILTINS`` order whichever
    module was imported first (a view in ``analysis.views`` imports its measurement's
    module for the column names), then the others in the order registered."""
    global _loaded
    if not _loaded:
        for mod in BUILTINS:  # an import that fails raises, and the next call tries again
            importlib.import_module(f"{__name__}.{mod}")
        rank = {f"{__name__}.{mod}": i for i, mod in enumerate(BUILTINS)}
        ordered = sorted(_REGISTRY.values(),  # stable: registration order within a rank
                         key=lambda m: rank.get(m.fn.__module__, len(BUILTINS)))
        _REGISTRY.clear()
        _REGISTRY.update((m.name, m) for m in ordered)
        _loaded = True


def names() -> list[str]:
    load_builtins()
    return list(_REGISTRY)


def get(name: str) -> Measurement:
    load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown measurement {name!r}; valid measurements: "
                       f"{', '.join(_REGISTRY)}") from None


def defaults() -> list[str]:
    load_builtins()
    return [n for n, m in _REGISTRY.items() if m.default]


def seed_for(seed: int, name: str, when: str = "") -> int:
    """The seed of a measurement's own random draws (directions, lines, lesion sets) for
    a trial: fixed by the trial's seed and the measurement's name, so a measurement run
    in the worker and again later from the kept weights draws the same numbers."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}:{when}".encode())) % 2 ** 31
