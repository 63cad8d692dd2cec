"""The "Extend resablate" recipes of the docs, run as written: the code blocks are read
from docs/how-to/extending.md, so a recipe that stops working fails here instead of
misleading a reader.

* Adding a measurement: its two files are put in a temporary folder that joins the
  ``ablations.measurements`` and ``analysis.views`` packages; the measurement runs on a
  small network and its view draws the figure and the table from the merged rows.
* Adding a figure or a table: the ``register(ReportItem(...))`` block is run and a report
  is built on a small results folder; the table is there, with the numbers it claims.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "docs" / "how-to" / "extending.md"


def readme_block(after: str) -> str:
    """The first ```python block after the line containing ``after`` in the recipes page."""
    text = RECIPES.read_text()
    start = text.index(after)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m, f"no python block after {after!r} in {RECIPES}"
    return m.group(1)


@pytest.fixture
def weightnorm(tmp_path, monkeypatch):
    """The recipe's weightnorm measurement and view, importable by their real names."""
    from ablations import measurements
    from analysis import views
    (tmp_path / "m").mkdir()
    (tmp_path / "v").mkdir()
    (tmp_path / "m" / "weightnorm.py").write_text(
        readme_block("`ablations/measurements/weightnorm.py`:"))
    (tmp_path / "v" / "weightnorm.py").write_text(readme_block("`analysis/views/weightnorm.py`:"))
    monkeypatch.setattr(measurements, "__path__", [*measurements.__path__, str(tmp_path / "m")])
    monkeypatch.setattr(views, "__path__", [*views.__path__, str(tmp_path / "v")])
    yield
    measurements.unregister("weightnorm")
    for mod in ("ablations.measurements.weightnorm", "analysis.views.weightnorm"):
        sys.modules.pop(mod, None)


def test_the_measurement_recipe_measures_and_draws(weightnorm):
    import torch

    import models
    from ablations import measurements
    from analysis import views
    from analysis.style import DEFAULT_LOOK
    from tests.measurements.conftest import trial_keys
    import ablations.measurements.weightnorm  # noqa: F401  registers it

    m = measurements.get("weightnorm")
    assert m.when == ("init", "final") and "weightnorm" in measurements.names()
    rows = []
    for residual in (False, True):
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            model = models.create_model("mlp", depth=4, residual=residual).eval()
            before = [p.clone() for p in model.parameters()]
            for when in ("init", "final"):
                out = m.fn(model, None, None)
                assert list(out.columns) == ["unit", "unit_index", "weight_norm"]
                assert len(out) == len(model.units())
                rows.append(out.assign(**trial_keys("mlp", 4, residual, seed, when)))
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
            first = model.units()[0][1]
            expected = float(torch.cat([p.detach().flatten() for p in first.parameters()]).norm())
            assert out["weight_norm"].iloc[0] == pytest.approx(expected, rel=1e-6)
    df = pd.concat(rows, ignore_index=True)
    (fig,) = [f.draw(df, DEFAULT_LOOK) for f in views.figures("weightnorm")]
    assert fig.axes and any(ax.lines for ax in fig.axes)
    (table,) = [t.make(df) for t in views.tables("weightnorm")]
    assert table is not None and len(table) == 2  # plain and residual mlp-4
    assert [f.name for f in views.figures("weightnorm")] == ["weightnorm_by_unit"]
    assert [t.name for t in views.tables("weightnorm")] == ["weightnorm"]


def test_the_figure_recipe_adds_its_table_to_the_report(tmp_path):
    from analysis import registry, report
    trials = pd.DataFrame([
        {"trial_id": f"mlp-5-{'residual' if r else 'plain'}-s{s}", "family": "mlp",
         "model": "mlp", "depth": 5, "residual": r, "seed": s, "status": "completed",
         "final_test_acc": 0.5, "final_train_loss": 0.3, "wall_seconds": 10.0 + 4 * r + s}
        for r in (False, True) for s in (0, 1)])
    run = tmp_path / "run"
    run.mkdir()
    trials.to_parquet(run / "trials.parquet")
    exec(compile(readme_block("## Adding a figure or a table"), str(RECIPES), "exec"), {})
    try:
        built = report.build(run, formats=("png",))
    finally:
        registry.unregister("wall_time")
    md = (run / "tables" / "wall_time.md").read_text()
    assert "mean wall seconds" in md and "10.5" in md and "14.5" in md
    assert not [f for f in built.failures if "wall_time" in str(f)]
    assert "Mean wall time per trial, seconds." in (run / "report.md").read_text()
