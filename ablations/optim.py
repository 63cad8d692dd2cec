"""SGD with momentum and weight decay, and a step schedule, without ``torch.optim``.

Why not ``torch.optim.SGD``: constructing any ``torch.optim`` optimizer imports
``torch._dynamo`` on first use (its methods are wrapped in ``torch._disable_dynamo``),
which costs seconds of CPU in every fresh worker process, as much as a short trial
(see bench/README.md, sweep efficiency). The update here is the one
``torch.optim.SGD`` computes with ``dampening=0, nesterov=False, maximize=False``,
operation for operation, so the results are bit-identical (tested against it), and
the state dicts use ``torch.optim``'s layout, so checkpoints move freely between
the two.

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    # or SGD(param_groups(model, "weights", 5e-4), ...): no decay on norms, biases, scalars
    sched = StepSchedule(opt, milestones=(15, 25), gamma=0.1)
    ...; opt.step(); ...; sched.step()   # once per epoch, like MultiStepLR
"""
from __future__ import annotations

import torch


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)``, single-tensor update.

    ``params``: parameters (one group), or groups as torch.optim takes them,
    ``[{"params": [...], "weight_decay": 0.0}, ...]``; a group's missing settings
    take the keyword values. Every group shares the learning rate (``set_lr``)."""

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.params, self.group_params, self.param_groups = [], [], []
        for g in groups:
            ps = list(g["params"])
            self.group_params.append(range(len(self.params), len(self.params) + len(ps)))
            self.params += ps
            self.param_groups.append(
                {"lr": float(g.get("lr", lr)), "momentum": float(g.get("momentum", momentum)),
                 "weight_decay": float(g.get("weight_decay", weight_decay))})
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group, indices in zip(self.param_groups, self.group_params):
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for i in indices:
                p = self.params[i]
                if p.grad is None:
                    continue
                grad = p.grad
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                if momentum != 0:
                    buf = self.momentum_buffers[i]
                    if buf is None:
                        buf = self.momentum_buffers[i] = torch.clone(grad).detach()
                    else:
                        buf.mul_(momentum).add_(grad)  # dampening 0: alpha = 1
                    grad = buf
                p.add_(grad, alpha=-lr)

    def state_dict(self) -> dict:
        """``torch.optim.SGD.state_dict()``'s layout (parameters by index, numbered
        through the groups in order)."""
        groups = [{**g, "dampening": 0, "nesterov": False, "maximize": False,
                   "params": list(idx)} for g, idx in zip(self.param_groups, self.group_params)]
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.momentum_buffers)
                 if b is not None}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads this class's or ``torch.optim.SGD``'s state dict (the same groups)."""
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(idx) for idx in self.group_params]:
            raise ValueError("optimizer state does not match the parameters "
                             f"({[len(g['params']) for g in groups]} vs "
                             f"{[len(idx) for idx in self.group_params]})")
        for mine, theirs in zip(self.param_groups, groups):
            for key in mine:
                mine[key] = theirs[key]
        self.momentum_buffers = [None] * len(self.params)
        for i, s in state_dict["state"].items():
            buf = s.get("momentum_buffer")
            if buf is not None:
                # a copy: torch.optim keeps the loaded tensors themselves, so two optimizers
                # loaded from one state would otherwise update the same buffers
                self.momentum_buffers[int(i)] = buf.detach().to(self.params[int(i)].device,
                                                                copy=True)


def param_groups(model, decay: str, weight_decay: float):
    """``model``'s parameters for ``SGD``. ``decay="all"``: one group, decay on every
    parameter (the replicated article; ``SGD(model.parameters(), ...)`` exactly). ``"weights"``:
    decay only on weight matrices and conv kernels (ndim > 1). Norm gains and biases,
    biases and the SkipInit branch scalars (0-dim) get none. Shrinking a norm gain or a
    branch scalar toward 0 switches its unit off rather than regularising it."""
    params = list(model.parameters())
    if decay == "all":
        return params
    if decay != "weights":
        raise ValueError(f"unknown decay {decay!r}; valid: all, weights")
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


class StepSchedule:
    """``torch.optim.lr_scheduler.MultiStepLR``: the learning rate is multiplied by
    ``gamma`` after each epoch listed in ``milestones`` (``step()`` once per epoch)."""

    def __init__(self, optimizer: SGD, milestones, gamma: float = 0.1):
        self.optimizer, self.milestones, self.gamma = optimizer, list(milestones), gamma
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        # as MultiStepLR: the current lr times gamma at each milestone, so two drops
        # give lr * 0.1 * 0.1 (not lr * 0.01), bit for bit
        drops = self.milestones.count(self.last_epoch)
        if drops:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.gamma ** drops

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "milestones": self.milestones,
                "gamma": self.gamma}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads this class's or ``MultiStepLR``'s state dict (the learning rate itself
        lives in the optimizer's state)."""
        self.last_epoch = int(state_dict["last_epoch"])


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup (Goyal et al. 2017, arXiv 1706.02677): the scheduled learning rate
    times ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then 1.
    Step 0 trains at lr / warmup_steps, step ``warmup_steps - 1`` at the full lr."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
