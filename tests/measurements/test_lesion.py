"""Lesion study (ablations/measurements/lesion.py): exact checks on tiny networks, and the
figures and table (analysis/views/lesion.py) on generated frames."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

from ablations.measurements import MeasureData, get, seed_for
from ablations.measurements import lesion
from analysis import views
from analysis.views import lesion as view
from ablations.plan import TrialConfig
from models import create_model, units


def _trial(family="resnet", depth=8, residual=True, seed=0):
    return TrialConfig(f"{family}-{depth}", family, family, depth, residual, seed, None)


def _settled(model, x):
    """``model`` in eval mode with non-trivial BN running statistics."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + torch.randn_like(x))
    return model.eval()


def _zero_branch(unit) -> None:
    """Make a unit's residual branch exactly zero: its last norm (post ResNet block), last
    conv (pre-activation block) or its Linear (MLP block)."""
    with torch.no_grad():
        if hasattr(unit, "conv2"):
            last = unit.conv2 if unit.preact else unit.bn2
            for p in last.parameters():
                p.zero_()
        else:
            unit.weight.zero_()
            unit.bias.zero_()


# depth 10: blocks [1, 1, 2], so identity and projection (or pad) shortcuts
NETS = [dict(name="resnet", depth=10, base_width=4),
        dict(name="resnet", depth=10, base_width=4, block="pre"),
        dict(name="resnet", depth=10, base_width=4, shortcut="pad"),
        dict(name="mlp", depth=5, width=16, in_features=3 * 8 * 8)]


@pytest.mark.parametrize("cfg", NETS, ids=lambda c: "-".join(map(str, c.values())))
def test_lesioned_unit_equals_network_without_that_branch(cfg):
    torch.manual_seed(0)
    cfg = dict(cfg)
    model = create_model(cfg.pop("name"), **cfg)
    x = torch.randn(6, 3, 8, 8)
    model = _settled(model, x)
    named = model.units()
    changed = False
    for i, (_, unit) in enumerate(named):
        if not units.has_skip(unit):
            continue
        zeroed = copy.deepcopy(model)
        _zero_branch(zeroed.units()[i][1])
        with torch.no_grad():
            want = zeroed(x)
            got = units.forward_units(model, x, deleted={i})
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            changed |= not torch.equal(got, model(x))
    assert changed  # deleting a unit does something: the comparison can fail


