"""The ``--help`` of sweep.py, ``python -m analysis`` and ``python -m ablations.measure``:
each option's default said once, in words.

``HelpFormatter`` appends a default the parser knows (``plain``); the defaults decided
later, from ``--recipe``, the families, ``--mode`` or ``--smoke``, are written by
``recipes_default``, ``factor_default`` and ``measure_default`` from the registries
themselves, and ``--where``'s factors and levels by ``where_levels``, so the help
cannot drift from them.
"""
from __future__ import annotations

import argparse

from . import factors, recipes



class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, once, in words: the help's own
    "(default: ...)" where a default is decided later (by --recipe, --mode or --smoke),
    else the parser's default written plainly (a list as 5,18,34, none for an empty
    one). A switch (an option without a value) is off unless given and says nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or not action.option_strings or action.nargs == 0 \
                or action.default in (None, argparse.SUPPRESS):
            return text
        return f"{text} (default: {plain(action.default)})".strip()


def plain(value) -> str:
    """A default in words: ``(5, 18, 34)`` -> ``5,18,34``, ``()`` -> ``none``, 10.0 -> 10."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(plain, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipes_default(field: str, smoke: str = "") -> str:
    """``(default: 0.1 in every --recipe)`` or ``(default: from --recipe: seed 5e-4,
    default 5e-4, he2016 1e-4)`` for --help; ``smoke``: what --smoke makes it."""
    shown = {r.name: r.shown(field) for r in map(recipes.get, recipes.names())}
    words = (f"{next(iter(shown.values()))} in every --recipe" if len(set(shown.values())) == 1
             else "from --recipe: " + ", ".join(f"{n} {v}" for n, v in shown.items()))
    return f"(default: {words}{'; ' + smoke if smoke else ''})"


def factor_default(f) -> str:
    """A factor flag's default in words: the levels the recipes supply, else each
    family's own (``factor.default``)."""
    by_recipe = []
    for r in map(recipes.get, recipes.names()):
        given = [lv for n, lv in r.levels if n == f.name]
        given += [f"{fam} {lv}" for fam, lvs in r.family_levels for n, lv in lvs
                  if n == f.name]
        if given:
            by_recipe.append(f"{r.name} {', '.join(given)}")
    own = ", ".join(f"{fam} {lv}" for fam, lv in f.default.items())
    return "(default: " + (f"from --recipe: {'; '.join(by_recipe)}; otherwise "
                           if by_recipe else "") + f"each family's own: {own})"


def measurement_names() -> str:
    """The registered measurements, for the help (the built-in module names if one of
    them fails to import: the help must not depend on it)."""
    from . import measurements
    try:
        return ", ".join(measurements.names())
    except Exception:  # noqa: BLE001  a broken measurement module is reported when used
        return ", ".join(measurements.BUILTINS)


def measure_default() -> str:
    """``--measure``'s default in words (the default set's names when they import)."""
    from . import measurements
    try:
        names = ", ".join(measurements.defaults())
    except Exception:  # noqa: BLE001  a broken measurement module is reported when used
        names = "the cheap default set"
    return f"(default: in train mode {names}; in probe mode none)"


def where_levels() -> str:
    """``--where``'s factors and their levels, from the factor registry
    (``ablations.factors``): ``residual=plain/residual, norm=batch/layer/none, ...``."""
    return ", ".join(f"{f.name}={'/'.join(f.level_names)}" for f in factors.all_factors())


def defaults_said(switches: bool = True) -> str:
    """The promise a command's description makes, which ``HelpFormatter`` keeps
    (``switches``: the command has options without a value)."""
    return "Each option below says its default" + (
        "; a switch (an option without a value) is off unless given." if switches else ".")
