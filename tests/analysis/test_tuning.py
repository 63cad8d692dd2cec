"""The tuning search made visible (analysis.tuning, analysis.figures_tuning and the
boundary warning of analysis.findings): exact boundary arithmetic, the table and the
findings on a frame shaped like a real ``--tune lr`` sweep's tuning.parquet, and
properties over generated frames (random states, NaN epochs, 1..N cells, one or two
tuned hyperparameters, selected values at a bound or not, no selection)."""
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from analysis import figures_tuning, findings_training, tuning
from analysis.failures import Guard
from analysis.style import Look
from ablations.where import ResultsError

LR = (1e-3, 1.0)
RANGES = {"lr": LR}
NA = "n/a"


def _row(cell, residual, number, value, state, lr, status, epochs, selected, depth=3):
    return dict(cell=cell, family="mlp", model="mlp", depth=depth, residual=residual,
                norm="none", block="post", branch_scale="one" if residual else NA,
                shortcut=NA, number=number, value=value, state=state, lr=lr, status=status,
                **{f"val_acc_epoch_{i + 1}": v for i, v in enumerate(epochs)},
                selected=selected)


def real_frame(plain_pick_lr=0.091591) -> pd.DataFrame:
    """/work/runs/i13-tune/tuning.parquet: mlp depth 3, 4 samples a cell, 3 epochs."""
    nan, p, r = math.nan, "mlp-3-plain", "mlp-3-residual"
    done, pruned = ("COMPLETE", "completed"), ("PRUNED", "pruned")
    rows = [  # cell, residual, number, value, (state, status), lr, epochs, selected
        (p, False, 0, 0.86, done, 0.008405, (0.24, 0.85, 0.86), False),
        (p, False, 1, 0.68, done, 0.316100, (0.80, 0.10, 0.68), False),
        (p, False, 2, 1.00, done, plain_pick_lr, (0.82, 0.99, 1.00), True),
        (p, False, 3, 0.18, pruned, 0.001265, (0.18, nan, nan), False),
        (r, True, 0, 1.00, done, 0.268169, (1.0, 1.0, 1.0), True),
        (r, True, 1, 1.00, done, 0.018269, (1.0, 1.0, 1.0), False),
        (r, True, 2, 1.00, done, 0.103807, (1.0, 1.0, 1.0), False),
        (r, True, 3, 0.10, pruned, 0.894847, (0.10, nan, nan), False)]
    return pd.DataFrame([_row(c, res, n, v, st, lr, status, ep, sel)
                         for c, res, n, v, (st, status), lr, ep, sel in rows])


# --------------------------------------------------------------------------- ranges and copies

def test_tune_space_is_the_searchs_own_and_ranges_resolve_alike():
    from ablations import spec as aspec  # imports torch: the analysis modules must not
    assert tuning.TUNE_SPACE is aspec.TUNE_SPACE  # one definition, no copy
    for tune, over in ((["lr"], []), (["weight_decay", "lr"], [["lr", 1e-4, 0.5]]),
                       ([], [["lr", 1e-4, 0.5]])):
        d = json.loads(json.dumps({"tune": tune, "tune_ranges": over, "samples": 4}))
        assert tuning.search_ranges({"spec": d}) == aspec.spec_from_dict(d).search_space()
    assert tuning.search_ranges({}) == {} and tuning.search_ranges(None) == {}


# --------------------------------------------------------------------------- boundary arithmetic

def test_bound_side_exact_edges():
    lo, hi = LR
    at = lo * (hi / lo) ** 0.1                    # exactly 10% of the log width from lo
    assert tuning.bound_side(at, lo, hi) == "lower"
    assert tuning.bound_side(hi / (hi / lo) ** 0.1, lo, hi) == "upper"
    assert tuning.bound_side(lo * (hi / lo) ** 0.1001, lo, hi) is None
    assert tuning.bound_side(hi / (hi / lo) ** 0.1001, lo, hi) is None
    assert tuning.bound_side(lo, lo, hi) == "lower" and tuning.bound_side(hi, lo, hi) == "upper"
    assert tuning.bound_side(lo / 5, lo, hi) == "lower"
    assert tuning.bound_side(hi * 5, lo, hi) == "upper"
    assert tuning.bound_side(0.93, lo, hi) == "upper"          # log10: 0.0315 from 1 <= 0.3
    assert tuning.bound_side(0.0019, lo, hi) == "lower"        # log10 0.279 from 1e-3 <= 0.3
    assert tuning.bound_side(0.0021, lo, hi) is None           # 0.322 > 0.3
    for bad in ((math.nan, lo, hi), (0.0, lo, hi), (-1.0, lo, hi), (0.1, hi, lo),
                (0.1, 0.0, hi), (0.1, lo, math.inf), (None, lo, hi), ("x", lo, hi)):
        assert tuning.bound_side(*bad) is None
    a, b = tuning.margin_edges(lo, hi)
    assert a == pytest.approx(10 ** -2.7) and b == pytest.approx(10 ** -0.3)


