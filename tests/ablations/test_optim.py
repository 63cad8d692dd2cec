"""ablations.optim must reproduce torch.optim.SGD + MultiStepLR bit for bit, share their
state-dict layout, and never import torch._dynamo (the reason it exists)."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ablations.optim import SGD, StepSchedule


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def train(model, opt, sched, epochs=4, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    lrs = []
    for _ in range(epochs):
        for _ in range(steps):
            x, y = torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.0),
                                                   (0.0, 1e-2)])
def test_updates_and_learning_rates_equal_torch_optim_bit_for_bit(momentum, weight_decay):
    ours, ref = net(), net()
    o = SGD(ours.parameters(), lr=0.3, momentum=momentum, weight_decay=weight_decay)
    r = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=momentum, weight_decay=weight_decay)
    lrs_ours = train(ours, o, StepSchedule(o, (1, 3), 0.1))
    lrs_ref = train(ref, r, torch.optim.lr_scheduler.MultiStepLR(r, [1, 3], 0.1))
    assert lrs_ours == lrs_ref  # 0.3 * 0.1 * 0.1 exactly as MultiStepLR multiplies
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    if momentum:
        assert all(torch.equal(o.momentum_buffers[i], r.state[p]["momentum_buffer"])
                   for i, p in enumerate(ref.parameters()))


def test_state_dicts_interchange_with_torch_optim():
    """A checkpoint from either side continues on the other with identical results."""
    a, b = net(), net()
    oa = SGD(a.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    sa = StepSchedule(oa, (2,), 0.1)
    train(a, oa, sa, epochs=2)
    # continue from our state with torch.optim, and from torch.optim's with ours
    b.load_state_dict(a.state_dict())
    ob = torch.optim.SGD(b.parameters(), lr=99.0, momentum=0.9, weight_decay=1e-3)
    sb = torch.optim.lr_scheduler.MultiStepLR(ob, [2], 0.1)
    ob.load_state_dict(oa.state_dict())
    sb.load_state_dict({**sb.state_dict(), "last_epoch": sa.state_dict()["last_epoch"]})
    assert ob.param_groups[0]["lr"] == oa.lr
    c = net()
    c.load_state_dict(b.state_dict())
    oc = SGD(c.parameters(), lr=99.0, momentum=0.9, weight_decay=1e-3)
    oc.load_state_dict(ob.state_dict())
    sc = StepSchedule(oc, (2,), 0.1)
    sc.load_state_dict(sb.state_dict())
    assert sc.last_epoch == 2 and oc.lr == oa.lr
    train(b, ob, sb, epochs=2, seed=7)
    train(c, oc, sc, epochs=2, seed=7)
    for p, q in zip(b.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_load_refuses_a_state_for_other_parameters():
    o = SGD(net().parameters(), lr=0.1, momentum=0.9)
    other = SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="does not match"):
        o.load_state_dict(other.state_dict())


def test_a_training_step_does_not_import_torch_dynamo():
    code = ("import sys, torch\n"
            "from ablations.optim import SGD, StepSchedule\n"
            "m = torch.nn.Linear(3, 2); o = SGD(m.parameters(), lr=0.1, momentum=0.9, "
            "weight_decay=1e-4); s = StepSchedule(o, (1,))\n"
            "m(torch.randn(4, 3)).sum().backward(); o.step(); o.zero_grad(); s.step()\n"
            "o.load_state_dict(o.state_dict())\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
