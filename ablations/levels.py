"""The study's factors as columns of a results frame (``ablations.factors`` read as data).

Every row of a new results folder carries one column per registered factor
(``residual`` as its bool, the others as level strings, ``NA = "n/a"`` where a factor
does not apply: a plain network has no branch scale, an MLP no shortcut type). Folders
written before the registry have only ``residual``; the statistics key on the factor
columns a frame *has* (``present``), so such a folder gives exactly the keys it always
did, and ``with_levels`` fills the missing columns with each family's default level
where a filter or a description needs every factor.

Pure functions on DataFrames; ``ablations.factors`` imports nothing heavy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from ablations import factors as _factors

NA = _factors.NA
BASE_KEYS = ("family", "model", "depth")  # what every cell key starts with


def present(df: pd.DataFrame) -> list[str]:
    """The registered factors that are columns of ``df``, in registry order (residual first)."""
    return [n for n in _factors.names() if n in df.columns]


def _missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def level_of(name: str, value) -> str:
    """The level name of a column value: residual's bool -> "residual"/"plain"; others as
    text (a missing value reads as n/a).

    >>> level_of("residual", False), level_of("norm", "none")
    ('plain', 'none')
    """
    if _missing(value):
        return NA
    if name == "residual":
        return _factors.get("residual").level_of(value)
    return str(value)


def levels(df: pd.DataFrame, name: str) -> list[str]:
    """The levels of factor ``name`` in ``df`` (level names, n/a left out; a missing
    value is its family's default, as in ``with_levels``), in the registry's level
    order; a level the registry does not know comes last."""
    if name not in df:
        return []
    col = df[name]
    if col.isna().any() and name != "residual":
        col = with_levels(df[[c for c in ("family", "model", "residual", name) if c in df]],
                          [name])[name]
    found = {level_of(name, v) for v in col.dropna().unique()} - {NA}
    return sorted(found, key=lambda lv: rank(name, lv))


def family_of(df: pd.DataFrame) -> pd.Series:
    """The ``family`` column, or ``model`` where a frame has none."""
    if "family" in df:
        return df["family"]
    return df["model"] if "model" in df else pd.Series("", index=df.index)


def varying(df: pd.DataFrame, names: Iterable[str] | None = None) -> list[str]:
    """The factors (of ``names``, default ``present(df)``) with more than one level
    within one family of ``df``. n/a is not a level (branch_scale "one" on residual rows
    and "n/a" on plain rows is a sweep that varies only residual), and neither is a
    level that only tells families apart (norm: mlp's default none, resnet's batch)."""
    fam = family_of(df)
    out = []
    for n in (present(df) if names is None else names):
        if n in df and any(len(levels(g, n)) > 1 for _, g in df.groupby(fam, sort=False)):
            out.append(n)
    return out


def rank(name: str, value) -> tuple[int, str]:
    """Sort key of a factor value: the level's position in the registry (plain before
    residual, batch before layer before none), then n/a, then unknown values by name."""
    lv = level_of(name, value)
    try:
        order = _factors.get(name).level_names
    except KeyError:
        order = ()
    if lv in order:
        return (order.index(lv), "")
    return (len(order) + (lv != NA), lv)


def sort_cells(df: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """``df`` sorted by ``keys`` (stable), factor columns in the registry's level order."""
    keys = [k for k in keys if k in df.columns]
    registered = set(_factors.names())

    def key(col: pd.Series) -> pd.Series:
        if col.name in registered:
            return col.map(lambda v: rank(col.name, v))
        return col
    return df.sort_values(keys, kind="stable", key=key).reset_index(drop=True) if keys \
        else df.reset_index(drop=True)


def default_column(family: str, residual, name: str):
    """Column value of factor ``name`` for a row of ``family`` that does not record it:
    the family's default level, n/a where the factor does not apply (a plain row's
    branch_scale) or the family does not have it."""
    f = _factors.get(name)
    lv = _factors.default_levels(family)
    if not _missing(residual):
        lv["residual"] = level_of("residual", residual)
    if not f.applies_to(family, lv) or lv.get(name, NA) == NA:
        return NA
    return f.column_of(lv[name])


def with_levels(df: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    """A copy with each factor of ``names`` (default: every registered factor) as a
    column: a missing column, or a missing value in one (rows of an old folder
    concatenated with new ones), takes the row's family default (``default_column``).
    Rows without ``family`` use ``model``. Residual is never filled (every results
    row has it)."""
    names = [n for n in (_factors.names() if names is None else names) if n != "residual"]
    out = df.copy()
    if not len(out):
        for name in names:
            if name not in out:
                out[name] = pd.Series(dtype=object)
        return out
    family = out["family"] if "family" in out else out.get("model", pd.Series(NA, index=out.index))
    residual = out["residual"] if "residual" in out else pd.Series(None, index=out.index)
    for name in names:
        col = out[name] if name in out else pd.Series(None, index=out.index, dtype=object)
        miss = col.isna()
        if not miss.any():
            continue
        fill = [default_column(str(f), r, name) for f, r in zip(family[miss], residual[miss])]
        col = col.astype(object)
        col[miss] = fill
        out[name] = col
    return out


def describe(row: Mapping, names: Iterable[str], sep: str = ", ") -> str:
    """``"plain, norm=none"``: the levels of ``names`` in ``row``; residual by its level
    name, the others as ``name=level``; n/a levels are left out."""
    parts = []
    for n in names:
        if n not in row:
            continue
        lv = level_of(n, row[n])
        if lv == NA:
            continue
        parts.append(lv if n == "residual" else f"{n}={lv}")
    return sep.join(parts)