@given(lo_exp=st.floats(-8, 1), width=st.floats(0.05, 8), f=st.floats(-0.5, 1.5))
def test_bound_side_matches_the_playbook_formula(lo_exp, width, f):
    lo, hi = 10 ** lo_exp, 10 ** (lo_exp + width)
    v = lo * (hi / lo) ** f
    side = tuning.bound_side(v, lo, hi)
    span = math.log(hi) - math.log(lo)
    near_lo = abs(math.log(v) - math.log(lo)) <= 0.1 * span or v < lo
    near_hi = abs(math.log(v) - math.log(hi)) <= 0.1 * span or v > hi
    if abs(f - 0.1) > 1e-6 and abs(f - 0.9) > 1e-6:   # off the edge, up to rounding
        assert side == ("lower" if near_lo else "upper" if near_hi else None)


# --------------------------------------------------------------------------- samples

def test_classify_and_last_reported():
    df = real_frame()
    df.loc[1, ["status", "value"]] = ["diverged", 0.0]
    df.loc[5, ["state", "value", "status"]] = ["FAIL", math.nan, "error"]
    c = tuning.classify(df)
    assert list(c["outcome"]) == ["completed", "failed", "completed", "pruned",
                                  "completed", "failed", "completed", "pruned"]
    assert c["shown"].iloc[3] == 0.18 and c["shown"].iloc[7] == 0.10
    assert np.isnan(c["shown"].iloc[1]) and c["shown"].iloc[2] == 1.0
    last = tuning.last_reported(pd.DataFrame({"val_acc_epoch_10": [0.5, math.nan, math.nan],
                                              "val_acc_epoch_2": [0.2, 0.3, math.nan],
                                              "val_acc_epoch_1": [0.1, 0.2, math.inf]}))
    assert last.iloc[0] == 0.5 and last.iloc[1] == 0.3 and np.isnan(last.iloc[2])


def test_selected_without_column_follows_the_search_rule():
    df = real_frame().drop(columns="selected")
    df.loc[1, "value"] = 1.0     # ties with sample 2: the lower number wins
    assert list(tuning.selected(df)) == [False, True, False, False, True, False, False, False]


# --------------------------------------------------------------------------- table and findings

def test_table_on_the_real_frame():
    t = tuning.tuning_table(real_frame(), RANGES)
    assert list(t.columns) == ["cell", "lr", "lr range", "val acc (%)", "completed", "pruned",
                               "failed", "at bound"]
    assert list(t["cell"]) == ["mlp-3-plain", "mlp-3-residual"]
    assert list(t["lr"]) == [0.091591, 0.268169]
    assert list(t["val acc (%)"]) == [100.0, 100.0]
    assert list(t["completed"]) == [3, 3] and list(t["pruned"]) == [1, 1]
    assert list(t["failed"]) == [0, 0] and list(t["at bound"]) == ["no", "no"]
    assert list(t["lr range"]) == ["[0.001, 1]"] * 2
    unknown = tuning.tuning_table(real_frame(), {})
    assert list(unknown["lr range"]) == [NA] * 2 and list(unknown["at bound"]) == [NA] * 2


def test_boundary_warning_present_and_absent():
    at = real_frame(plain_pick_lr=0.93)
    assert tuning.tuning_table(at, RANGES)["at bound"].iloc[0] == "lr (upper)"
    assert findings_training.tuning_findings(at, RANGES) == [
        "mlp-3-plain: selected lr 0.93 is within 10% (log scale) of the upper bound 1 of its "
        "range [0.001, 1]: the range was likely too narrow; widen it with --tune-range "
        "lr=LOW:HIGH, e.g. lr=0.001:10."]
    low = real_frame(plain_pick_lr=0.0015)
    assert "lower bound 0.001" in findings_training.tuning_findings(low, RANGES)[0]
    assert "lr=0.0001:1." in findings_training.tuning_findings(low, RANGES)[0]
    out = findings_training.tuning_findings(real_frame(plain_pick_lr=2.0), RANGES)
    assert "lies above its range [0.001, 1]" in out[0]
    assert findings_training.tuning_findings(real_frame(), RANGES) == []
    assert findings_training.tuning_findings(at, {}) == [] and findings_training.tuning_findings(None, RANGES) == []


