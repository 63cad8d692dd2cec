"""The study's factors as values: one registry that the CLI, the plan, trial ids, results
columns, W&B config, ``--where``, statistics and figures all read.

A factor has string levels, a baseline level (what contrasts are taken against), the
variants it applies to (``needs``: branch scale and shortcut type exist only where
there is a residual branch), a readable label and a colour/marker/line style per level,
and ``configure``: how a level sets the model config (a field of the same name, unless
the factor says otherwise).

Which families a factor applies to, and each family's default level (the level that
builds its network as it was, so results without the flag are unchanged), are the
families' own declarations (``FACTORS`` on their configs, ``models.levels``), read
through the models registry: ``factor.families`` and ``factor.default`` are computed
from them, so this module names no family.

Adding a factor = one ``register(Factor(...))`` here + each family's declaration
(``FACTORS``) and the model code that reads its config field. ``residual`` is a factor
like the others; its results column keeps the bool it always had (``True`` = residual)
so stored results stay readable.

>>> levels = {"residual": "residual", "norm": "layer", "block": "post", ...}
>>> cfg = configure(cfg, levels)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import models

# Nuisance hyperparameters searched per cell (``--tune``; Optuna TPE): log-uniform ranges,
# overridden by ``--tune-range``. Here, torch-free, so the report (analysis.tuning) reads
# the same ranges as the search (ablations.spec) without a copy.
TUNE_SPACE = {"lr": (1e-3, 1.0), "weight_decay": (1e-6, 1e-2)}

NA = "n/a"  # the column value of a factor that does not apply to a row (plain + branch_scale)

# Okabe-Ito-like colour-blind palette (seaborn "colorblind"), markers for greyscale.
_COLOURS = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4",
            "#949494", "#ece133", "#56b4e9")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))


@dataclass(frozen=True)
class Level:
    name: str
    label: str
    color: str
    marker: str
    linestyle: Any = "-"


@dataclass(frozen=True, init=False)
class Factor:
    """One study factor. ``levels`` in display order.

    ``families`` (the families it applies to) and ``default`` (family -> the level that
    builds its network) come from the families' declarations in the models registry.
    ``only_families``/``only_default`` (the keywords ``families=``/``default=``) fix
    them instead, for a factor no family declares (one registered by a test)."""
    name: str
    label: str
    levels: tuple[Level, ...]
    baseline: str
    only_default: dict[str, str] | None = None
    only_families: tuple[str, ...] | None = None
    needs: dict[str, str] = field(default_factory=dict)  # {"residual": "residual"}
    help: str = ""
    tag: str = ""            # short name in trial ids: resnet-20-residual-scale=zero-s0
    configure: Callable[[Any, str], Any] | None = None  # (model cfg, level) -> cfg
    column_of: Callable[[str], Any] = str       # level -> results column value
    level_of: Callable[[Any], str] = str        # results column value -> level

    def __init__(self, name: str, label: str, levels: tuple[Level, ...], baseline: str,
                 default: dict[str, str] | None = None,
                 families: tuple[str, ...] | None = None,
                 needs: dict[str, str] | None = None, help: str = "", tag: str = "",
                 configure: Callable[[Any, str], Any] | None = None,
                 column_of: Callable[[str], Any] = str, level_of: Callable[[Any], str] = str):
        values = dict(name=name, label=label, levels=tuple(levels), baseline=baseline,
                      only_default=default, only_families=families, needs=dict(needs or {}),
                      help=help, tag=tag, configure=configure, column_of=column_of,
                      level_of=level_of)
        for k, v in values.items():  # frozen: as the generated __init__ does
            object.__setattr__(self, k, v)

    @property
    def families(self) -> tuple[str, ...]:
        """The registered families that declare this factor (sorted)."""
        if self.only_families is not None:
            return self.only_families
        return models.factor_families(self.name)

    @property
    def default(self) -> dict[str, str]:
        """``family -> default level`` for each family in ``families``."""
        if self.only_default is not None:
            return dict(self.only_default)
        return {fam: models.family_factors(fam)[self.name].default for fam in self.families}

    def supported(self, family: str) -> tuple[str, ...]:
        """The levels ``family`` can build (its declaration; every level for a factor
        whose families are fixed)."""
        if self.only_families is not None:
            return self.level_names
        decl = models.family_factors(family).get(self.name)
        return decl.levels if decl is not None else ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"{self.flag}: unknown level {name!r}; valid: {', '.join(self.level_names)}")

    def applies_to(self, family: str, levels: dict[str, str]) -> bool:
        """Whether this factor is crossed with a variant of ``family`` at ``levels``."""
        return family in self.families and all(levels.get(k) == v for k, v in self.needs.items())

    def apply(self, cfg, level: str):
        """``cfg`` with ``level`` set; a model without the setting builds only the default."""
        if self.configure is not None:
            return self.configure(cfg, level)
        if not hasattr(cfg, self.name):
            if level == self.default.get(getattr(cfg, "family", None)):
                return cfg
            raise ValueError(f"{getattr(cfg, 'family', 'this model')} has no {self.name} "
                             f"setting; only {self.flag} "
                             f"{self.default.get(getattr(cfg, 'family', None), NA)}")
        return dataclasses.replace(cfg, **{self.name: level})


def styled_levels(*specs: tuple[str, str]) -> tuple[Level, ...]:
    """``Level``s from ``(name, label)`` pairs, styled in turn from the shared palette,
    markers and line styles."""
    return tuple(Level(n, lab, _COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)],
                       _LINES[i % len(_LINES)]) for i, (n, lab) in enumerate(specs))


_REGISTRY: dict[str, Factor] = {}


def register(factor: Factor) -> Factor:
    """Add ``factor``; a duplicate name raises (a silent replacement would change studies)."""
    if factor.name in _REGISTRY:
        raise ValueError(f"factor {factor.name!r} is already registered")
    if factor.baseline not in factor.level_names:
        raise ValueError(f"factor {factor.name!r}: baseline {factor.baseline!r} is not a level")
    _REGISTRY[factor.name] = factor
    return factor


def unregister(name: str) -> None:
    """Remove a factor (tests that register a toy factor clean up with this)."""
    _REGISTRY.pop(name, None)


def all_factors() -> list[Factor]:
    """Every factor, in registration order (residual first)."""
    return list(_REGISTRY.values())


def get(name: str) -> Factor:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown factor {name!r}; factors: {', '.join(_REGISTRY)}") from None


def names() -> list[str]:
    return list(_REGISTRY)


# --------------------------------------------------------------------------- the factors

# residual: the switch the project started from. Blue circles = residual, orange squares =
# plain in every figure, as before.
register(Factor(
    name="residual", label="shortcut", tag="",
    levels=(Level("plain", "plain", "#de8f05", "s", "--"),
            Level("residual", "residual", "#0173b2", "o", "-")),
    baseline="plain",
    help="identity shortcuts (on), none (off), or both variants",
    configure=lambda cfg, level: dataclasses.replace(cfg, residual=level == "residual"),
    column_of=lambda level: level == "residual",
    level_of=lambda value: "residual" if bool(value) else "plain"))

register(Factor(
    name="norm", label="normalization", tag="norm",
    levels=styled_levels(("batch", "batch norm"), ("layer", "layer norm"), ("none", "no norm")),
    baseline="batch",
    help="normalization layers: batch, layer (on a conv net's maps: GroupNorm with one "
         "group), or none"))

register(Factor(
    name="block", label="block order", tag="block",
    levels=styled_levels(("post", "post-activation"), ("pre", "pre-activation")),
    baseline="post",
    help="post (He 2016; the seed's relu(Wx) + x) or pre (norm-ReLU-weight in the "
         "branch, nothing after the addition)"))

register(Factor(
    name="branch_scale", label="branch scale", tag="scale",
    levels=styled_levels(("one", "x1"), ("invsqrt", "x1/sqrt(blocks)"),
                         ("zero", "learned, 0 at init")),
    baseline="one",
    needs={"residual": "residual"},
    help="scale of each residual branch: one, invsqrt (1/sqrt(residual blocks)), zero "
         "(a learnable scalar initialized at 0: SkipInit/ReZero)"))

register(Factor(
    name="shortcut", label="shortcut type", tag="sc",
    levels=styled_levels(("projection", "projection (B)"), ("pad", "zero-pad (A)")),
    baseline="projection",
    needs={"residual": "residual"},
    help="a conv net's shortcut on a shape change: projection (1x1 conv + norm, option B) or "
         "pad (stride-2 subsampling + zero channels, option A: no parameters)"))

register(Factor(
    name="activation", label="activation", tag="act",
    levels=styled_levels(("relu", "ReLU"), ("gelu", "GELU")),
    baseline="relu",
    help="the nonlinearity of every norm-activation: relu, or gelu (Hendrycks & Gimpel "
         "2016); only relu runs as the fused norm+ReLU kernel"))


# --------------------------------------------------------------------------- helpers

def default_levels(family: str) -> dict[str, str]:
    """Every factor's level for today's network of ``family`` (NA where it does not
    apply, or where ``family`` is not registered in this process)."""
    return {f.name: f.default.get(family, NA) for f in all_factors()}


def variants(family: str, requested: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    """The cross product of ``requested`` levels for ``family``, in registry order.

    A factor that does not apply to a variant is not crossed with it: a plain network
    has no branch scale, so there is one plain variant whatever ``--branch-scale`` lists,
    and every residual level is contrasted with that same plain cell. A factor the
    family does not have (``shortcut`` for mlp) is NA. A factor not in ``requested``
    takes the family's default level; a requested level the family does not declare
    is not crossed with it.
    """
    out: list[dict[str, str]] = [{}]
    for f in all_factors():
        grown = []
        for v in out:
            if not f.applies_to(family, v):
                grown.append({**v, f.name: NA})
                continue
            supported = f.supported(family)
            levels = [lv for lv in requested.get(f.name) or (f.default[family],)
                      if lv in supported] or [f.default[family]]
            grown += [{**v, f.name: lv} for lv in levels]
        out = grown
    unique = []
    for v in out:
        if v not in unique:
            unique.append(v)
    return unique


def configure(cfg, family: str, levels: dict[str, str]):
    """``cfg`` with every applicable factor's level set (NA levels leave it alone)."""
    for f in all_factors():
        lv = levels.get(f.name, NA)
        if lv != NA and family in f.families:
            cfg = f.apply(cfg, lv)
    return cfg


