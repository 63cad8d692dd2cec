"""Exact values of the seed-article table and the summary, and the text renderers."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.tables import (GRAD_TABLE_FORMAT, escape_latex, grad_table, network_order,
                             stat_rows, summary_table, to_latex, to_markdown, write_table)

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


def test_summary_table_counts_and_means():
    s = summary_table(_trials())
    assert list(s[["depth", "variant"]].itertuples(index=False, name=None)) == [
        (5, "plain"), (5, "residual"), (8, "plain"), (8, "residual")]
    assert s["n"].tolist() == [2, 2, 2, 2]
    assert s["completed"].tolist() == [2, 2, 1, 2]
    assert s["diverged"].tolist() == [0, 0, 1, 0]
    assert s["error"].tolist() == [0, 0, 0, 0]
    assert s["params"].tolist() == [500, 500, 800, 800]
    assert s["final_test_acc_mean"].tolist() == pytest.approx([0.85, 0.85, 0.8, 0.85])
    # t(0.975, 1) = 12.706; std of (0.8, 0.9) = 0.1/sqrt(2); half width = 12.706 * 0.05.
    assert s.loc[0, "final_test_acc_ci95"] == pytest.approx(12.706 * 0.05)
    assert np.isnan(s.loc[2, "final_test_acc_ci95"])  # one completed trial: no interval
    assert s["final_train_loss_mean"].tolist() == pytest.approx([0.5] * 4)


def test_summary_table_without_train_metrics():
    s = summary_table(_trials().drop(columns=["final_test_acc", "final_train_loss"]))
    assert list(s.columns) == ["model", "depth", "variant", "params", "n", "completed",
                               "diverged", "error"]
    assert "| mlp | 8 | plain | 800 | 2 | 1 | 1 | 0 |" in to_markdown(s)


def test_write_table_is_atomic_and_complete(tmp_path):
    paths = write_table(grad_table(_layers(), "mlp", 5), tmp_path / "t" / "grad_mlp-5",
                        "cap", "tab:x", GRAD_TABLE_FORMAT)
    assert paths == [str(tmp_path / "t" / "grad_mlp-5.md"), str(tmp_path / "t" / "grad_mlp-5.tex")]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["grad_mlp-5.md", "grad_mlp-5.tex"]
    assert (tmp_path / "t" / "grad_mlp-5.tex").read_text().count(r"\\") == 1 + 3
