"""The figures and tables the report draws from a measurement's merged results
(``RESULTS/measurements/<name>.parquet``), one view per measurement, matched by name.

A measurement (``ablations.measurements``) computes numbers only; its view lives
here: the view of measurement ``<name>`` is the module ``analysis.views.<name>`` where
there is one, which exposes ``FIGURES`` (a tuple of ``FigureSpec``) and ``TABLES`` (a
tuple of ``TableSpec``) and is imported the first time ``figures`` or ``tables`` asks
for it. A measurement defined elsewhere (a third party's) gets its view with
``register_view``. A measurement with no view shows no figure and no table.

``analysis.views.parts`` holds the pieces the view modules share (so no measurement
can have its view under the name ``parts``).
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

@dataclass(frozen=True)
class FigureSpec:
    """A figure drawn from a measurement's merged results: ``draw(df, look) -> Figure``
    (``analysis.style.Look``); ``df`` has the trial key columns, ``when`` and the
    measurement's own columns, rows of every trial."""
    name: str
    draw: Callable[..., Any]
    caption: str


@dataclass(frozen=True)
class TableSpec:
    """A table: ``make(df) -> DataFrame`` (None or empty: nothing to show)."""
    name: str
    make: Callable[[pd.DataFrame], pd.DataFrame | None]
    caption: str


_REGISTERED: dict[str, tuple[tuple[FigureSpec, ...], tuple[TableSpec, ...]]] = {}


def module_of(name: str) -> str | None:
    """The name of the view module of measurement ``name``, ``analysis.views.<name>``;
    None where there is no such module."""
    if not name.isidentifier() or name.startswith("_"):
        return None
    module = f"{__name__}.{name}"
    return module if importlib.util.find_spec(module) is not None else None


def register_view(name: str, figures=(), tables=()) -> None:
    """The figures and tables of measurement ``name``, one without a view module here (a
    third party's). A second view under the same name, or one for a measurement with a
    view module, raises."""
    if name in _REGISTERED or module_of(name) is not None:
        raise ValueError(f"measurement {name!r} already has a view")
    _REGISTERED[name] = (tuple(figures), tuple(tables))


def unregister_view(name: str) -> None:
    """Forget the view registered for ``name`` (a built-in view stays)."""
    _REGISTERED.pop(name, None)


def _view(name: str) -> tuple[tuple[FigureSpec, ...], tuple[TableSpec, ...]]:
    module = module_of(name)
    if module is None:
        return _REGISTERED.get(name, ((), ()))
    mod = importlib.import_module(module)  # an import that fails raises; the next call retries
    return tuple(getattr(mod, "FIGURES", ())), tuple(getattr(mod, "TABLES", ()))


def figures(name: str) -> tuple[FigureSpec, ...]:
    """The figures of measurement ``name``, in the order the report shows them; none
    for a measurement without a view."""
    return _view(name)[0]


def tables(name: str) -> tuple[TableSpec, ...]:
    """The tables of measurement ``name``, in the order the report shows them; none
    for a measurement without a view."""
    return _view(name)[1]
