"""A toy third family, ``vgg``: a small VGG-style CNN, with and without shortcuts.

It exists to show that a family is its own module plus its registration: nothing in
``models/``, ``ablations/`` or ``analysis/`` names it. Importing this module registers
it; a sweep gets it in every process (its Ray workers included) with
``RESABLATE_PLUGINS=tests.models.toy_vgg`` (``models/__init__.py``).

``depth`` counts weighted layers: a 3x3 stem conv, ``depth - 2`` conv blocks, the fc.
The blocks fill two stages, ``width`` then ``2 * width`` channels; the second stage
starts with a stride-2 block. A block is ``act(norm(conv x) + x)`` when residual and
its shape stays, else ``act(norm(conv x))``: a block that changes shape has no shortcut
(no projection), so the residual and plain networks have the same parameters.

It declares fewer levels than the built-in families: ``norm`` batch | none (no
``layer``), ``activation`` relu | gelu, and no ``block``, ``branch_scale`` or
``shortcut``; the factor registry reads that (``ablations.factors``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register_family
from models.interface import Network, Unit, named_taps, output_response
from models.levels import ACTIVATION_LEVELS, FactorLevels, check_levels, level_suffix
from models.norm_act import NormActSequential, act_fn, conv_norm, norm_act, norm_act_layers


class VGGBlock(Unit):
    """conv 3x3 - norm - activation, plus an identity shortcut where the shape stays."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool, norm: str,
                 activation: str):
        super().__init__()
        make_norm, bias = conv_norm(norm)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn = make_norm(out_ch)
        self.keeps_shape = stride == 1 and in_ch == out_ch
        self.shortcut = nn.Identity() if residual and self.keeps_shape else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = None if self.shortcut is None else self.shortcut(x)
        return norm_act(self.bn, self.conv(x), skip, act=self.activation)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.bn(self.conv(x)), None if self.shortcut is None else self.shortcut(x)

    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        return act_fn(self.activation)(branch if skip is None else branch + skip)

    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            return self.join(torch.zeros_like(x), x)
        if not self.keeps_shape:
            raise ValueError("a block that changes shape has no identity to fall back to")
        return x


class VGG(Network):
    memory_format = torch.channels_last

    def __init__(self, *, depth: int, width: int, num_classes: int, in_channels: int,
                 residual: bool, norm: str, activation: str):
        super().__init__()
        _, bias = conv_norm(norm)
        self.stem = NormActSequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=bias),
                                      *norm_act_layers(norm, activation, width))
        n = depth - 2
        channels = [width] * ((n + 1) // 2) + [2 * width] * (n // 2)
        blocks, ch = [], width
        for out in channels:
            blocks.append(VGGBlock(ch, out, 1 if out == ch else 2, residual=residual,
                                   norm=norm, activation=activation))
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def units(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem), *self.units(), ("fc", self.fc)]

    def response_taps(self):
        return named_taps(self, [(b.bn, output_response) for _, b in self.units()])

    def first_block(self) -> nn.Module:
        return self.blocks[0]


@dataclass(frozen=True)
class VGGConfig:
    depth: int
    width: int = 8
    num_classes: int = 10
    in_channels: int = 3
    residual: bool = True
    norm: str = "batch"
    activation: str = "relu"
    family: str = "vgg"

    FACTORS: ClassVar[dict[str, FactorLevels]] = {
        "residual": FactorLevels.of(("residual", "plain")),
        "norm": FactorLevels.of(("batch", "none")),
        "activation": FactorLevels.of(ACTIVATION_LEVELS)}

    def __post_init__(self):
        check_levels(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, 32, 32)

    def build(self) -> VGG:
        return VGG(depth=self.depth, width=self.width, num_classes=self.num_classes,
                   in_channels=self.in_channels, residual=self.residual, norm=self.norm,
                   activation=self.activation)

    def layout(self) -> str:
        return (f"stem 3x3/{self.width}, {self.depth - 2} conv blocks, fc "
                f"{self.num_classes}{level_suffix(self)}")

    def with_input(self, in_features: int, num_classes: int) -> "VGGConfig":
        return dataclasses.replace(self, num_classes=num_classes)


@register_family("vgg", VGGConfig)
def vgg(*, depth: int, **overrides) -> VGGConfig:
    if depth < 3:
        raise ValueError(f"vgg depth {depth} is too small; valid depths are integers >= 3")
    return VGGConfig(depth=depth, **overrides)
