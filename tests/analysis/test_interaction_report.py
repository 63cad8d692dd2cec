"""The report answers its own question: the depth x residual interaction first, one
multiplicity family per report (the same adjusted p in every --where view), means only
below three seeds, robust summaries, failure rates, survivorship and the budget label.

Planted frames (``planted``) have known effects; hypothesis frames
(``tests.analysis.strategies``) check that every new table, figure and the family never
raise and give finite numbers or NaN.
"""
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from matplotlib.figure import Figure

from analysis import (budget, findings, multiplicity, pvalues, report, tables,
                      tables_contrasts, tables_robust)
from analysis.figures import depth_interaction
from tests.analysis.strategies import results_frames


def planted(seeds=3, depths=(20, 56), scales=("one",), noise=0.01, degrade=0.45,
            diverge=(), steps=True, seed=1) -> pd.DataFrame:
    """ResNet trials: plain's train loss rises by ``degrade`` from the first depth to the
    others, residual's falls by 0.05; test accuracy = 0.75 - loss / 4. ``diverge``:
    (branch_scale, depth, seed) of residual trials that diverged."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in depths:
        for res, sc in [(False, "n/a")] + [(True, s) for s in scales]:
            for s in range(seeds):
                deeper = d > depths[0]
                loss = 0.9 + (degrade * deeper if not res else -0.05 * deeper)
                loss += rng.normal(0, noise) + 0.02 * s
                status = "diverged" if res and (sc, d, s) in diverge else "completed"
                lv = "residual" if res else "plain"
                row = dict(trial_id=f"resnet-{d}-{lv}" + (f"-scale={sc}" if sc == "zero" else "")
                           + f"-s{s}", family="resnet", model="resnet", depth=d, residual=res,
                           norm="batch", block="post", branch_scale=sc,
                           shortcut="projection" if res else "n/a", seed=s, status=status,
                           params=1000 * d,
                           final_train_loss=loss if status == "completed" else np.nan,
                           final_test_acc=0.75 - loss / 4 if status == "completed" else np.nan)
                if steps:
                    row.update(steps=360, schedule_steps=360, batch_size=128, n_train=4500)
                rows.append(row)
    return pd.DataFrame(rows)


def write_run(folder: Path, trials: pd.DataFrame, spec: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    trials.to_parquet(folder / "trials.parquet")
    if spec:
        (folder / "spec.json").write_text(json.dumps({"spec": {
            "name": "planted", "mode": "train",
            "train": {"dataset": "cifar10", "subset": 5000, "val_fraction": 0.1, "epochs": 10,
                      "batch_size": 128}}}))
    return folder


def _lines(md: str) -> list[str]:
    section = md.split("## Findings")[1].split("\n## ")[0]
    return [ln[2:] for ln in section.splitlines() if ln.startswith("- ")]


# --------------------------------------------------------------------------- wording

def test_resolved_interaction_is_worded_as_consistent_with():
    t = planted(seeds=5)
    found = findings.interaction_findings(t, budget_tag=budget.budget_text(t, None)[1])
    assert len(found) == 2  # train loss, then test error
    loss = found[0]
    assert loss.startswith("resnet 20 -> 56: plain's train loss rose by 0.4")
    assert "residual's fell by 0.0" in loss and "difference of differences +0.5" in loss
    assert "[95% CI +0.4" in loss and "Holm p = " in loss and "(5 seeds, paired)" in loss
    assert loss.endswith(": consistent with residual connections reducing the degradation "
                         "[early training: 360 steps = 0.56% of He et al.'s 64k iterations].")
    assert found[1].startswith("resnet 20 -> 56: plain's test error rose by 11")
    assert "pp; difference of differences +1" in found[1]
    for text in found:
        assert "degradation problem" not in text and "He et al. " not in text.split("[")[0]


def test_unresolved_interaction_says_so():
    t = planted(seeds=3, noise=0.4, degrade=0.1, seed=3)
    found = findings.interaction_findings(t)
    assert all("not resolved with 3 seeds" in f and "consistent with" not in f for f in found)
    assert all("Holm p = " in f and "(3 seeds, paired)" in f for f in found)


def test_resolved_needs_the_adjusted_p_not_the_raw_one():
    # a family of many tests: a raw p of ~0.01 that Holm lifts above 0.05 is unresolved
    t = planted(seeds=3, noise=0.15, degrade=0.45, scales=("one", "zero"), seed=7)
    fam = multiplicity.report_family(t)
    d = tables_contrasts.interactions(t)["final_train_loss"]
    for (_, r), text in zip(d.iterrows(), findings.interaction_findings(t, fam)):
        holm_p, _ = multiplicity.family_lookup(fam, multiplicity.interaction_key(r, "final_train_loss"),
                                            r["p_value"])
        assert ("consistent with" in text) == (holm_p < 0.05 and (r["ci_lo"] > 0 or r["ci_hi"] < 0))


# --------------------------------------------------------------------------- fewer than 3 seeds

def test_two_seeds_give_means_only_and_say_why_once(tmp_path):
    run = write_run(tmp_path / "run", planted(seeds=2))
    assert report.build(run, formats=("png",), jobs=1).failures == []
    md = (run / "report.md").read_text()
    lines = _lines(md)
    assert "means only" in lines[0] and "Holm p" not in " ".join(lines)
    assert "95% CI" not in " ".join(lines)
    section = md.split("## Findings")[1].split("\n## ")[0]
    assert section.count("Contrasts with fewer than 3 seeds give means only") == 1
    paired = (run / "tables" / "paired.md").read_text()
    assert "±" not in paired and "n/a (2 seeds: means only)" in paired
    effects = (run / "tables" / "factor_effects.md").read_text()
    assert "±" not in effects and "n/a (2 seeds: means only)" in effects
    assert "±" not in (run / "tables" / "degradation.md").read_text()
    assert multiplicity.family_size(multiplicity.report_family(planted(seeds=2))) == 0


# --------------------------------------------------------------------------- one family

def _read_md(path: Path) -> pd.DataFrame:
    """A Markdown table (``tables.to_markdown``) as a frame of strings."""
    lines = path.read_text().splitlines()
    cells = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines
             if ln.startswith("|")]
    return pd.DataFrame(cells[2:], columns=cells[0])


def _p_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("p (") or c.startswith("q (")]


def test_a_where_view_does_not_change_an_adjusted_p(tmp_path):
    t = planted(seeds=4, scales=("one", "zero"), noise=0.05)
    run = write_run(tmp_path / "run", t)
    assert report.build(run, formats=("png",), jobs=1).failures == []
    view = tmp_path / "view"
    assert report.build(run, formats=("png",), jobs=1, out_dir=view,
                        where=report.parse_where(["branch_scale=zero"])).failures == []
    full = _read_md(run / "tables" / "paired.md")
    part = _read_md(view / "tables" / "paired.md")

    def rows(df, within):
        if "within" in df:
            df = df[df["within"] == within].drop(columns="within")
        return df[["depth", "factor", "metric", "difference", *_p_columns(df)]] \
            .reset_index(drop=True)
    # every residual-minus-plain row of the view (branch_scale=zero) is the full report's row
    # of the same contrast, its adjusted p values included
    a = rows(full, "branch_scale=zero")
    b = rows(part, None)
    b = b[b["factor"].isin(["residual", "depth x residual"])].reset_index(drop=True)
    assert len(b) == 6 and b["p (t, Holm)"].str.match(r"^[0-9<]").all()
    pd.testing.assert_frame_equal(a, b)
    # the view's own family would be smaller, so it would adjust less
    own = multiplicity.report_family(t[t["branch_scale"].isin(["zero", "n/a"])])
    assert multiplicity.family_size(own) < multiplicity.family_size(multiplicity.report_family(t))
    # and the captions name the one family
    md = (view / "report.md").read_text()
    n = multiplicity.family_size(multiplicity.report_family(t))
    assert f"Holm over the {n} primary tests of this report" in md


def test_a_view_that_changes_a_test_prints_no_adjusted_p():
    t = planted(seeds=4, noise=0.05)
    fam = multiplicity.report_family(t)
    fewer = contrast_view = tables_contrasts.contrast_table(t[t["seed"] < 3], fam)
    assert (fewer["p (t, Holm)"] == "n/a (view)").all()
    assert len(contrast_view) == 6


def test_report_family_is_holm_and_bh_over_every_printed_test():
    t = planted(seeds=4, scales=("one", "zero"))
    fam = multiplicity.report_family(t)
    assert fam["key"].is_unique
    assert set(fam["kind"]) == {"contrast", "interaction", "factor effect"}
    ok = np.isfinite(fam["p_value"])
    assert (fam.loc[ok, "p_holm"] >= fam.loc[ok, "p_value"] - 1e-15).all()
    # one test per hypothesis in the primary family; Wilcoxon and the residual factor's
    # summaries (restating primary tests) adjusted among themselves
    wil = fam["test"] == "Wilcoxon"
    res_summary = (fam["kind"] == "factor effect") & fam["key"].str.contains("residual")
    assert (fam.loc[wil | res_summary, "family"] == multiplicity.SECONDARY).all()
    assert (fam.loc[~(wil | res_summary), "family"] == multiplicity.PRIMARY).all()
    for which in (multiplicity.PRIMARY, multiplicity.SECONDARY):
        sel = ok & (fam["family"] == which)
        assert sel.any()
        assert fam.loc[sel, "p_holm"].tolist() == pytest.approx(
            pvalues.holm(fam.loc[sel, "p_value"]).tolist())
        assert fam.loc[sel, "p_bh"].tolist() == pytest.approx(
            pvalues.benjamini_hochberg(fam.loc[sel, "p_value"]).tolist())
    assert multiplicity.family_size(fam) == int((ok & (fam["family"] == "primary")).sum())
    assert fam.loc[~ok, "p_holm"].isna().all()


# --------------------------------------------------------------------------- the build

def test_build_lists_the_interaction_first(tmp_path):
    run = write_run(tmp_path / "run", planted(seeds=3, diverge=(("one", 56, 2),)))
    result = report.build(run, formats=("png",), jobs=1)
    assert result.failures == []
    md = (run / "report.md").read_text()
    assert _lines(md)[0].startswith("resnet 20 -> 56: plain's train loss")
    # the budget near the top, before the findings
    budget = ("**Budget: early training: 360 steps = 0.56% of He et al.'s 64k iterations (100% "
              "of this recipe's 360-step schedule); 10.2 epochs of 4,500 images = 5.6% of He "
              "et al.'s 182 epochs.**")
    assert budget in md and md.index(budget) < md.index("## Findings")
    paired = (run / "tables" / "paired.md").read_text().splitlines()
    assert "| depth x residual |" in paired[2]
    for name in ("interaction",):
        assert (run / "figures" / f"{name}.png").stat().st_size > 0
    for name in ("factor_effects", "robust", "improvement", "failures", "survivorship"):
        assert (run / "tables" / f"{name}.md").exists(), name
    assert "1/3 = 33% [0.84%, 91%]" in (run / "tables" / "failures.md").read_text()
    assert "Holm over the" in md and "primary tests" in md and "q (t, BH)" in md


def test_survivorship_finding_when_the_sign_flips():
    # residual at 56 survives only on its lucky seed; counted at chance, it is worse
    t = planted(seeds=4, diverge=(("one", 56, 0), ("one", 56, 1), ("one", 56, 2)))
    found = findings.survivorship_findings(t)
    assert found and all("not robust to survivorship" in f for f in found)
    assert any(f.startswith("resnet 20 -> 56: depth x residual (train loss): counting the 3 "
                            "diverged trials as runs at chance (2.3)") for f in found)


def test_budget_from_the_spec_is_about():
    spec = {"spec": {"train": {"dataset": "cifar10", "subset": 5000, "val_fraction": 0.1,
                               "epochs": 10, "batch_size": 128}}}
    text, tag = budget.budget_text(planted(steps=False), spec)
    # 4,500 images / 128 = 36 steps an epoch, 10 epochs
    assert text.startswith("early training: about 360 steps = 0.56% of He et al.'s 64k "
                           "iterations (33% of this recipe's 1,080-step schedule); about 10.2 "
                           "epochs of 4,500 images = 5.6% of He et al.'s 182 epochs")
    # a folder from before recipes ran the seed recipe (30 epochs); another recipe's
    # length is not known without the trials' columns
    he = {"spec": {**spec["spec"], "recipe": "he2016"}}
    assert "this recipe's" not in budget.budget_text(planted(steps=False), he)[0]
    assert tag == " [early training: about 360 steps = 0.56% of He et al.'s 64k iterations]"
    assert budget.budget_text(planted(steps=False), {}) == ("", "")


# --------------------------------------------------------------------------- properties

NEW_TABLES = (tables_contrasts.factor_effects_table, tables_robust.robust_table, tables_robust.improvement_table,
              tables_robust.failures_table, tables_robust.survivorship_table, tables_contrasts.contrast_table,
              tables.degradation_index_table)


def _finite_or_nan(df: pd.DataFrame) -> None:
    for c in df.columns:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
            assert not np.isinf(v).any(), c
        else:
            text = " ".join(map(str, df[c].tolist()))
            assert "inf" not in text.replace("info", "") and "nan" not in text, (c, text[:200])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=results_frames(mode="train", max_cells=3, max_seeds=3))
def test_new_tables_and_family_never_raise(frames):
    _new_tables_and_family_never_raise(frames)


@pytest.mark.slow
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=results_frames(mode="train", max_cells=4, max_seeds=4))
def test_new_tables_and_family_never_raise_slow(frames):
    _new_tables_and_family_never_raise(frames)


def _new_tables_and_family_never_raise(frames):
    trials = frames["trials"]
    fam = multiplicity.report_family(trials)
    p = fam["p_value"].to_numpy(dtype=float)
    assert np.all(np.isnan(p) | ((p >= 0) & (p <= 1)))
    assert fam["key"].is_unique
    for table in NEW_TABLES:
        out = table(trials, fam) if table in (tables_contrasts.factor_effects_table,
                                               tables_contrasts.contrast_table) else table(trials)
        assert isinstance(out, pd.DataFrame)
        _finite_or_nan(out)
    findings.interaction_findings(trials, fam)
    findings.contrast_findings(trials, family=fam)
    findings.survivorship_findings(trials)
    budget.budget_text(trials, None)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=results_frames(mode="train", max_cells=3, max_seeds=3))
def test_interaction_figure_never_raises(frames):
    fig = depth_interaction(frames["trials"])
    assert isinstance(fig, Figure)
    for ax in fig.axes:
        for line in ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            assert not np.isinf(y).any()
    fig.savefig(io.BytesIO(), format="png", dpi=40)


def test_interaction_figure_on_planted_frames():
    fig = depth_interaction(planted(seeds=3, scales=("one", "zero")))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("DiD 20\u219256: +0.4") and "[" in t for t in texts)
    assert sum(t.startswith("DiD") for t in texts) == 4  # two variants x two panels
    assert not math.isnan(fig.get_size_inches()[1])
