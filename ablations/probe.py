"""Probe mode: statistics of one forward/backward at initialization.

``probe_one`` is the reference: seed the global RNG, build the model, draw a
random batch, forward, loss, backward, record (the replicated article's recipe).

``probe_mlp_seeds`` gives the same numbers for many seeds of an MLP at once:
it draws each seed's weights from a ``torch.Generator`` in exactly the order
and with exactly the bounds ``nn.Linear`` uses (so seed s gives bit-identical
weights to ``probe_one``), stacks them to ``(S, out, in)`` and runs the whole
stack through batched matmuls. The block semantics come from the model's own
``DenseBlock.run`` (norm, activation, branch scale, shortcut), so the two paths cannot
drift apart; a self-check against a freshly built model guards against PyTorch
changing its init.

Every MLP factor level batches (``can_batch``): norm and branch-scale parameters
draw no random numbers (ones, zeros), so one copy serves every seed; only the
batch statistics of BatchNorm1d must stay per seed (``_SeedBatchNorm``). Anything
else falls back to ``probe_one`` per seed, with the same result structure.

BatchNorm1d normalizes each feature over the batch alone, so a probe batch of 1
has no statistics to normalize with (train-mode BatchNorm1d raises) and eval mode
would make it the identity at init, i.e. measure a network without the norm:
``check_probe_batch`` refuses such a probe instead (use a probe batch >= 2).
BatchNorm2d has the positions of a map as well and probes at batch 1.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablations.hooks import (LayerStats, LayerStatsRecorder, activation_stats, grad_stats,
                            weight_params)
from models.interface import check_network
from models.layers import FixedScale, LearnedScale
from models.mlp import MLP, DenseBlock, MLPConfig

# Modules the batched pass runs; any other module in a model sends it to ``probe_one``.
_BATCHABLE = {MLP, nn.ModuleList, nn.Linear, DenseBlock, nn.LayerNorm, nn.BatchNorm1d,
              FixedScale, LearnedScale}


def probe_input_shape(cfg) -> tuple[int, ...]:
    """Shape of one probe example, as the family's config declares it (``input_shape``,
    models/interface.py): a feature vector, or a 32x32 image."""
    return tuple(cfg.input_shape)


def draw_probe_batch(cfg, batch: int, generator: torch.Generator | None = None):
    """Random inputs ~ N(0, 1) and targets: N(0, 1) regression targets when the
    model has one output (the replicated article's MSE set-up), random labels otherwise."""
    x = torch.randn(batch, *probe_input_shape(cfg), generator=generator)
    if cfg.num_classes == 1:
        return x, torch.randn(batch, 1, generator=generator)
    return x, torch.randint(0, cfg.num_classes, (batch,), generator=generator)


def probe_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point():
        return F.mse_loss(out, target)
    return F.cross_entropy(out, target)


def _meta_model(cfg) -> nn.Module:
    """The model's structure without its weights (no memory, no random numbers)."""
    with torch.device("meta"):
        return cfg.build()


def can_batch(cfg) -> bool:
    """Whether ``probe_mlp_variants`` computes ``cfg``'s seeds in one batched pass: its
    network is built of the modules the batched pass runs only (every MLP level is);
    False: it probes one model per seed."""
    return all(type(m) in _BATCHABLE for m in _meta_model(cfg).modules())


def check_probe_batch(cfg, batch: int) -> None:
    """ValueError if the model cannot be probed at ``batch`` (see module docstring)."""
    if batch < 2 and any(isinstance(m, nn.BatchNorm1d) for m in _meta_model(cfg).modules()):
        raise ValueError(f"norm={getattr(cfg, 'norm', 'batch')!r} normalizes each feature "
                         f"over the batch alone: a probe batch of {batch} has no batch "
                         "statistics; use a probe batch >= 2")


def probe_one(cfg, seed: int, batch: int) -> tuple[LayerStats, float]:
    """Statistics of one model at ``seed``; returns (stats, loss)."""
    check_probe_batch(cfg, batch)
    torch.manual_seed(seed)
    model = check_network(cfg.build(), cfg.family).train()
    x, target = draw_probe_batch(cfg, batch)
    with LayerStatsRecorder(model) as rec:
        with rec.capture():
            loss = probe_loss(model(x), target)
        loss.backward()
        return rec.snapshot(), loss.item()


def _init_bound(name: str, param: nn.Parameter, module: nn.Linear) -> float:
    """The U(-b, b) bound nn.Linear.reset_parameters uses, computed the same way."""
    fan_in = module.in_features
    if name.endswith("weight"):  # kaiming_uniform_(a=sqrt(5))
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        return math.sqrt(3.0) * gain / math.sqrt(fan_in)
    return 1 / math.sqrt(fan_in)


def _drawn_params(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Linear]]:
    """The parameters drawn from the RNG, the Linear layers' own weights and biases, in
    registration (= initialization) order; norm and scale parameters are constants."""
    return [(f"{mname}.{pname}", p, m) for mname, m in model.named_modules()
            if isinstance(m, nn.Linear) for pname, p in m.named_parameters(recurse=False)]


