"""analysis.robust against hand computations and scipy, and properties on generated frames."""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats as sps

from analysis import robust
from analysis.robust import (bootstrap_ci, chance_value, clopper_pearson, higher_is_better,
                             iqm, probability_of_improvement)
from analysis.stats import with_derived
from tests.analysis.strategies import results_frames

NAN = math.nan
LN10 = math.log(10)


# --------------------------------------------------------------------------- primitives

def test_iqm_by_hand_and_against_scipy():
    # 8 values: int(0.25 * 8) = 2 cut at each end -> mean(3, 4, 5, 6) = 4.5; the outlier
    # 100 and the NaN/inf do not move it
    assert iqm([1, 2, 3, 4, 100, 5, 6, 7, NAN, math.inf]) == 4.5
    assert iqm([2.0]) == 2.0 and math.isnan(iqm([])) and math.isnan(iqm([NAN]))
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 4, 5, 7, 8, 37, 100):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(sps.trim_mean(x, 0.25), rel=1e-13)


def test_probability_of_improvement_by_hand():
    # a = 3, 4, 5 vs b = 1, 4: a higher in 3>1, 4>1, 5>1, 5>4 (4 pairs), tied 4=4 (1/2):
    # 4.5 / 6; lower: 3<4 and the tie: 1.5 / 6
    assert probability_of_improvement([3, 4, 5], [1, 4], True) == 0.75
    assert probability_of_improvement([3, 4, 5], [1, 4], False) == 0.25
    assert probability_of_improvement([1, NAN], [1], True) == 0.5
    assert math.isnan(probability_of_improvement([], [1], True))
    assert math.isnan(probability_of_improvement([1], [NAN], False))


@given(hst.lists(hst.integers(-3, 3), min_size=1, max_size=12),
       hst.lists(hst.integers(-3, 3), min_size=1, max_size=12), hst.booleans())
def test_probability_of_improvement_is_the_pair_count(a, b, hib):
    aa, bb = np.array(a)[:, None], np.array(b)[None, :]
    better = (aa > bb) if hib else (aa < bb)
    expected = (better.sum() + 0.5 * (aa == bb).sum()) / (len(a) * len(b))
    assert probability_of_improvement(a, b, hib) == pytest.approx(expected, rel=1e-12)
    # = Mann-Whitney U / (n_a n_b) for "higher is better"
    if hib and len(set(a) | set(b)) > 1:
        u = sps.mannwhitneyu(a, b, method="asymptotic").statistic
        assert probability_of_improvement(a, b, True) == pytest.approx(u / (len(a) * len(b)))


def test_bootstrap_ci_is_the_stratified_resampler():
    """A hand loop with the same Generator and the same draw order gives the same bounds."""
    a, b = np.array([0.3, 0.5, 0.9, 0.4]), np.array([0.2, 0.1, 0.6])

    def fn(x, y):
        return float(np.mean(x) - np.median(y))
    rng = np.random.default_rng(11)
    ia, ib = rng.integers(0, 4, size=(500, 4)), rng.integers(0, 3, size=(500, 3))
    reps = [fn(a[ia[r]], b[ib[r]]) for r in range(500)]
    expected = np.quantile(reps, [0.05, 0.95])
    got = bootstrap_ci(fn, [a, b], level=0.9, reps=500, seed=11)
    assert got == pytest.approx(tuple(expected), rel=1e-15)
    assert bootstrap_ci(fn, [a, b], level=0.9, reps=500, seed=11) == got  # deterministic
    assert bootstrap_ci(fn, [a, b], level=0.9, reps=500, seed=12) != got
    assert all(math.isnan(v) for v in bootstrap_ci(fn, [a, [1.0, NAN]]))  # < 2 values
    assert all(math.isnan(v) for v in bootstrap_ci(fn, []))


def test_bootstrap_ci_agrees_with_scipy_percentile():
    """Same statistic, same percentile method, independent Monte Carlo draws: each bound
    is a quantile of B = 20000 replicates, whose Monte Carlo sd is about
    sqrt(p (1 - p) / B) / density = sqrt(0.025 * 0.975 / 20000) / (0.058 / sigma) = 0.02
    sigma for a near-normal bootstrap distribution of sd sigma; the difference of two
    such estimates has sd 0.027 sigma. 0.15 sigma (sigma = width / 3.92) is over 5 sd."""
    x = np.random.default_rng(5).normal(size=30)
    lo, hi = bootstrap_ci(iqm, [x], reps=20000, seed=0)
    ref = sps.bootstrap((x,), lambda s, axis: sps.trim_mean(s, 0.25, axis=axis),
                        vectorized=True, n_resamples=20000, method="percentile",
                        rng=np.random.default_rng(1))
    tol = 0.15 * (hi - lo) / 3.92
    assert lo == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=tol)
    assert lo < iqm(x) < hi


