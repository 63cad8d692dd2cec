"""Exact values of analysis.stats on hand-built trials frames.

Every expected number is worked out by hand in the comments; the t quantiles
and p values are checked against closed forms of the Student t distribution
(df = 1: Cauchy, df = 2 and df = 4: algebraic), not against the code under test.
"""
import math

import numpy as np
import pandas as pd
import hypothesis as hyp
import hypothesis.strategies as hst
import pytest
from scipy import special, stats

from analysis.contrasts import paired_differences
from analysis.pvalues import mid_ranks, paired_t_pvalue, wilcoxon_exact_pvalue
from analysis.stats import (cell_summary, degradation_index, mean_ci, status_counts,
                            t_quantile, welch_ci, with_derived)

NAN = float("nan")


# Closed forms of the Student t distribution.
def t2_quantile(p):
    """Quantile of t with 2 df: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def t2_two_sided_p(t):
    """F(t) = 1/2 + t / (2 sqrt(2 + t^2)) for 2 df, so P(|T| > t) = 1 - t / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def t1_two_sided_p(t):
    """Cauchy: P(|T| > t) = 1 - (2 / pi) atan(t)."""
    return 1 - 2 / math.pi * math.atan(abs(t))


def t4_cdf(t):
    """F(t) = 1/2 + (3/8) u (1 - u^2 / 12) for 4 df, with u = t / sqrt(1 + t^2 / 4)."""
    u = t / math.sqrt(1 + t * t / 4)
    return 0.5 + 3 / 8 * u * (1 - u * u / 12)


Q2 = t2_quantile(0.975)  # 4.302652729749464 (tables: 4.303)
SQ3 = math.sqrt(3)


def trial(depth, residual, seed, status="completed", family="mlp", model="mlp", **metrics):
    row = dict(trial_id=f"{model}-{depth}-{'residual' if residual else 'plain'}-s{seed}",
               family=family, model=model, depth=depth, residual=residual, seed=seed,
               status=status, params=100 * depth + residual)
    row.update(metrics)
    return row


def frame(rows):
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- quantiles, mean_ci

def test_t_quantile_matches_closed_forms():
    assert Q2 == pytest.approx(4.3026527297, abs=1e-10)
    assert t_quantile(0.95, 2) == pytest.approx(Q2, rel=1e-12)
    assert t_quantile(0.95, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)  # 12.7062
    assert t_quantile(0.90, 2) == pytest.approx(t2_quantile(0.95), rel=1e-12)
    q4 = t_quantile(0.95, 4)
    assert q4 == pytest.approx(2.776445, abs=1e-6)
    assert t4_cdf(q4) == pytest.approx(0.975, abs=1e-12)
    assert math.isnan(t_quantile(0.95, 0)) and math.isnan(t_quantile(0.95, NAN))


def test_mean_ci_exact_and_ignores_non_finite():
    # [1, 2, 3]: mean 2, sd 1, half width t_{.975,2} / sqrt(3) = 2.48414
    m, lo, hi, n = mean_ci([1.0, NAN, 2.0, np.inf, 3.0, None, -np.inf])
    assert (m, n) == (2.0, 3)
    assert lo == pytest.approx(2 - Q2 / SQ3, rel=1e-12)
    assert hi == pytest.approx(2 + Q2 / SQ3, rel=1e-12)
    assert lo == pytest.approx(-0.484138, abs=1e-6)
    # level 0.90: quantile of 0.95 at 2 df = 0.9 / sqrt(0.095) = 2.919986
    _, lo90, hi90, _ = mean_ci(pd.Series([1.0, 2.0, 3.0]), level=0.90)
    assert hi90 - 2 == pytest.approx(t2_quantile(0.95) / SQ3, rel=1e-12)
    assert hi90 - 2 == pytest.approx(2.919986 / SQ3, abs=1e-6)


