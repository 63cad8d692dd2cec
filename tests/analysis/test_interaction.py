"""Exact values of analysis.interaction on hand-built frames, and properties on generated ones.

Every expected number is worked out in the comments. Paired p values use the closed forms
of Student t with 1 df (Cauchy) and 2 df; the Welch ones are checked against the formula
written out here with scipy.stats.t (not the code under test) for the quantile.
"""
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from scipy import stats as sps

from analysis import interaction as ia
from tests.analysis.strategies import results_frames

NA = "n/a"
NAN = math.nan
Q2 = 4.302652729749464  # t(0.975, 2)
SQ3 = math.sqrt(3)


def t2_p(t):
    """Two-sided p of t with 2 df: 1 - |t| / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def t1_p(t):
    """Two-sided p of t with 1 df (Cauchy): 1 - (2 / pi) atan|t|."""
    return 1 - 2 / math.pi * math.atan(abs(t))


def welch_by_hand(cells, level=0.95):
    """(estimate, lo, hi, df, p) of sum w mean over independent [(values, w)]."""
    est = sum(w * np.mean(v) for v, w in cells)
    q = [w * w * np.var(v, ddof=1) / len(v) for v, w in cells]
    se2 = sum(q)
    df = se2 ** 2 / sum(qi ** 2 / (len(v) - 1) for qi, (v, _) in zip(q, cells))
    half = sps.t.ppf(0.5 + level / 2, df) * math.sqrt(se2)
    return est, est - half, est + half, df, 2 * sps.t.sf(abs(est) / math.sqrt(se2), df)


def tr(depth, residual, seed, loss, status="completed", family="mlp", **levels):
    return dict(trial_id=f"{family}-{depth}-{residual}-{levels}-s{seed}", family=family,
                model=family, depth=depth, residual=residual, seed=seed, status=status,
                final_train_loss=loss, **levels)


def _frame_a():
    """Seeds line up at depths 2 and 8; at depth 4 they do not (a diverged plain seed 2,
    an errored residual seed 0)."""
    rows = [tr(2, False, s, v) for s, v in enumerate([1.0, 1.2, 1.1])]
    rows += [tr(8, False, s, v) for s, v in enumerate([2.0, 2.4, 2.6])]
    rows += [tr(2, True, s, v) for s, v in enumerate([0.9, 1.0, 1.1])]
    rows += [tr(8, True, s, v) for s, v in enumerate([0.9, 1.0, 1.2])]
    rows += [tr(4, False, 0, 1.5), tr(4, False, 1, 1.7), tr(4, False, 2, NAN, "diverged"),
             tr(4, True, 0, NAN, "error"), tr(4, True, 1, 1.0), tr(4, True, 2, 1.4)]
    return pd.DataFrame(rows)


def test_interaction_paired_by_hand():
    d = ia.interaction(_frame_a(), "final_train_loss")
    assert list(d.columns) == ["family", "model", "residual", *ia.INTERACTION_COLUMNS]
    assert d["depth"].tolist() == [4, 8] and set(d["base_depth"]) == {2}
    r = d.set_index("depth").loc[8]
    # plain 8 - 2 per seed: 1.0, 1.2, 1.5; residual: 0.0, 0.0, 0.1 -> DiD 1.0, 1.2, 1.4:
    # mean 1.2, sd 0.2, t = 1.2 / (0.2 / sqrt 3) = 6 sqrt 3 on 2 df
    assert (r.method, r.n_seeds, r.n_plain, r.n_residual_base, r.n_failed) == (
        "paired", 3, 3, 3, 0)
    assert r.did == pytest.approx(1.2) and r.df == 2
    assert r.plain_delta == pytest.approx(3.7 / 3) and r.residual_delta == pytest.approx(0.1 / 3)
    assert r.ci_lo == pytest.approx(1.2 - Q2 * 0.2 / SQ3)
    assert r.ci_hi == pytest.approx(1.2 + Q2 * 0.2 / SQ3)
    assert r.p_value == pytest.approx(t2_p(6 * SQ3))


def test_interaction_welch_by_hand():
    r = ia.interaction(_frame_a(), "final_train_loss").set_index("depth").loc[4]
    # only seed 1 is usable in all four cells: independent means. plain 4: [1.5, 1.7]
    # (mean 1.6), plain 2: 1.1, residual 4: [1.0, 1.4] (1.2), residual 2: 1.0 ->
    # DiD = (1.6 - 1.1) - (1.2 - 1.0) = 0.3; se^2 = 0.02/2 + 0.01/3 + 0.08/2 + 0.01/3
    assert (r.method, r.n_seeds, r.n_plain, r.n_residual, r.n_failed, r.n_diverged) == (
        "welch", 0, 2, 2, 2, 1)
    est, lo, hi, df, p = welch_by_hand([([1.5, 1.7], 1), ([1.0, 1.2, 1.1], -1),
                                        ([1.0, 1.4], -1), ([0.9, 1.0, 1.1], 1)])
    # df = (0.17/3)^2 / (0.01^2 + 0.04^2 + 2 (0.01/3)^2 / 2) = 1.8766
    assert df == pytest.approx((0.17 / 3) ** 2 / (0.0001 + 0.0016 + 0.0001 / 9))
    assert (r.did, r.plain_delta, r.residual_delta) == pytest.approx((0.3, 0.5, 0.2))
    assert (r.ci_lo, r.ci_hi, r.df, r.p_value) == pytest.approx((lo, hi, df, p), rel=1e-9)
    assert est == pytest.approx(0.3)


def test_interaction_degenerate_frames():
    t = _frame_a()
    empty = ia.interaction(t[t["residual"]], "final_train_loss")     # one variant
    assert empty.empty and list(empty.columns) == list(ia.interaction(t, "final_train_loss"))
    assert ia.interaction(t[t["depth"] == 2], "final_train_loss").empty  # one depth
    # one usable value in a cell: estimate, no interval
    one = t[~((t["depth"] == 4) & (t["seed"] == 0))]
    r = ia.interaction(one, "final_train_loss").set_index("depth").loc[4]
    assert r.method == "welch" and r.n_plain == 1
    assert r.did == pytest.approx((1.7 - 1.1) - (1.2 - 1.0))
    assert math.isnan(r.ci_lo) and math.isnan(r.p_value) and math.isnan(r.df)
    # every residual run at depth 8 diverged: the row stays, NaN
    dead = t.copy()
    at = (dead["depth"] == 8) & dead["residual"]
    dead.loc[at, "status"], dead.loc[at, "final_train_loss"] = "diverged", NAN
    r = ia.interaction(dead, "final_train_loss").set_index("depth").loc[8]
    assert math.isnan(r.did) and (r.n_residual, r.n_diverged, r.n_failed) == (0, 3, 3)
    with pytest.raises(KeyError):
        ia.interaction(t, "nope")


def _frame_b():
    """Plain seeds 0-2, residual seeds 3-5: nothing pairs, Welch throughout."""
    vals = {(False, 2): [1, 2, 3], (False, 8): [4, 6, 8], (True, 2): [2, 3, 4],
            (True, 8): [3, 4, 5]}
    return pd.DataFrame([tr(d, r, s + 3 * r, float(v)) for (r, d), vs in vals.items()
                         for s, v in enumerate(vs)])


def test_factor_effects_welch_by_hand():
    f = ia.factor_effects(_frame_b(), "final_train_loss")
    assert list(f.columns[:16]) == ["family", "factor", "level", "baseline", "n_seeds",
                                    "main_effect", "main_ci_lo", "main_ci_hi", "main_p",
                                    "interaction", "int_ci_lo", "int_ci_hi", "int_p",
                                    "depth_lo", "depth_hi", "method"]
    r = f.iloc[0]
    assert (r.factor, r.level, r.baseline, r.method, r.n_seeds, r.n_pairs) == (
        "residual", "residual", "plain", "welch", 0, 2)
    # main: mean of (3 - 2) and (4 - 6) = -0.5, each cell weighted 1/2;
    # se^2 = (1/4)(1/3 + 1/3 + 4/3 + 1/3) = 7/12, df = (49/144) / (19/288) = 98/19
    est, lo, hi, df, p = welch_by_hand([([2, 3, 4], .5), ([1, 2, 3], -.5),
                                        ([3, 4, 5], .5), ([4, 6, 8], -.5)])
    assert (est, df) == pytest.approx((-0.5, 98 / 19))
    assert (r.main_effect, r.main_ci_lo, r.main_ci_hi, r.main_p, r.main_df) == \
        pytest.approx((est, lo, hi, p, df))
    # interaction: (6 - 2) - (4 - 3) = 3; se^2 = 4/3 + 1/3 + 1/3 + 1/3 = 7/3, df = 98/19
    est, lo, hi, df, p = welch_by_hand([([4, 6, 8], 1), ([1, 2, 3], -1), ([3, 4, 5], -1),
                                        ([2, 3, 4], 1)])
    assert (est, df) == pytest.approx((3.0, 98 / 19))
    assert (r.interaction, r.int_ci_lo, r.int_ci_hi, r.int_p, r.int_df) == \
        pytest.approx((est, lo, hi, p, df))
    assert (r.depth_lo, r.depth_hi, r.int_contexts) == (2, 8, 1)
    # the same number as the interaction table's row
    row = ia.interaction(_frame_b(), "final_train_loss").iloc[0]
    assert (row.method, row.did, row.p_value) == pytest.approx(("welch", 3.0, p))


def test_factor_effects_paired_by_hand():
    r = ia.factor_effects(_frame_a(), "final_train_loss").iloc[0]
    # residual - plain per pair: depth 2: -0.1, -0.2, 0.0; depth 4 (seed 1 only): -0.7;
    # depth 8: -1.1, -1.4, -1.4. Per seed: s0 (-0.1 - 1.1)/2, s1 (-0.2 - 0.7 - 1.4)/3,
    # s2 (0 - 1.4)/2.
    seeds = [-0.6, -2.3 / 3, -0.7]
    m, sd = np.mean(seeds), np.std(seeds, ddof=1)
    assert (r.method, r.n_seeds, r.n_pairs) == ("paired", 3, 3)
    assert r.main_effect == pytest.approx(m)
    assert r.main_ci_hi - m == pytest.approx(Q2 * sd / SQ3)
    assert r.main_p == pytest.approx(t2_p(m / (sd / SQ3)))
    # interaction between depth 2 and 8: the DiD 1.0, 1.2, 1.4 of the paired row
    assert (r.depth_lo, r.depth_hi) == (2, 8)
    assert r.interaction == pytest.approx(1.2) and r.int_p == pytest.approx(t2_p(6 * SQ3))


def _frame_c():
    """mlp, seeds 0-1, depths 2 and 8: plain and residual with branch scale one and zero
    (both residual cells against the one plain cell)."""
    vals = {(False, NA): ([1.0, 1.2], [2.0, 2.4]), (True, "one"): ([0.8, 1.0], [0.9, 1.1]),
            (True, "zero"): ([0.7, 0.9], [0.6, 1.0])}
    return pd.DataFrame([tr(d, r, s, v, norm="none", block="post", branch_scale=sc,
                            shortcut=NA)
                         for (r, sc), by_depth in vals.items()
                         for d, vs in zip((2, 8), by_depth) for s, v in enumerate(vs)])


def test_crossed_residual_cells_share_the_plain_cell():
    d = ia.interaction(_frame_c(), "final_train_loss")
    assert d["branch_scale"].tolist() == ["one", "zero"]
    one, zero = d.iloc[0], d.iloc[1]
    # plain delta 1.0, 1.2; one: 0.1, 0.1 -> DiD 0.9, 1.1: mean 1, sd 0.1 sqrt 2, t = 10
    assert one.did == pytest.approx(1.0) and one.p_value == pytest.approx(t1_p(10.0))
    # zero: -0.1, 0.1 -> DiD 1.1, 1.1: constant, zero-width interval, no p value
    assert (zero.did, zero.ci_lo, zero.ci_hi) == pytest.approx((1.1, 1.1, 1.1))
    assert math.isnan(zero.p_value)
    assert one.plain_delta == pytest.approx(zero.plain_delta)
    f = ia.factor_effects(_frame_c(), "final_train_loss").set_index("factor")
    assert f.index.tolist() == ["residual", "branch_scale"]
    res, scale = f.loc["residual"], f.loc["branch_scale"]
    # residual: per seed over 4 pairs: s0 (-0.2 - 1.1 - 0.3 - 1.4)/4 = -0.75, s1 -0.8
    # -> mean -0.775, sd 0.025 sqrt 2, t = -31; interaction per seed over the two
    # contexts: (0.9 + 1.1)/2 = 1.0, (1.1 + 1.1)/2 = 1.1 -> mean 1.05, t = 21
    assert (res.n_pairs, res.int_contexts) == (4, 2)
    assert res.main_effect == pytest.approx(-0.775) and res.main_p == pytest.approx(t1_p(31))
    assert res.interaction == pytest.approx(1.05) and res.int_p == pytest.approx(t1_p(21))
    # branch scale zero - one: depth 2 -0.1, -0.1, depth 8 -0.3, -0.1 -> seeds -0.2, -0.1,
    # t = -3; interaction [one(8) - one(2)] - [zero(8) - zero(2)] = 0.2, 0.0: t = 1
    assert (scale.level, scale.baseline, scale.method) == ("zero", "one", "paired")
    assert scale.main_effect == pytest.approx(-0.15) and scale.main_p == pytest.approx(t1_p(3))
    assert scale.interaction == pytest.approx(0.1) and scale.int_p == pytest.approx(0.5)


def test_factor_effects_one_depth():
    t = _frame_a()
    r = ia.factor_effects(t[t["depth"] == 2], "final_train_loss").iloc[0]
    assert r.method == "paired" and r.int_method == "none" and r.int_contexts == 0
    assert (r.depth_lo, r.depth_hi) == (2, 2) and math.isnan(r.interaction)
    assert r.main_effect == pytest.approx(-0.1)
    only = ia.factor_effects(t[t["residual"]], "final_train_loss").iloc[0]
    assert only.method == "none" and only.n_pairs == 0 and math.isnan(only.main_effect)
    assert pd.isna(only.depth_lo)


# --------------------------------------------------------------------------- properties

def _metrics(trials):
    return [m for m in ("final_train_loss", "final_test_error", "probe_loss")
            if {"final_test_error": "final_test_acc"}.get(m, m) in trials]


def _finite_or_nan(df, cols):
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce").astype(float).to_numpy()
        assert not np.isinf(v).any(), c


@given(results_frames())
def test_interaction_tables_never_raise_on_generated_frames(frames):
    t = frames["trials"]
    for m in _metrics(t):
        d = ia.interaction(t, m)
        _finite_or_nan(d, ["plain_delta", "residual_delta", "did", "ci_lo", "ci_hi", "df",
                           "p_value"])
        assert set(d["method"]) <= {"paired", "welch"}
        p = d["p_value"].dropna()
        assert ((p >= 0) & (p <= 1)).all()
        assert (d["n_seeds"] <= d[["n_plain", "n_residual"]].min(axis=1)).all()
        ok = d[np.isfinite(d["did"])]
        scale = ok[["did", "plain_delta", "residual_delta"]].abs().max(axis=1)
        gap = (ok["did"] - (ok["plain_delta"] - ok["residual_delta"])).abs()
        assert (gap <= 1e-9 * scale).all()  # did = plain_delta - residual_delta
        f = ia.factor_effects(t, m)
        _finite_or_nan(f, ["main_effect", "main_ci_lo", "main_ci_hi", "main_p", "interaction",
                           "int_ci_lo", "int_ci_hi", "int_p", "main_df", "int_df"])
        for c in ("main_p", "int_p"):
            p = f[c].dropna()
            assert ((p >= 0) & (p <= 1)).all()
