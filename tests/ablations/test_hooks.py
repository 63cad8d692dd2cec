import numpy as np
import pytest
import torch
import torch.nn as nn

from ablations.hooks import LayerStatsRecorder, activation_stats, grad_stats


def test_activation_stats_hand_computed():
    x = torch.tensor([[0.0, -2.0], [2.0, 0.0]])
    # |x| mean = 1; mean 0 so population std = sqrt((0+4+4+0)/4) = sqrt(2); zeros 2/4
    torch.testing.assert_close(activation_stats(x), torch.tensor([1.0, 2 ** 0.5, 0.5]))


def test_stats_with_lead_dim_reduce_per_row():
    x = torch.tensor([[[1.0, -1.0]], [[3.0, 3.0]]])  # (S=2, B=1, F=2)
    out = activation_stats(x, lead=1)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]]))
    g = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    torch.testing.assert_close(grad_stats(g, lead=1), torch.tensor([[3.5, 5.0], [0.5, 1.0]]))


class Tiny(nn.Module):
    """y = w2 * relu(w1 * x): every gradient is computable by hand."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 2, bias=False)
        self.l2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
            self.l2.weight.copy_(torch.tensor([[2.0, 3.0]]))

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))

    def tap_points(self):
        return [("l1", self.l1), ("l2", self.l2)]


def test_recorder_on_hand_computed_network():
    m = Tiny()
    x = torch.tensor([[1.0, 2.0]])
    rec = LayerStatsRecorder(m)
    with rec.capture():
        y = m(x)  # l1 out = [1, -2]; relu -> [1, 0]; y = 2
    y.sum().backward()
    # dL/dW2 = relu(h) = [1, 0]; dL/dh = W2 * relu'(z) = [2, 0]; dL/dW1 = outer([2,0], x)
    s = rec.snapshot()
    assert s.grad_names == ["l1.weight", "l2.weight"]
    np.testing.assert_allclose(s.grad, [[(2 + 4) / 4, (4 + 16) ** 0.5], [0.5, 1.0]])
    # l1 output [1, -2]: mean|.| 1.5, std 1.5, no zeros; l2 output [2]: std 0
    np.testing.assert_allclose(s.act, [[1.5, 1.5, 0.0], [2.0, 0.0, 0.0]])
    df = s.frame()
    assert set(df.stat) == {"grad_mean_abs", "grad_norm", "act_mean_abs", "act_std",
                            "act_zero_frac"}
    assert df[(df.layer == "l1.weight") & (df.stat == "grad_norm")].value.item() == \
        pytest.approx(20 ** 0.5)
    rec.close()


def test_recorder_idle_outside_capture_and_single_host_transfer(monkeypatch):
    m = Tiny()
    rec = LayerStatsRecorder(m)
    m(torch.ones(1, 2))
    assert rec._act == [None, None]  # nothing recorded outside capture()
    with rec.capture():
        m(torch.ones(1, 2)).sum().backward()
    calls = []
    orig = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: calls.append(1) or orig(self))
    rec.snapshot()
    assert len(calls) == 1  # all layers move to the host together


def test_recorder_default_taps_in_network_order_for_resnet():
    import models
    m = models.create_model("small_resnet18")
    rec = LayerStatsRecorder(m)
    names = [n for n, _ in rec.taps]
    assert names == ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                     "layer3.1", "fc"]
    assert rec.weights[0][0] == "stem.0.weight" and rec.weights[-1][0] == "fc.weight"