def test_mean_ci_degenerate():
    assert mean_ci([5.0, NAN]) == pytest.approx((5.0, NAN, NAN, 1), nan_ok=True)
    m, lo, hi, n = mean_ci([NAN, np.inf])
    assert n == 0 and all(math.isnan(x) for x in (m, lo, hi))
    assert mean_ci([]) == pytest.approx((NAN, NAN, NAN, 0), nan_ok=True)
    assert mean_ci([0.25, 0.25, 0.25]) == (0.25, 0.25, 0.25, 3)  # zero variance: zero width
    assert mean_ci(pd.Series([1.0, None, 3.0], dtype="Float64"))[3] == 2  # pd.NA skipped
    with pytest.raises(ValueError):
        mean_ci([1, 2], level=95)


# --------------------------------------------------------------------------- tests

def test_paired_t_pvalue_closed_form():
    # [1, 2, 3]: t = 2 / (1 / sqrt 3) = 2 sqrt 3, 2 df: p = 1 - 2 sqrt3 / sqrt 14 = 0.074180
    p = paired_t_pvalue([1, 2, 3])
    assert p == pytest.approx(t2_two_sided_p(2 * SQ3), rel=1e-10)
    assert p == pytest.approx(1 - 2 * SQ3 / math.sqrt(14), rel=1e-10)
    assert p == pytest.approx(0.0741799, abs=1e-7)
    assert p == pytest.approx(stats.ttest_rel([1, 2, 3], [0, 0, 0]).pvalue, rel=1e-10)
    # [1, 3]: mean 2, sd sqrt 2, t = 2 / (sqrt2 / sqrt2) = 2, 1 df (Cauchy): 0.295167
    assert paired_t_pvalue([1, 3]) == pytest.approx(t1_two_sided_p(2.0), rel=1e-10)
    assert paired_t_pvalue([-1, -3]) == pytest.approx(0.2951672, abs=1e-7)  # two-sided


def test_paired_t_pvalue_degenerate():
    assert math.isnan(paired_t_pvalue([2.0]))
    assert math.isnan(paired_t_pvalue([2.0, NAN]))
    assert math.isnan(paired_t_pvalue([0.5, 0.5, 0.5]))  # zero variance, t = inf
    assert math.isnan(paired_t_pvalue([0.0, 0.0]))       # t = 0/0
    # Equal up to rounding (sd ~ 3e-17): scipy's ttest_rel says p = 3.5e-32; here NaN.
    d = [0.3 - 0.2, 0.2 - 0.1, 0.4 - 0.3]
    assert len(set(d)) == 3 and np.std(d, ddof=1) > 0
    assert math.isnan(paired_t_pvalue(d))
    assert paired_t_pvalue([0.1, 0.1, 0.1 + 1e-6]) < 1  # a real (tiny) spread is tested


def test_wilcoxon_exact_by_hand():
    # No ties, all positive, n = 3: W+ = 6 is the largest of 8 equally likely sign
    # patterns, p = 2 * 1/8.
    assert wilcoxon_exact_pvalue([1, 2, 3]) == 0.25
    assert wilcoxon_exact_pvalue([0, 1, 2, 3]) == 0.25     # zero difference dropped
    assert wilcoxon_exact_pvalue([-1, -2, -3]) == 0.25
    assert wilcoxon_exact_pvalue([0.7]) == 1.0              # one pair: p = 2 * 1/2
    # Ties: |d| = 1, 1, 2, 3 -> mid-ranks 1.5, 1.5, 3, 4; W+ = 1.5 + 3 + 4 = 8.5.
    # Of the 16 subsets of {1.5, 1.5, 3, 4}, sums >= 8.5: {1.5,3,4} twice and all four;
    # so P(W+ >= 8.5) = 3/16 and p = 6/16.
    assert wilcoxon_exact_pvalue([1, -1, 2, 3]) == 0.375
    # |d| = 1, 1, 2 -> 1.5, 1.5, 3; W+ = 3 is the median of {0,1.5,1.5,3,3,4.5,4.5,6}: p = 1.
    assert wilcoxon_exact_pvalue([1, 1, -2]) == 1.0
    assert wilcoxon_exact_pvalue([0.0, 0.0]) == 1.0          # no nonzero difference
    assert math.isnan(wilcoxon_exact_pvalue([NAN]))


