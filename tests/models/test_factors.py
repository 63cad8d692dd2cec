"""Factor levels of the model configs (issue 14): each level builds exactly the network
it names, and the default levels build today's networks bit for bit."""
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

import models
from models.layers import FixedScale, LearnedScale, PadShortcut
from models.levels import ACTIVATION_NAMES, FactorLevels
from models.mlp import MLP, DenseBlock, MLPConfig
from models.norm_act import NORM_MODULES
from models.resnet import BasicBlock, PreActBlock, ResNet, ResNetConfig

from .legacy import legacy_build

MLP_KW = dict(depth=4, width=8, in_features=12)    # a projection layer, then 2 blocks
SEED_KW = dict(depth=4, width=6, in_features=6, num_classes=1)  # every hidden layer a block
RES_KW = dict(depth=10, base_width=4)              # [1, 1, 2]: projection blocks in 2 stages


def mlp_cfg(**kw):
    return models.get_config("mlp", **{**MLP_KW, **kw})


def res_cfg(**kw):
    return models.get_config("resnet", **{**RES_KW, **kw})


def level_fields(cfg_cls):
    """The declared factors held as string fields (all but residual, a bool)."""
    return {k: v for k, v in cfg_cls.FACTORS.items() if k != "residual"}


def combos(cfg_cls):
    """Every combination of the factor levels, crossed with residual."""
    fields = level_fields(cfg_cls)
    for values in itertools.product(*(d.levels for d in fields.values()), (False, True)):
        yield {**dict(zip(fields, values[:-1])), "residual": values[-1]}


def kw_id(kw):
    return "-".join(str(v) for v in kw.values())


# ---- levels, names, validation -------------------------------------------------------

def test_field_names_levels_and_defaults():
    assert {k: v.levels for k, v in MLPConfig.FACTORS.items()} == {
        "residual": ("residual", "plain"), "norm": ("none", "layer", "batch"),
        "block": ("post", "pre"), "branch_scale": ("one", "invsqrt", "zero"),
        "activation": ("relu", "gelu")}
    assert {k: v.levels for k, v in ResNetConfig.FACTORS.items()} == {
        "residual": ("residual", "plain"), "norm": ("batch", "layer", "none"),
        "block": ("post", "pre"), "branch_scale": ("one", "invsqrt", "zero"),
        "shortcut": ("projection", "pad"), "activation": ("relu", "gelu")}
    for cls in (MLPConfig, ResNetConfig):  # the declared default is the field's default
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert {k: v.default for k, v in cls.FACTORS.items()} == \
            {k: defaults[k] if k != "residual" else "residual" for k in cls.FACTORS}
        assert defaults["residual"] is True
    with pytest.raises(ValueError, match="default 'x' is not one of the levels"):
        FactorLevels.of(("a", "b"), "x")


@pytest.mark.parametrize("family,field,valid", [
    ("mlp", "norm", "none, layer, batch"), ("mlp", "block", "post, pre"),
    ("mlp", "branch_scale", "one, invsqrt, zero"),
    ("resnet", "norm", "batch, layer, none"), ("resnet", "block", "post, pre"),
    ("resnet", "branch_scale", "one, invsqrt, zero"), ("resnet", "shortcut", "projection, pad"),
    ("mlp", "activation", "relu, gelu"), ("resnet", "activation", "relu, gelu")])
def test_invalid_level_raises_naming_the_valid_levels(family, field, valid):
    with pytest.raises(ValueError, match=f"{field} 'bogus' is not a level; valid levels: {valid}$"):
        models.get_config(family, depth=6, **{field: "bogus"})
    with pytest.raises(ValueError, match="valid levels"):  # plain too, where it is ignored
        models.get_config(family, depth=6, residual=False, **{field: "Batch"})


