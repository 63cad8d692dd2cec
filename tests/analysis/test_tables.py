"""Exact values of the seed-article table and the summary, and the text renderers."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.formatting import escape_latex, fmt_ci, fmt_p
from analysis.tables import (GRAD_TABLE_FORMAT, grad_table, network_order, stat_rows, to_latex,
                             to_markdown, write_table, degradation_table,
                             degradation_index_table, snapshot_rows)
from analysis.tables_contrasts import contrast_table
from analysis import contrasts, multiplicity
from ablations import factors, levels
from analysis.pvalues import holm
from tests.analysis.test_contrasts import crossed

# (variant, seed) -> mean |grad| of layers.0, layers.1, fc (network order).
GRADS = {
    (False, 0): [1e-4, 4e-4, 1e-3],
    (False, 1): [3e-4, 8e-4, 2e-3],
    (True, 0): [2e-4, 4e-4, 1e-3],
    (True, 1): [9e-4, 1.6e-3, 6e-3],
}
NAMES = ["layers.0.weight", "layers.1.weight", "fc.weight"]  # alphabetical != network order


def _layers(grads=GRADS, names=NAMES, model="mlp", depth=5) -> pd.DataFrame:
    rows = []
    for (residual, seed), values in grads.items():
        base = dict(trial_id=f"{model}-{depth}-{residual}-s{seed}", family="mlp", model=model,
                    depth=depth, residual=residual, seed=seed, phase="init", step=0, epoch=0)
        for i, (name, v) in enumerate(zip(names, values)):
            rows.append({**base, "layer": name, "layer_index": i, "stat": "grad_mean_abs", "value": v})
            # Rows the table must ignore: another stat, an activation, a later training step.
            rows.append({**base, "layer": name, "layer_index": i, "stat": "grad_norm", "value": 99.0})
            rows.append({**base, "layer": f"tap{i}", "layer_index": i, "stat": "act_mean_abs",
                         "value": 7.0})
            rows.append({**base, "phase": "train", "step": 10, "layer": name, "layer_index": i,
                         "stat": "grad_mean_abs", "value": 5.0})
    return pd.DataFrame(rows)


def test_grad_table_medians_and_paired_ratio():
    both = pd.concat([_layers(), _layers(model="mlp", depth=8)], ignore_index=True)
    t = grad_table(both, "mlp", 5)
    assert list(t.columns) == ["layer", "plain", "residual", "ratio"]
    assert list(t["layer"]) == NAMES  # network order, not alphabetical
    assert t["plain"].tolist() == pytest.approx([2e-4, 6e-4, 1.5e-3])
    assert t["residual"].tolist() == pytest.approx([5.5e-4, 1e-3, 3.5e-3])
    # Per-seed ratios: layers.0 (2, 3), layers.1 (1, 2), fc (1, 3). The ratio of
    # the medians would be 2.75 for layers.0: the table pairs by seed instead.
    assert t["ratio"].tolist() == pytest.approx([2.5, 1.5, 2.0])


def test_grad_table_train_phase_uses_last_step():
    t = grad_table(_layers(), "mlp", 5, phase="train")
    assert t["plain"].tolist() == pytest.approx([5.0] * 3)
    assert t["ratio"].tolist() == pytest.approx([1.0] * 3)


def test_grad_table_skips_nan_keeps_inf():
    grads = {**GRADS, (False, 1): [np.nan, 8e-4, 2e-3], (True, 1): [9e-4, np.inf, 6e-3]}
    t = grad_table(_layers(grads), "mlp", 5).set_index("layer")
    assert t.loc["layers.0.weight", "plain"] == pytest.approx(1e-4)   # NaN seed skipped
    assert t.loc["layers.0.weight", "ratio"] == pytest.approx(2.0)    # only seed 0 pairs
    assert t.loc["layers.1.weight", "residual"] == math.inf           # diverged seed shows
    assert t.loc["layers.1.weight", "ratio"] == math.inf


def test_grad_table_missing_variant_raises():
    plain_only = {k: v for k, v in GRADS.items() if not k[0]}
    with pytest.raises(ValueError, match="residual"):
        grad_table(_layers(plain_only), "mlp", 5)
    with pytest.raises(ValueError, match="plain"):
        grad_table(_layers(), "resnet", 5)


def test_projection_shortcut_gets_its_own_row():
    res_names = ["a.weight", "b.weight", "short.weight", "c.weight"]
    rows = pd.concat([
        _layers({(False, 0): [1.0, 2.0, 4.0]}, names=["a.weight", "b.weight", "c.weight"]),
        _layers({(True, 0): [1.0, 2.0, 8.0, 4.0]}, names=res_names)], ignore_index=True)
    grads = stat_rows(rows, "grad_mean_abs")
    assert network_order(grads) == res_names
    t = grad_table(rows, "mlp", 5)
    assert list(t["layer"]) == res_names
    assert t["ratio"].tolist()[:2] == [1.0, 1.0] and t["ratio"].tolist()[3] == 1.0
    assert np.isnan(t.loc[2, "plain"]) and t.loc[2, "residual"] == 8.0


def test_markdown_structure_and_numbers():
    md = to_markdown(grad_table(_layers(), "mlp", 5), GRAD_TABLE_FORMAT)
    lines = md.strip().split("\n")
    assert lines[0] == "| layer | plain | residual | ratio |"
    assert lines[1] == "|:---|---:|---:|---:|"
    assert lines[2] == "| layers.0.weight | 2.00e-04 | 5.50e-04 | 2.50 |"
    assert len(lines) == 2 + 3
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [4.8125e-5, np.nan], "r": [1.2345, 123.45]})
    lines = to_markdown(df).strip().split("\n")
    assert lines[2] == "| a\\|b | 4.81e-05 | 1.23 |"
    assert lines[3] == "| c | — | 123 |"


def test_latex_booktabs_structure():
    df = pd.DataFrame({"layer": ["layers.0_w"], "plain": [4.8125e-5], "ratio": [np.inf]})
    tex = to_latex(df, "Caption $x$.", "tab:grad")
    lines = tex.strip().split("\n")
    assert lines[0] == r"\begin{table}[t]" and lines[-1] == r"\end{table}"
    assert r"\caption{Caption $x$.}" in tex and r"\label{tab:grad}" in tex
    assert r"\begin{tabular}{lrr}" in tex
    order = [tex.index(k) for k in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert order == sorted(order)
    assert r"    layer & plain & ratio \\" in lines
    assert r"    layers.0\_w & $4.81\times10^{-5}$ & $\infty$ \\" in lines


def test_escape_latex():
    assert escape_latex("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"


def _trials() -> pd.DataFrame:
    rows = []
    for depth in (5, 8):
        for residual in (False, True):
            for seed in (0, 1):
                diverged = depth == 8 and not residual and seed == 1
                rows.append(dict(trial_id=f"t{depth}{residual}{seed}", family="mlp", model="mlp",
                                 depth=depth, residual=residual, seed=seed, params=100 * depth,
                                 status="diverged" if diverged else "completed",
                                 final_test_acc=0.1 if diverged else 0.8 + 0.1 * seed,
                                 final_train_loss=np.inf if diverged else 0.5))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter


def test_degradation_table_counts_and_intervals():
    s = degradation_table(_trials())
    assert list(s.columns) == ["family", "depth", "variant", "params", "n", "train loss",
                               "test acc (%)"]
    assert list(s[["depth", "variant"]].itertuples(index=False, name=None)) == [
        (5, "plain"), (5, "residual"), (8, "plain"), (8, "residual")]
    assert s["n"].tolist() == ["2", "2", "1/2 (1 diverged)", "2"]
    assert s["params"].tolist() == [500, 500, 800, 800]
    # mean 85.0; t(0.975, 1) = 12.7062; sd of (80, 90) = 7.0711; half width 12.7062 * 5 = 63.5
    assert s["test acc (%)"].tolist() == ["85.0 ± 63.5", "85.0 ± 63.5", "80.0", "85.0 ± 63.5"]
    assert s["train loss"].tolist() == ["0.500 ± 0.000"] * 2 + ["0.500", "0.500 ± 0.000"]
    assert "| mlp | 8 | plain | 800 | 1/2 (1 diverged) | 0.500 | 80.0 |" in to_markdown(s)
    assert r"85.0 $\pm$ 63.5" in to_latex(s, "c", "l")


def test_degradation_table_without_train_metrics():
    s = degradation_table(_trials().drop(columns=["final_test_acc", "final_train_loss"]))
    assert list(s.columns) == ["family", "depth", "variant", "params", "n"]


def test_contrast_table_exact():
    t = _trials()
    res5 = (t.depth == 5) & t.residual
    t.loc[res5, "final_test_acc"] = t.loc[res5, "seed"].map({0: 0.95, 1: 0.9})
    s = contrast_table(t)
    # the depth x residual interactions (5 -> 8) come first, then the contrasts
    assert s["factor"].tolist()[:2] == ["depth x residual"] * 2
    row = s[(s.depth == 5) & (s.metric == "test acc (pp)")].iloc[0]
    # per-seed differences (pp): seed 0: 95 - 80 = 15, seed 1: 90 - 90 = 0; mean 7.5; two
    # seeds: the mean only, no t interval (it would be 7.5 ± 95.3) and no p value
    assert row["difference"] == "7.5"
    assert row["p (t, Holm)"] == row["p (Wilcoxon, Holm)"] == "n/a (2 seeds: means only)"
    assert (row["pairs"], row["unpaired"]) == (2, 0)
    deep = s[(s.depth == 8) & (s.metric == "test acc (pp)")].iloc[0]
    assert (deep["pairs"], deep["unpaired"], deep["p (t, Holm)"]) == (
        1, 1, "n/a (1 seed: means only)")
    assert deep["difference"] == "0.0"  # seed 0 only: 0.8 - 0.8


def test_degradation_index_table_exact():
    s = degradation_index_table(_trials())
    plain8 = s[(s.variant == "plain") & (s.depth == 8)].iloc[0]
    # plain: depth 8 has one completed run (0.8, error 20%); base depth 5 errors 20%, 10%.
    assert plain8["vs depth"] == 5 and (plain8["n"], plain8["n base"]) == ("1/2 (1 diverged)", 2)
    assert plain8["change in test error (pp)"] == "5.0"  # 20 - mean(20, 10); no interval, n=1
    assert s[(s.variant == "plain") & (s.depth == 5)].iloc[0]["change in train loss"] == "0 (base)"


def test_fmt_ci_and_p():
    assert fmt_ci(0.5, 0.4, 0.6, 3) == "0.500 ± 0.100"
    assert fmt_ci(0.5, float("nan"), float("nan"), 1, 100) == "50.0"
    assert fmt_ci(float("nan"), 0, 1, 1) == "—"
    assert (fmt_p(0.0004), fmt_p(0.0312), fmt_p(float("nan"))) == ("< 0.001", "0.031", "—")


def test_fmt_ci_switches_to_scientific_only_where_fixed_point_misleads():
    # A diverging loss: 31 digits in fixed point; both numbers switch together.
    assert fmt_ci(1e30, 0.0, 2e30, 3) == "1.00e+30 ± 1.00e+30"
    assert fmt_ci(0.3, -1e7, 1e7, 3) == "3.00e-01 ± 1.00e+07"
    assert fmt_ci(999_999.0, 999_998.0, 1_000_000.0, 3) == "999999.000 ± 1.000"
    # A mean that fixed point rounds to zero: scientific when asked (summary means) ...
    assert fmt_ci(4e-5, 3e-5, 5e-5, 3, small="sci") == "4.00e-05 ± 1.00e-05"
    assert fmt_ci(0.0, 0.0, 0.0, 3, small="sci") == "0.000 ± 0.000"  # a true zero stays
    assert fmt_ci(0.0006, 0.0005, 0.0007, 3, small="sci") == "0.001 ± 0.000"
    # ... while a difference of 1e-5 pp stays "no difference".
    assert fmt_ci(1e-7, 0.0, 2e-7, 1, 100) == "0.0 ± 0.0"


def test_snapshot_rows_init_and_late():
    layers = _layers()
    init = snapshot_rows(layers, "grad_mean_abs", "init")
    assert set(init["phase"]) == {"init"} and len(init) == 12
    late = snapshot_rows(layers, "grad_mean_abs", "late")
    assert set(late["step"]) == {10} and set(late["value"]) == {5.0}
    train_only = layers[layers.phase == "train"]
    first = snapshot_rows(pd.concat([train_only, train_only.assign(step=0, value=1.0)]),
                          "grad_mean_abs", "init")
    assert set(first["step"]) == {0} and set(first["value"]) == {1.0}
    with pytest.raises(ValueError, match="init, late"):
        snapshot_rows(layers, "grad_mean_abs", "middle")


def test_write_table_is_atomic_and_complete(tmp_path):
    paths = write_table(grad_table(_layers(), "mlp", 5), tmp_path / "t" / "grad_mlp-5",
                        "cap", "tab:x", GRAD_TABLE_FORMAT)
    assert paths == [str(tmp_path / "t" / "grad_mlp-5.md"), str(tmp_path / "t" / "grad_mlp-5.tex")]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["grad_mlp-5.md", "grad_mlp-5.tex"]
    assert (tmp_path / "t" / "grad_mlp-5.tex").read_text().count(r"\\") == 1 + 3


# --------------------------------------------------------------------------- factor columns

RESIDUAL_ONLY_CONTRASTS = ["family", "depth", "factor", "contrast", "metric", "difference",
                           "pairs", "unpaired", "p (t, Holm)", "p (Wilcoxon, Holm)",
                           "q (t, BH)"]


def test_residual_only_tables_keep_their_columns_with_factor_columns_at_defaults():
    old = _trials()
    new = levels.with_levels(old)  # today's rows: norm none, block post, branch_scale one/n/a
    assert set(levels.present(new)) == set(factors.names())  # every factor, at its default
    assert list(contrast_table(old).columns) == RESIDUAL_ONLY_CONTRASTS
    assert list(degradation_table(old).columns) == ["family", "depth", "variant", "params", "n",
                                                    "train loss", "test acc (%)"]
    for table in (degradation_table, contrast_table, degradation_index_table):
        pd.testing.assert_frame_equal(table(new), table(old))
    # two seeds (one at depth 8): every row gives its mean only, interactions first
    res5 = (old.depth == 5) & old.residual
    old.loc[res5, "final_test_acc"] = old.loc[res5, "seed"].map({0: 0.95, 1: 0.9})
    assert contrast_table(old)["p (t, Holm)"].tolist() == [
        "n/a (1 seed: means only)"] * 2 + ["n/a (2 seeds: means only)"] * 2 + [
        "n/a (1 seed: means only)"] * 2


def test_multi_factor_tables_name_factors_levels_and_within():
    t = crossed()
    s = degradation_table(t)
    # block and shortcut are one level (or n/a) throughout: not shown
    assert list(s.columns) == ["family", "depth", "variant", "norm", "branch_scale", "params",
                               "n", "train loss", "test acc (%)"]
    assert s[["variant", "norm", "branch_scale"]].values.tolist()[:3] == [
        ["plain", "batch", "n/a"], ["plain", "none", "n/a"], ["residual", "batch", "one"]]
    c = contrast_table(t)
    assert list(c.columns) == ["family", "depth", "factor", "contrast", "within", "metric",
                               "difference", "pairs", "unpaired", "p (t, Holm)",
                               "p (Wilcoxon, Holm)", "q (t, BH)"]
    assert len(c) == 2 * 9  # 4 residual + 3 norm + 2 branch_scale contrasts, two metrics
    first = c.iloc[0]
    assert (first["factor"], first["contrast"], first["within"], first["metric"]) == (
        "residual", "residual - plain", "norm=batch, branch_scale=one", "test acc (pp)")
    # diffs 10, 20, 0 pp: 10 +- 4.30265 * 10 / sqrt 3 = 24.8; t = sqrt 3 on 2 df: p = 0.2254
    assert (first["difference"], first["pairs"]) == ("10.0 ± 24.8", 3)
    d = contrasts.contrasts(t, "final_test_acc")
    assert d["p_value"].iloc[0] == pytest.approx(0.2254, abs=1e-4)
    # every p is Holm over the report's family: both metrics' paired t and Wilcoxon p,
    # and (one depth: no interactions) each factor's main effect on train loss and error
    fam = multiplicity.report_family(t)
    assert (fam["kind"] == "contrast").sum() == 2 * 2 * 9
    assert (fam["kind"] == "factor effect").sum() == 2 * 2 * 3
    acc = c[c["metric"] == "test acc (pp)"]
    assert acc["p (t, Holm)"].tolist() == [
        contrasts.means_only_text(r["n_pairs"]) if r["n_pairs"] < 3 else
        fmt_p(multiplicity.family_lookup(fam, multiplicity.contrast_key(r, "final_test_acc"))[0])
        for _, r in d.iterrows()]
    for which in ("primary", "secondary"):
        three = fam[(fam["n"] >= 3) & (fam["family"] == which)]
        got = fam.loc[fam["family"] == which, "p_holm"].dropna().tolist()
        assert got == pytest.approx(
            holm(three["p_value"])[np.isfinite(three["p_value"])].tolist())
    norm = acc[acc["factor"] == "norm"]
    assert norm[["contrast", "within"]].values.tolist() == [
        ["none - batch", "plain"], ["none - batch", "residual, branch_scale=one"],
        ["none - batch", "residual, branch_scale=zero"]]
    scale = acc[acc["factor"] == "branch_scale"]
    assert scale[["contrast", "within", "difference"]].values.tolist() == [
        ["zero - one", "residual, norm=batch", "6.7 ± 37.9"],
        ["zero - one", "residual, norm=none", "40.0 ± 12.4"]]   # 45, 40, 35 pp
    # a plain cell without a residual counterpart keeps its row
    lone = contrast_table(crossed({(False, "batch", "n/a"): [0.5, 0.6],
                                    (True, "none", "one"): [0.2, 0.3],
                                    (True, "none", "zero"): [0.4, 0.3]}))
    assert "batch only" in set(lone["contrast"])


def test_multi_factor_degradation_index_table():
    t = pd.concat([crossed(), crossed(depth=8)], ignore_index=True)
    s = degradation_index_table(t)
    assert list(s.columns[:5]) == ["family", "variant", "norm", "branch_scale", "depth"]
    assert len(s) == 12  # six combinations of levels x two depths, each vs its own depth 4
    assert set(s[s["depth"] == 4]["change in test error (pp)"]) == {"0 (base)"}
