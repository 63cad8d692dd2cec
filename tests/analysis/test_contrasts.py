"""Exact values of analysis.contrasts and ablations.levels on hand-built multi-factor frames.

Every expected number is worked out in the comments; two-sided p values of the paired t
test use the closed forms of Student t with 1 df (Cauchy) and 2 df, not the code under
test.
"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import contrasts
from ablations import levels
from analysis import pvalues
from analysis.pvalues import benjamini_hochberg, holm
from analysis.stats import cell_keys, cell_summary, degradation_index, status_counts

NA = "n/a"
Q2 = 4.302652729749464  # t(0.975, 2)


def t2_p(t):
    """Two-sided p of t with 2 df: 1 - |t| / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def t1_p(t):
    """Two-sided p of t with 1 df (Cauchy): 1 - (2 / pi) atan|t|."""
    return 1 - 2 / math.pi * math.atan(abs(t))


# --------------------------------------------------------------------------- adjustment

def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running
    # max 0.06; back in input order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN neither counted (m = 3) nor adjusted: 0.01*3, 0.2*2, max(0.5*1, 0.4)
    assert holm([0.5, math.nan, 0.2, 0.01]) == pytest.approx([0.5, math.nan, 0.4, 0.03],
                                                             nan_ok=True)
    assert holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0 and math.isnan(holm([math.nan])[0])
    assert holm([0.03]).tolist() == [0.03]  # one test: nothing to adjust


def test_benjamini_hochberg_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> m p / rank = 0.02, 0.02, 0.04, 0.04; running min
    # from the top keeps them.
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.02, 0.04, 0.04, 0.02])
    # 0.01*3/1 = 0.03, 0.02*3/2 = 0.03, 0.9*3/3 = 0.9
    assert benjamini_hochberg([0.9, 0.02, 0.01]) == pytest.approx([0.9, 0.03, 0.03])
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    assert benjamini_hochberg(p) == pytest.approx(sps.false_discovery_control(p))
    assert pvalues.adjust(p, "bh") == pytest.approx(benjamini_hochberg(p))
    with pytest.raises(ValueError, match="valid: holm, bh"):
        pvalues.adjust(p, "bonferroni")


# --------------------------------------------------------------------------- a crossed sweep

# mlp depth 4, seeds 0-2: plain x norm (batch, none) and residual x norm x branch_scale
# (one, zero). Test accuracies per seed; None = diverged.
ACC = {
    (False, "batch", NA): [0.50, 0.60, 0.70],
    (False, "none", NA): [0.10, 0.10, None],
    (True, "batch", "one"): [0.60, 0.80, 0.70],
    (True, "batch", "zero"): [0.70, 0.70, 0.90],
    (True, "none", "one"): [0.20, 0.30, 0.40],
    (True, "none", "zero"): [0.65, 0.70, 0.75],
}


def _row(residual, norm, scale, seed, acc, family="mlp", depth=4):
    levels_ = {"residual": "residual" if residual else "plain", "norm": norm,
               "branch_scale": scale}
    tid = "-".join([f"{family}-{depth}", *(f"{k}={v}" for k, v in levels_.items())]) + f"-s{seed}"
    return dict(trial_id=tid, family=family, model=family, depth=depth, residual=residual,
                norm=norm, block="post", branch_scale=scale,
                shortcut=NA if family == "mlp" or not residual else "projection", seed=seed,
                status="diverged" if acc is None else "completed", params=10,
                final_test_acc=math.nan if acc is None else acc,
                final_train_loss=math.nan if acc is None else 1.0 - acc)


def crossed(acc=ACC, **kw):
    return pd.DataFrame([_row(*cell, seed, a, **kw) for cell, accs in acc.items()
                         for seed, a in enumerate(accs)])


def test_cell_keys_are_the_factors_present():
    t = crossed()
    assert cell_keys(t) == ["family", "model", "depth", "residual", "norm", "block",
                            "branch_scale", "shortcut"]
    old = t[t["norm"] == "batch"].drop(columns=["norm", "block", "branch_scale", "shortcut"])
    assert cell_keys(old) == ["family", "model", "depth", "residual"]  # today's keys
    s = cell_summary(t, metrics=["final_test_acc"])
    # plain before residual, batch before none, one before zero
    assert list(zip(s["residual"], s["norm"], s["branch_scale"])) == [
        (False, "batch", NA), (False, "none", NA), (True, "batch", "one"),
        (True, "batch", "zero"), (True, "none", "one"), (True, "none", "zero")]
    assert s["n_diverged"].tolist() == [0, 1, 0, 0, 0, 0]
    assert s["final_test_acc_mean"].iloc[3] == pytest.approx(0.7667, abs=1e-4)
    c = status_counts(t)
    assert c["n_planned"].tolist() == [3] * 6 + [18]
    assert c.iloc[-1][["norm", "branch_scale"]].tolist() == ["", ""]


