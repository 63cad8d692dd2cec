"""The one registry of report items (analysis.registry): a third party's figure, table,
provider and section reach the report like the built-in ones; duplicates raise; the
plan keeps the report's order."""
import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
from matplotlib.figure import Figure

from ablations import factors
from analysis import registry, report, report_items
from analysis.registry import Provider, ReportItem
from tests.analysis.test_report import _write_results


def _figure(c) -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot(range(len(c.trials)))
    return fig


def _depths(c) -> pd.DataFrame:
    return c.trials.groupby("depth", as_index=False)["params"].max()


@pytest.fixture
def extra():
    """A third party's items: a figure, a table, a provider of one table per depth, and a
    section of its own with an intro line; all removed afterwards."""
    registry.register_section("Extras", lambda c, g: [f"{len(c.trials)} trials seen"])
    registry.register(ReportItem("figure", "extra_trials", lambda c: c.trials is not None,
                                 _figure, "One point per trial."))
    registry.register(ReportItem("table", "extra_params", lambda c: c.trials is not None,
                                 _depths, lambda c: f"Largest model of {len(c.trials)} trials."))
    registry.register_provider(Provider(
        "extra per depth", "table",
        lambda c, g: [ReportItem("table", f"extra_depth_{d}", lambda _: True,
                                 lambda c, d=d: _depths(c)[lambda t: t["depth"] == d],
                                 f"Depth {d}.", "Extras")
                      for d in sorted(c.trials["depth"].unique())],
        "Extras"))
    yield
    for name in ("extra_trials", "extra_params", "extra per depth"):
        registry.unregister(name)
    registry.unregister_section("Extras")


def test_third_party_items_reach_the_report(tmp_path, extra):
    _write_results(tmp_path, train=False)
    result = report.build(tmp_path, formats=("png",), jobs=1)
    assert result.failures == []
    files = {p.name for sub in ("figures", "tables") for p in (tmp_path / sub).iterdir()}
    assert {"extra_trials.png", "extra_params.md", "extra_params.tex", "extra_depth_5.md",
            "extra_depth_8.md"} <= files
    md = (tmp_path / "report.md").read_text()
    tables = md[md.index("## Tables"):md.index("## Figures")]
    figures = md[md.index("## Figures"):md.index("## Extras")]
    extras = md[md.index("## Extras"):md.index("## Weights & Biases")]
    assert "### extra_params" in tables and "Largest model of 8 trials." in tables
    assert "### extra_trials" in figures and "extra_depth" not in figures
    assert extras.startswith("## Extras\n\n- 8 trials seen\n\n### extra_depth_5")
    assert "### extra_depth_8\n\nDepth 8." in extras


def test_plan_figures_first_then_tables_then_sections(tmp_path, extra):
    _write_results(tmp_path)
    ctx = SimpleNamespace(run_dir=tmp_path, trials=pd.read_parquet(tmp_path / "trials.parquet"),
                          layers=pd.read_parquet(tmp_path / "layers.parquet"), epochs=None,
                          tuning=None, look=None)
    sections = registry.plan(ctx)
    assert [s.title for s in sections][:1] == [""] and "Extras" in [s.title for s in sections]
    main = sections[0].items
    kinds = [i.kind for i in main]
    assert kinds == sorted(kinds, key=lambda k: k != "figure")  # every figure, then tables
    names = [i.name for i in main]
    assert names[:2] == ["interaction", "degradation_vs_depth"]
    # registration order within a kind: the built-ins, tuning, then the per-run providers,
    # then a third party's
    assert names.index("act_through_training") < names.index("tuning_progress") \
        < names.index("features_mlp-5-residual-s0") < names.index("extra_trials")
    assert names.index("survivorship") < names.index("tuning") < names.index("grad_mlp-5") \
        < names.index("extra_params")
    extras = next(s for s in sections if s.title == "Extras")
    assert [i.name for i in extras.items] == ["extra_depth_5", "extra_depth_8"]


def test_duplicates_raise_or_fail_without_stopping_the_build(tmp_path, extra):
    same = ReportItem("figure", "extra_trials", lambda c: True, _figure, "again")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(same)
    registry.register(dataclasses.replace(same, kind="table", make=_depths))  # other files
    with pytest.raises(ValueError, match="already registered"):
        registry.register_provider(Provider("extra per depth", "table", lambda c, g: []))
    with pytest.raises(ValueError, match="not registered"):
        registry.register(dataclasses.replace(same, name="x", section="Nowhere"))
    with pytest.raises(ValueError, match="kind 'chart'"):
        ReportItem("chart", "x", lambda c: True, _figure, "")
    # a provider that yields a name already planned: that item fails, the rest is built
    registry.register_provider(Provider(
        "clash", "figure", lambda c, g: [dataclasses.replace(same, section="")]))
    try:
        _write_results(tmp_path, train=False)
        result = report.build(tmp_path, formats=("png",), jobs=1)
    finally:
        registry.unregister("clash")
    assert [f.entry.split(":")[0] for f in result.failures] == ["could not draw extra_trials"]
    assert (tmp_path / "figures" / "extra_trials.png").exists()
    assert (tmp_path / "tables" / "extra_trials.md").exists()


def test_a_provider_that_raises_costs_its_own_items(tmp_path):
    def boom(c, g):
        raise RuntimeError("no listing")
    registry.register_provider(Provider("broken listing", "table", boom))
    try:
        _write_results(tmp_path, train=False)
        result = report.build(tmp_path, formats=("png",), jobs=1)
    finally:
        registry.unregister("broken listing")
    assert [f.entry for f in result.failures] == [
        "could not make table broken listing: RuntimeError: no listing"]
    assert (tmp_path / "tables" / "summary.md").exists()


def test_the_paired_caption_lists_the_factor_registry(tmp_path):
    """The factors of the results' columns, from the registry: a folder from before a
    factor existed keeps its caption; a new factor's column adds it."""
    _write_results(tmp_path)
    trials = pd.read_parquet(tmp_path / "trials.parquet").assign(
        norm="batch", block="post", branch_scale="one", shortcut="projection")
    assert report_items.contrasted_levels(trials) == (
        "residual minus plain; norm, block, branch scale, shortcut against batch, post, one, "
        "projection")
    assert report_items.contrasted_levels(trials[["residual", "norm"]]) == (
        "residual minus plain; norm against batch")
    factors.register(factors.Factor(
        name="toy_act", label="activation",
        levels=(factors.Level("relu", "ReLU", "#0173b2", "o"),
                factors.Level("gelu", "GELU", "#de8f05", "s")),
        baseline="relu", default={"mlp": "relu"}, families=("mlp",)))
    try:
        assert report_items.contrasted_levels(trials.assign(toy_act="relu")).endswith(
            "shortcut, toy act against batch, post, one, projection, relu")
        assert "toy act" in report_items.contrasted_levels()
        assert "toy act" not in report_items.contrasted_levels(trials)
    finally:
        factors.unregister("toy_act")
