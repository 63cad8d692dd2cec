"""Loss landscape (ablations/measurements/landscape.py): Li et al.'s filter normalization,
the slices on tiny networks, ``roughness`` as properties, figures (analysis/views/landscape.py,
landscape2d.py) on generated frames."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from ablations.measurements import MeasureData, get, seed_for
from ablations.measurements import landscape as ls
from analysis import views
from analysis.views import landscape as view
from analysis.views.landscape2d import landscape_2d
from ablations.plan import TrialConfig
from models import create_model

NETS = [dict(name="resnet", depth=8, base_width=4),
        dict(name="resnet", depth=8, base_width=4, norm="none", branch_scale="zero"),
        dict(name="mlp", depth=4, width=16, in_features=3 * 8 * 8, norm="layer")]


def _model(cfg):
    torch.manual_seed(0)
    cfg = dict(cfg)
    return create_model(cfg.pop("name"), **cfg).eval()


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return MeasureData(x, y, x[:5], y[:5])


def _trial(seed=0):
    return TrialConfig("t", "resnet", "resnet", 8, True, seed, None)


@pytest.fixture
def few_points(monkeypatch):
    monkeypatch.setattr(ls, "POINTS_1D", 5)   # alpha in -1, -.5, 0, .5, 1
    monkeypatch.setattr(ls, "POINTS_2D", 3)   # -1, 0, 1


@pytest.mark.parametrize("cfg", NETS, ids=lambda c: "-".join(map(str, c.values())))
def test_filter_norms_match_and_bias_norm_scale_directions_are_zero(cfg):
    model = _model(cfg)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    d = ls.filter_normalized_direction(weights, torch.Generator().manual_seed(3))
    assert d.keys() == weights.keys()
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731  (filters, everything else)
    for n, w in weights.items():
        if w.dim() >= 2:  # conv (out, in, k, k) and linear (out, in): per output filter
            torch.testing.assert_close(flat(d[n]).norm(dim=1), flat(w).norm(dim=1))
            assert not torch.equal(d[n], w)
        else:
            assert torch.count_nonzero(d[n]) == 0, n
    kinds = {w.dim() for w in weights.values()}
    assert {1, 2} <= kinds and (cfg["name"] == "mlp" or 4 in kinds)
    if cfg.get("branch_scale") == "zero":
        assert 0 in kinds  # the learned 0-dim scale is among the zeroed ones
    ds = ls.directions(model, 11, 2)
    assert set(ds[0]) == {n for n, w in weights.items() if w.dim() >= 2}
    again = ls.directions(model, 12, 1)[0]  # direction i is drawn from seed + i
    assert all(torch.equal(ds[1][n], again[n]) for n in again)


def test_loss_at_zero_is_the_models_own_eval_loss_and_points_are_the_shifted_models(few_points):
    model = _model(NETS[0])
    data = _data()
    df = ls.measure(model, data, _trial())
    x, y = ls.eval_subset(data)
    assert len(y) == 40 and df["images"].eq(40).all() and list(df.columns) == ls.COLUMNS
    with torch.no_grad():
        own = float(F.cross_entropy(model(x), y))
    centre = df[df["alpha"] == 0]
    assert len(centre) == ls.DIRECTIONS
    assert centre["loss"].to_numpy() == pytest.approx([own] * ls.DIRECTIONS, rel=1e-6)
    # a point off the centre is the loss of a copy with its weights moved along direction 1
    d = ls.directions(model, seed_for(0, "landscape"), ls.DIRECTIONS)[1]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            if n in d:
                p.add_(-0.5 * d[n])
        want = float(F.cross_entropy(moved(x), y))
    got = df[(df["direction"] == 1) & (df["alpha"] == -0.5)]["loss"].item()
    assert got == pytest.approx(want, rel=1e-5) and got != pytest.approx(own, rel=1e-3)


def test_model_unchanged_and_2d_centre_equals_1d_centre(few_points):
    model = _model(NETS[0])
    before = copy.deepcopy(model.state_dict())
    data, trial = _data(), _trial(seed=2)
    one, two = ls.measure(model, data, trial), ls.measure_2d(model, data, trial)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert len(two) == 9 and (two["kind"] == "2d").all() and two["direction"].eq(-1).all()
    c2 = two[(two["alpha"] == 0) & (two["beta"] == 0)]["loss"].item()
    assert c2 == one[one["alpha"] == 0]["loss"].iloc[0]
    # the grid's beta = 0 row is 1-D slice 0 at the shared alphas (the same directions)
    row = two[two["beta"] == 0].set_index("alpha")["loss"]
    slice0 = one[one["direction"] == 0].set_index("alpha")["loss"]
    assert row.to_dict() == pytest.approx(slice0[row.index].to_dict(), rel=1e-6)
    pd.testing.assert_frame_equal(one, ls.measure(model, data, trial))  # deterministic


def test_registered():
    one, two = get("landscape"), get("landscape2d")
    assert (one.when, one.cost, one.default, one.fn) == (("final",), "expensive", False, ls.measure)
    assert (two.when, two.cost, two.default, two.fn) == (("final",), "expensive", False,
                                                          ls.measure_2d)
    assert [f.name for f in views.figures("landscape") + views.figures("landscape2d")] == [
        "landscape_1d", "landscape2d"]


# --------------------------------------------------------------------------- roughness

ALPHA = np.arange(-20, 21) / 20
sides = st.tuples(st.floats(0.05, 50), st.floats(0.5, 4))


@given(left=sides, right=sides, base=st.floats(-10, 10))
def test_roughness_of_a_bowl_is_zero(left, right, base):
    loss = base + np.where(ALPHA < 0, left[0] * np.abs(ALPHA) ** left[1],
                           right[0] * np.abs(ALPHA) ** right[1])
    assert ls.roughness(ALPHA, loss) == 0.0


@given(steps=st.lists(st.floats(-5, 5).filter(lambda s: abs(s) > 1e-3), min_size=4,
                      max_size=40), centre=st.integers(1, 3), scale=st.floats(0.01, 100),
       shift=st.floats(-10, 10))
def test_roughness_is_zero_iff_monotone_on_each_side_and_scale_free(steps, centre, scale, shift):
    c = min(centre, len(steps) - 1)
    loss = np.concatenate([[0.0], np.cumsum(steps)])
    alpha = np.arange(len(loss)) - c
    left, right = np.sign(steps[:c]), np.sign(steps[c:])
    monotone = len(set(left)) == 1 and len(set(right)) == 1
    r = ls.roughness(alpha, loss)
    assert r >= 0 and (r == 0) == monotone
    assume(math.isfinite(r))
    assert ls.roughness(alpha, scale * loss + shift) == pytest.approx(r, rel=1e-6, abs=1e-9)


def test_roughness_counts_bumps():
    bowl = ALPHA ** 2
    one = bowl + 0.3 * np.exp(-((ALPHA - 0.5) / 0.05) ** 2)
    two = one + 0.3 * np.exp(-((ALPHA + 0.5) / 0.05) ** 2)
    r1, r2 = ls.roughness(ALPHA, one), ls.roughness(ALPHA, two)
    assert 0 < r1 < r2
    assert ls.roughness([-1, -.5, 0, .5, 1], [2, 3, 1, 1, 1]) == 2.0  # bump of 1 over a rise of 1


@given(holes=st.lists(st.integers(0, 40), max_size=10), bad=st.sampled_from([np.nan, np.inf]))
def test_roughness_is_nan_safe(holes, bad):
    loss = ALPHA ** 2 + 0.1 * np.sin(20 * ALPHA)
    holed = loss.copy()
    holed[holes] = bad
    keep = np.isfinite(holed)
    r = ls.roughness(ALPHA, holed)
    if keep.sum() < 3 or not (0 < np.argmin(np.abs(ALPHA[keep])) < keep.sum() - 1):
        assert math.isnan(r)
    else:
        assert r == ls.roughness(ALPHA[keep], loss[keep])
    assert math.isnan(ls.roughness([], [])) and ls.roughness([-1, 0, 1], [1, 1, 1]) == 0.0
    assert ls.roughness([-1, -.5, 0, .5, 1], [1, 2, 1, 2, 1]) == math.inf  # wiggles, no rise


# --------------------------------------------------------------------------- figures, table

losses = st.one_of(st.floats(1e-4, 1e3), st.sampled_from([math.nan, math.inf, 0.0]))


@st.composite
def landscape_frames(draw, keys, crossed, kind):
    family = draw(st.sampled_from(["resnet", "mlp"]))
    depths = draw(st.lists(st.sampled_from([8, 14, 20]), min_size=1, max_size=3, unique=True))
    seeds = draw(st.integers(1, 3))
    cells = draw(crossed(family))
    grid = np.arange(-2, 3) / 2
    rows = []
    for depth in depths:
        for residual, levels in cells:
            for seed in range(seeds):
                key = dict(keys(family, depth, residual, seed, **levels), images=256, kind=kind)
                if kind == "1d":
                    rows += [dict(key, direction=d, alpha=a, beta=math.nan, loss=draw(losses))
                             for d in range(3) for a in grid]
                else:
                    rows += [dict(key, direction=-1, alpha=a, beta=b, loss=draw(losses))
                             for a in grid for b in grid]
    return pd.DataFrame(rows)


@settings(max_examples=12)  # four figures an example
@given(data=st.data())
def test_figures_and_table_render_on_generated_frames(keys, crossed_cells, data):
    one = data.draw(landscape_frames(keys, crossed_cells, "1d"))
    two = data.draw(landscape_frames(keys, crossed_cells, "2d"))
    for fig in (view.landscape_1d(one), landscape_2d(two), view.landscape_1d(two),
                landscape_2d(one)):
        assert isinstance(fig, Figure)
        fig.canvas.draw()
    table = view.landscape_table(one)
    assert len(table) == one.groupby(["depth", "residual", "norm", "branch_scale"]).ngroups
    assert {"trained loss", "roughness"} <= set(table.columns)
    assert view.landscape_table(two) is None
    for f in (view.landscape_1d, landscape_2d):  # nothing to draw: a figure that says so
        assert "landscape: no" in f(pd.DataFrame()).axes[0].texts[0].get_text()


def test_table_numbers(keys):
    rows = []
    for seed in range(2):
        key = dict(keys("resnet", 8, False, seed), images=256, kind="1d", beta=math.nan)
        for d in range(3):  # a bowl (roughness 0) and, for direction 2, one bump of 1 (2.0)
            loss = [3, 1, 1, 1, 3] if d < 2 else [2, 3, 1, 1, 1]
            rows += [dict(key, direction=d, alpha=a, loss=v)
                     for a, v in zip([-1, -.5, 0, .5, 1], loss)]
    t = view.landscape_table(pd.DataFrame(rows)).iloc[0]
    assert t["roughness"] == "0.67 ± 0.00" and t["trained loss"] == "1.000 ± 0.000"
    assert t["rise at |alpha|=1 (median)"] == "2" and t["variant"] == "plain"