def _segments(model: nn.Module) -> list[tuple[int, int, float]]:
    """(start, end, bound) runs of the flat drawn-parameter vector that share one
    bound, in initialization order; one uniform_ call per run."""
    segs: list[list] = []
    pos = 0
    for name, p, module in _drawn_params(model):
        bound = _init_bound(name, p, module)
        if segs and segs[-1][2] == bound:
            segs[-1][1] = pos + p.numel()
        else:
            segs.append([pos, pos + p.numel(), bound])
        pos += p.numel()
    return [tuple(s) for s in segs]


def draw_mlp_seeds(cfg: MLPConfig, seeds: list[int], batch: int):
    """Per-seed weights (flat, in init order), inputs and targets, as ``probe_one`` draws them."""
    template = cfg.build()
    segments = _segments(template)
    S = len(seeds)
    g = torch.Generator()
    flat = torch.empty(S, segments[-1][1])
    x = torch.empty(S, batch, cfg.in_features)
    regression = cfg.num_classes == 1
    target = torch.empty(S, batch, 1) if regression else torch.empty(S, batch, dtype=torch.long)
    for i, seed in enumerate(seeds):  # RNG only: ~30 us per seed at depth 34
        g.manual_seed(seed)
        for a, b, bound in segments:
            flat[i, a:b].uniform_(-bound, bound, generator=g)
        x[i].normal_(generator=g)
        if regression:
            target[i].normal_(generator=g)
        else:
            target[i].random_(0, cfg.num_classes, generator=g)
    _check_same_init(cfg, seeds[0], flat[0])
    return flat, x, target