def test_zero_branch_scale_network_is_all_units_deleted():
    torch.manual_seed(0)
    model = create_model("resnet", depth=10, base_width=4, branch_scale="zero").eval()
    x = torch.randn(4, 3, 8, 8)
    residual = {i for i, (_, u) in enumerate(model.units()) if units.has_skip(u)}
    with torch.no_grad():
        torch.testing.assert_close(units.forward_units(model, x, deleted=residual), model(x),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("residual", [True, False])
def test_cached_prefix_lesion_equals_full_forward(residual):
    torch.manual_seed(0)
    model = _settled(create_model("resnet", depth=20, base_width=4, residual=residual),
                     torch.randn(8, 3, 8, 8))
    x = torch.randn(5, 3, 8, 8)
    ok = [i for i, (_, u) in enumerate(model.units()) if units.deletable(u)]
    sets = [(), *[(i,) for i in ok], ok[2:5], ok[::2], ok]
    with torch.no_grad():
        out = lesion.lesioned_logits(model, x, sets)
        for s in sets:
            full = units.forward_units(model, x, deleted=set(s))
            torch.testing.assert_close(out[frozenset(s)], full, rtol=0, atol=0)
        assert torch.equal(out[frozenset()], model(x))


def _data(n=23, shape=(3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    return MeasureData(x, y, x, y)


def test_errors_are_the_lesioned_networks_errors(monkeypatch):
    monkeypatch.setattr(lesion, "CHUNK", 7)  # several chunks, the last one short
    torch.manual_seed(0)
    model = create_model("resnet", depth=14, base_width=4).eval()
    data = _data()
    df = lesion.measure(model, data, _trial(depth=14))
    with torch.no_grad():
        def err(deleted):
            pred = units.forward_units(model, data.test_x, deleted=deleted).argmax(1)
            return int((pred != data.test_y).sum()) / len(data.test_y)
        assert df["intact_error"].eq(err(set())).all() and 0 < err(set()) < 1
        for r in df[df["kind"] == "single"].itertuples():
            assert r.error == pytest.approx(err({r.unit_index}), abs=1e-12)
        names = [n for n, _ in model.units()]
        for r in df[df["kind"] == "random"].itertuples():
            deleted = {names.index(u) for u in r.unit.split(",")}
            assert len(deleted) == r.k and r.error == pytest.approx(err(deleted), abs=1e-12)
    assert (df["images"] == 23).all() and list(df.columns) == lesion.COLUMNS


@pytest.mark.parametrize("family,kw,bad", [
    ("resnet", dict(depth=8, base_width=4), ["layer2.0", "layer3.0"]),
    ("mlp", dict(depth=4, width=16, in_features=3 * 8 * 8), ["layers.0"])])
def test_plain_units_that_change_shape_are_named_with_nan_error(family, kw, bad):
    torch.manual_seed(0)
    model = create_model(family, residual=False, **kw).eval()
    df = lesion.measure(model, _data(), _trial(family, kw["depth"], residual=False))
    single = df[df["kind"] == "single"]
    assert list(single["unit"]) == [n for n, _ in model.units()]
    named = single[~single["deletable"]]
    assert list(named["unit"]) == bad and named["error"].isna().all()
    assert single[single["deletable"]]["error"].notna().all()
    drawn = {u for s in df[df["kind"] == "random"]["unit"] for u in s.split(",")}
    assert drawn and not drawn & set(bad)


def test_k_values_and_draws_are_deterministic():
    assert lesion.k_values(5) == [1, 2, 3, 4, 5] and lesion.k_values(0) == []
    ks = lesion.k_values(27)
    assert len(ks) == 12 == len(set(ks)) and ks[0] == 1 and ks[-1] == 27
    cands = [0, 2, 3, 5, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20]
    a, b = lesion.random_sets(cands, 7), lesion.random_sets(cands, 7)
    assert a == b and a != lesion.random_sets(cands, 8)
    assert len(a) == 12 * lesion.DRAWS
    for k, _, s in a:
        assert len(s) == len(set(s)) == k and set(s) <= set(cands) and list(s) == sorted(s)
    model = create_model("resnet", depth=20, base_width=4).eval()
    one, two = (lesion.measure(model, _data(n=4), _trial(depth=20, seed=3)) for _ in range(2))
    pd.testing.assert_frame_equal(one, two)
    assert seed_for(3, "lesion") != seed_for(4, "lesion")


def test_model_unchanged_by_measuring():
    torch.manual_seed(0)
    model = _settled(create_model("resnet", depth=8, base_width=4), torch.randn(8, 3, 8, 8))
    before = copy.deepcopy(model.state_dict())
    lesion.measure(model, _data(), _trial())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training


def test_registered():
    m = get("lesion")
    assert (m.when, m.cost, m.default, m.fn) == (("final",), "moderate", True, lesion.measure)
    assert [f.name for f in views.figures("lesion")] == ["lesion_by_unit", "lesion_vs_k"]


# --------------------------------------------------------------------------- figures, table

UNITS = {("resnet", 8): ["layer1.0", "layer2.0", "layer3.0"],
         ("resnet", 14): ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"],
         ("mlp", 4): ["layers.0", "layers.1", "layers.2"]}
errors = st.one_of(st.floats(0, 1), st.just(math.nan))


@st.composite
def lesion_frames(draw, keys, crossed):
    family = draw(st.sampled_from(["resnet", "mlp"]))
    depths = [d for f, d in UNITS if f == family]
    depths = draw(st.lists(st.sampled_from(depths), min_size=1, max_size=3, unique=True))
    seeds = draw(st.integers(1, 3))
    cells = draw(crossed(family))
    rows = []
    for depth in depths:
        names = UNITS[(family, depth)]
        for residual, levels in cells:
            for seed in range(seeds):
                key = keys(family, depth, residual, seed, **levels)
                intact = draw(errors)
                base = dict(key, intact_error=intact, images=100, draw=0, unit_index=-1)
                rows.append(dict(base, kind="intact", k=0, unit="", deletable=True, error=intact))
                for i, name in enumerate(names):
                    ok = residual or i == 0 or draw(st.booleans())
                    rows.append(dict(base, kind="single", k=1, unit=name, unit_index=i,
                                     deletable=ok, error=draw(errors) if ok else math.nan))
                for k in range(1, len(names) + 1):
                    for d in range(3):
                        rows.append(dict(base, kind="random", k=k, draw=d,
                                         unit=",".join(names[:k]), error=draw(errors),
                                         deletable=True))
    return pd.DataFrame(rows)


@given(data=st.data())
def test_figures_and_table_render_on_generated_frames(keys, crossed_cells, data):
    df = data.draw(lesion_frames(keys, crossed_cells))
    for fig in (view.lesion_by_unit(df), view.lesion_vs_k(df)):
        assert isinstance(fig, Figure)
        fig.canvas.draw()  # layout and tick locators run at draw time
    table = view.lesion_table(df)
    cells = df.groupby(["depth", "residual", "norm", "branch_scale"]).ngroups
    assert len(table) == cells and "median single increase (pp)" in table


def test_figures_say_when_there_is_nothing_to_draw(keys):
    empty = pd.DataFrame(columns=[*keys("resnet", 8, True, 0), *lesion.COLUMNS])
    only_intact = pd.DataFrame([dict(keys("resnet", 8, True, 0), kind="intact", k=0, draw=0,
                                     unit="", unit_index=-1, deletable=True, error=0.5,
                                     intact_error=0.5, images=10)])
    for frame in (empty, pd.DataFrame(), only_intact):
        for f in (view.lesion_by_unit, view.lesion_vs_k):
            fig = f(frame)
            assert isinstance(fig, Figure) and "lesion: no" in fig.axes[0].texts[0].get_text()
        assert view.lesion_table(frame) is None or frame is only_intact


def test_table_numbers(keys):
    rows = []
    for seed, (intact, errs) in enumerate([(0.1, [0.2, 0.1, 0.5]), (0.2, [0.2, 0.3, 0.3])]):
        base = dict(keys("resnet", 8, True, seed), intact_error=intact, images=10, draw=0, k=1)
        rows.append(dict(base, kind="intact", k=0, unit="", unit_index=-1, deletable=True,
                         error=intact))
        rows += [dict(base, kind="single", unit=f"u{i}", unit_index=i, deletable=True, error=e)
                 for i, e in enumerate(errs)]
    t = view.lesion_table(pd.DataFrame(rows)).iloc[0]
    # median increases per seed: 0.1 and 0.1 -> 10.0 ± 0; largest: u2, mean(0.4, 0.1) = 25 pp
    assert t["median single increase (pp)"] == "10.0 ± 0.0"
    assert t["largest increase (pp)"] == "25.0 (u2)" and t["not deletable"] == 0
    assert t["intact error (%)"].startswith("15.0 ± ") and t["variant"] == "residual"
