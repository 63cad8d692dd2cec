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

Factor levels (``models.layers``), defaults first (He et al. 2016's network):

- ``norm`` batch | layer | none: BatchNorm2d, GroupNorm with one group, or no
  normalization module anywhere (stem, blocks, shortcuts, final). With none every
  conv gets a bias, zero at init: it stands in for the norm's shift (which starts
  at 0), as torchvision's ``Conv2dNormActivation`` gives a conv a bias exactly when
  it has no norm layer; without it the network could not shift a channel at all.
- ``block`` post | pre. post: ``relu(norm(conv(relu(norm(conv x)))) + s(x))``.
  pre (He et al. 2016b, arXiv 1603.05027, their code fb.resnet.torch
  ``preresnet.lua``): ``conv(relu(norm(conv(relu(norm x))))) + s(x)``, nothing after
  the addition. As in that code: the stem is a bare conv; the first block of every
  stage applies its norm-ReLU before the split, so its shortcut (identity, pad or
  projection) takes ``relu(norm x)`` (their ``both_preact``; this is what normalizes
  the stem); every other block carries ``x`` untouched on its identity shortcut;
  projection shortcuts are a bare 1x1 conv; a norm-ReLU follows the last stage,
  before the pool (``final``).
- ``branch_scale`` one | invsqrt | zero: the branch (before the addition) times 1,
  1/sqrt(number of blocks), or a learnable scalar initialized at 0. With zero every
  block starts as its shortcut: ``relu(s(x))`` (post) or ``s(x)`` / ``s(relu(norm x))``
  (pre). So a post block with an identity shortcut is the identity on non-negative
  input, which every post block gets (its input is a ReLU output), and a pre block
  that does not start a stage is exactly the identity. A plain network ignores it.
- ``shortcut`` projection | pad, on a channel/stride change: 1x1 conv (+ norm for
  post blocks), option B; or option A, the stride-2 subsampled input with the new
  channels zero, no parameters, so a residual network has exactly the plain
  network's parameters. A plain network ignores it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused import NormReLUSequential, norm_relu
from .layers import (BLOCK_LEVELS, BRANCH_SCALE_LEVELS, SHORTCUT_LEVELS, check_level,
                     check_levels, conv_norm, level_suffix, make_branch_scale,
                     make_shortcut, norm_levels)
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
    """Two 3x3 conv-norm layers; ``relu(F(x) + shortcut(x))`` or ``relu(F(x))`` when plain."""

    preact = False  # the network gives the stem a norm-ReLU and nothing before the pool

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool,
                 norm: str = "batch", shortcut: str = "projection",
                 branch_scale: nn.Module | None = None, stage_start: bool = False):
        super().__init__()
        make_norm, bias = conv_norm(norm)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn1 = make_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = make_norm(out_ch)
        self.residual = residual
        self.keeps_shape = stride == 1 and in_ch == out_ch
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, norm=norm,
                                          with_norm=True)
        self.branch_scale = branch_scale if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # norm_relu(n, v, s) is F.relu(n(v) + s), one fused kernel while training on a CPU
        out = self.conv2(norm_relu(self.bn1, self.conv1(x)))
        if self.shortcut is None:
            return norm_relu(self.bn2, out)
        if self.branch_scale is not None:
            return F.relu(self.branch_scale(self.bn2(out)) + self.shortcut(x))
        return norm_relu(self.bn2, out, self.shortcut(x))

    # The block as branch and skip (measurements: signal propagation, lesion study).
    # ``join(*split(x))`` is ``forward(x)``, the same operations in the same order.
    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition: the branch after its scale, the
        skip ``shortcut(x)``; skip is None for a plain block (no addition)."""
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.shortcut is None:
            return out, None
        if self.branch_scale is not None:
            out = self.branch_scale(out)
        return out, self.shortcut(x)

    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """What the block does after the addition: ``relu(branch + skip)``."""
        return F.relu(branch if skip is None else branch + skip)

    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        """The block with its branch deleted (Veit et al. 2016): ``relu(shortcut(x))``,
        exactly the block with a zero branch. A plain block becomes the identity where
        its input and output shapes match; ValueError where they do not."""
        return _lesioned(self, x)


def _lesioned(block, x: torch.Tensor) -> torch.Tensor:
    if block.shortcut is not None:
        skip = block.shortcut(block.preact_input(x) if block.preact else x)
        return block.join(torch.zeros_like(skip), skip)
    if not block.keeps_shape:
        raise ValueError("a plain block that changes shape has no identity to fall back to")
    return x


class PreActBlock(nn.Module):
    """Pre-activation BasicBlock (He et al. 2016b): ``F(x) + shortcut(x)`` with
    ``F = conv(relu(norm(conv(relu(norm(.))))))``; nothing after the addition. A block
    that starts a stage feeds ``relu(norm x)`` to its shortcut too (``both_preact``)."""

    preact = True  # the network gives the stem no norm-ReLU and one before the pool

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool,
                 norm: str = "batch", shortcut: str = "projection",
                 branch_scale: nn.Module | None = None, stage_start: bool = False):
        super().__init__()
        make_norm, bias = conv_norm(norm)
        self.bn1 = make_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn2 = make_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.residual = residual
        self.keeps_shape = stride == 1 and in_ch == out_ch
        self.share_preact = stage_start
        self.shortcut: nn.Module | None = None
        if residual:  # the shortcut input is pre-activated already: no norm after a projection
            self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, norm=norm,
                                          with_norm=False)
        self.branch_scale = branch_scale if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = norm_relu(self.bn1, x)  # F.relu(self.bn1(x)), fused where it applies
        out = self.conv2(norm_relu(self.bn2, self.conv1(a)))
        if self.shortcut is None:
            return out
        if self.branch_scale is not None:
            out = self.branch_scale(out)
        return out + self.shortcut(a if self.share_preact else x)

    def preact_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the shortcut reads: ``relu(norm x)`` for a stage's first block, else x."""
        return F.relu(self.bn1(x)) if self.share_preact else x

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition (see ``BasicBlock.split``)."""
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        if self.shortcut is None:
            return out, None
        if self.branch_scale is not None:
            out = self.branch_scale(out)
        return out, self.shortcut(a if self.share_preact else x)

    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Nothing after the addition: ``branch + skip``."""
        return branch if skip is None else branch + skip

    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        """The block with its branch deleted: ``shortcut(x)`` (``shortcut(relu(norm x))``
        for a stage's first block); a plain block: identity where shapes match."""
        return _lesioned(self, x)


