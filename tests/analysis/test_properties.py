"""Properties of analysis.stats, analysis.tables and report.build over generated results.

The exact-value tests (test_stats, test_tables, test_report) pin the numbers
on hand-built frames; these check what must hold on *any* frame the sweep
can write (tests/analysis/strategies.py): every status, NaN and inf, values
from 1e-30 to 1e30, constant and nearly constant columns, one seed, one
layer, missing files. Budgets come from the hypothesis profile of
tests/conftest.py ("ci": 25 derandomized examples); the slow variants run
300 (``pytest -m slow``).
"""
import html
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import contrasts, pvalues, report, stats, tables_contrasts
from ablations import factors, levels
from analysis.tables import (degradation_index_table, degradation_table, grad_table,
                             network_order, snapshot_rows, to_latex, to_markdown)
from analysis.tables_contrasts import contrast_table
from tests.analysis.strategies import (ACT_STATS, DAMAGED_SPEC, GRAD_STATS, results_frames,
                                       spec_records, write_results_folder)

# Finite values over the whole range the sweep can record, and the non-finite ones.
VALUES = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([math.nan, math.inf, -math.inf]))
SAMPLES = st.lists(VALUES, max_size=12)
COUNTS = ["n_completed", "n_diverged", "n_error", "n_pending"]


def _is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _close_within(x, lo, hi) -> bool:
    """``lo <= x <= hi`` up to rounding of a mean (a few ulps of the largest magnitude)."""
    tol = 1e-12 * max(abs(lo), abs(hi))
    return lo - tol <= x <= hi + tol


def _metrics(trials: pd.DataFrame) -> list[str]:
    return [m for m in ("final_train_loss", "final_test_error")
            if stats.DERIVED.get(m, m) in trials]


# --------------------------------------------------------------------------- primitives

@given(SAMPLES)
def test_mean_ci_counts_finite_values_and_contains_the_mean(values):
    finite = [v for v in values if math.isfinite(v)]
    m, lo, hi, n = stats.mean_ci(values)
    assert n == len(finite)
    if n == 0:
        assert all(math.isnan(x) for x in (m, lo, hi))
        return
    assert _close_within(m, min(finite), max(finite))
    if n == 1:
        assert math.isnan(lo) and math.isnan(hi)
    else:
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= m <= hi


@given(SAMPLES, SAMPLES)
def test_welch_ci_contains_the_difference(a, b):
    w = stats.welch_ci(a, b)
    na, nb = sum(map(math.isfinite, a)), sum(map(math.isfinite, b))
    assert (w["n_a"], w["n_b"]) == (na, nb)
    assert math.isnan(w["diff"]) == (na == 0 or nb == 0)
    if na >= 2 and nb >= 2:
        assert w["ci_lo"] <= w["diff"] <= w["ci_hi"]
    else:
        assert math.isnan(w["ci_lo"]) and math.isnan(w["ci_hi"])


@given(SAMPLES)
def test_p_values_are_probabilities_and_two_sided(diffs):
    finite = [d for d in diffs if math.isfinite(d)]
    neg = [-d for d in diffs]
    p_t, p_w = pvalues.paired_t_pvalue(diffs), pvalues.wilcoxon_exact_pvalue(diffs)
    assert math.isnan(p_t) or 0.0 <= p_t <= 1.0
    if len(finite) < 2:
        assert math.isnan(p_t)
    # Two-sided: the sign of every difference flipped gives the same p.
    assert p_t == pytest.approx(pvalues.paired_t_pvalue(neg), rel=1e-9, nan_ok=True)
    assert math.isnan(p_w) == (not finite)
    if finite:
        nonzero = sum(d != 0 for d in finite)
        assert min(1.0, 2.0 / 2 ** nonzero) - 1e-15 <= p_w <= 1.0  # the smallest exact p
        assert p_w == pvalues.wilcoxon_exact_pvalue(neg)


# --------------------------------------------------------------------------- frames

@given(results_frames())
def test_cell_summary_counts_every_trial(frames):
    _check_cell_summary(frames)


