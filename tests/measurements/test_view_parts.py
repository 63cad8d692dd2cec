"""The table pieces every measurement view shares (analysis/views/parts.py): one row per cell
in the registry's level order with the single-level factors and a redundant model column
hidden, the per-trial means, and the mean ± interval columns, on hand-made frames."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd

from analysis.views.parts import cell_table, per_trial, when_means


def _rows(keys, depths=(20, 8), model=None) -> pd.DataFrame:
    """Two rows (units) per trial: resnet at ``depths``, plain and residual, norm batch and
    none, seeds 0 and 1, trained; ``value`` = 10 * seed + unit. Built deepest first and
    residual first, so only the sort can put the cells in order."""
    rows = [dict(keys("resnet", d, r, s, norm=n), unit=u, value=10.0 * s + u)
            for d in depths for r in (True, False) for n in ("none", "batch")
            for s in (0, 1) for u in (0, 1)]
    df = pd.DataFrame(rows)
    return df if model is None else df.assign(model=model)


def test_cell_table_one_row_per_cell_in_level_order(keys):
    seen = []

    def summarize(g):
        seen.append(g)
        return {"rows": len(g), "values": " ".join(f"{v:g}" for v in sorted(g["value"]))}
    t = cell_table(_rows(keys), summarize)
    # model repeats family, block/branch_scale/shortcut have one level (n/a is none): hidden
    assert list(t.columns) == ["family", "depth", "variant", "norm", "seeds", "rows", "values"]
    assert list(zip(t["depth"], t["variant"], t["norm"])) == [
        (d, v, n) for d in (8, 20) for v in ("plain", "residual") for n in ("batch", "none")]
    assert (t["seeds"] == 2).all() and (t["rows"] == 4).all()
    assert (t["values"] == "0 1 10 11").all()
    assert all(g["depth"].nunique() == g["residual"].nunique() == g["norm"].nunique() == 1
               for g in seen)


def test_cell_table_keeps_model_for_presets_and_names_levels(keys):
    df = _rows(keys, depths=(8,), model="small_resnet18")
    df = df[df["norm"] == "batch"]  # norm at one level: hidden too
    t = cell_table(df, lambda g: {})
    assert list(t.columns) == ["family", "model", "depth", "variant", "seeds"]
    assert list(t["model"]) == ["small_resnet18"] * 2 and list(t["variant"]) == ["plain",
                                                                               "residual"]
    assert cell_table(df.iloc[:0], lambda g: {}) is None


def test_per_trial_means_over_the_measurements_own_columns(keys):
    df = _rows(keys, depths=(8,))
    t = per_trial(df, "value", own=["unit", "value"])
    assert len(t) == 8 and "unit" not in t and set(t["value"]) == {0.5, 10.5}
    assert list(t.columns[:2]) == ["trial_id", "when"] and {"seed", "norm"} <= set(t.columns)
    by_unit = per_trial(df, "value", by=("unit",), own=["unit", "value"])
    assert len(by_unit) == 16 and list(by_unit.columns[:3]) == ["trial_id", "when", "unit"]


def test_when_means_exact(keys):
    # per trial (seed 0, 1) at init: 4 and 6, trained: 0.05 and 0.0542; t_{0.975, 1} = 12.706
    t = pd.DataFrame([dict(keys("resnet", 8, True, s, w), x=x, y=float("nan"))
                      for s, (a, b) in enumerate([(4.0, 0.05), (6.0, 0.0542)])
                      for w, x in (("init", a), ("final", b))])
    columns = [("x at init", "init", "x"), ("x trained", "final", "x"), ("y", "final", "y")]
    row = cell_table(t, when_means(columns)).iloc[0]
    assert row["seeds"] == 2 and list(row.index[-3:]) == ["x at init", "x trained", "y"]
    assert row["x at init"] == "5.00 ± 12.71"        # sd sqrt(2): 12.706 * sqrt(2) / sqrt(2)
    assert row["x trained"] == "0.0521 ± 0.0267"     # ~3 significant digits: 4 decimals
    assert row["y"] == "—"                            # no finite value
    one = cell_table(t[t["seed"] == 0], when_means(columns)).iloc[0]
    assert one["x at init"] == "4.00" and one["seeds"] == 1  # one seed: no interval


def test_imports_no_torch_and_registers_nothing():
    # the report draws every measurement's figures without torch; and importing these
    # helpers registers no measurement
    code = ("import sys; import analysis.views.parts; "
            "from ablations import measurements as m; assert not m._REGISTRY, m._REGISTRY; "
            "import ablations.measurements.landscape; "
            "assert list(m._REGISTRY) == ['landscape', 'landscape2d'], list(m._REGISTRY); "
            "m.load_builtins(); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
