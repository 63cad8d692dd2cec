"""``--activation relu,gelu``: a factor added by its registry entry, the shared
norm + activation layer (models.norm_act) and the families' declarations only. GELU is
really used (same weights, other outputs, no ReLU left), and the fused norm+ReLU kernel
runs for ReLU only."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import models
from ablations import factors
from models import fused, units
from models.norm_act import NormActSequential, act_layer, norm_act, uses_kernel

CL = torch.channels_last

NETS = [("mlp", dict(depth=4, width=8, in_features=12), (3, 12)),
        ("mlp", dict(depth=4, width=8, in_features=8, block="pre", norm="layer"), (3, 8)),
        ("resnet", dict(depth=10, base_width=4), (2, 3, 16, 16)),
        ("resnet", dict(depth=10, base_width=4, block="pre", branch_scale="invsqrt"),
         (2, 3, 16, 16))]
IDS = ["mlp-post", "mlp-pre", "resnet-post", "resnet-pre"]


class Calls(TorchFunctionMode):
    """Names of the activation functions a forward calls."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("relu", "relu_", "gelu"):
            self.names.append(name.rstrip("_"))
        return func(*args, **(kwargs or {}))


def called(model, x) -> set[str]:
    with torch.no_grad(), Calls() as c:
        model(x)
    return set(c.names)


def test_the_factor_reads_its_families_and_defaults_from_their_declarations():
    f = factors.get("activation")
    assert f.flag == "--activation" and f.level_names == ("relu", "gelu")
    assert f.baseline == "relu" and f.families == ("mlp", "resnet")
    assert f.default == {"mlp": "relu", "resnet": "relu"}
    assert factors.default_levels("resnet")["activation"] == "relu"
    assert factors.id_parts("resnet", {"residual": "residual", "activation": "gelu"}) == \
        ["residual", "act=gelu"]
    assert factors.id_parts("mlp", {"residual": "plain", "activation": "relu"}) == ["plain"]
    cfg = factors.configure(models.get_config("mlp", depth=3), "mlp", {"activation": "gelu"})
    assert cfg.activation == "gelu" and cfg.layout().endswith("GELU, activation=gelu")


@pytest.mark.parametrize("name,kw,shape", NETS, ids=IDS)
def test_gelu_keeps_the_weights_and_changes_the_nonlinearity(name, kw, shape):
    nets = {}
    for act in ("relu", "gelu"):
        torch.manual_seed(0)
        nets[act] = models.create_model(name, activation=act, **kw).eval()
    relu, gelu = nets["relu"], nets["gelu"]
    # the activation holds no parameters and draws no random numbers: the same network
    assert [n for n, _ in relu.named_modules()] == [n for n, _ in gelu.named_modules()]
    assert all(torch.equal(a, b) for a, b in zip(relu.state_dict().values(),
                                                   gelu.state_dict().values()))
    x = torch.randn(*shape)
    assert not torch.allclose(relu(x), gelu(x))
    assert called(relu, x) == {"relu"}
    assert called(gelu, x) == {"gelu"}
    h = gelu.stem(x)  # the measurements' view of each unit agrees with its forward
    for _, unit in gelu.units():
        torch.testing.assert_close(units.join(unit, *units.split(unit, h)), unit(h))
        h = unit(h)


def test_gelu_mlp_is_the_seed_block_with_gelu():
    torch.manual_seed(0)
    m = models.create_model("seed_mlp5", activation="gelu")
    x = torch.randn(3, 10)
    h = x
    for layer in m.layers[:-1]:
        h = F.gelu(h @ layer.weight.T) + h
    torch.testing.assert_close(m(x), h @ m.layers[-1].weight.T)


def test_norm_act_is_act_of_norm_plus_skip():
    bn = nn.BatchNorm2d(4).train()
    x, s = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    for act, fn in (("relu", F.relu), ("gelu", F.gelu)):
        torch.testing.assert_close(norm_act(bn, x, s, act=act), fn(bn(x) + s))
        torch.testing.assert_close(norm_act(None, x, act=act), fn(x))
    assert act_layer("relu", inplace=True).inplace and type(act_layer("gelu", True)) is nn.GELU
    with pytest.raises(ValueError, match="activation 'tanh' is not a level; valid levels: "
                                         "relu, gelu"):
        act_layer("tanh")


def test_norm_act_sequential_keeps_names_and_wants_an_activation_last():
    for act in (nn.ReLU(), nn.GELU()):
        seq = NormActSequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act)
        assert list(seq.state_dict()) == list(nn.Sequential(*seq).state_dict())
    with pytest.raises(ValueError, match="ends with a norm and an activation module"):
        NormActSequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


@pytest.mark.parametrize("block", ["post", "pre"])
def test_the_fused_kernel_runs_for_relu_only(block, monkeypatch):
    if fused.kernel() is None:
        pytest.skip(f"no fused kernel here: {fused.unavailable()}")
    fired = []
    real = fused.applies

    def spy(*args):
        fired.append(real(*args))
        return fired[-1]
    monkeypatch.setattr(fused, "applies", spy)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    for act in ("relu", "gelu"):
        fired.clear()
        torch.manual_seed(0)
        net = models.create_model("resnet", depth=10, base_width=4, block=block,
                                  activation=act).to(memory_format=CL).train()
        with fused.enabled() as on:
            assert on
            out = net(x)
            assert uses_kernel(net.stem if block == "post" else net.final) is (act == "relu")
        if act == "relu":
            assert fired and all(fired)  # every norm + ReLU of a BatchNorm2d net: the kernel
        else:
            assert not fired  # GELU never asks for it
            torch.manual_seed(0)
            ref = models.create_model("resnet", depth=10, base_width=4, block=block,
                                      activation=act).to(memory_format=CL).train()
            assert torch.equal(out, ref(x))  # the same ops as outside enabled()