def _check_cell_summary(frames):
    trials = frames["trials"]
    metrics = _metrics(trials)
    cells = stats.cell_summary(trials, metrics=metrics)
    assert list(cells.columns[:len(stats.cell_keys(trials))]) == stats.cell_keys(trials)
    assert len(cells) == len(trials.drop_duplicates(stats.cell_keys(trials)))
    assert (cells["n_planned"] == cells[COUNTS].sum(axis=1)).all()
    assert cells["n_planned"].sum() == len(trials)
    for m in metrics:
        assert (cells[f"{m}_n"] <= cells["n_completed"]).all()
        for mean, lo, hi in cells[[f"{m}_mean", f"{m}_ci_lo", f"{m}_ci_hi"]].itertuples(index=False):
            assert not np.isinf([mean, lo, hi]).any()  # numbers or NaN, never inf
            if math.isfinite(lo):
                assert lo <= mean <= hi


def _plain_cell(t: pd.DataFrame, row) -> pd.DataFrame:
    """The plain trials a residual cell is contrasted with: same family, model and depth,
    and the same level of every factor that applies to plain (not "n/a" there)."""
    plain = t[(~t["residual"].astype(bool)) & (t["family"] == row["family"])
              & (t["model"] == row["model"]) & (t["depth"] == row["depth"])]
    for k in levels.present(t):
        if k != "residual":
            plain = plain[(plain[k] == levels.NA) | (plain[k] == row[k])]
    return plain


@given(results_frames(mode="train"))
def test_contrasts_account_for_every_seed(frames):
    trials = frames["trials"]
    t = levels.with_levels(trials, levels.present(trials))
    keys = stats.cell_keys(trials)
    for metric in ("final_test_acc", "final_train_loss"):
        if metric not in trials:
            continue
        d = contrasts.contrasts(trials, metric)
        assert (d["n_pairs"] + d["n_unpaired"] == d["n_seeds"]).all()
        for r in d.itertuples(index=False):
            for p in (r.p_value, r.p_wilcoxon, r.p_adjusted):
                assert math.isnan(p) or 0.0 <= p <= 1.0
            assert math.isnan(r.p_adjusted) == math.isnan(r.p_value)
            if math.isfinite(r.p_value):
                assert r.p_adjusted >= r.p_value
            assert math.isnan(r.p_wilcoxon) == (r.n_pairs == 0)
            assert math.isfinite(r.mean_diff) == (r.n_pairs > 0)
            if math.isfinite(r.ci_lo):
                assert r.ci_lo <= r.mean_diff <= r.ci_hi
        # residual: one row per residual cell, against the plain cell that matches it
        res = d[(d["factor"] == "residual") & (d["level"] == "residual")]
        res_cells = t[t["residual"].astype(bool)].drop_duplicates(keys)
        assert len(res) == len(res_cells)
        for _, r in res.iterrows():
            cell = t[(t[keys] == r[keys]).all(axis=1)]
            plain = _plain_cell(t, r)
            assert r["n_seeds"] == len(set(cell["seed"]) | set(plain["seed"]))
        # every other contrasted factor varies; residual rows only where residual exists
        assert set(d["factor"]) <= set(contrasts.contrasted_factors(trials))
        if not [n for n in levels.present(trials) if n != "residual"]:
            # a folder from before the registry: today's one row per (family, model, depth)
            p = contrasts.paired_differences(trials, metric)
            assert len(p) == len(trials.drop_duplicates(list(stats.PAIR_KEYS)))
            seeds = trials.groupby(list(stats.PAIR_KEYS))["seed"].nunique()
            assert p.set_index(list(stats.PAIR_KEYS))["n_seeds"].sort_index().tolist() == \
                seeds.sort_index().tolist()


@given(st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), max_size=12))
def test_adjusted_p_values_bound_the_raw_ones(p):
    raw = np.array(p, dtype=float)
    holm, bh = pvalues.holm(raw), pvalues.benjamini_hochberg(raw)
    ok = np.isfinite(raw)
    assert (np.isnan(holm) == ~ok).all() and (np.isnan(bh) == ~ok).all()
    assert (holm[ok] <= 1).all() and (holm[ok] >= raw[ok] - 1e-15).all()
    assert (bh[ok] >= raw[ok] - 1e-15).all() and (bh[ok] <= holm[ok] + 1e-15).all()
    order = np.argsort(raw[ok], kind="stable")  # monotone: a smaller p never adjusts higher
    assert (np.diff(holm[ok][order]) >= -1e-15).all() and (np.diff(bh[ok][order]) >= -1e-15).all()


