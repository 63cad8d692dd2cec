"""``--decay all|weights`` (ablations.optim.param_groups): ``all`` is today's optimizer
exactly; ``weights`` decays conv/linear weight matrices only."""
import pytest
import torch
import torch.nn.functional as F

import models
from ablations.optim import SGD, StepSchedule, param_groups


def skipinit_resnet(seed=0):
    torch.manual_seed(seed)
    net = models.create_model("resnet", depth=8, branch_scale="zero")
    with torch.no_grad():  # the scalars start at 0, where decay would not show: move them
        for m in net.modules():
            if hasattr(m, "alpha"):
                m.alpha.fill_(0.5)
    return net


def one_step(net, opt):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()


def test_all_is_one_group_of_every_parameter_bit_identical_to_today():
    a, b = skipinit_resnet(), skipinit_resnet()
    assert param_groups(a, "all", 5e-4) == list(a.parameters())
    oa = SGD(param_groups(a, "all", 5e-4), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ob = SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        one_step(a, oa)
        one_step(b, ob)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(oa.state_dict()["param_groups"]) == 1


def test_weights_spares_norm_parameters_biases_and_branch_scalars():
    net, free, ref = skipinit_resnet(), skipinit_resnet(), skipinit_resnet()
    wd = 0.5  # large, so that a decayed parameter visibly differs after one step
    one_step(net, SGD(param_groups(net, "weights", wd), lr=0.1, momentum=0.9, weight_decay=wd))
    one_step(free, SGD(free.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0))
    one_step(ref, SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=wd))
    names = dict(net.named_parameters())
    free_p, ref_p = dict(free.named_parameters()), dict(ref.named_parameters())
    bn = next(n for n in names if n.endswith("bn1.weight"))
    scalar = next(n for n in names if n.endswith("alpha"))
    conv = next(n for n in names if n.endswith("conv1.weight"))
    for n in (bn, bn.replace("weight", "bias"), scalar, "fc.bias"):
        assert names[n].ndim <= 1
        assert torch.equal(names[n], free_p[n]), n        # as with weight decay 0
    for n in (bn, scalar, "fc.bias"):  # nonzero, so decaying them would have shown
        assert not torch.equal(names[n], ref_p[n]), n
    assert torch.equal(names[conv], ref_p[conv])         # a conv kernel is decayed
    assert torch.equal(names["fc.weight"], ref_p["fc.weight"])
    assert not torch.equal(names[conv], free_p[conv])


def test_groups_match_torch_optim_and_their_state_interchanges():
    a, b = skipinit_resnet(), skipinit_resnet()
    oa = SGD(param_groups(a, "weights", 1e-3), lr=0.2, momentum=0.9, weight_decay=1e-3)
    ob = torch.optim.SGD(param_groups(b, "weights", 1e-3), lr=0.2, momentum=0.9,
                         weight_decay=1e-3)
    sa, sb = StepSchedule(oa, (1,), 0.1), torch.optim.lr_scheduler.MultiStepLR(ob, [1], 0.1)
    for _ in range(2):
        one_step(a, oa)
        one_step(b, ob)
        sa.step()
        sb.step()
    assert [g["lr"] for g in oa.param_groups] == [g["lr"] for g in ob.param_groups]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = skipinit_resnet()
    c.load_state_dict(a.state_dict())
    oc = SGD(param_groups(c, "weights", 1e-3), lr=9.0, momentum=0.9, weight_decay=1e-3)
    oc.load_state_dict(ob.state_dict())
    assert [g["weight_decay"] for g in oc.param_groups] == [1e-3, 0.0]
    one_step(b, ob)
    one_step(c, oc)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), c.parameters()))
    with pytest.raises(ValueError, match="does not match"):
        SGD(c.parameters(), lr=0.1).load_state_dict(oc.state_dict())


def test_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="valid: all, weights"):
        param_groups(skipinit_resnet(), "some", 1e-4)