def _stacked_linear(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Per-seed ``h @ w.T + b``: (S, B, in) x (S, out, in) -> (S, B, out). Tiny matrices
    (the replicated article's 10x10) are faster as a broadcast product than as bmm."""
    S, B, n_in = h.shape
    if B * w.shape[1] * n_in <= 4096:
        z = (h.unsqueeze(2) * w.unsqueeze(1)).sum(-1)  # (S, B, out, in) -> (S, B, out)
    else:
        z = torch.bmm(h, w.transpose(1, 2))
    return z if b is None else z + b.unsqueeze(1)  # (S, out) -> (S, 1, out)


class _SeedBatchNorm(nn.Module):
    """A BatchNorm1d in training mode on (S, B, F): per seed and feature over the
    batch, as each seed's own model normalizes its (B, F) batch."""

    def __init__(self, bn: nn.BatchNorm1d):
        super().__init__()
        self.bn = bn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        S, B, n = z.shape
        flat = z.transpose(0, 1).reshape(B, S * n)  # (B, S*F): one channel per (seed, feature)
        y = F.batch_norm(flat, None, None, self.bn.weight.repeat(S), self.bn.bias.repeat(S),
                         training=True, eps=self.bn.eps)
        return y.view(B, S, n).transpose(0, 1)  # (S, B, F)


def probe_mlp_variants(cfg: MLPConfig, seeds: list[int], batch: int,
                       residuals=(False, True)) -> dict[bool, list[tuple[LayerStats, float]]]:
    """``{r: [probe_one(replace(cfg, residual=r), s, batch) for s in seeds]}`` as batched
    passes. Both variants share each seed's draws: the same seed builds the same
    weights with or without shortcuts, so the random numbers are drawn once.
    A configuration that ``can_batch`` refuses is probed one model per seed."""
    check_probe_batch(cfg, batch)
    if not can_batch(cfg):
        return {r: [probe_one(dataclasses.replace(cfg, residual=r), s, batch) for s in seeds]
                for r in residuals}
    flat, x, target = draw_mlp_seeds(cfg, seeds, batch)
    return {r: _probe_drawn(dataclasses.replace(cfg, residual=r), flat, x, target)
            for r in residuals}


def probe_mlp_seeds(cfg: MLPConfig, seeds: list[int], batch: int
                    ) -> list[tuple[LayerStats, float]]:
    """``[probe_one(cfg, s, batch) for s in seeds]``, computed as one batched pass."""
    return probe_mlp_variants(cfg, seeds, batch, (cfg.residual,))[cfg.residual]


def _probe_drawn(cfg: MLPConfig, flat, x, target) -> list[tuple[LayerStats, float]]:
    template = cfg.build()
    template.requires_grad_(False)  # its norm/scale constants serve every seed
    for layer in template.layers:  # batch statistics per seed, not over the whole stack
        if isinstance(layer, DenseBlock) and isinstance(layer.norm, nn.BatchNorm1d):
            layer.norm = _SeedBatchNorm(layer.norm)
    S, batch = x.shape[:2]
    stacked, pos = {}, 0
    for name, p, _ in _drawn_params(template):  # (S, *param.shape); separate leaves:
        # gradients of views into one flat leaf would each materialize a full-size zero grad
        stacked[name] = flat[:, pos:pos + p.numel()].view(S, *p.shape).detach().requires_grad_()
        pos += p.numel()

    outs = []
    h = x  # (S, B, in)
    for i, layer in enumerate(template.layers):
        def linear(u, i=i):  # this layer's weights, one per seed: (S, B, in) -> (S, B, out)
            return _stacked_linear(u, stacked[f"layers.{i}.weight"],
                                   stacked.get(f"layers.{i}.bias"))
        h = layer.run(h, linear) if isinstance(layer, DenseBlock) else linear(h)
        outs.append(h.detach())
    # hidden outputs share one width: their statistics in one call, not one per layer
    hidden = torch.stack(outs[:-1], 1)  # (S, L-1, B, width)
    act = torch.cat([activation_stats(hidden, lead=2),
                     activation_stats(outs[-1], lead=1)[:, None]], 1)  # (S, L, 3)
    if target.is_floating_point():
        per_seed = ((h - target) ** 2).mean(dim=(1, 2))  # (S,) == F.mse_loss per seed
    else:
        per_seed = F.cross_entropy(h.flatten(0, 1), target.flatten(),
                                   reduction="none").view(S, batch).mean(1)
    per_seed.sum().backward()  # seeds share no weights: each gets its own gradient

    weight_names = [n for n, _ in weight_params(template)]  # as the recorder's
    grads = torch.stack([grad_stats(stacked[n].grad, lead=1) for n in weight_names], 1)
    act, grads, losses = act.numpy(), grads.numpy(), per_seed.detach().numpy()  # host
    act_names = [n for n, _ in template.tap_points()]
    return [(LayerStats(act_names, weight_names, act[i], grads[i]), float(losses[i]))
            for i in range(S)]


def _check_same_init(cfg: MLPConfig, seed: int, flat_row: torch.Tensor) -> None:
    torch.manual_seed(seed)
    ref = torch.cat([p.detach().flatten() for _, p, _ in _drawn_params(cfg.build())])
    if not torch.equal(ref, flat_row):
        raise RuntimeError("batched MLP init no longer matches nn.Linear's init "
                           f"(torch {torch.__version__}); use probe_one")