@given(results_frames(mode="train"))
def test_degradation_index_is_relative_to_the_shallowest_depth(frames):
    trials = frames["trials"]
    for metric in _metrics(trials):
        d = stats.degradation_index(trials, metric)
        assert d["n_planned"].sum() == len(trials)
        assert (d["n_planned"] == d[COUNTS].sum(axis=1)).all()
        assert (d["n"] <= d["n_completed"]).all()
        base = d[d["depth"] == d["base_depth"]]
        assert ((base["delta"] == 0) | (base["delta"].isna() & (base["n_base"] == 0))).all()
        keys = stats.degradation_keys(trials)
        mins = levels.with_levels(trials, levels.present(trials)).groupby(keys)["depth"].min()
        assert set(map(tuple, base[keys + ["depth"]].to_numpy())) == \
            {(*k, v) for k, v in mins.items()}


@given(results_frames())
def test_status_counts_total_is_every_trial(frames):
    _check_status_counts(frames)


def _check_status_counts(frames):
    trials = frames["trials"]
    s = stats.status_counts(trials)
    total = s.iloc[-1]
    assert total["family"] == "total" and total["n_planned"] == len(trials)
    assert (s["n_planned"] == s[COUNTS].sum(axis=1)).all()
    for status, col in zip(stats.STATUSES, COUNTS):
        assert total[col] == (trials["status"] == status).sum()


# --------------------------------------------------------------------------- tables

def _planned(text: str) -> int:
    """The planned count of a table's ``n`` cell: "3" or "1/3 (2 diverged)"."""
    found = re.fullmatch(r"(\d+)(?:/(\d+) \((.+)\))?", text)
    assert found, text
    return int(found.group(2) or found.group(1))


def _renders(df: pd.DataFrame) -> None:
    md = to_markdown(df).splitlines()
    assert len(md) == len(df) + 2 and all(ln.count("|") >= len(df.columns) + 1 for ln in md)
    tex = to_latex(df, "caption", "tab:x")
    assert tex.count(r"\\") == len(df) + 1  # header + rows


@given(results_frames())
def test_tables_count_every_planned_trial(frames):
    _check_tables(frames)


def _check_tables(frames):
    trials = frames["trials"]
    summary = degradation_table(trials)
    assert len(summary) == len(trials.drop_duplicates(stats.cell_keys(trials)))
    assert sum(_planned(n) for n in summary["n"]) == len(trials)
    shown = [n for n in levels.varying(trials) if n != "residual"]
    assert [c for c in summary.columns if c in levels.present(trials)] == shown
    _renders(summary)
    if "final_test_acc" not in trials:
        return
    paired = contrast_table(trials)
    d = contrasts.contrasts(trials, "final_test_acc")
    # the depth x residual interactions first (train loss and test error), then test
    # accuracy and train loss for every contrast
    inter = paired["factor"] == tables_contrasts.INTERACTION_FACTOR if len(paired) else []
    n_inter = sum(len(x) for x in tables_contrasts.interactions(trials).values())
    assert int(np.sum(inter)) == n_inter and not np.any(np.asarray(inter)[n_inter:])
    contrast_rows = paired[~np.asarray(inter, dtype=bool)] if len(paired) else paired
    assert len(contrast_rows) == 2 * len(d)
    acc = contrast_rows[contrast_rows["metric"] == "test acc (pp)"]
    assert (acc["pairs"] + acc["unpaired"]).tolist() == d["n_seeds"].tolist()
    _renders(paired)
    deg = degradation_index_table(trials)
    if len(deg):
        model = "model" if "model" in deg else "family"
        assert deg.groupby(model)["depth"].nunique().min() > 1  # one-depth models left out
        _renders(deg)


NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]\d+)?"