def test_residual_levels_share_one_plain_cell():
    d = contrasts.contrasts(crossed(), "final_test_acc")
    r = d[d["factor"] == "residual"].set_index(["norm", "branch_scale"])
    assert r.index.tolist() == [("batch", "one"), ("batch", "zero"), ("none", "one"),
                                ("none", "zero")]
    assert set(r["level"]) == {"residual"} and set(r["baseline"]) == {"plain"}
    # batch, one: residual - plain(batch) = 0.1, 0.2, 0.0: mean 0.1, sd 0.1, t = sqrt 3
    one = r.loc[("batch", "one")]
    assert (one.n_seeds, one.n_pairs, one.n_unpaired) == (3, 3, 0)
    assert one.mean_diff == pytest.approx(0.1)
    assert one.ci_hi - one.mean_diff == pytest.approx(Q2 * 0.1 / math.sqrt(3))
    assert one.p_value == pytest.approx(t2_p(math.sqrt(3)))          # 0.2254
    # batch, zero: against the same plain cell: 0.2, 0.1, 0.2: mean 1/6, sd 0.0577, t = 5
    zero = r.loc[("batch", "zero")]
    assert zero.mean_diff == pytest.approx(1 / 6)
    assert zero.p_value == pytest.approx(t2_p(5.0))                   # 0.0377
    # none: plain(none) seed 2 diverged -> 2 pairs, 1 unpaired, t with 1 df
    n_one = r.loc[("none", "one")]                                    # 0.1, 0.2: t = 3
    assert (n_one.n_pairs, n_one.n_unpaired) == (2, 1)
    assert n_one.mean_diff == pytest.approx(0.15) and n_one.p_value == pytest.approx(t1_p(3.0))
    n_zero = r.loc[("none", "zero")]                                  # 0.55, 0.6: t = 23
    assert n_zero.mean_diff == pytest.approx(0.575) and n_zero.p_value == pytest.approx(t1_p(23.0))
    # paired_differences is the residual part: the residual cell's levels after depth
    p = contrasts.paired_differences(crossed(), "final_test_acc")
    assert list(p.columns[:7]) == ["family", "model", "depth", "norm", "block",
                                   "branch_scale", "shortcut"]
    assert p["mean_diff"].tolist() == pytest.approx(r["mean_diff"].tolist())


def test_other_factors_within_equal_levels_of_the_rest():
    d = contrasts.contrasts(crossed(), "final_test_acc")
    assert d["factor"].tolist() == ["residual"] * 4 + ["norm"] * 3 + ["branch_scale"] * 2
    norm = d[d["factor"] == "norm"]
    assert set(norm["level"]) == {"none"} and set(norm["baseline"]) == {"batch"}
    assert list(zip(norm["residual"], norm["branch_scale"])) == [(False, NA), (True, "one"),
                                                                  (True, "zero")]
    plain, res_one, res_zero = (norm.iloc[i] for i in range(3))
    # plain: none - batch = -0.4, -0.5 (seed 2 diverged under none)
    assert (plain.n_pairs, plain.n_unpaired) == (2, 1)
    assert plain.mean_diff == pytest.approx(-0.45) and plain.p_value == pytest.approx(t1_p(9.0))
    # residual, one: -0.4, -0.5, -0.3: mean -0.4, sd 0.1, t = -4 sqrt 3
    assert res_one.mean_diff == pytest.approx(-0.4)
    assert res_one.p_value == pytest.approx(t2_p(4 * math.sqrt(3)))
    assert res_zero.mean_diff == pytest.approx(-0.2 / 3)               # -0.05, 0, -0.15
    scale = d[d["factor"] == "branch_scale"]
    assert set(scale["level"]) == {"zero"} and set(scale["baseline"]) == {"one"}
    assert scale["norm"].tolist() == ["batch", "none"]
    # none: zero - one = 0.45, 0.4, 0.35: mean 0.4, sd 0.05, t = 8 sqrt 3
    assert scale.iloc[1].mean_diff == pytest.approx(0.4)
    assert scale.iloc[1].p_value == pytest.approx(t2_p(8 * math.sqrt(3)))
    # n/a rows (plain's branch scale, mlp's shortcut) take no part
    assert "shortcut" not in set(d["factor"]) and "block" not in set(d["factor"])
    # Holm over the nine p values of this frame
    assert d["p_adjusted"].tolist() == pytest.approx(holm(d["p_value"]).tolist())
    smallest = d["p_value"].idxmin()
    assert d.loc[smallest, "p_adjusted"] == pytest.approx(9 * d.loc[smallest, "p_value"])