def test_constructors_reject_invalid_levels_too():
    with pytest.raises(ValueError, match="valid levels: post, pre"):
        MLP(depth=3, width=4, in_features=4, num_classes=2, bias=True, residual=True,
            block="preact")
    with pytest.raises(ValueError, match="valid levels: projection, pad"):
        ResNet(layout=(1,), base_width=4, num_classes=2, in_channels=3, residual=False,
               shortcut="A")


# ---- defaults: today's networks, bit for bit -------------------------------------------

LEGACY_TYPES = {"LegacyDenseBlock": "DenseBlock", "LegacyMLP": "MLP",
                "LegacyBasicBlock": "BasicBlock", "LegacyResNet": "ResNet"}
NEW_TYPES = {"NormActSequential": "Sequential"}


@pytest.mark.parametrize("name,kw", [
    ("mlp", dict(depth=5)), ("mlp", dict(depth=5, residual=False)),
    ("mlp", dict(depth=4, width=32, in_features=48, bias=False)), ("seed_mlp5", {}),
    ("seed_mlp5", dict(residual=False)), ("resnet", dict(depth=4)), ("resnet", dict(depth=10)),
    ("resnet", dict(depth=20)), ("resnet", dict(depth=20, residual=False)),
    ("resnet", dict(depth=18, base_width=8)), ("small_resnet18", {}),
    ("small_resnet18", dict(residual=False))])
@pytest.mark.parametrize("seed", [0, 7])
def test_defaults_build_todays_network_bit_for_bit(name, kw, seed):
    cfg = models.get_config(name, **kw)
    torch.manual_seed(seed)
    ref = legacy_build(cfg)
    ref_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    new = cfg.build()
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the same number of draws
    # a Sequential ending in norm + ReLU is a NormActSequential (models.norm_act): the
    # same modules under the same names, its pair fused while training
    assert [(n, NEW_TYPES.get(type(m).__name__, type(m).__name__))
            for n, m in new.named_modules()] == \
        [(n, LEGACY_TYPES.get(type(m).__name__, type(m).__name__)) for n, m in ref.named_modules()]
    new_sd, ref_sd = new.state_dict(), ref.state_dict()
    assert list(new_sd) == list(ref_sd)
    assert all(torch.equal(new_sd[k], ref_sd[k]) for k in ref_sd)
    x = torch.randn(3, cfg.in_features) if cfg.family == "mlp" else torch.randn(3, 3, 16, 16)
    out, ref_out = new(x), ref(x)
    assert torch.equal(out, ref_out)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(new.parameters(), ref.parameters()))


def test_default_layouts_name_no_level():
    assert models.get_config("small_resnet18").layout() == \
        "stem 3x3/16, BasicBlocks [2, 2, 2] widths [16, 32, 64], fc 10"
    assert models.get_config("seed_mlp5").layout() == "10 -> 10 x4 -> 1, no bias, ReLU"


# ---- shortcut="pad": option A --------------------------------------------------------

# He et al. 2016, Table 6 (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M; ours exactly:
HE_TABLE6 = {20: (269_722, "0.27M"), 32: (464_154, "0.46M"), 44: (658_586, "0.66M"),
             56: (853_018, "0.85M"), 110: (1_727_962, "1.7M")}


@pytest.mark.parametrize("depth", [4, 10, 14, 18, 20, 32, 44, 56, 110])
@pytest.mark.parametrize("block", ["post", "pre"])
def test_pad_shortcut_residual_has_exactly_the_plain_parameter_count(depth, block):
    counts = models.variant_params(models.get_config("resnet", depth=depth, block=block,
                                                     shortcut="pad"))
    assert counts[True] == counts[False]
    proj = models.variant_params(models.get_config("resnet", depth=depth, block=block))
    assert proj[False] == counts[False]
    assert proj[True] > counts[True] or depth == 4  # depth 4: one stage, no projection
    if depth in HE_TABLE6 and block == "post":
        exact, paper = HE_TABLE6[depth]
        assert counts[True] == exact
        digits = 1 if exact >= 1e6 else 2
        assert f"{round(exact / 1e6, digits)}M" == paper