def test_wilcoxon_exact_matches_scipy_without_ties():
    rng = np.random.default_rng(7)
    for n in (2, 5, 9, 14):
        d = rng.normal(size=n)
        assert wilcoxon_exact_pvalue(d) == pytest.approx(
            stats.wilcoxon(d, method="exact").pvalue, rel=1e-12)


def _brute_force_wilcoxon(counts) -> float:
    """Two-sided exact signed-rank p value by enumerating all 2^n sign assignments of the
    nonzero integer differences' (doubled, integer) mid-ranks."""
    k = np.asarray(counts)
    k = k[k != 0]
    n = k.size
    if n == 0:
        return 1.0
    ranks2 = np.rint(2 * stats.rankdata(np.abs(k))).astype(np.int64)
    w = int(ranks2[k > 0].sum())
    signs = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1  # every subset of positives
    every = signs @ ranks2
    return min(1.0, 2 * min(int((every <= w).sum()), int((every >= w).sum())) / 2 ** n)


def test_wilcoxon_ties_on_the_accuracy_grid():
    # Differences of accuracies (counts / 1017): 10, 10, -10, 20, 30 test images. As floats
    # the three |10 / 1017| differ in their last bits; ranked as floats the tie splits and
    # p comes out 0.125. As counts: mid-ranks 2, 2, 2, 4, 5; W+ = 2 + 2 + 4 + 5 = 13 of
    # 15; subsets of {2, 2, 2, 4, 5} with sum >= 13: 3 (drop one 2) + 1 (all) = 4 of 32,
    # so p = 2 * 4/32 = 0.25.
    base = np.array([765, 573, 460, 242, 277])
    d = (base + np.array([10, 10, -10, 20, 30])) / 1017 - base / 1017
    assert len(set(np.abs(d[:3]))) > 1            # the float tie is really broken
    assert wilcoxon_exact_pvalue(d) == 0.25
    assert wilcoxon_exact_pvalue(d, resolution=1 / 1017) == 0.25
    assert wilcoxon_exact_pvalue(np.array([10, 10, -10, 20, 30]) / 1017) == 0.25
    # a difference below the tolerance (or below half a grid step) is zero
    assert wilcoxon_exact_pvalue([1e-15, 1, 2, 3]) == 0.25
    assert wilcoxon_exact_pvalue([0.4 / 1017, 1, 2, 3], resolution=1 / 1017) == 0.25
    with pytest.raises(ValueError, match="resolution"):
        wilcoxon_exact_pvalue([1, 2], resolution=0)


@hyp.settings(max_examples=150, deadline=None)
@hyp.given(hst.lists(hst.sampled_from([-3, -2, -1, 0, 1, 2, 3]) | hst.integers(-40, 40),
                     min_size=1, max_size=10),
           hst.lists(hst.integers(0, 1017), min_size=10, max_size=10))
def test_wilcoxon_equals_brute_force_on_accuracy_differences(counts, base):
    """Small integer differences with ties and zeros, as differences of accuracies."""
    expected = _brute_force_wilcoxon(counts)
    k, b = np.array(counts), np.array(base[:len(counts)])
    for d in (k / 1017, (b + k) / 1017 - b / 1017, (1 - b / 1017) - (1 - (b + k) / 1017)):
        assert wilcoxon_exact_pvalue(d) == pytest.approx(expected, rel=1e-12)
        assert wilcoxon_exact_pvalue(d, resolution=1 / 1017) == pytest.approx(expected,
                                                                             rel=1e-12)


