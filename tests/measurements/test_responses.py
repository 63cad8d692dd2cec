"""Layer responses (ablations/measurements/responses.py): the hook trace against the
responses computed by hand from each network's modules, network order, and the figure,
table and layers rows (analysis/views/responses.py) on generated frames."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from ablations.measurements import get
from ablations.measurements import responses as rs
from analysis import views
from analysis.views import responses as view
from analysis.figures_layers import layer_response_std
from analysis.tables import snapshot_rows
from models import create_model
from models.mlp import DenseBlock


def _by_hand(model, x) -> list[tuple[str, torch.Tensor]]:
    """Every response from the modules' definitions: He et al.'s conv (+ norm) output
    before the ReLU and the addition, unit by unit from each unit's input."""
    out = []
    with torch.no_grad():
        if isinstance(model.stem, nn.Sequential):  # ResNet
            conv = model.stem[0](x)
            pre = model.units()[0][1].preact
            out.append(("stem.0", conv) if pre else ("stem.1", model.stem[1](conv)))
        h = model.stem(x)
        for name, u in model.units():
            if hasattr(u, "conv2") and u.preact:
                z = u.bn2(u.conv1(F.relu(u.bn1(h))))
                out += [(f"{name}.bn2", z), (f"{name}.conv2", u.conv2(F.relu(z)))]
            elif hasattr(u, "conv2"):
                z = u.bn1(u.conv1(h))
                out += [(f"{name}.bn1", z), (f"{name}.bn2", u.bn2(u.conv2(F.relu(z))))]
            elif isinstance(u, DenseBlock) and u.site == "before":
                a = F.relu(h if u.norm is None else u.norm(h))
                out.append((name, nn.Linear.forward(u, a)))
            elif isinstance(u, DenseBlock):
                z = nn.Linear.forward(u, h)
                out.append((name, z if u.norm is None else u.norm(z)))
            else:  # a bare nn.Linear
                out.append((name, u(h)))
            h = u(h)
    return out


NETS = [dict(name="resnet", depth=8, base_width=4, norm=n, block=b, residual=r)
        for n in ("batch", "none") for b in ("post", "pre") for r in (True, False)] + \
       [dict(name="mlp", depth=5, width=16, in_features=3 * 8 * 8, norm=n, block=b, residual=r)
        for n in ("none", "layer", "batch") for b in ("post", "pre") for r in (True, False)]


@pytest.mark.parametrize("cfg", NETS, ids=lambda c: "-".join(map(str, c.values())))
def test_hook_trace_equals_responses_by_hand(cfg, settled):
    torch.manual_seed(0)
    cfg = dict(cfg)
    x = torch.randn(6, 3, 8, 8)
    model = settled(create_model(cfg.pop("name"), **cfg), x)
    traced = rs.trace(model, x, lambda t: t.clone())
    hand = _by_hand(model, x)
    assert [n for n, _ in traced] == [n for n, _ in hand]  # network order, names
    assert [n for n, _, _ in rs.response_taps(model)] == [n for n, _ in hand]
    for (name, got), (_, want) in zip(traced, hand):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    # before the ReLU: a post stem's in-place ReLU must not have reached the kept tensor
    assert (traced[0][1] < 0).any()


def _channel_std(t: torch.Tensor) -> float:
    """Mean over channels of each channel's std over images and positions, by loops."""
    t = t.double()
    return sum(float(t[:, c].std()) for c in range(t.shape[1])) / t.shape[1]


@pytest.mark.parametrize("name, cfg", [("resnet", dict(depth=8, base_width=4)),
                                       ("mlp", dict(depth=5, width=16, in_features=3 * 8 * 8))])