def test_projection_counts_resnet_20_56_110():
    assert {d: models.variant_params(models.get_config("resnet", depth=d))[True]
            for d in (20, 56, 110)} == {20: 272_474, 56: 855_770, 110: 1_730_714}


def test_pad_shortcut_subsamples_and_zero_pads_new_channels():
    sc = PadShortcut(3, 5, 2)
    x = torch.randn(2, 3, 5, 5)
    y = sc(x)
    assert y.shape == (2, 5, 3, 3)  # as a 1x1 stride-2 conv: ceil(5 / 2)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 3:], torch.zeros(2, 2, 3, 3))
    m = res_cfg(shortcut="pad").build()
    shortcuts = [b.shortcut for _, b in m.blocks()]
    assert [type(s).__name__ for s in shortcuts] == ["Identity", "PadShortcut", "PadShortcut",
                                                     "Identity"]
    assert not list(shortcuts[1].parameters())


# ---- norm ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [k for k in combos(ResNetConfig) if k["norm"] == "none"] +
                         [k for k in combos(MLPConfig) if k["norm"] == "none"], ids=kw_id)
def test_norm_none_leaves_no_normalization_module(kw):
    cfg = res_cfg(**kw) if "shortcut" in kw else mlp_cfg(**kw)
    m = cfg.build()
    assert not [n for n, mod in m.named_modules() if isinstance(mod, NORM_MODULES)]
    for mod in m.modules():  # ResNet: every conv has a bias instead, zero at init
        if isinstance(mod, nn.Conv2d):
            assert mod.bias is not None and torch.equal(mod.bias, torch.zeros_like(mod.bias))


def test_norm_levels_build_the_named_modules():
    def kinds(m):
        return {type(mod).__name__ for mod in m.modules() if isinstance(mod, NORM_MODULES)}
    assert kinds(res_cfg().build()) == {"BatchNorm2d"}
    layer = res_cfg(norm="layer").build()
    assert kinds(layer) == {"GroupNorm"}
    assert {mod.num_groups for mod in layer.modules() if isinstance(mod, nn.GroupNorm)} == {1}
    assert kinds(mlp_cfg(norm="layer").build()) == {"LayerNorm"}
    assert kinds(mlp_cfg(norm="batch").build()) == {"BatchNorm1d"}
    # convs keep no bias beside a norm
    assert all(mod.bias is None for mod in layer.modules() if isinstance(mod, nn.Conv2d))


def test_mlp_norm_sits_inside_each_norm_relu():
    m = mlp_cfg(norm="layer").build().eval()
    x = torch.randn(5, 12)
    h = x
    for i, layer in enumerate(m.layers):
        if i == len(m.layers) - 1:
            h = layer(h)  # post head: a bare Linear
            assert type(layer) is nn.Linear
            continue
        z = torch.relu(nn.functional.layer_norm(h @ layer.weight.T + layer.bias, (8,)))
        h = z + h if layer.shortcut else z
    torch.testing.assert_close(m(x), h)


# ---- block order: traces -----------------------------------------------------------------

TRACED = {"conv2d", "linear", "batch_norm", "group_norm", "layer_norm", "relu", "add",
          "__add__", "mul", "__mul__"}