def test_unmatched_cells_keep_a_row():
    acc = {(False, "batch", NA): [0.5, 0.6], (True, "none", "one"): [0.2, 0.3]}
    d = contrasts.contrasts(crossed(acc), "final_test_acc", factors=["residual"])
    # the residual cell (norm none) has no plain(none); the plain(batch) cell has no
    # residual(batch): one row each, nothing paired, every seed unpaired
    assert d[["norm", "n_pairs", "n_unpaired"]].values.tolist() == [["batch", 0, 2],
                                                                     ["none", 0, 2]]
    assert pd.isna(d["level"].iloc[0]) and d["level"].iloc[1] == "residual"
    assert d["mean_diff"].isna().all() and d["p_adjusted"].isna().all()


def test_reference_without_the_baseline_and_per_family():
    # norm layer and none only: layer (first in registry order) is the reference
    acc = {(True, "layer", "one"): [0.5, 0.6, 0.9], (True, "none", "one"): [0.4, 0.4, 0.6]}
    d = contrasts.contrasts(crossed(acc), "final_test_acc")
    norm = d[d["factor"] == "norm"].iloc[0]
    assert (norm.level, norm.baseline) == ("none", "layer")
    assert norm.mean_diff == pytest.approx(-0.2)                      # -0.1, -0.2, -0.3
    # mlp at its default norm none beside resnet at batch: norm is not a contrast
    mixed = pd.concat([crossed({(True, "none", "one"): [0.5, 0.6]}),
                       crossed({(True, "batch", "one"): [0.5, 0.6]}, family="resnet")])
    assert levels.varying(mixed) == []
    assert contrasts.contrasted_factors(mixed) == ["residual"]
    assert set(contrasts.contrasts(mixed, "final_test_acc")["factor"]) == {"residual"}


def test_duplicate_seed_in_a_cell_is_an_error():
    t = crossed()
    with pytest.raises(ValueError, match="more than one trial per"):
        contrasts.contrasts(pd.concat([t, t.iloc[[0]]]), "final_test_acc")


def test_degradation_index_per_combination_of_levels():
    rows = [_row(True, norm, "one", s, a, depth=d) for norm, d, accs in
            (("batch", 4, [0.8, 0.9]), ("batch", 8, [0.7, 0.8]),
             ("none", 4, [0.6, 0.6]), ("none", 8, [0.2, 0.4]))
            for s, a in enumerate(accs)]
    d = degradation_index(pd.DataFrame(rows), "final_test_error")
    assert d[["norm", "depth", "base_depth"]].values.tolist() == [
        ["batch", 4, 4], ["batch", 8, 4], ["none", 4, 4], ["none", 8, 4]]
    # error batch: 0.25 vs 0.15 -> +0.1; none: 0.7 vs 0.4 -> +0.3 (each vs its own base)
    assert d["delta"].tolist() == pytest.approx([0.0, 0.1, 0.0, 0.3])


# --------------------------------------------------------------------------- levels

def test_with_levels_fills_old_rows_with_the_family_default():
    old = pd.DataFrame({"family": ["mlp", "resnet", "resnet"], "model": ["mlp", "resnet", "r"],
                        "residual": [True, False, True]})
    filled = levels.with_levels(old)
    assert filled["norm"].tolist() == ["none", "batch", "batch"]
    assert filled["block"].tolist() == ["post"] * 3
    assert filled["branch_scale"].tolist() == ["one", NA, "one"]      # plain: n/a
    assert filled["shortcut"].tolist() == [NA, NA, "projection"]      # mlp: n/a
    mixed = pd.concat([old, pd.DataFrame({"family": ["mlp"], "model": ["mlp"],
                                          "residual": [True], "norm": ["layer"]})],
                      ignore_index=True)
    assert levels.with_levels(mixed, ["norm"])["norm"].tolist() == ["none", "batch", "batch",
                                                                      "layer"]
    assert levels.levels(mixed, "norm") == ["batch", "layer", "none"]  # old rows: defaults
    assert levels.levels(mixed[mixed["family"] == "mlp"], "norm") == ["layer", "none"]
    assert levels.varying(mixed) == ["residual", "norm"]


def test_rank_and_describe():
    assert sorted(["zero", NA, "one", "invsqrt"], key=lambda v: levels.rank("branch_scale", v)) \
        == ["one", "invsqrt", "zero", NA]
    assert levels.rank("residual", False) < levels.rank("residual", True)
    row = {"residual": False, "norm": "none", "branch_scale": NA}
    assert levels.describe(row, ["residual", "norm", "branch_scale"]) == "plain, norm=none"
    assert levels.describe(row, ["norm"], sep=" ") == "norm=none"
    assert levels.level_of("residual", np.bool_(True)) == "residual"
    assert levels.level_of("norm", None) == NA
