import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from ablations.probe import probe_mlp_seeds, probe_one


@pytest.mark.parametrize("name,kw", [("seed_mlp5", {}), ("seed_mlp5", {"depth": 12}),
                                     ("mlp", {"depth": 5, "width": 16, "in_features": 24}),
                                     ("mlp", {"depth": 3, "width": 8, "in_features": 8,
                                              "num_classes": 1})])
@pytest.mark.parametrize("residual", [False, True])
def test_batched_probe_equals_one_model_per_seed(name, kw, residual):
    cfg = models.get_config(name, residual=residual, **kw)
    seeds = [0, 3, 11]
    batched = probe_mlp_seeds(cfg, seeds, batch=4)
    for seed, (stats, loss) in zip(seeds, batched):
        ref, ref_loss = probe_one(cfg, seed, batch=4)
        assert stats.grad_names == ref.grad_names and stats.act_names == ref.act_names
        np.testing.assert_allclose(stats.grad, ref.grad, rtol=1e-5, atol=0)
        np.testing.assert_allclose(stats.act, ref.act, rtol=1e-5, atol=1e-12)
        assert loss == pytest.approx(ref_loss, rel=1e-6)


def test_probe_one_is_the_seed_articles_recipe():
    """Seed, build, one random input, MSE to a random target, mean |grad| per weight."""
    cfg = models.get_config("seed_mlp5", residual=False)
    stats, _ = probe_one(cfg, seed=5, batch=1)
    torch.manual_seed(5)
    net = cfg.build()
    x, target = torch.randn(1, 10), torch.randn(1, 1)
    F.mse_loss(net(x), target).backward()
    expected = [p.grad.abs().mean().item() for p in net.parameters()]
    np.testing.assert_allclose(stats.grad[:, 0], expected, rtol=1e-6)


def test_residual_keeps_first_layer_gradient_alive():
    cfgs = {r: models.get_config("seed_mlp5", residual=r) for r in (False, True)}
    g0 = {r: np.median([s.grad[0, 0] for s, _ in probe_mlp_seeds(c, list(range(50)), 1)])
          for r, c in cfgs.items()}
    assert g0[True] > 10 * g0[False]


# ---- factor levels (issue 14) -------------------------------------------------------

import dataclasses  # noqa: E402
import itertools  # noqa: E402

from ablations import probe  # noqa: E402
from ablations.probe import can_batch, check_probe_batch, probe_mlp_variants  # noqa: E402
from models.mlp import MLPConfig  # noqa: E402

LEVELS = list(itertools.product(*(MLPConfig.FACTORS[f].levels
                                   for f in ("norm", "block", "branch_scale"))))


@pytest.fixture
def one_thread():
    """Tiny ops on 2 busy cores: intra-op threads only spin (BatchNorm1d 0.01 -> 50 ms)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def assert_same_outcomes(batched, reference):
    assert len(batched) == len(reference)
    for (stats, loss), (ref, ref_loss) in zip(batched, reference):
        assert stats.grad_names == ref.grad_names and stats.act_names == ref.act_names
        np.testing.assert_allclose(stats.grad, ref.grad, rtol=2e-5, atol=0)
        np.testing.assert_allclose(stats.act, ref.act, rtol=2e-5, atol=1e-12)
        assert loss == pytest.approx(ref_loss, rel=1e-5)


@pytest.mark.parametrize("norm,block,branch_scale", LEVELS, ids=["-".join(l) for l in LEVELS])
@pytest.mark.parametrize("kw", [dict(depth=4, width=8, in_features=12),   # projection first
                                dict(depth=4, width=6, in_features=6, num_classes=1)],  # MSE
                         ids=["projection", "all-blocks"])
def test_batched_probe_equals_one_model_per_seed_at_every_level(norm, block, branch_scale, kw,
                                                                one_thread):
    cfg = models.get_config("mlp", norm=norm, block=block, branch_scale=branch_scale, **kw)
    assert can_batch(cfg)
    seeds = [0, 5]
    by_variant = probe_mlp_variants(cfg, seeds, batch=3)
    assert sorted(by_variant) == [False, True]
    for residual, outcomes in by_variant.items():
        rcfg = dataclasses.replace(cfg, residual=residual)
        assert_same_outcomes(outcomes, [probe_one(rcfg, s, batch=3) for s in seeds])


def test_zero_branch_scale_probe_gives_branch_weights_exactly_zero_gradient(one_thread):
    cfg = models.get_config("seed_mlp5", branch_scale="zero")
    (stats, _), = probe_mlp_seeds(cfg, [1], batch=2)
    assert stats.grad_names[:4] == [f"layers.{i}.weight" for i in range(4)]
    assert (stats.grad[:4] == 0).all() and (stats.grad[4] > 0).all()  # the head still learns


def test_batch_norm_probe_refuses_a_batch_of_one():
    cfg = models.get_config("mlp", depth=3, width=8, in_features=8, norm="batch")
    for call in (lambda: probe_one(cfg, 0, 1), lambda: probe_mlp_variants(cfg, [0], 1),
                 lambda: check_probe_batch(cfg, 1)):
        with pytest.raises(ValueError, match="norm='batch'.*probe batch >= 2"):
            call()
    check_probe_batch(cfg, 2)
    for norm in ("none", "layer"):  # per-example norms probe one example fine
        check_probe_batch(dataclasses.replace(cfg, norm=norm), 1)
    check_probe_batch(models.get_config("resnet", depth=4, base_width=4), 1)  # BN2d: positions


def test_cells_that_cannot_batch_fall_back_to_one_model_per_seed(monkeypatch, one_thread):
    res = models.get_config("resnet", depth=4, base_width=4)
    assert not can_batch(res)
    out = probe_mlp_variants(res, [0, 2], batch=2)
    for r in (False, True):
        ref = [probe_one(dataclasses.replace(res, residual=r), s, 2) for s in (0, 2)]
        assert [loss for _, loss in out[r]] == [loss for _, loss in ref]
        assert all(np.array_equal(a.grad, b.grad) for (a, _), (b, _) in zip(out[r], ref))
    # an MLP the batched pass would not know: the same structure, one model per seed
    cfg = models.get_config("mlp", depth=3, width=8, in_features=8, norm="layer")
    monkeypatch.setattr(probe, "_BATCHABLE", probe._BATCHABLE - {torch.nn.LayerNorm})
    assert not can_batch(cfg)
    out = probe_mlp_variants(cfg, [4], batch=2, residuals=(True,))
    assert list(out) == [True]
    ref, ref_loss = probe_one(cfg, 4, 2)
    assert np.array_equal(out[True][0][0].grad, ref.grad) and out[True][0][1] == ref_loss
