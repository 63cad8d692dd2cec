"""Variants as figures draw them: which rows make one line or one panel, what it is
called, and its colour and marker, the same for a level in every figure.

A *variant* is the combination of the factor levels that vary in a frame
(``ablations.levels.varying``); a factor with one level throughout is not part of
it. A residual-only sweep, with or without the factor columns, therefore has the
variants it always had, "plain" (orange squares) and "residual" (blue circles).

The varying factors split by the registry's ``needs``:

* **facets**: factors that apply to plain and residual networks alike (norm,
  block, and any factor registered without ``needs``). Each combination of their
  levels is a panel (row) of its own, titled with the level labels ("layer
  norm, pre-activation"), so no line, median or interval mixes two of them.
* **hues**: ``residual`` and the factors that only a residual network has
  (branch_scale, shortcut): the lines within a panel. Plain is always orange
  squares. A residual line takes its colour from its level of the first varying
  residual-only factor and its marker from the second's (else the first's),
  both from that level's registry ``Level``; with none varying it is blue
  circles. Plain's colour and marker are reserved for plain: a level whose
  registry entry has them takes the first of ``SPARE_COLOURS`` (``SPARE_MARKERS``)
  that no other level of its factor uses. So branch scale is x1 blue circles
  (today's residual network), x1/sqrt(blocks) pink diamonds, learned-from-0
  green triangles, in every figure.

Labels are the registry's ``Level.label``: a hue label is "plain", or
"residual" followed by the residual-only levels ("residual, x1/sqrt(blocks)"); a
facet label joins the facet levels. A row without a factor's column or value (a
folder written before the registry) reads as its family's default level.

>>> rows, key = keyed(trials)   # adds "variant" (hue label) and "facet" columns
>>> key.facets, list(key.styles)
(('layer norm', 'no norm'), ['plain', 'residual, x1', 'residual, x1/sqrt(blocks)'])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from matplotlib.lines import Line2D

from ablations import factors as _factors
from ablations import levels as _levels

NA = _factors.NA
# Colours and markers a residual-only level takes when its registry entry is plain's
# (Okabe-Ito, skipping vermillion: next to plain's orange it reads as the same hue).
SPARE_COLOURS = ("#cc78bc", "#029e73", "#ca9161", "#56b4e9", "#949494", "#ece133")
SPARE_MARKERS = ("D", "^", "v", "P", "X", "*", "<", ">")
UNKNOWN = ("#949494", "x")  # a level the registry does not know (a removed level)


@dataclass(frozen=True)
class Style:
    """How one hue variant is drawn."""
    label: str
    color: str
    marker: str
    residual: bool


@dataclass(frozen=True)
class Variants:
    """What ``keyed`` found in a frame: the factors drawn as facets and as hues, the
    facet labels in display order ("" alone: no facets), and each hue variant's
    style in display order (plain first, then the residual levels in registry order)."""
    facet_factors: tuple[str, ...] = ()
    hue_factors: tuple[str, ...] = ()
    facets: tuple[str, ...] = ("",)
    styles: dict[str, Style] = field(default_factory=dict)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.styles)

    def color(self, variant: str) -> str:
        return self.styles[variant].color

    def marker(self, variant: str) -> str:
        return self.styles[variant].marker

    def present(self, variants) -> list[str]:
        """The hue labels of ``variants`` (any iterable), in display order."""
        found = set(variants)
        return [v for v in self.styles if v in found]

    def handles(self, variants=None) -> list[Line2D]:
        """Legend entries (colour + marker) of ``variants`` (default: all), in order."""
        names = self.order if variants is None else self.present(variants)
        return [Line2D([], [], color=self.color(v), marker=self.marker(v), label=v) for v in names]

    def facet_rank(self, facet: str) -> int:
        return self.facets.index(facet) if facet in self.facets else len(self.facets)


def _level(name: str, level: str) -> _factors.Level:
    try:
        return _factors.get(name).level(level)
    except KeyError:
        return _factors.Level(level, level, *UNKNOWN)


def level_label(name: str, level: str) -> str:
    """The registry's label of ``level`` ("x1/sqrt(blocks)"); the level itself if unknown."""
    return _level(name, level).label


def _spare(value, taken, spares):
    return next((s for s in spares if s not in taken), value)


