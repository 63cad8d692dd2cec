"""Shattered gradients (ablations/measurements/shattering.py): the autocorrelation on
known sequences, exact per-input gradients on tiny networks, and the figures and table
(analysis/views/shattering.py, with the helpers ``signal`` and ``responses`` share) on
generated frames."""
from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from matplotlib.figure import Figure

from ablations.measurements import MeasureData, get, seed_for
from ablations.measurements import shattering as sh
from analysis import views
from analysis.views import shattering as view
from ablations.plan import TrialConfig
from models import create_model


def _trial(seed=0):
    return TrialConfig("resnet-8", "resnet", "resnet", 8, True, seed, None)


def _data(n=12):
    torch.manual_seed(3)
    x = torch.randn(n, 3, 8, 8)
    return MeasureData(x, torch.randint(10, (n,)), x, torch.randint(10, (n,)))


def _settled(model):
    """``model`` in eval mode with non-trivial BN running statistics."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) * 2 + 0.5)
    return model.eval()


# --------------------------------------------------------------------------- autocorrelation

def test_constant_sequence_uncentred_is_one_centred_is_nan():
    g = np.full((100, 7), -2.5)
    r = sh.autocorrelation(g, centred=False)
    assert r.shape == (65,) and np.allclose(r, 1.0, rtol=0, atol=1e-12)
    assert sh.autocorrelation(np.ones(5), centred=False).shape == (5,)  # lags stop at T-1
    # no fluctuation around the mean: nothing to correlate (also where the float64 mean
    # is not exact: 0.1 * 3 rounds)
    assert np.isnan(sh.autocorrelation(g)).all() and sh.autocorrelation(g).shape == (65,)
    assert np.isnan(sh.autocorrelation(np.full((256, 3), 0.1) * 3)).all()


def test_white_noise_is_near_zero_beyond_lag_zero():
    for centred in (True, False):
        r = sh.autocorrelation(np.random.default_rng(0).standard_normal(4096), centred=centred)
        assert r[0] == 1.0 and np.abs(r[1:]).max() < 0.1


def test_constant_plus_white_noise_is_smooth_only_uncentred():
    # 98% of the energy in the constant: the uncentred autocorrelation is ~0.98 at every
    # lag with no smoothness at all; the centred one sees the white noise: ~0
    rng = np.random.default_rng(1)
    T, D = 256, 3072
    mean = rng.standard_normal(D)
    mean *= math.sqrt(0.98 / 0.02 * D) / np.linalg.norm(mean)  # |mean|^2 = 49 E|noise_t|^2
    g = mean + rng.standard_normal((T, D))
    u, c = sh.autocorrelation(g, centred=False), sh.autocorrelation(g)
    assert np.abs(u[1:] - 0.98).max() < 0.005
    assert np.abs(c[1:]).max() < 0.01


@pytest.mark.parametrize("period", [16, 40, 100])
def test_sinusoid_centred_lag_one_is_cos_of_the_step(period):
    # a smooth gradient: centred r(k) ~ cos(2 pi k / period), with an offset that the
    # uncentred one would count as correlation
    t = np.arange(256)
    g = np.stack([np.sin(2 * np.pi * t / period), 0.5 * np.cos(2 * np.pi * t / period + 1)], 1)
    r = sh.autocorrelation(g + 3.0)
    assert r[1] == pytest.approx(math.cos(2 * math.pi / period), abs=0.02 if period < 100 else 0.05)
    assert r[period // 2] < -0.8  # half a period: anticorrelated
    assert sh.autocorrelation(g + 3.0, centred=False)[period // 2] > 0.8


def test_hand_computed_values():
    # uncentred, g = 1, 2, 3: r(1) = (1*2 + 2*3) / sqrt((1 + 4) * (4 + 9)), r(2) = 3 / sqrt(1 * 9)
    r = sh.autocorrelation(np.array([1.0, 2.0, 3.0]), centred=False)
    assert r == pytest.approx([1.0, 8 / math.sqrt(65), 1.0], abs=1e-15)
    # centred, g = 1, 2, 4: mean 7/3, c = -4/3, -1/3, 5/3;
    # r(1) = (4/9 - 5/9) / sqrt((16/9 + 1/9) * (1/9 + 25/9)) = -1/sqrt(442)
    # r(2) = (-20/9) / sqrt(16/9 * 25/9) = -1
    r = sh.autocorrelation(np.array([1.0, 2.0, 4.0]))
    assert r == pytest.approx([1.0, -1 / math.sqrt(442), -1.0], abs=1e-15)
    # 1, 2, 3 centred: -1, 0, 1: r(1) = 0 / sqrt(1 * 1), r(2) = -1 / sqrt(1 * 1)
    assert sh.autocorrelation(np.array([1.0, 2.0, 3.0])) == pytest.approx([1, 0, -1], abs=1e-15)
    # vectors: <(1,0),(0,1)> = 0 at lag 1 (uncentred); centred, (1,0), (0,1), (1,1):
    # mean (2/3, 2/3), c = (1/3,-2/3), (-2/3,1/3), (1/3,1/3); |c|^2 = 5/9, 5/9, 2/9
    # r(1) = (-4/9 - 1/9) / sqrt(10/9 * 7/9) = -5/sqrt(70)
    assert sh.autocorrelation(np.eye(2), 1, centred=False)[1] == 0.0
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert sh.autocorrelation(g, 1)[1] == pytest.approx(-5 / math.sqrt(70), abs=1e-15)


def test_zero_sequence_is_nan():
    for centred in (True, False):
        assert np.isnan(sh.autocorrelation(np.zeros((4, 3)), centred=centred)).all()


@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 4)),
              elements=st.floats(-1e6, 1e6, allow_subnormal=False)),
       st.booleans())
def test_lag_zero_is_one_and_bounded(g, centred):
    r = sh.autocorrelation(g, centred=centred)
    if not np.any(g - g.mean(0) if centred else g):
        assert np.isnan(r).all()
        return
    assert r[0] == 1.0 or (centred and np.isnan(r).all())  # centred: rounding-level spread
    ok = r[np.isfinite(r)]  # NaN: a lag whose overlapping terms are all zero
    assert (np.abs(ok) <= 1.0).all()


# --------------------------------------------------------------------------- gradients on networks

def test_linear_model_gradient_is_constant():
    # uncentred 1 at every lag; centred: no fluctuation around the mean gradient, NaN
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    df = sh.measure(model, _data(), _trial())
    assert list(df.columns) == sh.COLUMNS
    assert len(df) == sh.SEGMENTS * (sh.MAX_LAG + 1) and (df["points"] == sh.POINTS).all()
    assert np.allclose(df["autocorr_uncentred"], 1.0, rtol=0, atol=1e-9)
    assert df["autocorr_centred"].isna().all()


def test_measure_columns_are_the_autocorrelations_of_the_line_gradients():
    torch.manual_seed(0)
    model = _settled(create_model("resnet", depth=8, base_width=4))
    data = _data()
    df = sh.measure(model, data, _trial())
    (i, j), = sh.segment_pairs(len(data.test_x), seed_for(0, "shattering"))[:1]
    g = sh.line_gradients(model, data.test_x[i], data.test_x[j], int(data.test_y[i]))
    g = g.double().numpy()
    first = df[df["segment"] == 0]
    np.testing.assert_allclose(first["autocorr_centred"], sh.autocorrelation(g), atol=1e-6)
    np.testing.assert_allclose(first["autocorr_uncentred"],
                               sh.autocorrelation(g, centred=False), atol=1e-6)
    assert (first["autocorr_centred"].iloc[1:] < first["autocorr_uncentred"].iloc[1:]).all()


@pytest.mark.parametrize("block", ["post", "pre"])
def test_batched_gradients_equal_single_input_gradients(block):
    torch.manual_seed(0)
    model = _settled(create_model("resnet", depth=8, base_width=4, block=block))
    a, b = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    g = sh.line_gradients(model, a, b, 4, points=9)
    loop = []
    for t in torch.linspace(0, 1, 9):
        x = ((1 - t) * a + t * b).unsqueeze(0).requires_grad_(True)
        loop.append(torch.autograd.grad(model(x)[0, 4], x)[0].flatten())
    torch.testing.assert_close(g, torch.stack(loop), rtol=1e-5, atol=1e-7)
    # with batch statistics (train mode) the same backward couples the points: not per input
    train = copy.deepcopy(model).train()
    assert not torch.allclose(sh.line_gradients(train, a, b, 4, points=9), g, atol=1e-4)


def test_model_unchanged_and_no_parameter_gradients():
    torch.manual_seed(0)
    model = _settled(create_model("resnet", depth=8, base_width=4))
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():  # the measurement turns gradients on itself
        df = sh.measure(model, _data(), _trial())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for col in ("autocorr_centred", "autocorr_uncentred"):
        assert np.isfinite(df[col]).all() and (df.loc[df["lag"] == 0, col] == 1).all()


def test_segments_are_seeded_and_the_same_at_init_and_final():
    seed = seed_for(5, "shattering")
    pairs = sh.segment_pairs(12, seed)
    assert pairs == sh.segment_pairs(12, seed) != sh.segment_pairs(12, seed_for(6, "shattering"))
    assert len(pairs) == sh.SEGMENTS and all(a != b and 0 <= a < 12 and 0 <= b < 12
                                             for a, b in pairs)
    assert all(a != b for a, b in sh.segment_pairs(2, seed))
    with pytest.raises(ValueError, match="at least 2"):
        sh.segment_pairs(1, seed)


def test_registered_and_no_torch_at_import():
    m = get("shattering")
    assert (m.when, m.cost, m.default, m.fn) == (("init", "final"), "cheap", True, sh.measure)
    assert [f.name for f in views.figures("shattering")] == ["shattering_acf", "shattering_lag1"]
    code = ("import sys; import ablations.measurements.shattering, "
            "ablations.measurements.responses, ablations.measurements.signal; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- figures, table

values = st.one_of(st.floats(-1, 1), st.just(math.nan), st.just(math.inf))


@st.composite
def shattering_frames(draw, keys):
    family = draw(st.sampled_from(["resnet", "mlp"]))
    depths = draw(st.lists(st.sampled_from([8, 14, 20]), min_size=1, max_size=3, unique=True))
    variants = draw(st.sampled_from([[True], [False], [True, False]]))
    whens = draw(st.sampled_from([["init"], ["final"], ["init", "final"]]))
    seeds, lags = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    rows = [dict(keys(family, depth, residual, seed, when), segment=s, lag=k, points=256,
                 autocorr_centred=1.0 if k == 0 else draw(values),
                 autocorr_uncentred=1.0 if k == 0 else draw(values))
            for depth in depths for residual in variants for seed in range(seeds)
            for when in whens for s in range(2) for k in range(lags)]
    return pd.DataFrame(rows)


@settings(max_examples=10)
@given(data=st.data())
def test_figures_and_table_render_on_generated_frames(keys, data):
    df = data.draw(shattering_frames(keys))
    for fig in (view.shattering_acf(df), view.shattering_lag1(df)):
        assert isinstance(fig, Figure)
        fig.canvas.draw()
    table = view.shattering_table(df)
    assert len(table) == df.groupby(["depth", "residual"]).ngroups
    assert {"variant", "seeds", "lag-1 at init", "lag-1 trained"} <= set(table.columns)


def test_figures_say_when_there_is_nothing_to_draw(keys):
    empty = pd.DataFrame(columns=[*keys("resnet", 8, True, 0), *sh.COLUMNS])
    for f in (view.shattering_acf, view.shattering_lag1):
        assert isinstance(f(empty), Figure)
    assert view.shattering_table(empty) is None


def test_table_numbers(keys):
    # per trial: the mean over segments at lag 1; then mean ± t half width over seeds
    # the centred column; the uncentred one (here 0.9 throughout) is not the table's
    rows = [dict(keys("resnet", 8, False, seed, "final"), segment=s, lag=1, points=256,
                 autocorr_centred=v, autocorr_uncentred=0.9)
            for seed, pair in enumerate([(0.2, 0.4), (0.5, 0.5)]) for s, v in enumerate(pair)]
    t = view.shattering_table(pd.DataFrame(rows)).iloc[0]
    half = 12.706204736 * 0.1414213562 / math.sqrt(2)  # t_{0.975, 1} * sd(0.3, 0.5) / sqrt(2)
    assert t["lag-1 trained"] == f"0.400 ± {half:.3f}" and t["lag-1 at init"] == "—"
    assert (t["variant"], t["seeds"], t["depth"]) == ("plain", 2, 8)


def _old_file(keys):
    """A file measured before the centred column: ``autocorr`` is the uncentred one."""
    return pd.DataFrame([dict(keys("resnet", d, r, seed, w), segment=s, lag=k, points=256,
                              autocorr=1.0 if k == 0 else 0.9 - 0.1 * k)
                         for d in (8, 14) for r in (True, False) for seed in range(2)
                         for w in ("init", "final") for s in range(2) for k in range(3)])


def test_an_old_file_shows_the_uncentred_autocorrelation_and_says_so(keys):
    old = _old_file(keys)
    t = view.shattering_table(old)
    assert "lag-1 trained (uncentred, old file)" in t.columns
    assert "lag-1 trained" not in t.columns
    assert set(t["lag-1 trained (uncentred, old file)"]) == {"0.800 ± 0.000"}
    assert set(t["lag-2 at init (uncentred, old file)"]) == {"0.700 ± 0.000"}
    for f in (view.shattering_acf, view.shattering_lag1):
        fig = f(old)
        fig.canvas.draw()
        assert "UNCENTRED" in fig._supylabel.get_text() and view.OLD_FILE in fig._supylabel.get_text()
    # a new file: centred, labelled so
    new = old.drop(columns="autocorr").assign(autocorr_centred=0.1, autocorr_uncentred=0.9)
    assert "centred" in view.shattering_acf(new)._supylabel.get_text()
    assert "UNCENTRED" not in view.shattering_lag1(new)._supylabel.get_text()
    assert set(view.shattering_table(new)["lag-1 trained"]) == {"0.100 ± 0.000"}


def test_a_merged_file_of_old_and_new_trials_shows_the_centred_one(keys):
    # pd.concat of an old trial's rows (autocorr) and a new one's (both new columns)
    old = _old_file(keys)
    new = old[old["depth"] == 8].drop(columns="autocorr").assign(autocorr_centred=0.25,
                                                                 autocorr_uncentred=0.9)
    mixed = pd.concat([old[old["depth"] == 14], new], ignore_index=True)
    t = view.shattering_table(mixed).set_index(["depth", "variant"])
    assert t.loc[(8, "plain"), "lag-1 trained"] == "0.250 ± 0.000"
    assert t.loc[(14, "plain"), "lag-1 trained"] == "—"  # old trials: no centred value
    view.shattering_acf(mixed).canvas.draw()
    view.shattering_lag1(mixed).canvas.draw()
