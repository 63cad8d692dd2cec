"""The ResNet family's config: its fields, depth rule, the factor levels it supports,
its registration.

No torch here (the report reads ``FACTORS`` through the factor registry); ``build()``
imports the network, ``models.resnet``, which documents the layout and what each level
builds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .levels import (ACTIVATION_LEVELS, BLOCK_LEVELS, BRANCH_SCALE_LEVELS, SHORTCUT_LEVELS,
                     FactorLevels, check_levels, level_suffix)
from .registry import register_family, register_model

IMAGENET_LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def nearest_valid_depths(depth: int) -> list[int]:
    if depth < 4:
        return [4]
    return [depth] if depth % 2 == 0 else [depth - 1, depth + 1]


def resnet_layout(depth: int) -> tuple[int, ...]:
    """Blocks per stage for a depth (see ``models.resnet``'s docstring for the rule)."""
    if depth in IMAGENET_LAYOUTS:
        return IMAGENET_LAYOUTS[depth]
    if depth < 4 or depth % 2:
        near = " or ".join(map(str, nearest_valid_depths(depth)))
        raise ValueError(f"resnet cannot be built at depth {depth}: depth = 2 + 2 x blocks "
                         f"must be even and >= 4; nearest valid: {near}")
    blocks = (depth - 2) // 2
    stages = min(3, blocks)
    n, rem = divmod(blocks, stages)
    return tuple(n + (i >= stages - rem) for i in range(stages))


@dataclass(frozen=True)
class ResNetConfig:
    depth: int
    base_width: int = 16
    num_classes: int = 10
    in_channels: int = 3
    residual: bool = True
    norm: str = "batch"
    block: str = "post"
    branch_scale: str = "one"
    shortcut: str = "projection"
    activation: str = "relu"
    family: str = "resnet"

    # factor -> the levels this family builds and its default (He et al. 2016's
    # network); the defaults are the fields' own defaults
    FACTORS: ClassVar[dict[str, FactorLevels]] = {
        "residual": FactorLevels.of(("residual", "plain")),
        "norm": FactorLevels.of(("batch", "layer", "none")),
        "block": FactorLevels.of(BLOCK_LEVELS),
        "branch_scale": FactorLevels.of(BRANCH_SCALE_LEVELS),
        "shortcut": FactorLevels.of(SHORTCUT_LEVELS),
        "activation": FactorLevels.of(ACTIVATION_LEVELS)}

    def __post_init__(self):
        check_levels(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example: a 32x32 image (the network itself takes any size: global pool)."""
        return (self.in_channels, 32, 32)

    def layout_blocks(self) -> tuple[int, ...]:
        return resnet_layout(self.depth)

    def build(self):
        """The network (``models.resnet.ResNet``)."""
        from .resnet import ResNet
        return ResNet(layout=self.layout_blocks(), base_width=self.base_width,
                      num_classes=self.num_classes, in_channels=self.in_channels,
                      residual=self.residual, norm=self.norm, block=self.block,
                      branch_scale=self.branch_scale, shortcut=self.shortcut,
                      activation=self.activation)

    def layout(self) -> str:
        blocks = self.layout_blocks()
        widths = [self.base_width * 2 ** i for i in range(len(blocks))]
        return (f"stem 3x3/{self.base_width}, BasicBlocks {list(blocks)} "
                f"widths {widths}, fc {self.num_classes}{level_suffix(self)}")

    def with_input(self, in_features: int, num_classes: int) -> "ResNetConfig":
        return dataclasses.replace(self, num_classes=num_classes)


@register_family("resnet", ResNetConfig)
def resnet(*, depth: int, **overrides) -> ResNetConfig:
    resnet_layout(depth)  # validate now, with the nearest valid depths in the message
    return ResNetConfig(depth=depth, **overrides)


@register_model("small_resnet18")
def small_resnet18(**overrides) -> ResNetConfig:
    """The replicated article's SmallResNet-18: 3 stages x 2 BasicBlocks, 16/32/64, 175,258
    parameters. By He et al.'s count (stem + 2 x 6 blocks + fc) it is 14 layers deep."""
    kw = dict(depth=14, base_width=16)
    kw.update(overrides)
    return ResNetConfig(**kw)
