"""The report's "Measurements" section (analysis.report_measurements): one item per
figure and table of the view (analysis.views) of each measurements/<name>.parquet, each
isolated; a damaged file costs only its own items; He et al.'s responses replace the
block outputs in layer_response_std; and building it imports no torch."""
import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from matplotlib.figure import Figure

from ablations import measurements
from ablations.measurements import Measurement
from analysis import report, views
from analysis import report_measurements as measured
from analysis.views import FigureSpec, TableSpec
from tests.analysis.test_report import _write_results

ROOT = Path(__file__).resolve().parents[2]


def curve(df, look=None) -> Figure:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    for tid, g in df.groupby("trial_id"):
        ax.plot(g["x"], g["y"], label=tid)
    return fig


def broken(df, look=None):
    raise ValueError("no such panel")


def table(df):
    return df.groupby(["depth", "residual"], as_index=False)["y"].mean()


@pytest.fixture
def run_dir(tmp_path):
    """The report tests' results folder (MLP depths 5 and 8, both variants, 2 seeds),
    with a measurement ``tiny`` registered, its view (two figures, one raising, and a
    table) and its merged file written."""
    measurements.load_builtins()
    measurements.register(Measurement(
        "tiny", ("final",), "cheap", lambda m, d, t: None, "a test measurement"))
    views.register_view("tiny",
                        figures=(FigureSpec("curve", curve, "y against x per trial."),
                                 FigureSpec("tiny_broken", broken, "never drawn.")),
                        tables=(TableSpec("summary", table, "mean y per cell."),))
    run = tmp_path / "run"
    _write_results(run)
    trials = pd.read_parquet(run / "trials.parquet")
    keys = trials[["trial_id", "family", "model", "depth", "residual", "seed"]]
    rows = keys.merge(pd.DataFrame({"x": range(4)}), how="cross").assign(
        when="final", y=lambda d: d["x"] * d["depth"])
    (run / "measurements").mkdir()
    rows.to_parquet(run / "measurements" / "tiny.parquet")
    yield run
    measurements.unregister("tiny")
    views.unregister_view("tiny")


def test_each_figure_and_table_is_an_isolated_entry_in_a_measurements_section(run_dir):
    built = report.build(run_dir)
    assert [f.entry for f in built.failures] == [
        "could not draw tiny_broken: ValueError: no such panel"]
    assert (run_dir / "figures" / "tiny_curve.png").exists()
    assert not (run_dir / "figures" / "tiny_broken.png").exists()
    made = pd.read_csv(run_dir / "tables" / "tiny_summary.md", sep="|", skiprows=[1])
    assert len(made) == 4  # 2 depths x 2 variants
    md = (run_dir / "report.md").read_text()
    section = md[md.index("## Measurements"):]
    assert md.index("## Figures") < md.index("## Measurements")
    assert "- tiny: a test measurement" in section
    for name in ("### tiny_curve", "### tiny_broken", "### tiny_summary",
                 "could not draw tiny_broken"):
        assert name in section, name
    figures_part = md[md.index("## Figures"):md.index("## Measurements")]
    assert "tiny_curve" not in figures_part
    html = (run_dir / "report.html").read_text()
    assert "<h2>Measurements</h2>" in html and 'id="tiny_curve"' in html


def test_a_view_shows_the_measurements_of_its_trials_only(run_dir):
    report.build(run_dir, where={"depth": [5]}, formats=("png",))
    view = run_dir / "views" / "depth=5"
    made = pd.read_csv(view / "tables" / "tiny_summary.md", sep="|", skiprows=[1])
    assert len(made) == 2


def test_a_damaged_or_unregistered_file_costs_only_its_own_items(run_dir):
    bad = run_dir / "measurements" / "tiny.parquet"
    bad.write_bytes(bad.read_bytes()[:50])
    pd.DataFrame({"a": [1]}).to_parquet(run_dir / "measurements" / "mystery.parquet")
    built = report.build(run_dir, formats=("png",))
    assert [f.entry.split(":")[0] for f in built.failures] == [
        "could not read measurements/tiny.parquet"]
    assert (run_dir / "figures" / "degradation_vs_depth.png").exists()
    md = (run_dir / "report.md").read_text()
    assert ("mystery: measurements/mystery.parquet has no registered measurement of that "
            "name; not shown") in md
    assert "### tiny_curve" not in md


