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
- ``activation`` relu | gelu: the nonlinearity of every norm-activation (stem, blocks,
  final; ``models.norm_act``); "relu" above stands for it. Only ReLU runs as the fused
  kernel (``models.fused``). The conv init keeps He et al.'s ReLU gain at every level,
  so one seed gives the same weights whatever the activation.

The config (fields, depth rule, declared levels, registration) is
``models.resnet_config``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .interface import Network, Response, Unit, named_taps, output_response
from .layers import make_branch_scale, make_shortcut
from .levels import (ACTIVATION_LEVELS, BLOCK_LEVELS, BRANCH_SCALE_LEVELS, SHORTCUT_LEVELS,
                     check_level)
from .norm_act import NormActSequential, act_fn, conv_norm, norm_act, norm_act_layers
from .resnet_config import (IMAGENET_LAYOUTS, ResNetConfig, nearest_valid_depths,  # noqa: F401
                            resnet, resnet_layout, small_resnet18)


class BasicBlock(Unit):
    """Two 3x3 conv-norm layers; ``relu(F(x) + shortcut(x))`` or ``relu(F(x))`` when plain
    (``relu``: the ``activation`` level)."""

    preact = False  # the network gives the stem a norm-ReLU and nothing before the pool

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool,
                 norm: str = "batch", shortcut: str = "projection",
                 branch_scale: nn.Module | None = None, stage_start: bool = False,
                 activation: str = "relu"):
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
        self.activation = check_level("activation", activation, ACTIVATION_LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # norm_act(n, v, s) is act(n(v) + s); a ReLU's is one fused kernel while training
        act = self.activation
        out = self.conv2(norm_act(self.bn1, self.conv1(x), act=act))
        if self.shortcut is None:
            return norm_act(self.bn2, out, act=act)
        if self.branch_scale is not None:
            return act_fn(act)(self.branch_scale(self.bn2(out)) + self.shortcut(x))
        return norm_act(self.bn2, out, self.shortcut(x), act=act)

    # The block as branch and skip (measurements: signal propagation, lesion study).
    # ``join(*split(x))`` is ``forward(x)``, the same operations in the same order.
    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition: the branch after its scale, the
        skip ``shortcut(x)``; skip is None for a plain block (no addition)."""
        out = self.bn2(self.conv2(act_fn(self.activation)(self.bn1(self.conv1(x)))))
        if self.shortcut is None:
            return out, None
        if self.branch_scale is not None:
            out = self.branch_scale(out)
        return out, self.shortcut(x)

    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """What the block does after the addition: ``relu(branch + skip)``."""
        return act_fn(self.activation)(branch if skip is None else branch + skip)

    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        """The block with its branch deleted (Veit et al. 2016): ``relu(shortcut(x))``,
        exactly the block with a zero branch. A plain block becomes the identity where
        its input and output shapes match; ValueError where they do not."""
        return _lesioned(self, x)

    def responses(self) -> list[nn.Module]:
        """The norms after its two convs: He et al.'s layer responses."""
        return [self.bn1, self.bn2]


def _lesioned(block, x: torch.Tensor) -> torch.Tensor:
    if block.shortcut is not None:
        skip = block.shortcut(block.preact_input(x) if block.preact else x)
        return block.join(torch.zeros_like(skip), skip)
    if not block.keeps_shape:
        raise ValueError("a plain block that changes shape has no identity to fall back to")
    return x


class PreActBlock(Unit):
    """Pre-activation BasicBlock (He et al. 2016b): ``F(x) + shortcut(x)`` with
    ``F = conv(relu(norm(conv(relu(norm(.))))))``; nothing after the addition. A block
    that starts a stage feeds ``relu(norm x)`` to its shortcut too (``both_preact``)."""

    preact = True  # the network gives the stem no norm-ReLU and one before the pool

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, residual: bool,
                 norm: str = "batch", shortcut: str = "projection",
                 branch_scale: nn.Module | None = None, stage_start: bool = False,
                 activation: str = "relu"):
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
        self.activation = check_level("activation", activation, ACTIVATION_LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.activation
        a = norm_act(self.bn1, x, act=act)  # act(self.bn1(x)), fused where it applies
        out = self.conv2(norm_act(self.bn2, self.conv1(a), act=act))
        if self.shortcut is None:
            return out
        if self.branch_scale is not None:
            out = self.branch_scale(out)
        return out + self.shortcut(a if self.share_preact else x)

    def preact_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the shortcut reads: ``relu(norm x)`` for a stage's first block, else x."""
        return act_fn(self.activation)(self.bn1(x)) if self.share_preact else x

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition (see ``BasicBlock.split``)."""
        act = act_fn(self.activation)
        a = act(self.bn1(x))
        out = self.conv2(act(self.bn2(self.conv1(a))))
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

    def responses(self) -> list[nn.Module]:
        """The second norm and the last conv: the branch's weight layers' responses
        (the first conv's output is normalized by ``bn2``)."""
        return [self.bn2, self.conv2]


BLOCKS = {"post": BasicBlock, "pre": PreActBlock}  # keys: models.levels.BLOCK_LEVELS


class ResNet(Network):
    memory_format = torch.channels_last  # conv nets train channels_last (ablations.train)

    def __init__(self, *, layout: tuple[int, ...], base_width: int, num_classes: int,
                 in_channels: int, residual: bool, norm: str = "batch", block: str = "post",
                 branch_scale: str = "one", shortcut: str = "projection",
                 activation: str = "relu"):
        super().__init__()
        block_cls = BLOCKS[check_level("block", block, BLOCK_LEVELS)]
        check_level("branch_scale", branch_scale, BRANCH_SCALE_LEVELS)
        check_level("shortcut", shortcut, SHORTCUT_LEVELS)  # checked even where ignored
        make_norm, bias = conv_norm(norm)
        self.residual = residual
        stem = nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=bias)
        self.stem = nn.Sequential(stem) if block_cls.preact else \
            NormActSequential(stem, *norm_act_layers(norm, activation, base_width, inplace=True))
        self.stage_names = []
        ch = base_width
        for i, n in enumerate(layout):
            out_ch = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = [block_cls(ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1,
                                residual=residual, norm=norm, shortcut=shortcut,
                                branch_scale=make_branch_scale(branch_scale, sum(layout))
                                if residual else None, stage_start=j == 0,
                                activation=activation)
                      for j in range(n)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            ch = out_ch
        # pre-activation: the last blocks' sum is normalized and rectified before the pool
        self.final = NormActSequential(*norm_act_layers(norm, activation, ch)) \
            if block_cls.preact else None
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
        """The first block: its output maps are kept for one test image."""
        return self.stages()[0][0]

    def response_taps(self) -> list[tuple[str, nn.Module, Response]]:
        """He et al. 2016, Fig. 7: the stem's norm (its conv on a pre-activation net),
        then each block's ``responses()``; each module's own output."""
        first = self.stem[1] if len(self.stem) > 1 else self.stem[0]
        found = [first] + [m for _, unit in self.units() for m in unit.responses()]
        return named_taps(self, [(m, output_response) for m in found])

    def num_shortcuts(self) -> int:
        return len(self.blocks())