BLOCKS = {"post": BasicBlock, "pre": PreActBlock}  # keys: models.layers.BLOCK_LEVELS


class ResNet(nn.Module):
    def __init__(self, *, layout: tuple[int, ...], base_width: int, num_classes: int,
                 in_channels: int, residual: bool, norm: str = "batch", block: str = "post",
                 branch_scale: str = "one", shortcut: str = "projection"):
        super().__init__()
        block_cls = BLOCKS[check_level("block", block, BLOCK_LEVELS)]
        check_level("branch_scale", branch_scale, BRANCH_SCALE_LEVELS)
        check_level("shortcut", shortcut, SHORTCUT_LEVELS)  # checked even where ignored
        make_norm, bias = conv_norm(norm)
        self.residual = residual
        stem = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=bias)
        self.stem = nn.Sequential(stem) if block_cls.preact else \
            NormReLUSequential(stem, make_norm(base_width), nn.ReLU(inplace=True))
        self.stage_names = []
        ch = base_width
        for i, n in enumerate(layout):
            out_ch = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = [block_cls(ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1,
                                residual=residual, norm=norm, shortcut=shortcut,
                                branch_scale=make_branch_scale(branch_scale, sum(layout))
                                if residual else None, stage_start=j == 0)
                      for j in range(n)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            ch = out_ch
        # pre-activation: the last blocks' sum is normalized and rectified before the pool
        self.final = NormReLUSequential(make_norm(ch), nn.ReLU()) if block_cls.preact else None
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():  # He et al. 2015 (arXiv 1502.01852) init, as torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:  # norm="none": the bias replaces the norm's shift, 0
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, n) for n in self.stage_names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        if self.final is not None:
            x = self.final(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, C, H, W) -> (B, C)

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Stem, every block, and the head, in network order (the same names at every level)."""
        taps = [("stem", self.stem)]
        for name, stage in zip(self.stage_names, self.stages()):
            taps += [(f"{name}.{j}", b) for j, b in enumerate(stage)]
        return taps + [("fc", self.fc)]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """The residual blocks (those with a shortcut), in network order. Each has
        ``shortcut`` (a module) and ``branch_scale`` (a module or None)."""
        return [(n, b) for n, b in self.units() if b.shortcut is not None]

    def units(self) -> list[tuple[str, nn.Module]]:
        """Every block, residual or plain, in network order: what a lesion study deletes
        and signal propagation measures. Each has ``split``, ``join``, ``lesioned`` and
        ``keeps_shape``; ``forward`` is ``stem``, the units in order, then ``head``."""
        return self.tap_points()[1:-1]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the last unit: (final norm-ReLU), pool, fc."""
        if self.final is not None:
            x = self.final(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def first_block(self) -> nn.Module:
        return self.stages()[0][0]

    def num_shortcuts(self) -> int:
        return len(self.blocks())


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
    family: str = "resnet"

    # factor field -> levels, default first (models.layers)
    FACTORS: ClassVar[dict[str, tuple[str, ...]]] = {
        "norm": norm_levels("batch", "layer", "none"), "block": BLOCK_LEVELS,
        "branch_scale": BRANCH_SCALE_LEVELS, "shortcut": SHORTCUT_LEVELS}

    def __post_init__(self):
        check_levels(self)

    def layout_blocks(self) -> tuple[int, ...]:
        return resnet_layout(self.depth)

    def build(self) -> ResNet:
        return ResNet(layout=self.layout_blocks(), base_width=self.base_width,
                      num_classes=self.num_classes, in_channels=self.in_channels,
                      residual=self.residual, norm=self.norm, block=self.block,
                      branch_scale=self.branch_scale, shortcut=self.shortcut)

    def layout(self) -> str:
        blocks = self.layout_blocks()
        widths = [self.base_width * 2 ** i for i in range(len(blocks))]
        return (f"stem 3x3/{self.base_width}, BasicBlocks {list(blocks)} "
                f"widths {widths}, fc {self.num_classes}{level_suffix(self)}")

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
