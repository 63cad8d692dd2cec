"""``--where``: restrict a results folder's frames to some values of family, model, depth,
seed and any factor (``ablations.factors``), before anything is built.

``parse_where(["norm=none", "branch_scale=zero,invsqrt"])`` checks the names and values
(one-line ``ResultsError`` naming the valid ones); ``apply_where`` filters every frame,
failing on a value no trial has; ``where_slug`` names the view's folder.
"""
from __future__ import annotations

import re

import pandas as pd

from ablations import factors as _factors
from ablations import levels


class ResultsError(ValueError):
    """Bad input, before anything is built: the folder is missing, holds no results, a
    file cannot be read, or a filter (``--where``) or format is bad. (Defined here, the
    first module that raises it; ``analysis.report`` re-exports it.)"""


def safe_name(name: str) -> str:
    """A file-name-safe version of a trial or model name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(name))


_BOOL = {"residual": True, "true": True, "on": True, "yes": True, "1": True,
         "plain": False, "false": False, "off": False, "no": False, "0": False}


def where_keys() -> tuple[str, ...]:
    """What ``--where`` filters on: family, model, depth, every registered factor, seed."""
    return ("family", "model", "depth", *_factors.names(), "seed")


def parse_where(items) -> dict[str, list]:
    """``["family=resnet", "depth=18,34"]`` -> ``{"family": ["resnet"], "depth": [18, 34]}``.

    Keys: ``where_keys()``. ``depth`` and ``seed`` take integers, ``residual`` takes
    residual/plain (or true/false, on/off), every other factor its level names
    (``ablations.factors``) or n/a. A repeated key widens (``depth=18 depth=34`` is
    ``depth=18,34``). Raises ``ResultsError`` with one line naming the valid values.
    """
    keys = where_keys()
    out: dict[str, list] = {}
    for item in items or ():
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ResultsError(f"--where {item!r}: expected FACTOR=VALUE[,VALUE...], "
                               f"factors: {', '.join(keys)}")
        if key not in keys:
            raise ResultsError(f"--where {item!r}: unknown factor {key!r}; "
                               f"valid: {', '.join(keys)}")
        for v in (v.strip() for v in values.split(",") if v.strip()):
            if key in ("depth", "seed"):
                try:
                    v = int(v)
                except ValueError:
                    raise ResultsError(f"--where {item!r}: {key} takes integers, got {v!r}") from None
            elif key == "residual":
                if v.lower() not in _BOOL:
                    raise ResultsError(f"--where {item!r}: residual takes residual or plain, "
                                       f"got {v!r}")
                v = _BOOL[v.lower()]
            elif key in _factors.names():
                valid = (*_factors.get(key).level_names, levels.NA)
                if v not in valid:
                    raise ResultsError(f"--where {item!r}: {key} takes {', '.join(valid)}; "
                                       f"got {v!r}")
            out.setdefault(key, []).append(v)
    return out


def _where_text(key: str, v) -> str:
    return ("residual" if v else "plain") if key == "residual" else str(v)


def apply_where(data: dict[str, pd.DataFrame], where: dict[str, list]) -> dict[str, pd.DataFrame]:
    """The frames restricted to ``where``; a value that matches no trial is an error
    naming the values of that key present, and the key (a typo must not give an empty
    report).

    A factor filter keeps the rows where that factor does not apply ("n/a"): a plain
    cell has no branch scale, and ``--where branch_scale=zero`` keeps it so that the
    zero-branch cells are still contrasted with it (add ``residual=residual`` to drop
    it); ``--where branch_scale=n/a`` keeps only such rows. A folder written before a
    factor existed counts as its family's default level (``levels.with_levels``).
    """
    if not where:
        return data
    trials = data.get("trials")
    ref = trials if trials is not None else next(iter(data.values()))
    registered = set(_factors.names())
    ref = levels.with_levels(ref, [k for k in where if k in registered])
    for key, values in where.items():
        if key not in ref:
            raise ResultsError(f"--where {key}: the results have no {key!r} column")
        present = set(ref[key].dropna().tolist())
        missing = [v for v in values if v not in present]
        if missing:
            shown = sorted(present, key=lambda v: levels.rank(key, v) if key in registered else v)
            raise ResultsError(f"--where {key}={','.join(_where_text(key, v) for v in missing)}: "
                               f"no such trials; present: "
                               f"{', '.join(_where_text(key, v) for v in shown) or 'nothing'} "
                               f"(the {key} values in these results)")
    out = {}
    for name, df in data.items():
        filled = levels.with_levels(df, [k for k in where if k in registered]) \
            if "family" in df or "model" in df else df
        keep = pd.Series(True, index=df.index)
        for key, values in where.items():
            if key in filled:
                col = filled[key]
                keep &= col.isin(values) | ((col == levels.NA) if key in registered else False)
        out[name] = df[keep].reset_index(drop=True)
    return out


def where_slug(where: dict[str, list]) -> str:
    """``{"family": ["resnet"], "depth": [18, 34]}`` -> ``family=resnet_depth=18,34``."""
    return safe_name("_".join(f"{k}=" + ",".join(_where_text(k, v) for v in vs)
                          for k, vs in where.items()))
