"""models.units: every family reads as stem, units, head; a unit as branch and skip."""
import pytest
import torch

import models
from models import units

CASES = [
    ("resnet", dict(depth=14, base_width=4)),
    ("resnet", dict(depth=14, base_width=4, residual=False)),
    ("resnet", dict(depth=10, base_width=4, block="pre", branch_scale="zero")),
    ("resnet", dict(depth=10, base_width=4, block="pre", shortcut="pad", norm="none")),
    ("resnet", dict(depth=8, base_width=4, norm="layer", branch_scale="invsqrt")),
    ("mlp", dict(depth=5, in_features=12, width=8)),
    ("mlp", dict(depth=5, in_features=12, width=8, block="pre", norm="layer",
                 branch_scale="invsqrt")),
    ("mlp", dict(depth=5, in_features=12, width=8, residual=False, norm="batch")),
]


def _net(name, kw):
    torch.manual_seed(0)
    net = models.create_model(name, **kw)
    # BN running statistics away from (0, 1), so eval mode is not a no-op
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 8, 8) if name == "resnet" else torch.randn(3, 12)
    return net.eval(), x


@pytest.mark.parametrize("name,kw", CASES)
def test_units_compose_to_forward_and_join_split_is_the_unit(name, kw):
    net, x = _net(name, kw)
    with torch.no_grad():
        h = net.stem(x)
        for _, u in net.units():
            branch, skip = units.split(u, h)
            assert (skip is not None) == units.has_skip(u)
            out = units.join(u, branch, skip)
            assert torch.equal(out, u(h))
            h = out
        assert torch.equal(net.head(h), net(x))
        assert torch.equal(units.forward_units(net, x), net(x))


@pytest.mark.parametrize("name,kw", CASES)
def test_a_deleted_unit_is_its_branch_set_to_zero(name, kw):
    """Lesioning unit i == running it with a zero branch (residual) or skipping it
    (plain, equal shapes); a prefix resumed from the cached input gives the same logits."""
    net, x = _net(name, kw)
    with torch.no_grad():
        inputs, h = [], net.stem(x)
        for _, u in net.units():
            inputs.append(h)
            h = u(h)
        for i, (_, u) in enumerate(net.units()):
            if not units.deletable(u):
                with pytest.raises(ValueError):
                    units.lesioned(u, inputs[i])
                continue
            branch, skip = units.split(u, inputs[i])
            expect = units.join(u, torch.zeros_like(branch), skip) if skip is not None \
                else inputs[i]
            assert torch.equal(units.lesioned(u, inputs[i]), expect)
            full = units.forward_units(net, x, deleted={i})
            resumed = units.forward_units(net, x, deleted={i}, start=i, h=inputs[i])
            assert torch.equal(full, resumed)


def test_plain_resnet_units_that_change_shape_are_not_deletable():
    net, _ = _net("resnet", dict(depth=14, base_width=4, residual=False))
    assert [units.deletable(u) for _, u in net.units()] == [True, True, False, True, False,
                                                             True]
