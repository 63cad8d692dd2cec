"""The findings that explain: mechanisms measured at init, the levels that avoided a
failure, the warmup suggestion; on hand-built frames and a results folder."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import findings_training, report

NA = "n/a"
BLOCKS = 15  # resnet-32: 3 stages x 5 blocks
SEEDS = (0, 1)


def _trial(residual, scale, seed, status, acc=math.nan, loss=math.nan, depth=32):
    lv = "residual" if residual else "plain"
    tid = f"resnet-{depth}-{lv}-norm=none" + (f"-scale={scale}" if scale not in ("one", NA)
                                              else "") + f"-s{seed}"
    return dict(trial_id=tid, family="resnet", model="resnet", depth=depth, residual=residual,
                norm="none", block="post", branch_scale=scale,
                shortcut="projection" if residual else NA, seed=seed, status=status,
                params=470_000, final_test_acc=acc, final_train_loss=loss)


# (residual, branch_scale) -> (status, final test acc, final train loss, act_std growth of
# the blocks at init, first-epoch train loss)
CELLS = {
    (False, NA): ("diverged", math.nan, math.nan, 1900.0, math.inf),
    (True, "one"): ("completed", 0.10, 2.302, 30.0, 5.0),        # stuck at chance
    (True, "zero"): ("completed", 0.60, 1.00, 1.0, 2.0),         # trains
}


def _taps(growth):
    """act_std of stem, 15 blocks growing geometrically by ``growth`` overall, and fc."""
    blocks = np.geomspace(1.0, growth, BLOCKS) if growth != 1.0 else np.ones(BLOCKS)
    names = ["stem"] + [f"layer{s}.{j}" for s in (1, 2, 3) for j in range(5)] + ["fc"]
    return list(zip(names, [0.5, *blocks, 7.0]))


def folder_frames(cells=CELLS, depth=32):
    trials, layers, epochs = [], [], []
    for (residual, scale), (status, acc, loss, growth, first) in cells.items():
        for seed in SEEDS:
            row = _trial(residual, scale, seed, status, acc, loss, depth)
            trials.append(row)
            keys = {k: row[k] for k in ("trial_id", "family", "model", "depth", "residual",
                                        "norm", "block", "branch_scale", "shortcut", "seed")}
            # the first training sample (step 0) is "init"; a later one must be ignored
            for step, g in ((0, growth), (30, 1.0)):
                for i, (name, v) in enumerate(_taps(g)):
                    layers.append({**keys, "phase": "train", "step": step, "epoch": 1,
                                   "layer": name, "layer_index": i, "stat": "act_std",
                                   "value": v})
                for i, name in enumerate(("conv1.weight", "layer1.0.conv1.weight",
                                          "fc.weight")):
                    layers.append({**keys, "phase": "train", "step": step, "epoch": 1,
                                   "layer": name, "layer_index": i, "stat": "grad_mean_abs",
                                   "value": 1e-3})
            epochs.append({**keys, "epoch": 1, "train_loss": first, "train_acc": 0.1,
                           "test_loss": first, "test_acc": 0.1, "lr": 0.1})
            if status == "completed":
                epochs.append({**keys, "epoch": 2, "train_loss": loss, "train_acc": acc,
                               "test_loss": loss, "test_acc": acc, "lr": 0.1})
    return pd.DataFrame(trials), pd.DataFrame(layers), pd.DataFrame(epochs)


def write_folder(run: Path, spec_train=None) -> Path:
    trials, layers, epochs = folder_frames()
    run.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(run / "trials.parquet")
    layers.to_parquet(run / "layers.parquet")
    epochs.to_parquet(run / "epochs.parquet")
    if spec_train is not None:
        import json
        (run / "spec.json").write_text(json.dumps({"spec": {"name": "f14", "mode": "train",
                                                            "train": spec_train}}))
    return run


PLAIN = ("resnet depth 32 (plain): 2/2 seed(s) diverged; activations grow 1,900x over 15 "
         "blocks at init (act_std, last block / first); trained at this depth: residual "
         "branch_scale=zero (1x).")
ONE = ("resnet depth 32 (residual, branch_scale=one): 2/2 seed(s) stayed at chance; "
       "activations grow 30x over 15 blocks at init (act_std, last block / first); "
       "trained at this depth: branch_scale=zero (1x).")


def test_init_ratios_use_the_first_sample_and_drop_stem_and_head():
    _, layers, _ = folder_frames()
    r = findings_training.init_ratios(layers).set_index("trial_id")
    plain = r.loc["resnet-32-plain-norm=none-s0"]
    assert plain.act_stat == "act_std" and plain.n_blocks == BLOCKS
    assert plain.act_ratio == pytest.approx(1900.0)   # step 30 (ratio 1) is not init
    assert plain.grad_ratio == pytest.approx(1.0)
    # a probe's init phase; act_mean_abs when there is no act_std; < 4 taps: all of them
    probe = pd.DataFrame({"trial_id": "p", "phase": "init", "step": 0, "stat": "act_mean_abs",
                          "layer": ["a", "b", "c"], "layer_index": [0, 1, 2],
                          "value": [2.0, 1.0, 0.01]})
    g = pd.DataFrame({"trial_id": "p", "phase": "init", "step": 0, "stat": "grad_mean_abs",
                      "layer": ["w0", "w1"], "layer_index": [0, 1], "value": [1e-6, 1e-2]})
    r = findings_training.init_ratios(pd.concat([probe, g])).iloc[0]
    assert (r.act_stat, r.n_blocks) == ("act_mean_abs", 3)
    assert r.act_ratio == pytest.approx(0.005) and r.grad_ratio == pytest.approx(1e-4)


def test_mechanism_sentences():
    assert findings_training.mechanism(1900.0, 34, "act_std", 1.0) == (
        "activations grow 1,900x over 34 blocks at init (act_std, last block / first)", "act")
    assert findings_training.mechanism(0.01, 8, "act_std", 1.0)[0].startswith(
        "activations shrink 100x over 8 blocks")
    assert findings_training.mechanism(2.0, 8, "act_std", 0.002) == (
        "gradients vanish toward the input: the first layer's mean |dL/dW| is 1/500 of the "
        "last layer's at init", "grad")
    assert findings_training.mechanism(2.0, 8, "act_std", 40.0)[0].startswith("gradients grow toward")
    assert findings_training.mechanism(math.inf, 8, "act_std", 1.0)[0] == \
        "activations are already non-finite at init"
    assert findings_training.mechanism(1.3, 6, "act_std", 0.8)[0] == (
        "no activation growth or vanishing gradient at init (activations 1.3x over 6 "
        "blocks, first/last-layer gradient 0.8x)")
    assert findings_training.mechanism(math.nan, 0, "act_std", math.nan)[0] == \
        "no layer statistics at init for this cell"


def test_trial_outcomes():
    t = pd.DataFrame([_trial(True, "one", 0, "completed", 0.12, 1.0),    # error 0.88: chance
                      _trial(True, "one", 1, "completed", math.nan, 2.27),  # no test: loss ~ ln 10
                      _trial(True, "one", 2, "completed", 0.50, 1.00),
                      _trial(True, "one", 3, "diverged"),
                      _trial(True, "one", 4, "error"),
                      # the smoke run's case: a short run's averaged train loss near ln 10,
                      # test accuracy 29.8%: it learnt, so it is not "at chance"
                      _trial(True, "one", 5, "completed", 0.298, 2.27)])
    assert findings_training.trial_outcomes(t).tolist() == ["chance", "chance", "trained", "diverged",
                                                   None, "trained"]
    assert findings_training.failure_findings(t.iloc[[2, 5]]) == []


def test_failure_findings_name_mechanism_and_avoiders():
    trials, layers, _ = folder_frames()
    assert findings_training.failure_findings(trials, layers) == [PLAIN, ONE]
    # without layers.parquet the failure is still named
    assert findings_training.failure_findings(trials)[0] == (
        "resnet depth 32 (plain): 2/2 seed(s) diverged; no layer statistics at init for this "
        "cell; trained at this depth: residual branch_scale=zero.")
    # nothing trained at this depth
    bad = trials[trials["branch_scale"] != "zero"]
    assert findings_training.failure_findings(bad, layers)[0].endswith(
        "; no other cell of this sweep trained at this depth.")
    # every cell trained: nothing to explain
    assert findings_training.failure_findings(trials[trials["branch_scale"] == "zero"], layers) == []


def test_warmup_findings():
    trials, _, epochs = folder_frames()
    found = findings_training.warmup_findings(trials, epochs)
    assert found == [
        "resnet depth 32 (plain): first-epoch train loss above chance (ln 10 = 2.30) in 2/2 "
        "seed(s) (median non-finite: diverged): the first steps overshoot; try "
        "--warmup-epochs N.",
        "resnet depth 32 (residual, branch_scale=one): first-epoch train loss above chance "
        "(ln 10 = 2.30) in 2/2 seed(s) (median 5.00): the first steps overshoot; try "
        "--warmup-epochs N or --branch-scale zero."]
    assert "a longer --warmup-epochs (this sweep used 2) or --branch-scale zero" in \
        findings_training.warmup_findings(trials, epochs, warmup_epochs=2)[1]
    assert findings_training.warmup_findings(trials, None) == []


def test_report_explains_the_failed_cells(tmp_path):
    run = write_folder(tmp_path / "run", spec_train={"epochs": 2, "warmup_epochs": 0})
    result = report.build(run, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures if f.kind != "figure"] == []
    md = (run / "report.md").read_text()
    section = md.split("## Findings (each level minus its factor's baseline, paired by seed)")[1]
    section = section.split("\n## ")[0]
    assert f"- {PLAIN}" in section and f"- {ONE}" in section
    assert "try --warmup-epochs N or --branch-scale zero." in section
    # residual minus plain: no plain seed completed; branch_scale zero minus one: 2 pairs
    assert ("- resnet depth 32 (branch_scale=zero): no seed with both variants completed "
            "(plain: 2 diverged).") in section
    # two seeds: the mean only (analysis.contrasts.MIN_SEEDS), and the report says why once
    assert ("- resnet depth 32 (residual): branch_scale zero minus one test accuracy +50.0 pp "
            "over 2 seed(s) (means only).") in section
    assert section.count("Contrasts with fewer than 3 seeds give means only") == 1
    assert "Holm" not in section  # no finding has a p value: nothing adjusted
    page = (run / "report.html").read_text()
    assert "activations grow 1,900x over 15 blocks at init" in page


def test_where_branch_scale_keeps_the_plain_cell(tmp_path):
    run = write_folder(tmp_path / "run")
    report.build(run, formats=("png",), where=report.parse_where(["branch_scale=zero"]))
    md = (run / "views" / "branch_scale=zero" / "report.md").read_text()
    assert "**4 trials: 2 completed, 2 diverged, 0 errored.**" in md  # plain (n/a) + zero
    # branch_scale no longer varies in the view: the avoider is just "residual"
    assert PLAIN.replace("residual branch_scale=zero (1x)", "residual (1x)") in md
    assert "## Findings (residual minus plain, paired by seed)" in md
    report.build(run, formats=("png",), where=report.parse_where(["branch_scale=n/a"]))
    md = (run / "views" / "branch_scale=n_a" / "report.md").read_text()
    assert "**2 trials: 0 completed, 2 diverged, 0 errored.**" in md
    with pytest.raises(report.ResultsError, match=r"branch_scale=invsqrt: no such trials; "
                                                  r"present: one, zero, n/a"):
        report.build(run, where=report.parse_where(["branch_scale=invsqrt"]))