def columns(levels: dict[str, str]) -> dict[str, Any]:
    """Results-column values of ``levels`` (residual as its bool, the others as strings)."""
    return {f.name: f.column_of(levels[f.name]) if levels.get(f.name, NA) != NA else NA
            for f in all_factors()}


def id_parts(family: str, levels: dict[str, str]) -> list[str]:
    """Trial-id parts: the residual level, then ``tag=level`` for each non-default level."""
    parts = [levels.get("residual", "residual")]
    for f in all_factors():
        lv = levels.get(f.name, NA)
        if f.name == "residual" or lv == NA or lv == f.default.get(family):
            continue
        parts.append(f"{f.tag or f.name}={lv}")
    return parts


def validate_requested(requested: dict[str, tuple[str, ...]], families: tuple[str, ...]) -> None:
    """One-line errors (``ValueError``) for an unknown level, an empty list, a factor
    given for families it does not apply to, or a level none of them builds."""
    for name, levels in requested.items():
        f = get(name)
        if not levels:
            raise ValueError(f"{f.flag} is empty; valid levels: {', '.join(f.level_names)}")
        bad = [lv for lv in levels if lv not in f.level_names]
        if bad:
            raise ValueError(f"{f.flag}: unknown level {bad[0]!r}; valid levels: "
                             f"{', '.join(f.level_names)}")
        if not set(families) & set(f.families):
            raise ValueError(f"{f.flag} applies to {', '.join(f.families)} only; this sweep "
                             f"has {', '.join(families)} (add --families "
                             f"{','.join(f.families)} or leave {f.flag} out)")
        mine = [fam for fam in families if fam in f.families]
        built = {lv for fam in mine for lv in f.supported(fam)}
        unbuilt = [lv for lv in levels if lv not in built]
        if unbuilt:
            raise ValueError(f"{f.flag}: no family of this sweep ({', '.join(mine)}) builds "
                             f"level {unbuilt[0]!r}; they build {', '.join(sorted(built))}")