def test_no_selection_is_not_flagged():
    df = real_frame(plain_pick_lr=0.93).assign(selected=False)
    t = tuning.tuning_table(df, RANGES)
    assert t["lr"].isna().all() and t["val acc (%)"].isna().all()
    assert list(t["at bound"]) == [NA, NA]
    assert findings_training.tuning_findings(df, RANGES) == []


# --------------------------------------------------------------------------- loading

def test_load_tuning(tmp_path):
    assert tuning.load_tuning(tmp_path) is None
    real_frame().to_parquet(tmp_path / "tuning.parquet")
    assert len(tuning.load_tuning(tmp_path)) == 8
    (tmp_path / "tuning.parquet").write_bytes(b"PAR1 not really")
    guard = Guard(stream=io.StringIO())
    assert tuning.load_tuning(tmp_path, guard) is None
    assert [(f.kind, f.name) for f in guard.failures] == [("input", "tuning.parquet")]
    with pytest.raises(ResultsError, match="tuning.parquet"):
        tuning.load_tuning(tmp_path)
    real_frame().drop(columns="state").to_parquet(tmp_path / "tuning.parquet")
    guard = Guard(stream=io.StringIO())
    assert tuning.load_tuning(tmp_path, guard) is None
    assert "state" in guard.failures[0].reason


# --------------------------------------------------------------------------- generated frames