def test_welch_ci_exact():
    # a = [4, 6, 8] (mean 6, var 4), b = [1, 2, 3] (mean 2, var 1): diff 4,
    # se^2 = 4/3 + 1/3 = 5/3, df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17.
    w = welch_ci([4, 6, 8], [1, 2, 3])
    assert w["diff"] == 4.0 and (w["n_a"], w["n_b"]) == (3, 3)
    assert w["df"] == pytest.approx(50 / 17, rel=1e-12)
    half = w["ci_hi"] - 4.0
    assert 4.0 - w["ci_lo"] == pytest.approx(half, rel=1e-12)
    q = half / math.sqrt(5 / 3)
    # q is the 0.975 quantile: P(|T| > q) = I_{df/(df+q^2)}(df/2, 1/2) = 0.05
    df = 50 / 17
    assert special.betainc(df / 2, 0.5, df / (df + q * q)) == pytest.approx(0.05, rel=1e-9)
    # Equal variances and sizes: a = [3, 4, 5], b = [1, 2, 3]: se^2 = 2/3, df = 4.
    w = welch_ci([3, 4, 5], [1, 2, 3])
    assert w["df"] == pytest.approx(4.0, rel=1e-12)
    assert t4_cdf((w["ci_hi"] - 2.0) / math.sqrt(2 / 3)) == pytest.approx(0.975, abs=1e-12)
    # One side has zero variance: df = n_a - 1 = 2, closed-form quantile.
    w = welch_ci([4, 6, 8], [1, 1, 1])
    assert w["df"] == pytest.approx(2.0, rel=1e-12)
    assert w["ci_lo"] == pytest.approx(5 - Q2 * math.sqrt(4 / 3), rel=1e-12)
    assert w["ci_hi"] == pytest.approx(5 + Q2 * math.sqrt(4 / 3), rel=1e-12)


def test_welch_ci_degenerate():
    w = welch_ci([5.0], [1, 2, 3])
    assert w["diff"] == 3.0 and math.isnan(w["ci_lo"]) and math.isnan(w["df"])
    w = welch_ci([2, 2], [1, 1])
    assert (w["diff"], w["ci_lo"], w["ci_hi"]) == (1.0, 1.0, 1.0) and math.isnan(w["df"])
    w = welch_ci([NAN], [1, 2])
    assert math.isnan(w["diff"]) and w["n_a"] == 0


# --------------------------------------------------------------------------- frames

def test_with_derived():
    t = frame([trial(2, True, 0, final_test_acc=0.9, final_train_acc=0.75),
               trial(2, True, 1, "diverged", final_test_acc=NAN, final_train_acc=NAN)])
    d = with_derived(t)
    assert d["final_test_error"].tolist()[0] == pytest.approx(0.1)
    assert d["final_train_error"].tolist()[0] == pytest.approx(0.25)
    assert d["final_test_error"].isna().tolist() == [False, True]
    assert "final_val_error" not in d and "final_test_error" not in t  # input untouched
    assert with_derived(d).equals(d)  # idempotent
    assert "final_test_error" not in with_derived(frame([trial(2, True, 0)]))


def _summary_frame():
    return frame([
        # residual depth 2: three completed, a diverged run with a (bogus) finite value
        # that must not enter the mean, and an errored run without params.
        trial(2, True, 0, final_train_loss=1.0, final_test_acc=0.9),
        trial(2, True, 1, final_train_loss=2.0, final_test_acc=0.8),
        trial(2, True, 2, final_train_loss=3.0, final_test_acc=0.7),
        trial(2, True, 3, "diverged", final_train_loss=1e6, final_test_acc=0.1),
        {**trial(2, True, 4, "error"), "params": NAN},
        # plain depth 2: one completed run only
        trial(2, False, 0, final_train_loss=0.5, final_test_acc=0.6),
        trial(2, False, 1, "diverged", final_train_loss=NAN, final_test_acc=NAN),
    ])