def responses_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """measurements/responses.parquet of the report tests' trials, measured for real on
    small MLPs of their depths (init and trained: here both at init weights)."""
    import torch

    from ablations import measure_run
    from ablations.measurements import MeasureData
    from ablations.plan import expand
    from ablations.spec import AblationSpec
    m = measurements.get("responses")
    x = torch.randn(64, 3, 8, 8)
    data = MeasureData(x, torch.zeros(64, dtype=torch.long), x, torch.zeros(64), "cpu")
    spec = AblationSpec(families=("mlp",), depths=(5, 8), seeds=2, residual="both")
    frames = []
    for t in expand(spec)[0]:
        t = dataclasses.replace(t, model_cfg=dataclasses.replace(t.model_cfg, width=16,
                                                                 in_features=3 * 8 * 8))
        torch.manual_seed(t.seed)
        model = t.model_cfg.build().eval()
        frames.append(measure_run.measure_one(m, t, {"init": lambda: model,
                                                     "final": lambda: model}, data))
    assert set(pd.concat(frames).trial_id) == set(trials.trial_id)
    return pd.concat(frames, ignore_index=True)


def test_layer_response_std_draws_he_et_als_responses_when_measured(run_dir, tmp_path):
    rows = responses_rows(pd.read_parquet(run_dir / "trials.parquet"))
    rows.to_parquet(run_dir / "measurements" / "responses.parquet")
    built = report.build(run_dir, formats=("png",))
    assert [f.name for f in built.failures] == ["tiny_broken"]
    md = (run_dir / "report.md").read_text()
    figures_part = md[md.index("## Figures"):md.index("## Measurements")]
    caption = figures_part[figures_part.index("### layer_response_std"):]
    assert caption.split("\n\n")[2].startswith(
        "Std of each 3x3 conv's output after BN, before the addition (He et al. 2016, Fig. 7)")
    assert "from measurements/responses.parquet, trained networks" in caption
    assert (run_dir / "figures" / "responses_std.png").exists()
    # the report process: no torch, even with the built-in measurements' figures
    code = ("import sys, matplotlib; matplotlib.use('Agg'); from analysis import report; "
            f"b = report.build({str(run_dir)!r}, formats=('png',)); "
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run_dir / "figures" / "layer_response_std.png").exists()


def _ylabels(fig) -> set[str]:
    return {ax.get_ylabel() for ax in fig.axes} - {""}


def test_layer_response_std_without_responses_is_block_output_std_not_fig_7(run_dir):
    # layers.parquet's act_std: the block outputs, after the addition; no responses file
    layers = pd.read_parquet(run_dir / "layers.parquet")
    act = layers[layers["stat"] == "act_mean_abs"].assign(stat="act_std")
    pd.concat([layers, act], ignore_index=True).to_parquet(run_dir / "layers.parquet")
    report.build(run_dir, formats=("png",))
    md = (run_dir / "report.md").read_text()
    figures_part = md[md.index("## Figures"):md.index("## Measurements")]
    caption = figures_part[figures_part.index("### layer_response_std"):].split("\n\n")[2]
    assert caption.startswith("Block output std: the std of the stem's, each block's")
    assert "not He et al.'s Fig. 7" in caption and "(He et al. 2016, Fig. 7)" not in caption
    assert (run_dir / "figures" / "layer_response_std.png").exists()
    from analysis.figures_layers import BLOCK_OUTPUT_STD
    from analysis.style import DEFAULT_LOOK
    c = SimpleNamespace(run_dir=run_dir, layers=pd.concat([layers, act]), trials=None,
                        look=DEFAULT_LOOK)
    assert _ylabels(measured.response_std(c)) == {BLOCK_OUTPUT_STD}


def test_responses_caption_and_label_say_per_channel_or_old_file(run_dir):
    from tests.measurements.conftest import trial_keys as keys
    from analysis.views import responses as rs
    from analysis.style import DEFAULT_LOOK
    rows = [dict(keys("resnet", 8, r, 0, w), layer=f"l{i}", layer_index=i,
                 std_channel=1.0 + i, std_tensor=2.0 + i)
            for r in (True, False) for w in ("init", "final") for i in range(3)]
    path = run_dir / "measurements" / "responses.parquet"
    c = SimpleNamespace(run_dir=run_dir, layers=None, trials=None, look=DEFAULT_LOOK)
    pd.DataFrame(rows).to_parquet(path)
    assert measured.PER_CHANNEL in measured.responses_caption(c)
    got, when, ylabel = measured.response_rows(c)
    assert (when, ylabel) == ("late", "response std (per channel)")
    assert list(got["value"][:3]) == [1.0, 2.0, 3.0]
    assert _ylabels(measured.response_std(c)) == {"response std (per channel)"}
    # a file measured before the per-channel std: its "std" is the whole-tensor one
    old = pd.DataFrame(rows).drop(columns=["std_channel", "std_tensor"]).assign(
        std=[2.0 + r["layer_index"] for r in rows])
    old.to_parquet(path)
    caption = measured.responses_caption(c)
    assert measured.WHOLE_TENSOR in caption and measured.PER_CHANNEL not in caption
    got, _, ylabel = measured.response_rows(c)
    assert ylabel == f"response std ({rs.OLD_FILE})" and list(got["value"][:3]) == [2.0, 3.0, 4.0]
    assert _ylabels(measured.response_std(c)) == {ylabel}
