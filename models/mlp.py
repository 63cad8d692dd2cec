"""Fully connected family, following the seed article's code (002_746221ca0ab6ac07).

``depth`` counts Linear layers. Hidden layers are ``x = relu(layer(x)) + x``
when residual (exactly the seed's block); the plain variant drops ``+ x``.
A hidden layer whose input width differs from its output width (the first one
when ``in_features != width``) is a projection and never has a shortcut.
Initialization is PyTorch's default ``nn.Linear`` init, as in the seed: this is
what makes the plain network's gradients vanish and the comparison faithful.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_family, register_model


class DenseBlock(nn.Linear):
    """Linear layer + ReLU, plus an identity shortcut when ``shortcut``.

    Subclassing ``nn.Linear`` keeps the parameter names of the seed
    (``layers.0.weight``) and its initialization order, so the same seed gives
    the same weights as the article's network.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, shortcut: bool):
        super().__init__(in_features, out_features, bias=bias)
        if shortcut and in_features != out_features:
            raise ValueError("an identity shortcut needs in_features == out_features")
        self.shortcut = shortcut

    def combine(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Block output from the linear output ``z`` and the block input ``x``.

        Shared by ``forward`` and the seed-batched probe (ablations.probe), so
        the two cannot disagree on what a block is.
        """
        h = F.relu(z)
        return h + x if self.shortcut else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(super().forward(x), x)


class MLP(nn.Module):
    def __init__(self, *, depth: int, width: int, in_features: int, num_classes: int,
                 bias: bool, residual: bool):
        super().__init__()
        if depth < 2:
            raise ValueError(f"mlp depth must be >= 2 (got {depth})")
        dims = [in_features] + [width] * (depth - 1)
        blocks: list[nn.Module] = [
            DenseBlock(dims[i], dims[i + 1], bias=bias,
                       shortcut=residual and dims[i] == dims[i + 1])
            for i in range(depth - 1)]
        blocks.append(nn.Linear(width, num_classes, bias=bias))  # output head, no ReLU
        self.layers = nn.ModuleList(blocks)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C, H, W) images -> (B, C*H*W); no-op on (B, F)
        for layer in self.layers:
            x = layer(x)
        return x

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Modules whose outputs the statistics recorder reads, in network order."""
        return [(f"layers.{i}", m) for i, m in enumerate(self.layers)]

    def num_shortcuts(self) -> int:
        return sum(bool(getattr(m, "shortcut", False)) for m in self.layers)


@dataclass(frozen=True)
class MLPConfig:
    depth: int
    width: int = 256
    in_features: int = 3 * 32 * 32  # flattened CIFAR image
    num_classes: int = 10
    bias: bool = True
    residual: bool = True
    family: str = "mlp"

    def build(self) -> MLP:
        return MLP(depth=self.depth, width=self.width, in_features=self.in_features,
                   num_classes=self.num_classes, bias=self.bias, residual=self.residual)

    def layout(self) -> str:
        hidden = f"{self.width} x{self.depth - 1}"
        return (f"{self.in_features} -> {hidden} -> {self.num_classes}, "
                f"{'bias' if self.bias else 'no bias'}, ReLU")

    def with_input(self, in_features: int, num_classes: int) -> "MLPConfig":
        return dataclasses.replace(self, in_features=in_features, num_classes=num_classes)


def validate_mlp_depth(depth: int) -> None:
    if depth < 2:
        raise ValueError(f"mlp depth {depth} is too small; valid depths are integers >= 2")


@register_family("mlp")
def mlp(*, depth: int, **overrides) -> MLPConfig:
    validate_mlp_depth(depth)
    return MLPConfig(depth=depth, **overrides)


@register_model("seed_mlp5")
def seed_mlp5(**overrides) -> MLPConfig:
    """The seed article's network: 5 bias-free Linear layers, 10 -> 10 x4 -> 1."""
    kw = dict(depth=5, width=10, in_features=10, num_classes=1, bias=False)
    kw.update(overrides)
    return MLPConfig(**kw)