def test_cell_summary_counts_and_exact_intervals():
    s = cell_summary(_summary_frame())
    assert list(s.columns[:10]) == ["family", "model", "depth", "residual", "n_planned",
                                   "n_completed", "n_diverged", "n_error", "n_pending", "params"]
    assert s["residual"].tolist() == [False, True]  # plain first
    plain, res = s.iloc[0], s.iloc[1]
    assert (res.n_planned, res.n_completed, res.n_diverged, res.n_error) == (5, 3, 1, 1)
    assert (plain.n_planned, plain.n_completed, plain.n_diverged, plain.n_error) == (2, 1, 1, 0)
    assert res.params == 201 and plain.params == 200
    # loss [1, 2, 3]: 2 +- 4.30265 / sqrt 3; the diverged 1e6 is excluded
    assert res.final_train_loss_mean == 2.0 and res.final_train_loss_n == 3
    assert res.final_train_loss_ci_lo == pytest.approx(2 - Q2 / SQ3, rel=1e-12)
    assert res.final_train_loss_ci_hi == pytest.approx(2 + Q2 / SQ3, rel=1e-12)
    # error = 1 - acc = [0.1, 0.2, 0.3]: 0.2 +- 4.30265 * 0.1 / sqrt 3
    assert res.final_test_error_mean == pytest.approx(0.2, rel=1e-12)
    assert res.final_test_error_ci_hi == pytest.approx(0.2 + Q2 * 0.1 / SQ3, rel=1e-9)
    # one completed run: value, NaN interval, n 1
    assert plain.final_test_error_mean == pytest.approx(0.4)
    assert math.isnan(plain.final_test_error_ci_lo) and math.isnan(plain.final_test_error_ci_hi)
    assert plain.final_test_error_n == 1


def test_cell_summary_all_diverged_and_missing_metric():
    t = frame([trial(8, False, s, "diverged", final_train_loss=NAN, final_test_acc=NAN)
               for s in range(2)])
    row = cell_summary(t).iloc[0]
    assert (row.n_planned, row.n_completed, row.n_diverged) == (2, 0, 2)
    assert row.final_train_loss_n == 0 and math.isnan(row.final_train_loss_mean)
    with pytest.raises(KeyError, match="final_test_error"):
        cell_summary(frame([trial(2, True, 0, final_train_loss=1.0)]))
    assert cell_summary(frame([trial(2, True, 0)]), metrics=())["n_planned"].tolist() == [1]
    with pytest.raises(ValueError, match="running"):
        cell_summary(frame([trial(2, True, 0, "running", final_train_loss=1.0,
                                  final_test_acc=0.5)]))


def _paired_frame():
    rows = []
    # depth 4: seeds 0-2 pair with residual - plain = 1, 2, 3 (as error: 1 - acc).
    for seed, (plain, res) in enumerate([(0.5, 0.4), (0.6, 0.4), (0.7, 0.4)]):
        rows += [trial(4, False, seed, final_test_acc=plain),
                 trial(4, True, seed, final_test_acc=res)]
    rows += [trial(4, False, 3, "diverged", final_test_acc=0.1),  # a diverged run's value
             trial(4, True, 3, final_test_acc=0.5),               # never pairs
             trial(4, False, 4, final_test_acc=0.5),
             trial(4, True, 4, "error"),                          # residual side errored
             trial(4, True, 5, final_test_acc=0.5),               # plain trial missing
             trial(4, False, 6, final_test_acc=0.5),
             trial(4, True, 6, final_test_acc=NAN)]               # completed, no value
    # depth 8: one pair only; depth 16: constant differences; depth 32: nothing pairs
    rows += [trial(8, False, 0, final_test_acc=0.5), trial(8, True, 0, final_test_acc=0.75)]
    rows += [trial(16, False, s, final_test_acc=0.5) for s in range(2)]
    rows += [trial(16, True, s, final_test_acc=0.25) for s in range(2)]
    rows += [trial(32, False, s, "diverged", final_test_acc=NAN) for s in range(2)]
    rows += [trial(32, True, s, final_test_acc=0.9) for s in range(2)]
    return frame(rows)