def level_style(name: str, level: str) -> tuple[str, str]:
    """(colour, marker) of a residual-only ``level``: its registry entry, with plain's
    colour and marker swapped for a spare one its factor does not use."""
    lv = _level(name, level)
    try:
        siblings = _factors.get(name).levels
    except KeyError:
        siblings = ()
    plain = _factors.get("residual").level("plain")
    color, marker = lv.color, lv.marker
    if color == plain.color:
        color = _spare(color, {s.color for s in siblings}, SPARE_COLOURS)
    if marker == plain.marker:
        marker = _spare(marker, {s.marker for s in siblings}, SPARE_MARKERS)
    return color, marker


def _needs_residual(name: str) -> bool:
    return "residual" in _factors.get(name).needs


def _key_frame(df: pd.DataFrame, names: list[str]) -> tuple[list[tuple], pd.DataFrame]:
    """Each row's key (family, model, factor columns; missing as None) and the distinct
    keys as a frame with every factor of ``names``, missing ones at the family default."""
    cols = [c for c in ("family", "model", *names) if c in df]
    norm = {c: df[c].astype(object).where(df[c].notna(), None) for c in cols}
    keys = list(zip(*(norm[c] for c in cols))) if cols else [()] * len(df)
    uniq = pd.DataFrame(list(dict.fromkeys(keys)), columns=cols)
    filled = _levels.with_levels(uniq, [n for n in names if n != "residual"])
    return keys, filled


def keyed(df: pd.DataFrame, like: Variants | None = None) -> tuple[pd.DataFrame, Variants]:
    """``df`` with a ``variant`` column (hue label) and a ``facet`` column (facet label,
    "" without facets), rows whose ``residual`` is not a bool dropped; and the
    ``Variants`` found. ``like``: key by its facet and hue factors instead of the ones
    varying in ``df`` (a frame of notes keyed like the figure it annotates)."""
    ok = df["residual"].map({True: True, False: True}).notna() if "residual" in df \
        else pd.Series(False, index=df.index)
    df = df[ok]
    names = _levels.present(df)
    if like is not None:  # a factor the key uses but this frame lacks: its default level
        names += [n for n in like.facet_factors + like.hue_factors
                  if n not in names and n in _factors.names()]
    keys, filled = _key_frame(df, names)
    if like is None:
        vary = _levels.varying(filled, names) if len(filled) else []
        facet_f = tuple(n for n in vary if n != "residual" and not _needs_residual(n))
        hue_f = tuple(n for n in vary if n != "residual" and _needs_residual(n))
    else:
        facet_f = tuple(n for n in like.facet_factors if n in names)
        hue_f = tuple(n for n in like.hue_factors if n in names)
    plain = _factors.get("residual").level("plain")
    residual = _factors.get("residual").level("residual")
    facet_of, hue_of, styles, facets = {}, {}, {}, {}
    for key, (_, row) in zip(dict.fromkeys(keys), filled.iterrows()):
        lv = {n: _levels.level_of(n, row[n]) for n in names}
        parts = [(n, lv[n]) for n in facet_f if lv[n] != NA]
        facet = ", ".join(level_label(n, v) for n, v in parts)
        facets[facet] = tuple(_levels.rank(n, v) for n, v in parts)
        if not bool(row["residual"]):
            hue, rank = plain.label, (0,)
            styles[hue] = (rank, Style(hue, plain.color, plain.marker, False))
        else:
            parts = [(n, lv[n]) for n in hue_f if lv[n] != NA]
            hue = ", ".join([residual.label] + [level_label(n, v) for n, v in parts])
            rank = (1,) + tuple(_levels.rank(n, v) for n, v in parts)
            color, marker = residual.color, residual.marker
            if parts:
                color, marker = level_style(*parts[0])
                marker = level_style(*parts[1])[1] if len(parts) > 1 else marker
            styles[hue] = (rank, Style(hue, color, marker, True))
        facet_of[key], hue_of[key] = facet, hue
    out = df.assign(variant=[hue_of[k] for k in keys], facet=[facet_of[k] for k in keys])
    variants = Variants(
        facet_f, hue_f,
        tuple(sorted(facets, key=lambda f: facets[f])) or ("",),
        {h: s for h, (_, s) in sorted(styles.items(), key=lambda kv: kv[1][0])})
    return out, variants


def joined(*parts: str, sep: str = ", ") -> str:
    """``parts`` joined, empty ones left out: ``joined("mlp", "", "depth 8")`` = "mlp, depth 8"."""
    return sep.join(p for p in parts if p)