class Trace(TorchFunctionMode):
    """Names of the torch functions a forward calls, outermost only, in order."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in TRACED:
            self.calls.append(name.strip("_"))
        return func(*args, **(kwargs or {}))


def trace(module, x):
    with torch.no_grad(), Trace() as t:
        module(x)
    return t.calls


NORM_FN = {"batch": "batch_norm", "layer": "group_norm"}


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_pre_block_runs_norm_relu_weight_and_nothing_after_the_addition(norm):
    m = res_cfg(block="pre", norm=norm).build().eval()
    n = [NORM_FN[norm]] if norm != "none" else []
    identity_block = m.layer3[1]  # not a stage start: identity shortcut carries x
    assert isinstance(identity_block, PreActBlock) and not identity_block.share_preact
    assert trace(identity_block, torch.randn(2, 16, 4, 4)) == \
        n + ["relu", "conv2d"] + n + ["relu", "conv2d", "add"]
    proj_block = m.layer2[0]  # stage start: its projection takes relu(norm x), bare 1x1 conv
    assert trace(proj_block, torch.randn(2, 4, 8, 8)) == \
        n + ["relu", "conv2d"] + n + ["relu", "conv2d", "conv2d", "add"]
    x = torch.randn(2, 4, 8, 8)
    a = torch.relu(proj_block.bn1(x))
    branch = proj_block.conv2(torch.relu(proj_block.bn2(proj_block.conv1(a))))
    torch.testing.assert_close(proj_block(x), branch + proj_block.shortcut(a))
    # post, for contrast: weight-norm-ReLU, a ReLU after the addition
    post = res_cfg(norm=norm).build().eval().layer3[1]
    assert trace(post, torch.randn(2, 16, 4, 4)) == \
        ["conv2d"] + n + ["relu", "conv2d"] + n + ["add", "relu"]


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_mlp_pre_block_runs_norm_relu_weight_and_nothing_after_the_addition(norm):
    m = mlp_cfg(block="pre", norm=norm).build().eval()
    n = {"none": [], "layer": ["layer_norm"], "batch": ["batch_norm"]}[norm]
    assert trace(m.layers[1], torch.randn(3, 8)) == n + ["relu", "linear", "add"]
    assert trace(mlp_cfg(norm=norm).build().eval().layers[1], torch.randn(3, 8)) == \
        ["linear"] + n + ["relu", "add"]  # post: the seed's relu(W x) + x


def test_pre_network_bare_stem_final_norm_relu_and_head():
    m = res_cfg(block="pre").build().eval()
    assert [type(s).__name__ for s in m.stem] == ["Conv2d"]
    assert [type(s).__name__ for s in m.final] == ["BatchNorm2d", "ReLU"]
    assert [b.share_preact for _, b in m.tap_points()[1:-1]] == [True, True, True, False]
    calls = trace(m, torch.randn(2, 3, 16, 16))
    assert calls[0] == "conv2d" and calls[-3:] == ["batch_norm", "relu", "linear"]
    assert res_cfg().build().final is None
    mlp = mlp_cfg(block="pre", norm="layer").build()
    assert type(mlp.layers[0]) is nn.Linear  # the projection ("stem") is a bare W x
    head = mlp.layers[-1]
    assert isinstance(head, DenseBlock) and head.site == "before" and not head.shortcut
    assert trace(head, torch.randn(3, 8)) == ["layer_norm", "relu", "linear"]
    # in_features == width: no projection, every hidden layer a pre block
    seed = models.get_config("mlp", block="pre", **SEED_KW).build()
    assert [getattr(l, "site", None) for l in seed.layers] == ["before"] * 4
    assert seed.num_shortcuts() == 3


def test_pre_keeps_the_same_linear_weights_per_seed():
    """norm and order draw no random numbers: one seed, one set of MLP weights."""
    def weights(**kw):
        torch.manual_seed(3)
        return [p for n, p in mlp_cfg(**kw).build().named_parameters()
                if n.endswith("weight") and p.ndim == 2]
    ref = weights()
    for kw in (dict(block="pre"), dict(norm="batch"), dict(block="pre", branch_scale="zero")):
        assert all(torch.equal(a, b) for a, b in zip(weights(**kw), ref))


# ---- branch_scale ----------------------------------------------------------------------

@pytest.mark.parametrize("block", ["post", "pre"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_zero_scale_resnet_blocks_start_as_their_shortcut(block, norm):
    m = res_cfg(block=block, norm=norm, branch_scale="zero").build()
    alphas = [b.branch_scale.alpha for _, b in m.blocks()]
    assert len(alphas) == m.num_shortcuts() == 4
    assert all(a.ndim == 0 and a.item() == 0.0 and a.requires_grad for a in alphas)
    with torch.no_grad():
        for _, b in m.blocks():
            c = b.conv1.in_channels
            x = torch.relu(torch.randn(2, c, 8, 8))  # a post block's input is a ReLU output
            y = b(x)
            if b.shortcut.__class__ is nn.Identity and not getattr(b, "share_preact", False):
                assert torch.equal(y, x)  # exactly the identity
            elif block == "post":
                assert torch.equal(y, torch.relu(b.shortcut(x)))
            else:
                assert torch.equal(y, b.shortcut(torch.relu(b.bn1(x))))
    x = torch.randn(4, 3, 16, 16)
    m(x).logsumexp(1).sum().backward()
    assert all(a.grad is not None and a.grad.item() != 0 for a in alphas)


@pytest.mark.parametrize("kw", [MLP_KW, SEED_KW], ids=["projection", "all-blocks"])
@pytest.mark.parametrize("block", ["post", "pre"])
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_zero_scale_mlp_blocks_are_the_identity_at_init(kw, block, norm):
    m = models.get_config("mlp", branch_scale="zero", block=block, norm=norm, **kw).build()
    blocks = m.blocks()
    assert [type(b.branch_scale) for _, b in blocks] == [LearnedScale] * len(blocks)
    assert all(b.branch_scale.alpha.item() == 0.0 for _, b in blocks)
    x = torch.randn(5, kw["in_features"])
    h = x
    for layer in m.layers:
        out = layer(h)
        if layer in [b for _, b in blocks]:
            assert torch.equal(out, h)  # ReLU inside the branch: nothing after the addition
        h = out
    m(x).square().sum().backward()
    assert all(b.branch_scale.alpha.grad.item() != 0 for _, b in blocks)


def test_invsqrt_multiplies_every_branch_by_one_over_sqrt_blocks():
    m = res_cfg(branch_scale="invsqrt").build().eval()  # 4 blocks
    assert [b.branch_scale.value for _, b in m.blocks()] == [1 / math.sqrt(4)] * 4
    assert all(isinstance(b.branch_scale, FixedScale) for _, b in m.blocks())
    assert not [n for n, _ in m.named_parameters() if "branch_scale" in n]  # a constant
    with torch.no_grad():
        for _, b in m.blocks():
            x = torch.relu(torch.randn(2, b.conv1.in_channels, 8, 8))
            branch = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(x)))))
            torch.testing.assert_close(b(x), torch.relu(b.shortcut(x) + branch / math.sqrt(4)))
    pre = res_cfg(branch_scale="invsqrt", block="pre", depth=20).build().eval()  # 9 blocks
    b = pre.layer1[1]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        branch = b.conv2(torch.relu(b.bn2(b.conv1(torch.relu(b.bn1(x))))))
        torch.testing.assert_close(b(x), x + branch / 3.0)
    mlp = models.get_config("seed_mlp5", branch_scale="invsqrt").build()  # 4 blocks
    x = torch.randn(3, 10)
    layer = mlp.layers[2]
    assert layer.branch_scale.value == 0.5
    torch.testing.assert_close(layer(x), torch.relu(x @ layer.weight.T) / 2 + x)
    mlp = mlp_cfg(branch_scale="invsqrt").build()  # projection + 2 blocks
    assert [b.branch_scale.value for _, b in mlp.blocks()] == [1 / math.sqrt(2)] * 2


@pytest.mark.parametrize("kw", [dict(branch_scale="zero"), dict(branch_scale="invsqrt"),
                                dict(shortcut="pad"), dict(block="pre", branch_scale="zero",
                                                           shortcut="pad")], ids=kw_id)
def test_plain_network_ignores_branch_scale_and_shortcut(kw):
    for cfg in (res_cfg(residual=False), mlp_cfg(residual=False)):
        kw2 = {k: v for k, v in kw.items() if k in cfg.FACTORS}
        base = dataclasses.replace(cfg, block=kw2.get("block", cfg.block))
        torch.manual_seed(0)
        a = base.build()
        torch.manual_seed(0)
        b = dataclasses.replace(cfg, **kw2).build()
        assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                       b.state_dict().values()))
        assert not [m for m in b.modules() if isinstance(m, (FixedScale, LearnedScale,
                                                               PadShortcut))]
        assert dataclasses.replace(cfg, **kw2).layout() == base.layout()


# ---- every combination -------------------------------------------------------------------

@pytest.mark.parametrize("kw", list(combos(ResNetConfig)), ids=kw_id)
def test_every_resnet_combination_builds_runs_and_keeps_its_protocol(kw):
    cfg = res_cfg(**kw)
    m = cfg.build().train()
    out = m(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    names = [n for n, _ in m.tap_points()]
    assert names == ["stem", "layer1.0", "layer2.0", "layer3.0", "layer3.1", "fc"]
    assert m.num_shortcuts() == (4 if kw["residual"] else 0)
    assert [n for n, _ in m.blocks()] == (names[1:-1] if kw["residual"] else [])
    assert m.first_block() is m.layer1[0] and len(m.stages()) == 3
    assert isinstance(m.first_block(), PreActBlock if kw["block"] == "pre" else BasicBlock)
    expected = "".join(f", {k}={v}" for k, v in kw.items() if k != "residual"
                       and v != ResNetConfig.FACTORS[k].default
                       and (kw["residual"] or k not in ("branch_scale", "shortcut")))
    assert cfg.layout() == "stem 3x3/4, BasicBlocks [1, 1, 2] widths [4, 8, 16], fc 10" + expected


@pytest.mark.parametrize("kw", list(combos(MLPConfig)), ids=kw_id)
def test_every_mlp_combination_builds_runs_and_keeps_its_protocol(kw):
    for base in (MLP_KW, SEED_KW):
        cfg = models.get_config("mlp", **base, **kw)
        m = cfg.build().train()
        out = m(torch.randn(3, base["in_features"]))
        assert out.shape == (3, cfg.num_classes) and torch.isfinite(out).all()
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        assert [n for n, _ in m.tap_points()] == [f"layers.{i}" for i in range(4)]
        n_blocks = (2 if base is MLP_KW else 3) if kw["residual"] else 0
        assert m.num_shortcuts() == len(m.blocks()) == n_blocks
    assert cfg.layout().startswith(f"6 -> 6 x3 -> 1, bias, {ACTIVATION_NAMES[kw['activation']]}")
    for k, v in kw.items():
        named = f"{k}={v}" in cfg.layout()
        assert named == (k != "residual" and v != MLPConfig.FACTORS[k].default
                         and (kw["residual"] or k != "branch_scale"))


def test_levels_pass_through_presets():
    m = models.create_model("small_resnet18", norm="none", shortcut="pad")
    assert models.count_params(m) == 172_042  # plain 172,506 - 928 norm + 464 conv biases
    assert models.get_config("seed_mlp5", block="pre").block == "pre"


# ---- describe ------------------------------------------------------------------------------

def test_describe_shows_counts_per_level_where_they_differ():
    text = models.describe(["resnet", "seed_mlp5"], depths=[20])
    resnet, seed = text.split("seed_mlp5")
    lines = resnet.splitlines()
    assert "params plain 269,722  residual 272,474" in lines[1]
    rows = {l.split()[0]: l.split(None, 1)[1] for l in lines[2:]}
    assert rows == {"norm=none": "plain 269,034  residual 271,690",  # - norms + conv biases
                    "block=pre": "plain 269,722  residual 272,282",
                    "branch_scale=zero": "plain 269,722  residual 272,483",  # + 9 scalars
                    "shortcut=pad": "plain 269,722  residual 269,722"}
    # norm=layer (GroupNorm: the same count) and invsqrt (a constant) are not listed
    seed = seed.splitlines()
    assert any(l.split() == ["branch_scale=zero", "plain", "410", "residual", "414"]
               for l in seed)
    assert any(l.split() == ["norm=batch", "plain", "490", "residual", "490"] for l in seed)