def test_paired_differences_exact():
    p = paired_differences(_paired_frame(), "final_test_error").set_index("depth")
    assert list(p.columns) == ["family", "model", "n_seeds", "n_pairs", "n_unpaired",
                               "mean_diff", "ci_lo", "ci_hi", "p_value", "p_wilcoxon"]
    r = p.loc[4]
    # errors: plain 0.5, 0.4, 0.3; residual 0.6 -> diffs 0.1, 0.2, 0.3 (residual minus plain)
    assert (r.n_seeds, r.n_pairs, r.n_unpaired) == (7, 3, 4)
    assert r.mean_diff == pytest.approx(0.2, rel=1e-12)
    assert r.ci_lo == pytest.approx(0.2 - Q2 * 0.1 / SQ3, rel=1e-9)
    assert r.ci_hi == pytest.approx(0.2 + Q2 * 0.1 / SQ3, rel=1e-9)
    # t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3 as for [1, 2, 3]
    assert r.p_value == pytest.approx(1 - 2 * SQ3 / math.sqrt(14), rel=1e-9)
    assert r.p_wilcoxon == 0.25


def test_paired_differences_degenerate():
    p = paired_differences(_paired_frame(), "final_test_error").set_index("depth")
    one = p.loc[8]  # diff = 0.25 - 0.5
    assert (one.n_pairs, one.n_unpaired) == (1, 0) and one.mean_diff == pytest.approx(-0.25)
    assert math.isnan(one.ci_lo) and math.isnan(one.p_value) and one.p_wilcoxon == 1.0
    const = p.loc[16]  # diffs 0.25, 0.25: zero-width interval, t test undefined
    assert (const.mean_diff, const.ci_lo, const.ci_hi) == (0.25, 0.25, 0.25)
    assert math.isnan(const.p_value) and const.p_wilcoxon == 0.5
    none = p.loc[32]  # every plain run diverged: the row stays, with its unpaired seeds
    assert (none.n_seeds, none.n_pairs, none.n_unpaired) == (2, 0, 2)
    assert math.isnan(none.mean_diff) and math.isnan(none.p_value) and math.isnan(none.p_wilcoxon)
    assert "p_wilcoxon" not in paired_differences(_paired_frame(), "final_test_error",
                                                  wilcoxon=False)


def test_paired_differences_rejects_duplicate_seed():
    t = frame([trial(2, True, 0, x=1.0), trial(2, True, 0, x=2.0), trial(2, False, 0, x=1.0)])
    with pytest.raises(ValueError, match="more than one trial"):
        paired_differences(t, "x")
    with pytest.raises(KeyError):
        paired_differences(t, "y")


def _depth_frame():
    rows = []
    # plain: depth 2 loss [1, 2, 3]; depth 4 [4, 6, 8] + a diverged run; depth 8 all diverged;
    # depth 16 a single completed run.
    rows += [trial(2, False, s, final_train_loss=v) for s, v in enumerate([1.0, 2.0, 3.0])]
    rows += [trial(4, False, s, final_train_loss=v) for s, v in enumerate([4.0, 6.0, 8.0])]
    rows += [trial(4, False, 3, "diverged", final_train_loss=1e6)]  # value must be ignored
    rows += [trial(8, False, s, "diverged", final_train_loss=v) for s, v in enumerate([NAN, 1e6])]
    rows += [trial(16, False, 0, final_train_loss=10.0), trial(16, False, 1, "error")]
    # residual: depth 2 [1, 1, 1] (zero variance), depth 4 [4, 6, 8]
    rows += [trial(2, True, s, final_train_loss=1.0) for s in range(3)]
    rows += [trial(4, True, s, final_train_loss=v) for s, v in enumerate([4.0, 6.0, 8.0])]
    # another family whose shallowest depth all diverged
    rows += [trial(3, False, s, "diverged", family="resnet", model="resnet",
                   final_train_loss=NAN) for s in range(2)]
    rows += [trial(5, False, s, family="resnet", model="resnet", final_train_loss=1.0)
             for s in range(2)]
    return frame(rows)


