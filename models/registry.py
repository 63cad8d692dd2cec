"""Model registry: the only way to build a model by name.

Families (``mlp``, ``resnet``) are built from a depth; presets (``seed_mlp5``,
``small_resnet18``) are fixed configurations that reproduce the two replicated articles.
A duplicate registration raises (torchvision does; timm only warns).

A family registers its config class with it, and the class declares the factor levels
the family supports (``FACTORS``, ``models.levels``): ``family_factors`` and
``factor_families`` read those declarations for the factor registry
(``ablations.factors``). Nothing here imports torch, so reading them does not either.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import TYPE_CHECKING, Any, Callable

from .levels import FactorLevels, level_fields

if TYPE_CHECKING:
    import torch.nn as nn

# name -> (kind, builder). kind is "family" (needs depth) or "preset".
_REGISTRY: dict[str, tuple[str, Callable[..., Any]]] = {}
_CONFIGS: dict[str, type] = {}  # family -> its config class

# What a family's config class must have (models/interface.py): dataclass fields, then
# class attributes and methods.
CONFIG_FIELDS = ("family", "depth", "residual", "num_classes")
CONFIG_PARTS = ("FACTORS", "input_shape", "build", "layout", "with_input")


class UnknownModelError(ValueError):
    """Raised for a model or family name the registry does not hold."""


def _register(name: str, kind: str, builder: Callable[..., Any]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = (kind, builder)


def check_config_class(name: str, config: type) -> None:
    """TypeError naming what ``config`` lacks of a family's config (models/interface.py)."""
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(
        config) else set()
    missing = [f for f in CONFIG_FIELDS if f not in fields] + \
        [a for a in CONFIG_PARTS if not hasattr(config, a)]
    if missing:
        raise TypeError(f"family {name!r}: config class {config.__name__} lacks "
                        f"{', '.join(missing)} (a family's config: models/interface.py)")


def register_family(name: str, config: type):
    """Register ``builder(depth=..., **overrides) -> config`` for a family whose configs
    are instances of the class ``config`` (checked: ``check_config_class``)."""
    check_config_class(name, config)

    def deco(builder):
        _register(name, "family", builder)
        _CONFIGS[name] = config
        return builder
    return deco


def unregister(name: str) -> None:
    """Remove a family or preset (tests that register a toy family clean up with this)."""
    _REGISTRY.pop(name, None)
    _CONFIGS.pop(name, None)


def register_model(name: str):
    """Register ``builder(**overrides) -> config`` for a fixed preset."""
    def deco(builder):
        _register(name, "preset", builder)
        return builder
    return deco


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted registered names matching a glob ``pattern`` (optionally one kind)."""
    return sorted(n for n, (k, _) in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (kind is None or k == kind))


def list_families() -> list[str]:
    return list_models(kind="family")


def list_presets() -> list[str]:
    return list_models(kind="preset")


def family_config(family: str) -> type:
    """The config class of a registered family; UnknownModelError otherwise."""
    _lookup(family)
    if family not in _CONFIGS:
        raise UnknownModelError(f"{family!r} is a preset, not a family")
    return _CONFIGS[family]


def family_factors(family: str) -> dict[str, FactorLevels]:
    """``factor -> FactorLevels(levels, default)``: what ``family`` declares it supports."""
    return dict(family_config(family).FACTORS)


def factor_families(factor: str) -> tuple[str, ...]:
    """The registered families that declare ``factor``, sorted."""
    return tuple(f for f in list_families() if factor in _CONFIGS[f].FACTORS)


def _lookup(name: str) -> tuple[str, Callable[..., Any]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid families: {', '.join(list_families())}; "
            f"valid presets: {', '.join(list_presets())}") from None


def get_config(name: str, **overrides):
    """The frozen config of a family (``depth`` required) or preset, with overrides."""
    kind, builder = _lookup(name)
    if kind == "family" and "depth" not in overrides:
        raise TypeError(f"family {name!r} needs depth=")
    return builder(**overrides)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a model by family or preset name.

    >>> m = create_model("resnet", depth=20, residual=False)
    >>> m = create_model("small_resnet18")
    """
    return get_config(name, **overrides).build()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def variant_params(cfg) -> dict[bool, int]:
    """``{residual: parameter count}`` for the plain and residual variants of a config,
    built on the meta device (no memory, no init, no random numbers)."""
    import torch
    with torch.device("meta"):
        return {r: count_params(dataclasses.replace(cfg, residual=r).build())
                for r in (False, True)}


def level_params(cfg) -> list[tuple[str, str, dict[bool, int]]]:
    """``(field, level, variant_params)`` for each level of each level field
    (``models.levels.level_fields``), one field changed at a time, where the counts
    differ from ``cfg``'s own."""
    base = variant_params(cfg)
    rows = []
    for field, decl in level_fields(cfg).items():
        for level in decl.levels:
            if level != getattr(cfg, field):
                counts = variant_params(dataclasses.replace(cfg, **{field: level}))
                if counts != base:
                    rows.append((field, level, counts))
    return rows


def describe(names: list[str] | None = None, depths: list[int] | None = None) -> str:
    """Human-readable layout and parameter counts, plain and residual, per model, then
    the counts at each factor level that changes them (one factor at a time)."""
    lines = []
    for name in names or list_models():
        kind, _ = _lookup(name)
        for depth in (depths or [5, 18, 34]) if kind == "family" else [None]:
            kw = {} if depth is None else {"depth": depth}
            label = name if depth is None else f"{name}-{depth}"
            try:
                cfg = get_config(name, **kw)
            except ValueError as e:
                lines.append(f"{label:<20} cannot build: {e}")
                continue
            counts = variant_params(cfg)
            lines.append(f"{label:<20} {cfg.layout()}")
            lines.append(f"{'':<20} params plain {counts[False]:,}  residual {counts[True]:,}")
            for field, level, c in level_params(cfg):
                lines.append(f"{'':<22}{field + '=' + level:<20}plain {c[False]:,}  "
                             f"residual {c[True]:,}")
    return "\n".join(lines)
