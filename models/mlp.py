"""Fully connected family, following the replicated article's code (002_746221ca0ab6ac07).

``depth`` counts Linear layers. Hidden layers are ``x = relu(layer(x)) + x``
when residual (exactly the seed's block); the plain variant drops ``+ x``.
A hidden layer whose input width differs from its output width (the first one
when ``in_features != width``) is a projection and never has a shortcut.
Initialization is PyTorch's default ``nn.Linear`` init, as in the seed: this is
what makes the plain network's gradients vanish and the comparison faithful.

Factor levels (``models.layers``), defaults first (the seed's network):

- ``norm`` none | layer | batch: a LayerNorm / BatchNorm1d inside every norm-ReLU.
- ``block`` post | pre. post: ``relu(norm(W x)) + x`` (the seed's block when norm is
  none). pre (He et al. 2016b): ``x + W relu(norm(x))``, nothing after the addition;
  the projection layer (the "stem", only when ``in_features != width``) is a bare
  ``W x`` and the head gets a final norm-ReLU, ``W_out relu(norm(x))``, as the
  pre-activation ResNet's conv stem and its norm-ReLU before the pool.
- ``branch_scale`` one | invsqrt | zero: the branch (everything but ``+ x``) is
  multiplied by 1, by 1/sqrt(number of residual blocks), or by a learnable scalar
  initialized at 0 (every residual block is then exactly the identity at init).
  A plain network has no branch to scale and ignores it.
- ``activation`` relu | gelu: the nonlinearity of every norm-activation
  (``models.norm_act``); "ReLU" below stands for it.

Every Linear keeps its bias (the ``bias`` field) at every norm level: the norm is
the one thing a norm level changes. Norm and scale modules draw no random numbers,
so one seed gives the same Linear weights at every level.

The config (fields, declared levels, registration) is ``models.mlp_config``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .interface import Network, Response, Unit, named_taps, output_response
from .layers import make_branch_scale
from .levels import ACTIVATION_LEVELS, BLOCK_LEVELS, BRANCH_SCALE_LEVELS, check_level
from .mlp_config import MLPConfig, mlp, seed_mlp5, validate_mlp_depth  # noqa: F401
from .norm_act import get_norm_layer, norm_act

# Where each layer applies its norm-ReLU, per block order: "after" its weight (post),
# "before" it (pre), or None (a bare nn.Linear). Roles: "projection" is a hidden layer
# that changes width (never a shortcut), "block" any other hidden layer (residual or
# plain: the plain network is the same minus the shortcut), "head" the output layer.
ACTIVATION_SITES = {
    "post": {"projection": "after", "block": "after", "head": None},
    "pre": {"projection": None, "block": "before", "head": "before"},
}


class DenseBlock(nn.Linear, Unit):
    """Linear layer with a norm-ReLU after (post) or before (pre) it, plus an identity
    shortcut when ``shortcut``, the branch multiplied by ``branch_scale`` (a module);
    ``activation``: the ReLU's level (``models.norm_act``), held as a name, not a module.

    Subclassing ``nn.Linear`` keeps the parameter names of the seed
    (``layers.0.weight``) and its initialization order, so the same seed gives
    the same weights as the article's network. At the defaults (no norm, no scale)
    the block has no submodule at all, exactly the seed's layer.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, shortcut: bool,
                 norm: str = "none", site: str = "after",
                 branch_scale: nn.Module | None = None, activation: str = "relu"):
        super().__init__(in_features, out_features, bias=bias)
        if shortcut and in_features != out_features:
            raise ValueError("an identity shortcut needs in_features == out_features")
        self.shortcut = shortcut
        self.site = check_level("site", site, ("after", "before"))
        make_norm = get_norm_layer(norm, 1)
        self.norm = None if make_norm is None else make_norm(
            in_features if site == "before" else out_features)
        self.branch_scale = branch_scale if shortcut else None
        self.activation = check_level("activation", activation, ACTIVATION_LEVELS)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """norm (if any), then the activation."""
        return norm_act(self.norm, h, act=self.activation)

    def response(self, x: torch.Tensor) -> torch.Tensor:
        """The Linear output after its norm (site "after"), or of the activated input
        (site "before"): ``run``'s operations up to the activation or the addition."""
        z = F.linear(self.activate(x) if self.site == "before" else x, self.weight, self.bias)
        return self.norm(z) if self.site == "after" and self.norm is not None else z

    def combine(self, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Block output from the branch output and the block input ``x``."""
        if not self.shortcut:
            return branch
        if self.branch_scale is not None:
            branch = self.branch_scale(branch)
        return branch + x

    def run(self, x: torch.Tensor, linear: Callable[[torch.Tensor], torch.Tensor]
            ) -> torch.Tensor:
        """The block on ``x`` with its weights applied by ``linear``: this module's own
        for ``forward``, a per-seed stack of them in the batched probe
        (ablations.probe), so the two cannot disagree on what a block is."""
        h = self.activate(x) if self.site == "before" else x
        branch = linear(h)
        if self.site == "after":
            branch = self.activate(branch)
        return self.combine(branch, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, super().forward)

    # The block as branch and skip (measurements); ``join(*split(x)) == forward(x)``.
    @property
    def keeps_shape(self) -> bool:
        return self.in_features == self.out_features

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(branch, skip) just before the addition: the branch after its scale, the
        skip ``x``; skip is None without a shortcut."""
        h = self.activate(x) if self.site == "before" else x
        branch = super().forward(h)
        if self.site == "after":
            branch = self.activate(branch)
        if not self.shortcut:
            return branch, None
        if self.branch_scale is not None:
            branch = self.branch_scale(branch)
        return branch, x

    def join(self, branch: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        return branch if skip is None else branch + skip

    def lesioned(self, x: torch.Tensor) -> torch.Tensor:
        """The block with its branch deleted: ``x`` (residual, or plain of equal widths);
        ValueError for a layer that changes width."""
        if not self.keeps_shape:
            raise ValueError("a layer that changes width has no identity to fall back to")
        return x


def dense_layer(in_features: int, out_features: int, *, bias: bool, site: str | None,
                shortcut: bool, norm: str, branch_scale: nn.Module | None,
                activation: str = "relu") -> nn.Linear:
    """A bare nn.Linear when the layer has neither norm-ReLU nor shortcut, else a DenseBlock."""
    if site is None and not shortcut:
        return nn.Linear(in_features, out_features, bias=bias)
    return DenseBlock(in_features, out_features, bias=bias, shortcut=shortcut, norm=norm,
                      site=site or "after", branch_scale=branch_scale, activation=activation)


def _dense_response(module: DenseBlock, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.response(inputs[0])


class MLP(Network):
    def __init__(self, *, depth: int, width: int, in_features: int, num_classes: int,
                 bias: bool, residual: bool, norm: str = "none", block: str = "post",
                 branch_scale: str = "one", activation: str = "relu"):
        super().__init__()
        if depth < 2:
            raise ValueError(f"mlp depth must be >= 2 (got {depth})")
        sites = ACTIVATION_SITES[check_level("block", block, BLOCK_LEVELS)]
        check_level("branch_scale", branch_scale, BRANCH_SCALE_LEVELS)
        dims = [in_features] + [width] * (depth - 1)
        shortcut = [residual and dims[i] == dims[i + 1] for i in range(depth - 1)]
        n_res = sum(shortcut)
        layers: list[nn.Module] = [
            dense_layer(dims[i], dims[i + 1], bias=bias, shortcut=shortcut[i], norm=norm,
                        site=sites["block" if dims[i] == dims[i + 1] else "projection"],
                        branch_scale=make_branch_scale(branch_scale, n_res) if shortcut[i]
                        else None, activation=activation)
            for i in range(depth - 1)]
        layers.append(dense_layer(width, num_classes, bias=bias, shortcut=False, norm=norm,
                                  site=sites["head"], branch_scale=None,
                                  activation=activation))  # output head
        self.layers = nn.ModuleList(layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C, H, W) images -> (B, C*H*W); no-op on (B, F)
        for layer in self.layers:
            x = layer(x)
        return x

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Modules whose outputs the statistics recorder reads, in network order."""
        return [(f"layers.{i}", m) for i, m in enumerate(self.layers)]

    def units(self) -> list[tuple[str, nn.Module]]:
        """Every hidden layer, residual or plain, in network order (``models.units``
        reads each: split, join, lesioned, keeps_shape); ``forward`` is ``stem``, the
        units in order, then ``head``."""
        return self.tap_points()[:-1]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](x)

    def response_taps(self) -> list[tuple[str, nn.Module, Response]]:
        """Every hidden layer: a DenseBlock's Linear output after its norm
        (``DenseBlock.response``), a bare Linear's own output."""
        return named_taps(self, [(u, _dense_response if isinstance(u, DenseBlock)
                                  else output_response) for _, u in self.units()])

    def blocks(self) -> list[tuple[str, DenseBlock]]:
        """The residual blocks (those with a shortcut), in network order. Each has
        ``shortcut``, ``branch_scale`` and ``run``/``combine``."""
        return [(n, m) for n, m in self.tap_points()
                if isinstance(m, DenseBlock) and m.shortcut]

    def num_shortcuts(self) -> int:
        return len(self.blocks())