def test_clopper_pearson_against_scipy():
    for k, n in [(0, 1), (1, 1), (0, 5), (2, 5), (5, 5), (3, 10), (1, 3), (7, 40)]:
        ci = sps.binomtest(k, n).proportion_ci(method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-15)
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.8, method="exact")
        assert clopper_pearson(k, n, 0.8) == pytest.approx((ci.low, ci.high), rel=1e-9,
                                                           abs=1e-15)
    assert clopper_pearson(0, 4)[0] == 0.0 and clopper_pearson(4, 4)[1] == 1.0
    # k = 0: the upper bound solves (1 - p)^n = 0.025
    assert clopper_pearson(0, 3)[1] == pytest.approx(1 - 0.025 ** (1 / 3))
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(ValueError):
        clopper_pearson(4, 3)


def test_chance_and_direction():
    assert chance_value("final_train_loss") == pytest.approx(LN10)
    assert chance_value("final_test_loss", n_classes=100) == pytest.approx(math.log(100))
    assert chance_value("final_test_error") == pytest.approx(0.9)
    assert chance_value("final_test_acc") == pytest.approx(0.1)
    assert chance_value("probe_loss") is None and chance_value("params") is None
    assert not higher_is_better("final_train_loss") and not higher_is_better("final_test_error")
    assert higher_is_better("final_test_acc")


# --------------------------------------------------------------------------- frames

def tr(depth, residual, seed, loss, status="completed", acc=None):
    return dict(trial_id=f"mlp-{depth}-{residual}-s{seed}", family="mlp", model="mlp",
                depth=depth, residual=residual, seed=seed, status=status,
                final_train_loss=loss,
                final_test_acc=NAN if status != "completed" else (acc or 1 - loss / 4))


def _survivor_frame():
    """Residual at depth 8 diverges in seeds 1 and 2; its one survivor beats plain."""
    rows = [tr(d, False, s, v) for d in (2, 8) for s, v in enumerate([1.0, 1.1, 1.2])]
    rows += [tr(2, True, s, v) for s, v in enumerate([0.9, 1.0, 1.1])]
    rows += [tr(8, True, 0, 0.5), tr(8, True, 1, NAN, "diverged"),
             tr(8, True, 2, NAN, "diverged")]
    return pd.DataFrame(rows)


def test_robust_summary_and_improvement():
    t = pd.DataFrame([tr(2, True, s, v) for s, v in enumerate([1, 2, 3, 4, 100])]
                     + [tr(2, True, 5, NAN, "diverged")])
    s = robust.robust_summary(t, "final_train_loss", reps=300).iloc[0]
    # 5 values: int(1.25) = 1 cut at each end -> mean(2, 3, 4) = 3
    assert (s.n, s.iqm, s.n_planned, s.n_diverged) == (5, 3.0, 6, 1)
    assert (s.iqm_ci_lo, s.iqm_ci_hi) == bootstrap_ci(iqm, [[1, 2, 3, 4, 100]], reps=300)
    imp = robust.improvement(_survivor_frame(), "final_train_loss", reps=300)
    assert list(imp.columns[:4]) == ["factor", "level", "baseline", "family"]
    d2 = imp.set_index("depth").loc[2]
    # residual 0.9, 1.0, 1.1 vs plain 1.0, 1.1, 1.2, lower is better: 0.9 beats 3, 1.0
    # beats 2 and ties 1, 1.1 beats 1 and ties 1 -> (3 + 2.5 + 1.5) / 9
    assert (d2.n_level, d2.n_baseline) == (3, 3)
    assert d2.prob_improvement == pytest.approx(7 / 9)
    assert 0 <= d2.prob_ci_lo <= 7 / 9 <= d2.prob_ci_hi <= 1
    d8 = imp.set_index("depth").loc[8]  # one survivor: the estimate, no interval
    assert d8.prob_improvement == 1.0 and math.isnan(d8.prob_ci_lo)
    acc = robust.improvement(_survivor_frame(), "final_test_acc", reps=50)
    assert acc.set_index("depth").loc[2, "prob_improvement"] == pytest.approx(7 / 9)


def test_failure_rates():
    t = pd.DataFrame([tr(2, True, 0, 1.0), tr(2, True, 1, NAN, "diverged"),
                      tr(2, True, 2, NAN, "error"), tr(2, True, 3, NAN, "pending"),
                      tr(4, True, 0, NAN, "pending")])
    f = robust.failure_rates(t).set_index("depth")
    r = f.loc[2]
    assert (r.n_planned, r.n_diverged, r.n_error, r.n_pending) == (3, 1, 1, 1)
    assert (r.diverged_rate, r.failed_rate) == pytest.approx((1 / 3, 2 / 3))
    assert (r.diverged_ci_lo, r.diverged_ci_hi) == clopper_pearson(1, 3)
    assert (r.failed_ci_lo, r.failed_ci_hi) == clopper_pearson(2, 3)
    assert f.loc[4, "n_planned"] == 0 and math.isnan(f.loc[4, "failed_rate"])