@given(results_frames(mode="train"))
def test_summary_cells_are_short_and_never_hide_a_value(frames):
    """Losses span 1e-30..1e30: a cell must neither print 31 digits nor round a
    non-zero mean to "0.000" (a converged train loss of 4e-05 is not zero)."""
    trials = frames["trials"]
    summary = degradation_table(trials)
    cells = stats.cell_summary(trials, metrics=[m for m in ("final_train_loss", "final_test_acc")
                                                if m in trials])
    for metric, title in (("final_train_loss", "train loss"), ("final_test_acc", "test acc (%)")):
        if metric not in trials:
            continue
        for text, mean in zip(summary[title], cells[f"{metric}_mean"]):
            if not math.isfinite(mean):
                assert text == "—"
                continue
            assert re.fullmatch(f"{NUMBER}(?: ± {NUMBER})?", text), text
            assert len(text) <= 24, text  # "-999999.999 ± 999999.999": the widest fixed cell
            assert (float(text.split(" ")[0]) == 0) == (mean == 0), (text, mean)


@given(results_frames(factors="old"))
def test_factor_columns_at_defaults_change_no_table(frames):
    """A residual-only sweep written today (every factor column at its default, n/a where
    it does not apply) gives exactly the tables of the same sweep written before the
    factor registry."""
    old = frames["trials"]
    new = levels.with_levels(old)
    assert set(levels.present(new)) == set(levels.present(old)) | set(factors.names())
    for table in (degradation_table, contrast_table, degradation_index_table):
        if table is not degradation_table and "final_test_acc" not in old:
            continue
        pd.testing.assert_frame_equal(table(new), table(old))


@given(results_frames())
def test_grad_tables_follow_network_order(frames):
    layers = frames.get("layers")
    if layers is None:
        return
    init = snapshot_rows(layers, "grad_mean_abs", "init")
    for (model, depth), g in init.groupby(["model", "depth"]):
        if g["residual"].nunique() < 2:
            continue
        t = grad_table(layers, model, depth, when="init")
        assert list(t["layer"]) == network_order(g)
        assert set(t["layer"]) == set(g["layer"])
        _renders(t)


def test_strategy_stat_names_are_the_recorders():
    hooks = pytest.importorskip("ablations.hooks")  # imports torch
    assert (GRAD_STATS, ACT_STATS) == (hooks.GRAD_STATS, hooks.ACT_STATS)


# --------------------------------------------------------------------------- report.build

def _check_build(frames, spec):
    with tempfile.TemporaryDirectory() as tmp:
        run = write_results_folder(frames, Path(tmp) / "run", spec=spec)
        result = report.build(run, formats=("png",))
        md = (run / "report.md").read_text()
        page = (run / "report.html").read_text()
        assert result.written[-2:] == [str(run / "report.md"), str(run / "report.html")]
        assert all(Path(p).is_file() for p in result.written)
        for f in result.failures:
            assert f.entry in md and html.escape(f.entry) in page
        # Tables and the report's own sections are this package's code on valid data:
        # they must not fail. Figures may (analysis.figures); then they are named above.
        # The only input failure is the damaged spec.json the strategy sometimes writes.
        inputs = [("input", "spec.json")] if spec == DAMAGED_SPEC else []
        assert [(f.kind, f.name) for f in result.failures if f.kind != "figure"] == inputs
        log = run / "report_errors.log"
        assert log.exists() == bool(result.failures)
        if result.failures:
            text = log.read_text()
            assert all(f"=== {f.kind} {f.name}: " in text for f in result.failures)
        return result


@settings(max_examples=5)  # a report build per example; test_build_never_raises_slow: 80
@given(results_frames(optional_trials=True), spec_records())
def test_build_never_raises_and_names_every_failure(frames, spec):
    _check_build(frames, spec)


@pytest.mark.slow
@settings(max_examples=80)
@given(results_frames(optional_trials=True, max_cells=4, max_seeds=4, max_layers=6,
                      max_epochs=4, max_samples=3), spec_records())
def test_build_never_raises_slow(frames, spec):
    _check_build(frames, spec)


@pytest.mark.slow
@settings(max_examples=80)
@given(results_frames(max_cells=5, max_seeds=5))
def test_tables_and_counts_slow(frames):
    _check_tables(frames)
    _check_cell_summary(frames)
    _check_status_counts(frames)