def test_measure_is_the_std_of_each_tap(settled, measure_data, name, cfg):
    torch.manual_seed(0)
    x = torch.randn(7, 3, 8, 8)
    model = settled(create_model(name, **cfg), x)
    df = rs.measure(model, measure_data(x), None)
    assert list(df.columns) == rs.COLUMNS == ["layer", "layer_index", "std_channel",
                                              "std_tensor"]
    assert list(df["layer_index"]) == list(range(len(df)))
    hand = [t for _, t in _by_hand(model, x)]
    assert df["std_channel"].to_numpy() == pytest.approx([_channel_std(t) for t in hand],
                                                         rel=1e-5)
    assert df["std_tensor"].to_numpy() == pytest.approx([float(t.double().std()) for t in hand],
                                                        rel=1e-5)
    if name == "resnet":
        assert list(df["layer"][:3]) == ["stem.1", "layer1.0.bn1", "layer1.0.bn2"]


def test_per_channel_std_by_hand():
    # (N=2, C=2, 2 positions): channel 0 = 1, 3, 1, 3 around 2 (std sqrt(4/3)); channel 1
    # = 100 * (0, 2, 0, 2) + 50 around 150 (std 100 sqrt(4/3)); mean over channels
    # 50.5 sqrt(4/3). The whole tensor's std also counts the channels' means (2 vs 150).
    t = torch.tensor([[[1.0, 3.0], [50.0, 250.0]],
                      [[1.0, 3.0], [50.0, 250.0]]])
    per_channel, whole = rs.stds(t)
    assert per_channel == pytest.approx(50.5 * math.sqrt(4 / 3), rel=1e-6)
    v = t.flatten().double()
    assert whole == pytest.approx(float(v.std()), rel=1e-6)
    # by the formula: 8 values, mean (4 * 2 + 2 * 50 + 2 * 250) / 8 = 76
    want = math.sqrt(sum((a - 76) ** 2 for a in (1, 3, 1, 3, 50, 250, 50, 250)) / 7)
    assert whole == pytest.approx(want, rel=1e-6) and whole > 1.5 * per_channel
    # an MLP response (N, F): the features are the channels
    per_feature, _ = rs.stds(torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 50.0]]))
    assert per_feature == pytest.approx((2.0 + 20.0) / 2, rel=1e-6)


def test_model_unchanged_and_no_hooks_left(settled, measure_data):
    torch.manual_seed(0)
    x = torch.randn(7, 3, 8, 8)
    model = settled(create_model("resnet", depth=8, base_width=4), x)
    before = copy.deepcopy(model.state_dict())
    rs.measure(model, measure_data(x), None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert not any(m._forward_hooks for m in model.modules())


def test_registered():
    m = get("responses")
    assert (m.when, m.cost, m.default, m.fn) == (("init", "final"), "cheap", True, rs.measure)
    assert [f.name for f in views.figures("responses")] == ["responses_std"]


# --------------------------------------------------------------------------- figure, table, layers

LAYERS = {8: ["stem.1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2",
              "layer3.0.bn1", "layer3.0.bn2"],
          14: ["stem.1"] + [f"layer{s}.{j}.bn{k}" for s in (1, 2, 3) for j in (0, 1)
                            for k in (1, 2)]}
stds = st.one_of(st.floats(0, 1e3), st.just(math.nan), st.just(math.inf))


@st.composite
def responses_frames(draw, keys):
    depths = draw(st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=2, unique=True))
    variants = draw(st.sampled_from([[True], [False], [True, False]]))
    whens = draw(st.sampled_from([["init"], ["final"], ["init", "final"]]))
    seeds = draw(st.integers(1, 3))
    rows = [dict(keys("resnet", d, r, s, w), layer=name, layer_index=i,
                 std_channel=draw(stds), std_tensor=draw(stds))
            for d in depths for r in variants for s in range(seeds) for w in whens
            for i, name in enumerate(LAYERS[d])]
    return pd.DataFrame(rows)


@settings(max_examples=10)
@given(data=st.data())
def test_figure_table_and_layers_rows_on_generated_frames(keys, data):
    df = data.draw(responses_frames(keys))
    fig = view.responses_std(df)
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    table = view.responses_table(df)
    assert len(table) == df.groupby(["depth", "residual"]).ngroups
    layers = view.responses_as_layers(df)
    assert len(layers) == len(df) and (layers["stat"] == "act_std").all()
    layer_response_std(layers).canvas.draw()