def test_survivorship_flags_a_planted_flip():
    t = _survivor_frame()
    s = robust.survivorship(t, "final_train_loss")
    c = s[s["kind"] == "contrast"].set_index("depth")
    # depth 8, as is: residual 0.5 - plain 1.0 (seed 0 only) = -0.5: residual looks better.
    # At chance: 0.5 - 1.0, ln 10 - 1.1, ln 10 - 1.2 -> mean (2 ln 10 - 2.8) / 3 > 0
    assert c.loc[8, "estimate"] == pytest.approx(-0.5)
    assert c.loc[8, "estimate_chance"] == pytest.approx((2 * LN10 - 2.8) / 3)
    assert c.loc[8, "n_diverged"] == 2 and c.loc[8, "sign_flips"]
    assert not c.loc[2, "sign_flips"] and c.loc[2, "n_diverged"] == 0
    i = s[s["kind"] == "interaction"].iloc[0]
    # as is (welch, seed 0 alone in all four cells): (1.1 - 1.1) - (0.5 - 1.0) = 0.5;
    # at chance, paired: 0 - (0.5 - 0.9, ln 10 - 1.0, ln 10 - 1.1) = 0.4, 1.0 - ln 10,
    # 1.1 - ln 10 -> mean (2.5 - 2 ln 10) / 3 < 0
    assert (i.depth, i.base_depth, i.factor) == (8, 2, "residual")
    assert i.estimate == pytest.approx(0.5)
    assert i.estimate_chance == pytest.approx((0.4 + 1.0 + 1.1 - 2 * LN10) / 3)
    assert i.sign_flips and i.n_diverged == 2
    # the error is derived from the accuracy: a diverged run counts at 0.9
    assert with_derived(robust.at_chance(t, "final_test_error"))[
        "final_test_error"].iloc[-1] == pytest.approx(0.9)
    e = robust.survivorship(t, "final_test_error")
    assert e.set_index(["kind", "depth"]).loc[("contrast", 8), "sign_flips"]
    # a metric without a chance level: no chance columns, nothing flips
    t["probe_loss"] = t["final_train_loss"]
    p = robust.survivorship(t, "probe_loss")
    assert p["estimate_chance"].isna().all() and not p["sign_flips"].any()


# --------------------------------------------------------------------------- properties

def _metrics(trials):
    return [m for m in ("final_train_loss", "final_test_error", "probe_loss")
            if {"final_test_error": "final_test_acc"}.get(m, m) in trials]


def _no_inf(df, cols):
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce").astype(float).to_numpy()
        assert not np.isinf(v).any(), c


def _ordered(df, lo, hi):
    ok = df[lo].notna() & df[hi].notna()
    assert (df.loc[ok, lo] <= df.loc[ok, hi]).all()


@settings(max_examples=20)
@given(results_frames())
def test_robust_tables_are_finite_or_nan_on_generated_frames(frames):
    t = frames["trials"]
    f = robust.failure_rates(t)
    _no_inf(f, ["diverged_rate", "diverged_ci_lo", "diverged_ci_hi", "failed_rate",
                "failed_ci_lo", "failed_ci_hi"])
    assert ((f["n_diverged"] + f["n_error"]) <= f["n_planned"]).all()
    _ordered(f, "failed_ci_lo", "failed_ci_hi")
    for m in _metrics(t):
        s = robust.robust_summary(t, m, reps=20)
        _no_inf(s, ["iqm", "iqm_ci_lo", "iqm_ci_hi"])
        _ordered(s, "iqm_ci_lo", "iqm_ci_hi")
        imp = robust.improvement(t, m, reps=20)
        _no_inf(imp, ["prob_improvement", "prob_ci_lo", "prob_ci_hi"])
        p = imp[["prob_improvement", "prob_ci_lo", "prob_ci_hi"]].stack().dropna()
        assert ((p >= 0) & (p <= 1)).all()
        v = robust.survivorship(t, m)
        _no_inf(v, ["estimate", "ci_lo", "ci_hi", "estimate_chance", "ci_lo_chance",
                    "ci_hi_chance"])
        assert set(v["kind"]) <= {"contrast", "interaction"}
        assert v["sign_flips"].dtype == bool
        assert not v.loc[v["n_diverged"] == 0, "sign_flips"].any()  # nothing to change
