"""CIFAR-style ResNet family (He et al. 2016, arXiv 1512.03385, Sec. 4.2).

3x3 stem (no max-pool), BasicBlocks, stride 2 at the start of every stage but
the first, global average pool, fc. ``depth`` counts weighted layers on the main
path: stem + 2 per block + fc, so ``depth = 2 + 2 * blocks``.

Depth -> layout rule:
- 18 and 34: the ImageNet BasicBlock layouts [2,2,2,2] and [3,4,6,3], 4 stages.
- any other even depth >= 4: ``B = (depth - 2) / 2`` blocks over ``min(3, B)``
  stages, split as evenly as possible with the remainder going to the later
  stages. For 6n+2 depths (20, 32, 44, 56, 110) this is 3 stages of n blocks,
  the CIFAR layouts of the paper; e.g. depth 10 -> [1, 1, 2].
- odd depths and depths < 4 cannot be built (rejected, naming the nearest).
Stage i has ``base_width * 2**i`` channels. The plain variant is the same
network without shortcuts (and so without the projection shortcuts' weights).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_family, register_model

IMAGENET_LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def nearest_valid_depths(depth: int) -> list[int]:
    if depth < 4:
        return [4]
    return [depth] if depth % 2 == 0 else [depth - 1, depth + 1]


def resnet_layout(depth: int) -> tuple[int, ...]:
    """Blocks per stage for a depth (see module docstring for the rule)."""
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


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; ``relu(F(x) + shortcut(x))`` or ``relu(F(x))`` when plain."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = nn.Identity()
            if stride != 1 or in_ch != out_ch:  # projection: 1x1 conv + BN (option B)
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                              nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, *, layout: tuple[int, ...], base_width: int, num_classes: int,
                 in_channels: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.stem = nn.Sequential(nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(base_width), nn.ReLU(inplace=True))
        self.stage_names = []
        ch = base_width
        for i, n in enumerate(layout):
            out_ch = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1,
                                 residual=residual) for j in range(n)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            ch = out_ch
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():  # He et al. 2015 (arXiv 1502.01852) init, as torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, n) for n in self.stage_names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, C, H, W) -> (B, C)

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Stem, every block, and the head, in network order."""
        taps = [("stem", self.stem)]
        for name, stage in zip(self.stage_names, self.stages()):
            taps += [(f"{name}.{j}", b) for j, b in enumerate(stage)]
        return taps + [("fc", self.fc)]

    def first_block(self) -> nn.Module:
        return self.stages()[0][0]

    def num_shortcuts(self) -> int:
        return sum(b.shortcut is not None for s in self.stages() for b in s)


@dataclass(frozen=True)
class ResNetConfig:
    depth: int
    base_width: int = 16
    num_classes: int = 10
    in_channels: int = 3
    residual: bool = True
    family: str = "resnet"

    def layout_blocks(self) -> tuple[int, ...]:
        return resnet_layout(self.depth)

    def build(self) -> ResNet:
        return ResNet(layout=self.layout_blocks(), base_width=self.base_width,
                      num_classes=self.num_classes, in_channels=self.in_channels,
                      residual=self.residual)

    def layout(self) -> str:
        blocks = self.layout_blocks()
        widths = [self.base_width * 2 ** i for i in range(len(blocks))]
        return (f"stem 3x3/{self.base_width}, BasicBlocks {list(blocks)} "
                f"widths {widths}, fc {self.num_classes}")

    def with_input(self, in_features: int, num_classes: int) -> "ResNetConfig":
        return dataclasses.replace(self, num_classes=num_classes)


@register_family("resnet")
def resnet(*, depth: int, **overrides) -> ResNetConfig:
    resnet_layout(depth)  # validate now, with the nearest valid depths in the message
    return ResNetConfig(depth=depth, **overrides)


@register_model("small_resnet18")
def small_resnet18(**overrides) -> ResNetConfig:
    """The seed article's SmallResNet-18: 3 stages x 2 BasicBlocks, 16/32/64, 175,258
    parameters. By He et al.'s count (stem + 2 x 6 blocks + fc) it is 14 layers deep."""
    kw = dict(depth=14, base_width=16)
    kw.update(overrides)
    return ResNetConfig(**kw)
