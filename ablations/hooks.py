"""Per-layer gradient and activation statistics.

The statistics are pure tensor functions (``activation_stats``, ``grad_stats``)
that reduce everything but a number of leading dimensions, so the same code
serves one model (``lead=0``) and a stack of per-seed models (``lead=1``, see
``ablations.probe``). ``LayerStatsRecorder`` applies them through forward
hooks and gradient reads. Results stay on the model's device until
``snapshot()``, which moves everything to the host in one transfer: no
per-layer host sync in the training hot path.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from models.interface import Network

ACT_STATS = ("act_mean_abs", "act_std", "act_zero_frac")
GRAD_STATS = ("grad_mean_abs", "grad_norm")
STAT_NAMES = GRAD_STATS + ACT_STATS


def activation_stats(x: torch.Tensor, lead: int = 0) -> torch.Tensor:
    """(mean |x|, std of x, fraction of exact zeros), reducing all dims after ``lead``.

    std is the population std (correction 0) over every element of the output:
    batch, channels and positions together. Recorded on block outputs (after the
    addition and the ReLU), this is not He et al. Fig. 7's "std of layer
    responses" (3x3 conv outputs after BN, before the addition and the ReLU: the
    ``responses`` measurement). Returns shape ``x.shape[:lead] + (3,)``, float32.
    """
    x = x.detach().float().flatten(lead)  # (*lead, N)
    return torch.stack([x.abs().mean(-1), x.std(-1, correction=0),
                        (x == 0).float().mean(-1)], -1)


def grad_stats(g: torch.Tensor, lead: int = 0) -> torch.Tensor:
    """(mean |g|, L2 norm of g), reducing all dims after ``lead``; shape ``(*lead, 2)``."""
    g = g.detach().float().flatten(lead)  # (*lead, N)
    return torch.stack([g.abs().mean(-1), torch.linalg.vector_norm(g, dim=-1)], -1)


def default_taps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A family's network (``models.interface.Network``): its own tap points; any other
    module: every Linear/Conv module, in registration order."""
    if isinstance(model, Network):
        return model.tap_points()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def weight_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights of Linear/Conv layers (ndim >= 2), in network (registration) order."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]


@dataclass
class LayerStats:
    """Host-side snapshot: ``act`` is (n_taps, 3), ``grad`` is (n_weights, 2) or None."""
    act_names: list[str]
    grad_names: list[str]
    act: np.ndarray | None
    grad: np.ndarray | None

    def frame(self) -> pd.DataFrame:
        """Tidy rows: layer, layer_index, stat, value (index = position in network order)."""
        parts = []
        for names, values, stats in ((self.grad_names, self.grad, GRAD_STATS),
                                     (self.act_names, self.act, ACT_STATS)):
            if values is None:
                continue
            n = len(names)
            parts.append(pd.DataFrame({
                "layer": np.repeat(names, len(stats)),
                "layer_index": np.repeat(np.arange(n), len(stats)),
                "stat": np.tile(stats, n),
                "value": values.reshape(-1).astype("float64")}))
        if not parts:
            return pd.DataFrame(columns=["layer", "layer_index", "stat", "value"])
        return pd.concat(parts, ignore_index=True)


class LayerStatsRecorder:
    """Collects per-layer statistics of one model.

    >>> rec = LayerStatsRecorder(model)
    >>> with rec.capture():            # activations of this forward are recorded
    ...     loss = loss_fn(model(x), y)
    >>> loss.backward()
    >>> stats = rec.snapshot()         # reads grads, one device->host copy
    >>> rec.close()

    Outside ``capture()`` the hooks return at once, so the recorder can stay
    attached during training and sample every k steps.
    """

    def __init__(self, model: nn.Module, taps: list[tuple[str, nn.Module]] | None = None):
        self.taps = taps if taps is not None else default_taps(model)
        self.weights = weight_params(model)
        self.active = False
        self._act: list[torch.Tensor | None] = [None] * len(self.taps)
        self._handles = [m.register_forward_hook(self._hook(i))
                         for i, (_, m) in enumerate(self.taps)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if self.active and isinstance(output, torch.Tensor):
                self._act[i] = activation_stats(output)
        return hook

    @contextmanager
    def capture(self):
        self.active = True
        self._act = [None] * len(self.taps)
        try:
            yield self
        finally:
            self.active = False

    def snapshot(self, grads: bool = True) -> LayerStats:
        """Activation stats of the last captured forward and (optionally) current grads."""
        parts = []
        act_ok = all(a is not None for a in self._act) and self.taps
        if act_ok:
            parts.append(torch.stack(self._act).reshape(-1))  # (n_taps * 3,)
        grad_ok = grads and all(p.grad is not None for _, p in self.weights)
        if grad_ok:
            parts.append(torch.stack([grad_stats(p.grad) for _, p in self.weights]).reshape(-1))
        host = torch.cat(parts).cpu().numpy() if parts else np.zeros(0)  # the one host sync
        n_act = 3 * len(self.taps) if act_ok else 0
        return LayerStats(
            act_names=[n for n, _ in self.taps],
            grad_names=[n for n, _ in self.weights],
            act=host[:n_act].reshape(-1, 3) if act_ok else None,
            grad=host[n_act:].reshape(-1, 2) if grad_ok else None)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
