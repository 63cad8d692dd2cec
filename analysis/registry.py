"""The report's items, one ordered registry: every figure and table ``analysis.report``
can make is a ``ReportItem`` registered here.

A ``ReportItem`` is a kind ("figure" or "table"), a name (its files:
``figures/<name>.<format>``, ``tables/<name>.{md,tex}``), ``applies(ctx)`` (whether the
data allows it), ``make(ctx)`` (a matplotlib Figure, or a table's DataFrame: None or
empty shows nothing), a caption (a string or ``caption(ctx)``) and the section that
shows it ("": the report's own "Figures" and "Tables"). Every function takes one
``ReportContext``: the results of the run (or of a ``--where`` view) and how to draw.

Two ways in:

* ``register(item)``: an item known before the data is read (``interaction``,
  ``summary``, the tuning items);
* ``register_provider(Provider(name, kind, items, section))``: items that exist per
  run, listed from its data by ``items(ctx, guard)`` (one gradient table per depth, one
  feature-map figure per feature file, the figures and tables of each measurement's
  file), all of the provider's section. A provider that raises costs its own items
  only (a "could not" line named ``name``); ``guard`` records a failure that costs some
  of them (one unreadable file).

A section other than "" is declared first with ``register_section(title, intro)``;
``intro(ctx, guard)`` gives the lines shown before its items (the "Measurements"
section lists each measurement file). Sections appear after the report's own tables
and figures, in the order they were declared.

``has_rows`` and ``has_stat`` are the usual tests of ``applies``.

``plan(ctx)`` lists what one build makes, section by section, in registration order;
in the report's own section the figures come before the tables. A second item of the
same kind and name raises when registered, and is left out of a plan (with a failure)
when a provider yields it: two items would write the same files.

>>> register(ReportItem("figure", "my_plot", lambda c: c.layers is not None,
...                     lambda c: my_plot(c.layers, c.look), "What it shows."))
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis.failures import Guard, ItemFailure

if TYPE_CHECKING:
    from analysis.style import Look

KINDS = ("figure", "table")
MAIN = ""  # the section of the report's own "Figures" and "Tables"


@dataclass(frozen=True)
class ReportContext:
    """What every item reads: the results of one build (already restricted to a
    ``--where`` view) and how to draw them.

    ``trials``/``layers``/``epochs``: the Parquet files (None when absent);
    ``trained``: the trials carry final metrics (not a probe-only sweep); ``out``: the
    folder written to; ``formats``: the figure formats; ``tuning``: tuning.parquet
    (``analysis.tuning.load_tuning``) and ``tune_ranges`` its search ranges
    (``analysis.tuning.search_ranges``); ``family``: the report's multiplicity family
    (``analysis.multiplicity.report_family``) of the run's FULL trials, also in a view, or
    None (each table then computes it from its trials)."""
    run_dir: Path
    out: Path
    trials: pd.DataFrame | None
    layers: pd.DataFrame | None
    epochs: pd.DataFrame | None
    formats: tuple
    look: Look
    trained: bool
    tuning: pd.DataFrame | None = None
    tune_ranges: dict = field(default_factory=dict)
    family: pd.DataFrame | None = None


@dataclass(frozen=True)
class ReportItem:
    """One figure or table the report can make (see the module docstring).
    ``floatfmt``: a table's number format (``analysis.formatting.specs``)."""
    kind: str
    name: str
    applies: Callable[[ReportContext], bool]
    make: Callable[[ReportContext], object]
    caption: str | Callable[[ReportContext], str]
    section: str = MAIN
    floatfmt: object = "auto"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"report item {self.name!r}: kind {self.kind!r} is not one of "
                             f"{', '.join(KINDS)}")

    def caption_for(self, ctx: ReportContext) -> str:
        return self.caption(ctx) if callable(self.caption) else self.caption


@dataclass(frozen=True)
class Provider:
    """Items listed per run: ``items(ctx, guard) -> iterable of ReportItem``, each of
    the provider's ``section``. ``name`` and ``kind`` name the failure when listing
    raises ("could not draw feature maps"; kind "figure", "table" or "input")."""
    name: str
    kind: str
    items: Callable[[ReportContext, Guard], Iterable[ReportItem]]
    section: str = MAIN


@dataclass(frozen=True)
class Section:
    """A section of items after the report's own: its heading and the lines
    ``intro(ctx, guard)`` shown before its items (None: no lines)."""
    title: str
    intro: Callable[[ReportContext, Guard], list[str]] | None = None


@dataclass
class PlannedSection:
    """One section of a build's plan: its items in order, and the failures of its
    providers (recorded in a quiet ``Guard``: the build adopts them, in its order,
    before the section's items)."""
    title: str
    items: list[ReportItem]
    failures: list[ItemFailure]


