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