def test_layers_rows_match_layers_parquet(keys):
    rows = [dict(keys("resnet", 8, r, 0, w), layer=n, layer_index=i, std_channel=float(i + 1),
                 std_tensor=-1.0)
            for r in (True, False) for w in ("init", "final") for i, n in enumerate(LAYERS[8])]
    df = pd.DataFrame(rows)
    trained = pd.DataFrame([dict(keys("resnet", 8, r, 0), phase="train", step=s, epoch=e,
                                 layer="x", layer_index=0, stat="act_std", value=1.0)
                            for r in (True, False) for s, e in ((0, 1), (350, 10))])
    out = view.responses_as_layers(df, trained)
    from ablations.results import factor_columns
    assert list(out.columns) == factor_columns() + ["phase", "step", "epoch", "layer",
                                                    "layer_index", "stat", "value"]
    late = snapshot_rows(out, "act_std", "late")
    assert len(late) == 2 * len(LAYERS[8]) and set(late["step"]) == {350}
    assert set(late["epoch"]) == {10} and set(late["phase"]) == {"train"}
    init = snapshot_rows(out, "act_std", "init")
    assert set(init["step"]) == {0} and list(init["value"][:3]) == [1.0, 2.0, 3.0]
    assert set(view.responses_as_layers(df).query("phase == 'train'")["step"]) == {1}
    # the trials' own end of training (steps, epochs_run) wins over the last sample
    ends = pd.DataFrame({"trial_id": sorted(set(df["trial_id"])), "steps": 360,
                         "epochs_run": 10})
    end = snapshot_rows(view.responses_as_layers(df, trained, ends), "act_std", "late")
    assert set(end["step"]) == {360} and set(end["epoch"]) == {10}


def test_nothing_to_draw(keys):
    empty = pd.DataFrame(columns=[*keys("resnet", 8, True, 0), *rs.COLUMNS])
    assert isinstance(view.responses_std(empty), Figure)
    assert view.responses_table(empty) is None


def test_table_numbers(keys):
    rows = [dict(keys("resnet", 8, True, seed, "final"), layer=f"l{i}", layer_index=i,
                 std_channel=v, std_tensor=9.0)
            for seed, pair in enumerate([(1.0, 3.0), (2.0, 2.0)]) for i, v in enumerate(pair)]
    t = view.responses_table(pd.DataFrame(rows)).iloc[0]
    assert t["mean std trained"] == "2.00 ± 0.00" and t["mean std at init"] == "—"
    assert np.isclose(float(t["mean std trained"].split()[0]), 2.0)


def _old_file(keys):
    """A file measured before the per-channel std: ``std`` is the whole-tensor one."""
    return pd.DataFrame([dict(keys("resnet", 8, r, seed, w), layer=n, layer_index=i,
                              std=float(i + 1))
                         for r in (True, False) for seed in range(2) for w in ("init", "final")
                         for i, n in enumerate(LAYERS[8])])


def test_an_old_file_shows_the_whole_tensor_std_and_says_so(keys):
    old = _old_file(keys)
    t = view.responses_table(old)
    assert "mean std trained (whole tensor, old file)" in t.columns
    assert "mean std trained" not in t.columns
    assert set(t["mean std trained (whole tensor, old file)"]) == {"4.00 ± 0.00"}
    fig = view.responses_std(old)
    fig.canvas.draw()
    labels = {ax.get_ylabel() for ax in fig.axes} - {""}
    assert labels == {f"response std ({view.OLD_FILE})"}
    layers = view.responses_as_layers(old)
    assert list(layers["value"][:3]) == [1.0, 2.0, 3.0]
    # a new file: the per-channel std, labelled so
    new = old.drop(columns="std").assign(std_channel=0.5, std_tensor=old["std"])
    assert {ax.get_ylabel() for ax in view.responses_std(new).axes} - {""} == {
        "response std (per channel)"}
    assert set(view.responses_table(new)["mean std trained"]) == {"0.500 ± 0.000"}
    assert (view.responses_as_layers(new)["value"] == 0.5).all()
