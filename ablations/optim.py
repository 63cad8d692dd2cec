"""SGD with momentum and weight decay, and a step schedule, without ``torch.optim``.

Why not ``torch.optim.SGD``: constructing any ``torch.optim`` optimizer imports
``torch._dynamo`` on first use (its methods are wrapped in ``torch._disable_dynamo``),
which costs ~2 s of CPU in every fresh worker process, i.e. a whole short trial
(see bench/README.md, sweep efficiency). The update here is the one
``torch.optim.SGD`` computes with ``dampening=0, nesterov=False, maximize=False``,
operation for operation, so the results are bit-identical (tested against it), and
the state dicts use ``torch.optim``'s layout, so checkpoints move freely between
the two.

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = StepSchedule(opt, milestones=(15, 25), gamma=0.1)
    ...; opt.step(); ...; sched.step()   # once per epoch, like MultiStepLR
"""
from __future__ import annotations

import torch


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)``, single-tensor update."""

    def __init__(self, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = list(params)
        self.param_groups = [{"lr": float(lr), "momentum": float(momentum),
                              "weight_decay": float(weight_decay)}]
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        for i, p in enumerate(self.params):
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
        """``torch.optim.SGD.state_dict()``'s layout (parameters by index)."""
        group = {**self.param_groups[0], "dampening": 0, "nesterov": False, "maximize": False,
                 "params": list(range(len(self.params)))}
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.momentum_buffers)
                 if b is not None}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads this class's or ``torch.optim.SGD``'s state dict (one parameter group)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("optimizer state does not match the parameters "
                             f"({[len(g['params']) for g in groups]} vs {len(self.params)})")
        for key in self.param_groups[0]:
            self.param_groups[0][key] = groups[0][key]
        self.momentum_buffers = [None] * len(self.params)
        for i, s in state_dict["state"].items():
            buf = s.get("momentum_buffer")
            if buf is not None:
                # a copy: torch.optim keeps the loaded tensors themselves, so two optimizers
                # loaded from one state would otherwise update the same buffers
                self.momentum_buffers[int(i)] = buf.detach().to(self.params[int(i)].device,
                                                                copy=True)


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
            self.optimizer.param_groups[0]["lr"] *= self.gamma ** drops

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