@st.composite
def tuning_frames(draw):
    """(samples, ranges): 1..6 cells of 0..6 samples each (at least one sample), random
    states and statuses, 0..3 reported epochs with NaN tails, lr and maybe
    weight_decay, a selection that follows the search's rule, is absent, or sits
    at a bound."""
    names = ["lr"] + (["weight_decay"] if draw(st.booleans()) else [])
    ranges = {n: tuning.TUNE_SPACE[n] for n in names}
    if draw(st.booleans()):
        ranges["lr"] = (1e-4, 0.5)
    keys = draw(st.lists(st.tuples(st.sampled_from(["mlp", "resnet"]), st.sampled_from([3, 8, 20]),
                                   st.booleans()), min_size=1, max_size=6, unique=True))
    rows = []
    for family, depth, residual in keys:
        cell = f"{family}-{depth}-{'residual' if residual else 'plain'}"
        for number in range(draw(st.integers(0, 6))):
            state = draw(st.sampled_from(["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "RUNNING"]))
            status = {"COMPLETE": draw(st.sampled_from(["completed", "diverged"])),
                      "PRUNED": "pruned", "FAIL": "error", "RUNNING": "no result"}[state]
            n_ep = draw(st.integers(0, 3))
            ep = [draw(st.floats(0, 1)) for _ in range(n_ep)] + [math.nan] * (3 - n_ep)
            value = (0.0 if status == "diverged" else ep[n_ep - 1] if n_ep else math.nan) \
                if state != "FAIL" else math.nan
            hp = {}
            for n in names:
                lo, hi = ranges[n]
                hp[n] = lo * (hi / lo) ** draw(st.floats(0, 1))
            rows.append(dict(cell=cell, family=family, model=family, depth=depth,
                             residual=residual, number=number, value=value, state=state,
                             **hp, status=status,
                             **{f"val_acc_epoch_{i + 1}": v for i, v in enumerate(ep)}))
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame([dict(cell="mlp-3-plain", family="mlp", model="mlp", depth=3,
                                residual=False, number=0, value=math.nan, state="FAIL",
                                **{n: ranges[n][0] for n in names}, status="error")])
    df["selected"] = tuning.selected(df) & draw(st.booleans())
    picked = df.index[df["selected"]]
    if len(picked) and draw(st.booleans()):      # push one selected value to a bound
        i = draw(st.sampled_from(list(picked)))
        lo, hi = ranges["lr"]
        df.loc[i, "lr"] = draw(st.sampled_from([lo, hi, lo * (hi / lo) ** 0.05, hi * 0.999]))
    return df, ranges


@given(tuning_frames())
def test_table_and_findings_agree_with_the_samples(drawn):
    df, ranges = drawn
    t = tuning.tuning_table(df, ranges)
    assert sorted(t["cell"]) == sorted(df["cell"].unique())
    c = tuning.classify(df)
    rows = tuning.boundary_rows(df, ranges)
    for _, r in t.iterrows():
        g, cg = df[df["cell"] == r["cell"]], c[c["cell"] == r["cell"]]
        assert r["completed"] + r["pruned"] + r["failed"] == len(g)
        assert r["completed"] == int(((cg["state"] == "COMPLETE") & (cg["status"] == "completed")
                                      & cg["value"].notna()).sum())
        pick = g[g["selected"]]
        flags = []
        for n in ranges:
            if len(pick):
                assert r[n] == pick[n].iloc[0]
                side = tuning.bound_side(pick[n].iloc[0], *ranges[n])
                flags += [f"{n} ({side})"] if side else []
            else:
                assert np.isnan(r[n])
        assert r["at bound"] == (", ".join(flags) if flags else "no" if len(pick) else NA)
        assert len(rows[rows["cell"] == r["cell"]]) == len(flags)
    warned = findings_training.tuning_findings(df, ranges)
    assert len(warned) == len(rows)
    assert all(w.startswith(f"{cell}: selected {n} ") for w, cell, n
               in zip(warned, rows["cell"], rows["name"]))


def _all_axes(fig):
    """Every axes once (a figure lists its sub-figures' axes too, in some versions)."""
    return list(dict.fromkeys(fig.axes + [a for sf in fig.subfigs for a in sf.axes]))


@settings(max_examples=6)
@given(tuning_frames(), st.sampled_from([Look(), Look("paper", "single")]))
def test_figures_render_and_draw_every_sample(drawn, look):
    df, ranges = drawn
    for name in ranges:
        fig = figures_tuning.tuning_isolation(df, name, ranges, look)
        assert isinstance(fig, Figure)
        fig.savefig(io.BytesIO(), format="png", dpi=40)
        # every sample with a value is a point; every selected one is a star on top
        points = sum(len(col.get_offsets()) for ax in _all_axes(fig) for col in ax.collections)
        x = pd.to_numeric(df[name], errors="coerce")
        ok = np.isfinite(x) & (x > 0)
        assert points == int(ok.sum() + (ok & df["selected"]).sum())
        titled = [ax for ax in _all_axes(fig) if ax.get_visible() and ax.get_title()]
        assert len(titled) >= df["cell"].nunique()
    fig = figures_tuning.tuning_progress(df, look)
    fig.savefig(io.BytesIO(), format="png", dpi=40)


def test_isolation_marks_the_range_and_a_pick_at_a_bound():
    fig = figures_tuning.tuning_isolation(real_frame(plain_pick_lr=0.93), "lr", RANGES)
    plain = next(ax for ax in _all_axes(fig) if ax.get_title() == "plain")
    assert "selected at upper bound" in plain.get_xlabel()
    xs = sorted(ln.get_xdata()[0] for ln in plain.lines if ln.get_linestyle() == "--")
    assert xs == [1e-3, 1.0]
    assert len(plain.patches) == 2                           # the two shaded margins
    assert plain.get_xscale() == "log"
    fig = figures_tuning.tuning_isolation(real_frame(), "lr", None)  # no spec: no range
    assert not any(ln.get_linestyle() == "--" for ax in _all_axes(fig) for ln in ax.lines)


def test_degenerate_inputs_give_a_message_figure():
    for fig in (figures_tuning.tuning_isolation(real_frame().iloc[:0], "lr", RANGES),
                figures_tuning.tuning_isolation(real_frame(), "weight_decay", RANGES),
                figures_tuning.tuning_progress(real_frame().iloc[:0])):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts and "no tuning samples" in texts[0]


def test_best_so_far_ignores_pruned_and_failed():
    c = tuning.classify(real_frame()).assign(_selected=False)
    g = figures_tuning.best_so_far(c[c["cell"] == "mlp-3-plain"])
    assert list(g["best"]) == [0.86, 0.86, 1.0, 1.0]


# --------------------------------------------------------------------------- report items

def test_report_items(tmp_path):
    entries = tuning.report_items()
    assert [(e.kind, e.name) for e in entries] == [
        ("figure", "tuning_isolation_lr"), ("figure", "tuning_isolation_weight_decay"),
        ("figure", "tuning_progress"), ("table", "tuning")]
    ctx = SimpleNamespace(tuning=real_frame(), tune_ranges=RANGES, look=Look())
    applies = {e.name: e.applies(ctx) for e in entries}
    assert applies == {"tuning_isolation_lr": True, "tuning_isolation_weight_decay": False,
                       "tuning_progress": True, "tuning": True}
    for e in entries:
        if applies[e.name]:
            made = e.make(ctx)
            caption = e.caption(ctx) if callable(e.caption) else e.caption
            assert caption and (isinstance(made, Figure) or len(made) == 2)
    assert "[0.001, 1]" in entries[0].caption(ctx)
    none = SimpleNamespace(tuning=None, tune_ranges={}, look=Look())
    assert not any(e.applies(none) for e in entries)
    # the report registers them (analysis.report_items), in this order
    import analysis.report  # noqa: F401  registers the built-in items
    from analysis import registry
    names = [(e.kind, e.name) for e in registry.registered()
             if isinstance(e, registry.ReportItem) and e.name.startswith("tuning")]
    assert names == [(e.kind, e.name) for e in entries]