_ENTRIES: list[ReportItem | Provider] = []
_SECTIONS: dict[str, Section] = {}


def register_section(title: str, intro=None) -> Section:
    """Declare a section after the report's own figures and tables; a title declared
    twice raises."""
    if not title or title in _SECTIONS:
        raise ValueError(f"report section {title!r} is empty or already registered")
    _SECTIONS[title] = section = Section(title, intro)
    return section


def register(item: ReportItem) -> ReportItem:
    """Add ``item`` at the end of the registry. Raises ``ValueError`` for a second item
    of the same kind and name, or a section not declared with ``register_section``."""
    _check_section(item.section, item.name)
    if any(isinstance(e, ReportItem) and (e.kind, e.name) == (item.kind, item.name)
           for e in _ENTRIES):
        raise ValueError(f"report {item.kind} {item.name!r} is already registered")
    _ENTRIES.append(item)
    return item


def register_provider(provider: Provider) -> Provider:
    """Add a provider at the end of the registry; a second one of the same name, or a
    section not declared with ``register_section``, raises."""
    _check_section(provider.section, provider.name)
    if any(isinstance(e, Provider) and e.name == provider.name for e in _ENTRIES):
        raise ValueError(f"report item provider {provider.name!r} is already registered")
    _ENTRIES.append(provider)
    return provider


def unregister(name: str) -> None:
    """Remove every item and provider called ``name`` (tests that register their own
    clean up with this)."""
    _ENTRIES[:] = [e for e in _ENTRIES if e.name != name]


def unregister_section(title: str) -> None:
    """Remove a section declared with ``register_section``, with its items and providers."""
    _SECTIONS.pop(title, None)
    _ENTRIES[:] = [e for e in _ENTRIES if e.section != title]


def registered() -> list[ReportItem | Provider]:
    """Every item and provider, in registration order."""
    return list(_ENTRIES)


def sections() -> list[Section]:
    """The declared sections, in order (the report's own, "", is not among them)."""
    return list(_SECTIONS.values())


# --------------------------------------------------------------------------- for applies

def has_rows(df: pd.DataFrame | None) -> bool:
    """``df`` is there and not empty."""
    return df is not None and len(df) > 0


def has_stat(layers: pd.DataFrame | None, stat: str, phase: str | None = None) -> bool:
    """``layers`` (layers.parquet's rows) holds ``stat``, in ``phase`` ("init",
    "train") when given."""
    if layers is None or layers.empty:
        return False
    rows = layers[layers["stat"] == stat]
    return bool(len(rows) if phase is None else (rows["phase"] == phase).any())


def _check_section(title: str, name: str) -> None:
    if title != MAIN and title not in _SECTIONS:
        raise ValueError(f"report item {name!r}: section {title!r} is not registered "
                         "(register_section)")


def plan(ctx: ReportContext) -> list[PlannedSection]:
    """What a build of ``ctx`` makes: the report's own section, then each declared
    section, each with its items in registration order (a provider's where it was
    registered; in the report's own section every figure before every table).

    A provider's failures, its own or those it records in the guard it is given, go
    to its section's ``failures``."""
    out = {t: PlannedSection(t, [], []) for t in [MAIN, *_SECTIONS]}
    guards = {t: Guard.quiet() for t in out}
    for entry in list(_ENTRIES):
        if entry.section not in out:
            continue
        if isinstance(entry, ReportItem):
            out[entry.section].items.append(entry)
            continue
        guard = guards[entry.section]
        out[entry.section].items += guard.run(
            entry.kind, entry.name, lambda e=entry, g=guard: _listed(e, ctx, g)) or []
    main = out[MAIN].items
    main[:] = [i for i in main if i.kind == "figure"] + [i for i in main if i.kind == "table"]
    seen: set = set()
    for title, planned in out.items():
        kept = []
        for item in planned.items:
            if (item.kind, item.name) in seen:
                guards[title].record(item.kind, item.name, ValueError(
                    f"a second report {item.kind} named {item.name!r}; the first is kept"))
                continue
            seen.add((item.kind, item.name))
            kept.append(item)
        planned.items = kept
        planned.failures = list(guards[title].failures)
    return list(out.values())


def _listed(provider: Provider, ctx: ReportContext, guard: Guard) -> list[ReportItem]:
    items = list(provider.items(ctx, guard))
    for item in items:
        if not isinstance(item, ReportItem) or item.section != provider.section:
            raise ValueError(f"provider {provider.name!r} yielded {item!r}, not a "
                             f"ReportItem of its section {provider.section!r}")
    return items
