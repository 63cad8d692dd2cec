"""The factor levels a family declares, as plain names (no torch: the report reads them).

A family's config declares every study factor it supports in a ``FACTORS`` class
variable, ``factor name -> FactorLevels(levels, default)``: the levels it can build and
the one that builds its own network (results without the factor's flag use it). The
factor registry (``ablations.factors``) reads these declarations for a factor's
families and defaults; it names no family itself.

A factor whose level the config holds as a string field of the same name (``norm``,
``block``, ...) is checked here (``check_levels``) and named in ``layout()``
(``level_suffix``). ``residual`` is declared like the others, but the config holds it
as a bool; a factor whose ``configure`` maps onto other fields has no field at all.
Neither is a level field, and the helpers below leave them alone.

The level names of the shared layers (``models.norm_act``, ``models.layers``) live here
too, so a config can declare them without importing the layers.
"""
from __future__ import annotations

from typing import NamedTuple

NORM_LEVELS = ("batch", "layer", "none")          # models.norm_act.get_norm_layer
ACTIVATION_LEVELS = ("relu", "gelu")              # models.norm_act.act_fn / act_layer
ACTIVATION_NAMES = {"relu": "ReLU", "gelu": "GELU"}
BLOCK_LEVELS = ("post", "pre")                    # each family's block classes
BRANCH_SCALE_LEVELS = ("one", "invsqrt", "zero")  # models.layers.make_branch_scale
SHORTCUT_LEVELS = ("projection", "pad")           # models.layers.make_shortcut

# Fields that only change a network that has shortcuts: a plain network ignores them
# (it has no residual branch to scale and no shortcut to choose), so it builds the
# same whatever they say, and ``layout()`` does not name them for it.
RESIDUAL_ONLY = ("branch_scale", "shortcut")


class FactorLevels(NamedTuple):
    """The levels of one factor a family supports, in its own order, and its default."""
    levels: tuple[str, ...]
    default: str

    @classmethod
    def of(cls, levels: tuple[str, ...], default: str | None = None) -> "FactorLevels":
        """``levels`` with ``default`` (the first level when None); ValueError when the
        default is not one of them."""
        default = levels[0] if default is None else default
        if default not in levels:
            raise ValueError(f"default {default!r} is not one of the levels {levels}")
        return cls(tuple(levels), default)


def check_level(field: str, value: str, levels) -> str:
    """``value`` if it is one of ``levels``, else ValueError naming the valid levels."""
    if value not in levels:
        raise ValueError(f"{field} {value!r} is not a level; valid levels: "
                         f"{', '.join(levels)}")
    return value


def level_fields(cfg) -> dict[str, FactorLevels]:
    """The declared factors (``cfg.FACTORS``) whose level ``cfg`` holds as a string field
    of the same name, in declaration order."""
    return {name: decl for name, decl in cfg.FACTORS.items()
            if isinstance(getattr(cfg, name, None), str)}


def check_levels(cfg) -> None:
    """Every level field of a config holds one of its declared levels."""
    for field, decl in level_fields(cfg).items():
        check_level(field, getattr(cfg, field), decl.levels)


def level_suffix(cfg) -> str:
    """``", norm=none, block=pre"``: the level fields not at their declared default,
    minus those a plain network ignores; "" for defaults."""
    return "".join(f", {field}={getattr(cfg, field)}"
                   for field, decl in level_fields(cfg).items()
                   if getattr(cfg, field) != decl.default
                   and (cfg.residual or field not in RESIDUAL_ONLY))