def test_degradation_index_exact():
    d = degradation_index(_depth_frame(), "final_train_loss")
    mlp = d[d["family"] == "mlp"].set_index(["residual", "depth"])
    assert mlp.index.tolist() == [(False, 2), (False, 4), (False, 8), (False, 16),
                                  (True, 2), (True, 4)]
    base = mlp.loc[(False, 2)]
    assert (base.delta, base.n, base.n_base, base.base_depth) == (0.0, 3, 3, 2)
    assert math.isnan(base.ci_lo) and math.isnan(base.ci_hi)
    r = mlp.loc[(False, 4)]  # 6 - 2, Welch df 50/17, se sqrt(5/3)
    assert (r.delta, r.depth_mean, r.base_mean, r.n, r.n_base) == (4.0, 6.0, 2.0, 3, 3)
    assert (r.n_planned, r.n_completed, r.n_diverged) == (4, 3, 1)
    assert r.df == pytest.approx(50 / 17, rel=1e-12)
    q = (r.ci_hi - 4.0) / math.sqrt(5 / 3)
    assert special.betainc(r.df / 2, 0.5, r.df / (r.df + q * q)) == pytest.approx(0.05, rel=1e-9)
    # residual: base variance 0 -> df = 2, closed-form quantile
    r = mlp.loc[(True, 4)]
    assert r.delta == 5.0 and r.df == pytest.approx(2.0, rel=1e-12)
    assert r.ci_lo == pytest.approx(5 - Q2 * math.sqrt(4 / 3), rel=1e-12)
    assert r.ci_hi == pytest.approx(5 + Q2 * math.sqrt(4 / 3), rel=1e-12)


def test_degradation_index_degenerate():
    d = degradation_index(_depth_frame(), "final_train_loss")
    mlp = d[d["family"] == "mlp"].set_index(["residual", "depth"])
    dead = mlp.loc[(False, 8)]  # all diverged: row present, delta NaN, counted
    assert (dead.n, dead.n_planned, dead.n_diverged) == (0, 2, 2)
    assert math.isnan(dead.delta) and math.isnan(dead.depth_mean)
    one = mlp.loc[(False, 16)]  # one value: delta defined, interval not
    assert (one.delta, one.n, one.n_error) == (8.0, 1, 1)
    assert math.isnan(one.ci_lo) and math.isnan(one.df)
    rn = d[d["family"] == "resnet"].set_index("depth")
    assert rn["base_depth"].tolist() == [3, 3]  # not re-based onto depth 5
    assert rn["delta"].isna().all() and rn.loc[5, "depth_mean"] == 1.0
    assert rn.loc[3, "n_diverged"] == 2


def test_status_counts_total_row():
    s = status_counts(_summary_frame())
    assert s.columns.tolist() == ["family", "model", "depth", "residual", "n_planned",
                                  "n_completed", "n_diverged", "n_error", "n_pending"]
    assert s[["n_planned", "n_completed", "n_diverged", "n_error", "n_pending"]].values.tolist() == [
        [2, 1, 1, 0, 0], [5, 3, 1, 1, 0], [7, 4, 2, 1, 0]]
    total = s.iloc[-1]
    assert total.family == "total" and pd.isna(total.depth) and pd.isna(total.residual)
    assert s["depth"].dtype == "Int64" and s["residual"].dtype == "boolean"
    empty = status_counts(frame([trial(2, True, 0)]).iloc[:0])
    assert empty["n_planned"].tolist() == [0]


def test_pending_trials_are_counted_not_rejected():
    t = frame([trial(2, True, 0, final_train_loss=1.0, final_test_acc=0.5),
               trial(2, True, 1, "pending")])
    s = cell_summary(t)
    assert (s.n_planned[0], s.n_completed[0], s.n_pending[0]) == (2, 1, 1)
    assert s.final_train_loss_n[0] == 1
    with pytest.raises(ValueError, match="unknown trial status"):
        cell_summary(frame([trial(2, True, 0, "running")]))


@hyp.settings(max_examples=200, deadline=None)
@hyp.given(hst.lists(hst.sampled_from([0.0, 0.5, 1.0, 2.0, -3.0, 7.25]) | hst.floats(-5, 5),
                     max_size=30))
def test_mid_ranks_equal_scipys_average_ranks(values):
    """The report's own ranks (no scipy.stats import) are scipy's "average" ranks."""
    np.testing.assert_array_equal(mid_ranks(np.array(values, dtype=float)),
                                  stats.rankdata(values))
