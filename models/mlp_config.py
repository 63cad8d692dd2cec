"""The MLP family's config: its fields, the factor levels it supports, its registration.

No torch here (the report reads ``FACTORS`` through the factor registry); ``build()``
imports the network, ``models.mlp``, which documents what each level builds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .levels import (ACTIVATION_LEVELS, ACTIVATION_NAMES, BLOCK_LEVELS, BRANCH_SCALE_LEVELS,
                     FactorLevels, check_levels, level_suffix)
from .registry import register_family, register_model


@dataclass(frozen=True)
class MLPConfig:
    depth: int
    width: int = 256
    in_features: int = 3 * 32 * 32  # flattened CIFAR image
    num_classes: int = 10
    bias: bool = True
    residual: bool = True
    norm: str = "none"
    block: str = "post"
    branch_scale: str = "one"
    activation: str = "relu"
    family: str = "mlp"

    # factor -> the levels this family builds and its default (the seed's network);
    # the defaults are the fields' own defaults
    FACTORS: ClassVar[dict[str, FactorLevels]] = {
        "residual": FactorLevels.of(("residual", "plain")),
        "norm": FactorLevels.of(("none", "layer", "batch")),
        "block": FactorLevels.of(BLOCK_LEVELS),
        "branch_scale": FactorLevels.of(BRANCH_SCALE_LEVELS),
        "activation": FactorLevels.of(ACTIVATION_LEVELS)}

    def __post_init__(self):
        check_levels(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example: a feature vector (images are flattened by the network's stem)."""
        return (self.in_features,)

    def build(self):
        """The network (``models.mlp.MLP``)."""
        from .mlp import MLP
        return MLP(depth=self.depth, width=self.width, in_features=self.in_features,
                   num_classes=self.num_classes, bias=self.bias, residual=self.residual,
                   norm=self.norm, block=self.block, branch_scale=self.branch_scale,
                   activation=self.activation)

    def layout(self) -> str:
        hidden = f"{self.width} x{self.depth - 1}"
        return (f"{self.in_features} -> {hidden} -> {self.num_classes}, "
                f"{'bias' if self.bias else 'no bias'}, {ACTIVATION_NAMES[self.activation]}"
                f"{level_suffix(self)}")

    def with_input(self, in_features: int, num_classes: int) -> "MLPConfig":
        return dataclasses.replace(self, in_features=in_features, num_classes=num_classes)


def validate_mlp_depth(depth: int) -> None:
    if depth < 2:
        raise ValueError(f"mlp depth {depth} is too small; valid depths are integers >= 2")


@register_family("mlp", MLPConfig)
def mlp(*, depth: int, **overrides) -> MLPConfig:
    validate_mlp_depth(depth)
    return MLPConfig(depth=depth, **overrides)


@register_model("seed_mlp5")
def seed_mlp5(**overrides) -> MLPConfig:
    """The replicated article's network: 5 bias-free Linear layers, 10 -> 10 x4 -> 1."""
    kw = dict(depth=5, width=10, in_features=10, num_classes=1, bias=False)
    kw.update(overrides)
    return MLPConfig(**kw)
