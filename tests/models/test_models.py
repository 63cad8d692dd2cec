import dataclasses

import pytest
import torch
import torch.nn as nn

import models
from models.mlp import DenseBlock
from models.resnet import BasicBlock


def test_small_resnet18_has_the_seed_articles_175258_parameters():
    assert models.count_params(models.create_model("small_resnet18")) == 175_258


def test_small_resnet18_layout_matches_the_article():
    m = models.create_model("small_resnet18")
    assert m.stage_names == ["layer1", "layer2", "layer3"]
    assert [len(s) for s in m.stages()] == [2, 2, 2]
    assert [s[0].conv1.out_channels for s in m.stages()] == [16, 32, 64]
    # projection shortcuts (1x1 conv + BN) exactly where channels/stride change
    proj = [isinstance(b.shortcut, nn.Sequential) for s in m.stages() for b in s]
    assert proj == [False, False, True, False, True, False]


def test_seed_mlp5_is_the_articles_network():
    m = models.create_model("seed_mlp5")
    shapes = [tuple(p.shape) for p in m.parameters()]
    assert shapes == [(10, 10)] * 4 + [(1, 10)]  # 5 bias-free Linear layers
    assert [n for n, _ in m.named_parameters()][0] == "layers.0.weight"
    assert m.num_shortcuts() == 4


def test_seed_mlp5_forward_matches_the_articles_code():
    """The seed's own forward: x = relu(layer(x)) + x on hidden layers, linear last."""
    torch.manual_seed(0)
    m = models.create_model("seed_mlp5")
    x = torch.randn(3, 10)
    h = x
    for i, layer in enumerate(m.layers):
        h = layer.weight.matmul(h.T).T if i == 4 else torch.relu(h @ layer.weight.T) + h
    torch.testing.assert_close(m(x), h)


@pytest.mark.parametrize("depth,layout", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)), (20, (3, 3, 3)),
                                          (32, (5, 5, 5)), (44, (7, 7, 7)), (56, (9, 9, 9)),
                                          (110, (18, 18, 18)), (14, (2, 2, 2)), (10, (1, 1, 2)),
                                          (4, (1,)), (6, (1, 1))])
def test_resnet_depth_rule(depth, layout):
    assert models.resnet_layout(depth) == layout
    m = models.create_model("resnet", depth=depth)
    weighted = 2 + 2 * sum(len(s) for s in m.stages())  # stem + 2 per block + fc
    assert weighted == depth


@pytest.mark.parametrize("depth,near", [(5, "4 or 6"), (19, "18 or 20"), (3, "4"), (2, "4")])
def test_resnet_rejects_unbuildable_depths_naming_nearest(depth, near):
    with pytest.raises(ValueError, match=f"nearest valid: {near}"):
        models.create_model("resnet", depth=depth)


@pytest.mark.parametrize("name,kw", [("mlp", {"depth": 5}), ("mlp", {"depth": 3, "in_features": 256}),
                                     ("resnet", {"depth": 8}), ("resnet", {"depth": 18}),
                                     ("seed_mlp5", {}), ("small_resnet18", {})])
def test_plain_variant_has_no_shortcut_and_same_main_path(name, kw):
    res = models.create_model(name, residual=True, **kw)
    plain = models.create_model(name, residual=False, **kw)
    assert plain.num_shortcuts() == 0
    assert res.num_shortcuts() > 0
    # the plain network is the residual one minus the shortcut modules
    shortcut_names = {n for n, _ in res.named_parameters() if ".shortcut." in n}
    assert {n for n, _ in plain.named_parameters()} == \
        {n for n, _ in res.named_parameters()} - shortcut_names
    for m in plain.modules():
        if isinstance(m, BasicBlock):
            assert m.shortcut is None
        if isinstance(m, DenseBlock):
            assert not m.shortcut


def test_plain_block_output_ignores_the_input_shortcut():
    blk_r = BasicBlock(8, 8, 1, residual=True)
    blk_p = BasicBlock(8, 8, 1, residual=False)
    blk_p.load_state_dict(blk_r.state_dict())
    x = torch.randn(2, 8, 6, 6)
    main = blk_p(x)
    torch.testing.assert_close(blk_r(x), torch.relu(blk_r.bn2(blk_r.conv2(
        torch.relu(blk_r.bn1(blk_r.conv1(x))))) + x))
    assert not torch.allclose(main, blk_r(x))


def test_mlp_first_layer_is_projection_without_shortcut_when_widths_differ():
    m = models.create_model("mlp", depth=4, width=32, in_features=48)
    assert [l.shortcut for l in m.layers[:-1]] == [False, True, True]


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model_forward_backward(name):
    kw = {"depth": 6} if name in models.list_families() else {}
    for residual in (False, True):
        cfg = models.get_config(name, residual=residual, **kw)
        m = cfg.build()
        x = torch.randn(2, cfg.in_features) if hasattr(cfg, "in_features") \
            else torch.randn(2, 3, 32, 32)
        out = m(x)
        assert out.shape == (2, cfg.num_classes)
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_registry_fails_loudly():
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("seed_mlp5")(lambda **kw: None)
    with pytest.raises(models.UnknownModelError, match="valid families: mlp, resnet"):
        models.create_model("vgg", depth=5)
    assert models.list_models("seed*") == ["seed_mlp5"]


def test_configs_are_frozen_and_hashable():
    cfg = models.get_config("resnet", depth=20)
    hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3


def test_describe_lists_both_variants():
    text = models.describe(["small_resnet18", "resnet"], depths=[5, 20])
    assert "params plain 172,506  residual 175,258" in text
    assert "resnet-5" in text and "nearest valid: 4 or 6" in text
