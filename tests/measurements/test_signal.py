"""Signal propagation (ablations/measurements/signal.py): the unit walk against the
network's own forward, exact zeros of a zero-initialized branch, the statistics by hand,
and the figures and table (analysis/views/signal.py) on generated frames."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from ablations.measurements import get
from ablations.measurements import signal as sg
from analysis import views
from analysis.views import signal as view
from models import create_model


NETS = [dict(name="resnet", depth=8, base_width=4, norm=n, block=b, residual=r)
        for n in ("batch", "none") for b in ("post", "pre") for r in (True, False)] + \
       [dict(name="resnet", depth=8, base_width=4, shortcut="pad", branch_scale="invsqrt")] + \
       [dict(name="mlp", depth=5, width=16, in_features=3 * 8 * 8, norm=n, block=b, residual=r)
        for n in ("none", "layer") for b in ("post", "pre") for r in (True, False)]


@pytest.mark.parametrize("cfg", NETS, ids=lambda c: "-".join(map(str, c.values())))
def test_join_is_the_next_units_input(cfg, settled):
    torch.manual_seed(0)
    cfg = dict(cfg)
    x = torch.randn(6, 3, 8, 8)
    model = settled(create_model(cfg.pop("name"), **cfg), x)
    inputs = []
    hooks = [u.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
             for _, u in model.units()]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        walked = list(sg.walk(model, x))
        assert [w[0] for w in walked] == [n for n, _ in model.units()]
        for (_, _, h, _, _, out), nxt in zip(walked, inputs[1:] + [None]):
            if nxt is not None:
                assert torch.equal(out, nxt)
        assert torch.equal(walked[0][2], inputs[0])
        assert torch.equal(model.head(walked[-1][5]), logits)


def test_zero_branch_scale_ratio_is_exactly_zero_at_init(settled, measure_data):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    model = settled(create_model("resnet", depth=14, base_width=4, branch_scale="zero"), x)
    df = sg.measure(model, measure_data(x), None)
    assert df["has_skip"].all() and (df["ratio"] == 0).all() and (df["branch_norm"] == 0).all()
    assert (df["skip_norm"] > 0).all()


def test_plain_units_have_no_skip(settled, measure_data):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    df = sg.measure(settled(create_model("resnet", depth=8, base_width=4, residual=False), x),
                    measure_data(x), None)
    assert not df["has_skip"].any() and df["skip_norm"].isna().all() and df["ratio"].isna().all()
    mlp = sg.measure(create_model("mlp", depth=4, width=16, in_features=3 * 8 * 8).eval(),
                     measure_data(x), None)
    assert list(mlp["has_skip"]) == [False, True, True]  # the projection has no skip


@pytest.mark.parametrize("family", ["resnet", "mlp"])
def test_statistics_by_hand(family, settled, measure_data):
    torch.manual_seed(0)
    x = torch.randn(9, 3, 8, 8)
    kw = dict(depth=8, base_width=4) if family == "resnet" else dict(depth=4, width=16,
                                                                     in_features=3 * 8 * 8)
    model = settled(create_model(family, **kw), x)
    df = sg.measure(model, measure_data(x), None)
    assert list(df.columns) == sg.COLUMNS and list(df["unit_index"]) == list(range(len(df)))
    with torch.no_grad():
        walked = list(sg.walk(model, x))
    for row, (name, _, _, branch, skip, out) in zip(df.itertuples(), walked):
        o = out.double().numpy()
        axes = (0, *range(2, o.ndim))  # every dim but the channels
        b = math.sqrt((branch.double().numpy() ** 2).mean())
        want = dict(unit=name, branch_norm=b, act_mean_sq=(o ** 2).mean(),
                    act_channel_mean_sq=(o.mean(axis=axes) ** 2).mean(),
                    act_var=o.var(axis=axes).mean())
        if skip is not None:
            s = math.sqrt((skip.double().numpy() ** 2).mean())
            want.update(skip_norm=s, ratio=b / s)
        for col, v in want.items():
            assert getattr(row, col) == (v if col == "unit" else pytest.approx(v, rel=1e-5)), col


def test_model_unchanged(settled, measure_data):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    model = settled(create_model("resnet", depth=8, base_width=4), x)
    before = copy.deepcopy(model.state_dict())
    sg.measure(model, measure_data(x), None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_registered():
    m = get("signal")
    assert (m.when, m.cost, m.default, m.fn) == (("init", "final"), "cheap", True, sg.measure)
    assert [f.name for f in views.figures("signal")] == ["signal_ratio", "signal_variance"]


# --------------------------------------------------------------------------- figures, table

UNITS = {8: ["layer1.0", "layer2.0", "layer3.0"],
         14: [f"layer{s}.{j}" for s in (1, 2, 3) for j in (0, 1)]}
stats_ = st.one_of(st.floats(0, 1e4, allow_subnormal=False), st.just(math.nan), st.just(math.inf))


@st.composite
def signal_frames(draw, keys):
    depths = draw(st.lists(st.sampled_from(sorted(UNITS)), min_size=1, max_size=2, unique=True))
    variants = draw(st.sampled_from([[True], [False], [True, False]]))
    whens = draw(st.sampled_from([["init"], ["final"], ["init", "final"]]))
    seeds = draw(st.integers(1, 3))
    rows = []
    for d in depths:
        for r in variants:
            for s in range(seeds):
                for w in whens:
                    for i, name in enumerate(UNITS[d]):
                        b, k = draw(stats_), draw(stats_) if r else math.nan
                        rows.append(dict(keys("resnet", d, r, s, w), unit=name, unit_index=i,
                                         has_skip=r, branch_norm=b, skip_norm=k, ratio=b / k
                                         if k else math.nan, act_mean_sq=draw(stats_),
                                         act_channel_mean_sq=draw(stats_), act_var=draw(stats_)))
    return pd.DataFrame(rows)


@settings(max_examples=10)
@given(data=st.data())
def test_figures_and_table_render_on_generated_frames(keys, data):
    df = data.draw(signal_frames(keys))
    for fig in (view.signal_ratio(df), view.signal_variance(df)):
        assert isinstance(fig, Figure)
        fig.canvas.draw()
    table = view.signal_table(df)
    assert len(table) == df.groupby(["depth", "residual"]).ngroups
    assert (table.loc[table["variant"] == "plain", "branch/skip trained"] == "—").all()


def test_nothing_to_draw(keys):
    empty = pd.DataFrame(columns=[*keys("resnet", 8, True, 0), *sg.COLUMNS])
    for f in (view.signal_ratio, view.signal_variance):
        assert isinstance(f(empty), Figure)
    assert view.signal_table(empty) is None


def test_table_numbers(keys):
    rows = [dict(keys("resnet", 8, True, seed, "init"), unit=f"u{i}", unit_index=i,
                 has_skip=True, branch_norm=1.0, skip_norm=1.0, ratio=r, act_mean_sq=1.0,
                 act_channel_mean_sq=0.0, act_var=v)
            for seed, (ratios, var) in enumerate([((0.5, 1.5), 4.0), ((1.0, 1.0), 6.0)])
            for i, (r, v) in enumerate(zip(ratios, (99.0, var)))]
    t = view.signal_table(pd.DataFrame(rows)).iloc[0]
    # ratio: per trial the mean over units (1.0, 1.0); variance: the last unit's (4, 6)
    assert t["branch/skip at init"] == "1.00 ± 0.00" and t["branch/skip trained"] == "—"
    # sd(4, 6) = sqrt(2): half width t_{0.975, 1} * sqrt(2) / sqrt(2)
    assert t["last-unit variance at init"] == "5.00 ± 12.71"
