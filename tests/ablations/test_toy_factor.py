"""Adding a factor = its registry entry + the families' declarations (+ the model code
that reads it): a toy factor registered here, and declared by the MLP family only,
reaches the CLI, the plan, trial ids, trials.parquet, layers.parquet, the statistics,
the contrasts and a figure's legend without any other change."""
import dataclasses

import pandas as pd
import pytest

import sweep
from ablations import factors, results
from ablations.arguments import spec_from_args
from ablations.factors import Factor, styled_levels
from ablations.plan import expand
from ablations.trial import run_group
from models.levels import FactorLevels
from models.mlp import MLPConfig


@pytest.fixture
def toy(monkeypatch):
    # "width_mult": no model field of that name; configure maps it onto the MLP's width.
    # The MLP family declares it (levels and default); the registry entry names no family.
    monkeypatch.setitem(MLPConfig.FACTORS, "width_mult", FactorLevels.of(("x1", "x2")))
    f = factors.register(Factor(
        name="width_mult", label="width", tag="w",
        levels=styled_levels(("x1", "x1"), ("x2", "x2")), baseline="x1",
        help="toy: MLP width x1/x2",
        configure=lambda cfg, lv: dataclasses.replace(cfg, width=cfg.width * int(lv[1:]))))
    assert f.families == ("mlp",) and f.default == {"mlp": "x1"}
    yield f
    factors.unregister("width_mult")


def test_a_toy_factor_flows_from_the_flag_to_a_figure(toy, tmp_path):
    argv = ["--families", "mlp", "--depths", "3", "--width-mult", "x1,x2", "--mode", "probe",
            "--seeds", "3", "--out", str(tmp_path), "--name", "toy", "--wandb", "disabled"]
    spec = spec_from_args(sweep.build_parser().parse_args(argv))
    trials, skipped = expand(spec)
    assert not skipped
    ids = sorted(t.trial_id for t in trials)
    assert "mlp-3-residual-w=x2-s0" in ids and "mlp-3-plain-s2" in ids and len(ids) == 12
    wide = next(t for t in trials if t.trial_id == "mlp-3-plain-w=x2-s0")
    assert wide.model_cfg.width == 512
    for t in trials:
        run_group([t], spec, spec.run_dir)
    tables = results.merge(spec.run_dir, trials)
    rows = pd.read_parquet(f"{spec.run_dir}/trials.parquet")
    assert sorted(rows.width_mult.unique()) == ["x1", "x2"]
    layers = pd.read_parquet(f"{spec.run_dir}/layers.parquet")
    assert sorted(layers.width_mult.unique()) == ["x1", "x2"]
    assert rows.groupby("width_mult").params.first().to_dict() == {
        "x1": tables["trials"][tables["trials"].width_mult == "x1"].params.iloc[0],
        "x2": tables["trials"][tables["trials"].width_mult == "x2"].params.iloc[0]}

    from analysis import contrasts, figures, stats
    # probe rows carry no final metrics: give them one so the training statistics apply
    scored = rows.assign(final_test_acc=0.5, final_train_loss=rows.probe_loss)
    cells = stats.cell_summary(scored)
    assert "width_mult" in cells.columns and set(cells.width_mult) == {"x1", "x2"}
    con = contrasts.contrasts(scored, "final_train_loss")
    mine = con[con.factor == "width_mult"]
    # x2 - x1, paired by seed, within plain and within residual
    assert sorted(mine.residual) == [False, True] and set(mine.level) == {"x2"}
    assert set(mine.baseline) == {"x1"} and (mine.n_pairs == 3).all()
    fig = figures.grad_by_layer(layers, "init")
    texts = {t.get_text() for ax in fig.axes for t in [ax.title, *ax.texts]} | {
        t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert any("x2" in s for s in texts), texts
