"""Every figure function returns a Figure, survives inf/NaN and missing rows; saving works."""
import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis import figures
from analysis.saving import save_figure
from analysis.style import MARKERS, PALETTE, VARIANT_ORDER, Look, paper_context, variant_of

SEEDS = (0, 1)
DEPTHS = (5, 8)
TRAIN_STEPS = (0, 100, 200, 300)


def _layers() -> pd.DataFrame:
    """MLP, depths 5 and 8, both variants, 2 seeds; plain depth 8 seed 1 diverges (inf, NaN)."""
    rows = []
    for depth in DEPTHS:
        for residual in (False, True):
            for seed in SEEDS:
                diverged = depth == 8 and not residual and seed == 1
                base = dict(trial_id=f"mlp-{depth}-{residual}-s{seed}", family="mlp", model="mlp",
                            depth=depth, residual=residual, seed=seed)
                for phase, steps in (("init", (0,)), ("train", TRAIN_STEPS)):
                    for step in steps:
                        bad = diverged and step >= 200
                        for i in range(depth):
                            g = 1e-3 if residual else 1e-3 * 0.5 ** (depth - 1 - i)
                            a = (1 + 0.1 * i) if residual else 0.8 ** i
                            for layer, stat, v in ((f"layers.{i}.weight", "grad_mean_abs", g * (1 + seed)),
                                                   (f"layers.{i}", "act_mean_abs", a * (1 + step / 300)),
                                                   (f"layers.{i}", "act_std", a)):
                                rows.append({**base, "phase": phase, "step": step, "epoch": step // 100,
                                             "layer": layer, "layer_index": i, "stat": stat,
                                             "value": (np.inf if stat.startswith("grad") else np.nan)
                                             if bad else v})
    return pd.DataFrame(rows)


def _epochs() -> pd.DataFrame:
    rows = []
    for depth in DEPTHS:
        for residual in (False, True):
            for seed in SEEDS:
                diverged = depth == 8 and not residual and seed == 1
                for e in range(1, (4 if diverged else 10) + 1):
                    loss = np.inf if diverged and e == 4 else 2.0 / e
                    rows.append(dict(trial_id=f"mlp-{depth}-{residual}-s{seed}", family="mlp",
                                     model="mlp", depth=depth, residual=residual, seed=seed, epoch=e,
                                     train_loss=loss, train_acc=0.1 * e, val_loss=np.nan,
                                     val_acc=np.nan, test_loss=loss * 1.1, test_acc=0.09 * e,
                                     lr=0.1 * 0.1 ** ((e > 5) + (e > 8))))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def layers():
    return _layers()


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("fn", [figures.grad_by_layer, figures.act_by_layer])
def test_layer_profiles(fn, layers):
    fig = fn(layers)
    assert isinstance(fig, Figure)
    (ax,) = _visible_axes(fig)  # one model -> one panel
    assert ax.get_yscale() == "log"
    assert len(ax.lines) == len(DEPTHS) * 2  # depth x variant
    assert ax.get_xlabel() == "layer"  # the tick labels name the layers
    colours = {mpl.colors.to_hex(line.get_color()) for line in ax.lines}
    assert colours == {mpl.colors.to_hex(PALETTE[v]) for v in VARIANT_ORDER}


def test_grad_by_layer_line_is_median_over_seeds(layers):
    ax = _visible_axes(figures.grad_by_layer(layers))[0]
    plain5 = [ln for ln in ax.lines if ln.get_marker() == MARKERS["plain"]
              and len(ln.get_xdata()) == 5][0]
    expected = [1e-3 * 0.5 ** (4 - i) * 1.5 for i in range(5)]  # seeds scale by 1 and 2
    assert np.allclose(plain5.get_ydata(), expected)


def test_train_phase_drops_diverged_values(layers):
    ax = _visible_axes(figures.grad_by_layer(layers, phase="train"))[0]
    for line in ax.lines:
        assert np.isfinite(line.get_ydata()).all()


def test_presets_get_their_own_panel(layers):
    preset = layers[layers["depth"] == 5].assign(model="seed_mlp5",
                                                 trial_id=lambda d: "p" + d["trial_id"])
    fig = figures.grad_by_layer(pd.concat([layers, preset], ignore_index=True))
    assert sorted(ax.get_title() for ax in _visible_axes(fig)) == ["mlp", "seed_mlp5"]


def test_training_curves_marks_lr_drops():
    fig = figures.training_curves(_epochs())
    axes = _visible_axes(fig)
    assert len(axes) == 2 * len(DEPTHS)  # loss and accuracy per depth
    loss_ax = axes[0]
    assert loss_ax.get_yscale() == "log"
    drops = sorted({ln.get_xdata()[0] for ln in loss_ax.lines if ln.get_linestyle() == ":"})
    assert drops == [5.5, 8.5]  # between the last epoch at the old lr and the first at the new
    for ax in axes:
        for line in ax.lines:
            assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()


def test_act_through_training(layers):
    fig = figures.act_through_training(layers)
    axes = _visible_axes(fig)
    assert len(axes) == len(DEPTHS) * 2
    assert all(len(ax.lines) == len(TRAIN_STEPS) for ax in axes)  # one line per sampled step
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


@pytest.mark.parametrize("fn", [figures.grad_by_layer, figures.act_by_layer,
                                figures.act_through_training])
def test_empty_and_nonpositive_inputs_do_not_crash(fn, layers):
    assert isinstance(fn(layers.iloc[:0]), Figure)
    assert isinstance(fn(layers.assign(value=0.0)), Figure)
    assert isinstance(fn(layers.assign(value=np.nan)), Figure)


def test_training_curves_with_all_losses_diverged():
    fig = figures.training_curves(_epochs().assign(train_loss=np.inf, test_loss=np.nan))
    axes = _visible_axes(fig)  # row-major: loss row, then accuracy row
    loss_ax, acc_ax = axes[0], axes[len(DEPTHS)]
    assert not loss_ax.lines and "no finite data" in [t.get_text() for t in loss_ax.texts]
    assert any(ln.get_linestyle() == ":" for ln in acc_ax.lines)  # LR drops still marked


def test_training_curves_without_test_columns():
    fig = figures.training_curves(_epochs().drop(columns=["test_loss", "test_acc", "lr"]))
    assert isinstance(fig, Figure)
    assert isinstance(figures.training_curves(_epochs().iloc[:0]), Figure)


def test_feature_maps_grid():
    maps = np.random.default_rng(0).normal(size=(8, 16, 16)).astype("float32")
    maps[0, 0, 0], maps[1] = np.inf, np.nan  # a bad pixel, a whole bad channel
    fig = figures.feature_maps(maps)
    assert sum(bool(ax.images) for ax in fig.axes) == 8
    assert all(not ax.axison for ax in fig.axes)  # no ticks
    image = np.random.default_rng(1).random((3, 32, 32)).astype("float32")
    fig = figures.feature_maps(maps, image, title="trial")
    assert sum(bool(ax.images) for ax in fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes][0] == "input"


def test_save_figure_writes_pdf_and_png(tmp_path, layers):
    import matplotlib.pyplot as plt
    paths = save_figure(figures.grad_by_layer(layers), tmp_path / "out" / "grad")
    assert paths == [str(tmp_path / "out" / "grad.pdf"), str(tmp_path / "out" / "grad.png")]
    assert (tmp_path / "out" / "grad.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "out" / "grad.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grad.pdf", "grad.png"]
    fig = plt.figure()
    save_figure(fig, tmp_path / "p", formats=("png",))
    assert not plt.fignum_exists(fig.number)  # closed


def test_paper_context_and_palette():
    with paper_context("single"):
        assert mpl.rcParams["pdf.fonttype"] == 42 and mpl.rcParams["ps.fonttype"] == 42
        assert mpl.rcParams["figure.figsize"][0] == pytest.approx(3.25)  # ICML column
    with pytest.raises(ValueError):
        paper_context("triple")
    assert VARIANT_ORDER == ("plain", "residual")
    assert PALETTE["plain"] != PALETTE["residual"] and MARKERS["plain"] != MARKERS["residual"]
    assert variant_of(pd.Series([True, False, np.True_])).tolist() == ["residual", "plain", "residual"]


def test_training_curves_names_diverged_trials():
    ep = _epochs()
    first = ep["trial_id"].iloc[0]
    ep.loc[ep["trial_id"] == first, "train_loss"] = np.nan
    fig = figures.training_curves(ep)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("1 diverged (epoch 1)" in t for t in texts), texts


def _trials() -> pd.DataFrame:
    """Trials matching ``_epochs``: plain depth 8 seed 1 diverged; one errored trial added."""
    rows = []
    for depth in DEPTHS:
        for residual in (False, True):
            for seed in SEEDS:
                diverged = depth == 8 and not residual and seed == 1
                rows.append(dict(trial_id=f"mlp-{depth}-{residual}-s{seed}", family="mlp",
                                 model="mlp", depth=depth, residual=residual, seed=seed,
                                 params=100 * depth, status="diverged" if diverged else "completed",
                                 final_train_loss=np.nan if diverged else 0.2 + 0.1 * (not residual) * depth / 8,
                                 final_test_acc=np.nan if diverged else 0.6 + 0.05 * residual + 0.01 * seed))
    rows.append(dict(trial_id="mlp-8-True-s2", family="mlp", model="mlp", depth=8, residual=True,
                     seed=2, params=800, status="error", final_train_loss=np.nan,
                     final_test_acc=np.nan))
    return pd.DataFrame(rows)


NEW_FIGURES = {
    "degradation_vs_depth": lambda: figures.degradation_vs_depth(_trials(), chance_error=0.9),
    "training_curves_by_depth": lambda: figures.training_curves_by_depth(_epochs()),
    "layer_response_std": lambda: figures.layer_response_std(_layers()),
    "gradient_flow": lambda: figures.gradient_flow(_layers()),
}


@pytest.mark.parametrize("name", sorted(NEW_FIGURES))
def test_paper_figures_render_and_save(name, tmp_path):
    fig = NEW_FIGURES[name]()
    assert isinstance(fig, Figure) and any(ax.lines for ax in fig.axes)
    paths = save_figure(fig, tmp_path / name)
    assert [p.rsplit(".", 1)[1] for p in paths] == ["pdf", "png"]
    assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_degradation_vs_depth_means_and_failure_notes():
    fig = figures.degradation_vs_depth(_trials(), chance_error=0.9)
    loss_ax, err_ax = fig.axes[0], fig.axes[1]
    # errorbar lines: the mean line of each variant, at dodged positions 0 and 1
    means = {tuple(np.round(ln.get_ydata(), 6)) for ln in loss_ax.lines if len(ln.get_xdata()) == 2}
    assert (0.2625, 0.3) in means  # plain: depth 5 = 0.2 + 0.1 * 5/8; depth 8 = 0.3 (one seed)
    assert (0.2, 0.2) in means     # residual
    notes = sorted(t.get_text() for t in loss_ax.texts)
    assert notes == ["1/2\ndiv.", "1/3\nerr."]
    assert any(abs(ln.get_ydata()[0] - 90.0) < 1e-9 for ln in err_ax.lines)  # chance line


def test_degradation_vs_depth_without_training_metrics_says_so():
    fig = figures.degradation_vs_depth(_trials().drop(columns=["final_test_acc"]))
    assert "needs trained trials" in fig.axes[0].texts[0].get_text()


def test_layer_response_std_sorted_panel_is_descending():
    fig = figures.layer_response_std(_layers())
    sorted_ax = fig.axes[1]
    for ln in sorted_ax.lines:
        y = np.asarray(ln.get_ydata(), dtype=float)
        assert (np.diff(y) <= 0).all()


def test_gradient_flow_has_init_and_late_columns():
    fig = figures.gradient_flow(_layers())
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["mlp: at init", "mlp: late in training\nstep 300 (epoch 3)"]
    probe_only = _layers()[lambda d: d.phase == "init"]
    titles = [ax.get_title() for ax in figures.gradient_flow(probe_only).axes]
    assert titles == ["mlp: at init"]


@pytest.mark.parametrize("style,width,inches", [("paper", "single", 3.25), ("paper", "double", 6.75),
                                                ("slides", "double", 5.29)])  # 0.96 x 398.34 pt
def test_look_sets_the_figure_width(style, width, inches):
    look = Look(style, width)
    assert look.inches == pytest.approx(inches, abs=0.01)
    fig = figures.gradient_flow(_layers(), look=look)
    assert fig.get_size_inches()[0] == pytest.approx(look.inches)
    with pytest.raises(ValueError, match="paper, slides"):
        Look("poster", "single")


def test_training_curves_by_depth_one_colour_per_depth_across_panels():
    ep = pd.concat([_epochs(), _epochs().assign(family="resnet", model="resnet", depth=34)])
    fig = figures.training_curves_by_depth(ep)
    legend = {t.get_text(): h.get_color() for t, h in
              zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    resnet_ax = [ax for ax in fig.axes if ax.get_title() == "resnet, plain"][0]
    assert {ln.get_color() for ln in resnet_ax.lines} == {legend["depth 34"]}


def test_late_panels_leave_out_failed_trials_and_name_them():
    trials = _trials()
    fig = figures.gradient_flow(_layers(), trials=trials)
    late = [ax for ax in fig.axes if ax.get_title().startswith("mlp: late in training")][0]
    assert late.get_title() == ("mlp: late in training\nstep 300 (epoch 3)\n"
                                "(not shown: plain: 1 diverged;\nresidual: 1 error)")
    # the diverged plain depth-8 seed 1 is gone: plain depth 8 is seed 0 alone (no band)
    init = [ax for ax in fig.axes if ax.get_title() == "mlp: at init"][0]
    assert init.get_title() == "mlp: at init"


# --------------------------------------------------------------------------- regressions (issue 13)

def _row_frame(values: dict, phase: str = "train", step: int = 0) -> pd.DataFrame:
    """act_mean_abs rows of one MLP depth, one seed, per variant ``values[residual]``."""
    rows = []
    for residual, vals in values.items():
        for i, v in enumerate(vals):
            rows.append(dict(trial_id=f"mlp-{len(vals)}-{residual}-s0", family="mlp", model="mlp",
                             depth=len(vals), residual=residual, seed=0, phase=phase, step=step,
                             epoch=1, layer=f"layers.{i}", layer_index=i, stat="act_mean_abs",
                             value=v))
    return pd.DataFrame(rows)


# The real 3-epoch synthetic sweep's depth-3 activations at step 0: plain spans a
# factor 2.5 (log), residual only 1.4 (linear on its own), in one shared-y row.
WIDE_THEN_NARROW = {False: [0.2315, 0.0957, 0.0940], True: [0.2315, 0.3272, 0.2546]}


@pytest.mark.parametrize("values", [WIDE_THEN_NARROW, {False: [1.0, 1.1, 1.2], True: [1.0, 5.0, 9.0]}])
def test_act_through_training_decides_log_once_per_shared_row(values, tmp_path):
    fig = figures.act_through_training(_row_frame(values))  # raised AttributeError (ScalarFormatter)
    axes = _visible_axes(fig)
    assert len(axes) == 2
    assert {ax.get_yscale() for ax in axes} == {"log"}  # the row's range, not a panel's, decides
    save_figure(fig, tmp_path / "act")


def test_shared_row_with_only_narrow_data_stays_linear_without_offset():
    fig = figures.act_through_training(_row_frame({False: [2.302, 2.3025, 2.303],
                                                   True: [2.3021, 2.3022, 2.3023]}))
    axes = _visible_axes(fig)
    assert {ax.get_yscale() for ax in axes} == {"linear"}
    fig.canvas.draw()
    assert axes[0].yaxis.get_offset_text().get_text() == ""  # no "+2.3" offset to decode


def test_log_axis_group_decision_in_either_order():
    from analysis.style import log_axis
    for first, second in (((0.1, 0.3), (1.0, 1.1)), ((1.0, 1.1), (0.1, 0.3))):
        fig = Figure()
        a, b = fig.subplots(1, 2, sharey=True)
        a.plot([0, 1], first)
        b.plot([0, 1], second)
        log_axis(a)
        log_axis(b)  # a second call on a sibling changes nothing and never raises
        assert a.get_yscale() == b.get_yscale() == "log"


def test_gradient_flow_init_wide_late_narrow_row_does_not_crash():
    # _profile_grid's twin of the bug: the init panel makes the shared row log, then
    # the late panel's narrow range asked for a ScalarFormatter on it.
    init = _row_frame(WIDE_THEN_NARROW, phase="init").assign(stat="grad_mean_abs",
                                                             layer=lambda d: d["layer"] + ".weight")
    late = _row_frame({False: [1.0, 1.01, 1.02], True: [1.0, 1.02, 1.03]}, step=300) \
        .assign(stat="grad_mean_abs", epoch=3, layer=lambda d: d["layer"] + ".weight")
    fig = figures.gradient_flow(pd.concat([init, late], ignore_index=True))
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["mlp: at init",
                                               "mlp: late in training\nstep 300 (epoch 3)"]
    assert {ax.get_yscale() for ax in axes} == {"log"}


def test_without_a_sample_after_step_0_there_is_no_late_panel():
    # A smoke run: the only training sample is step 0, the initial network.
    smoke = _layers()[lambda d: (d.phase == "train") & (d.step == 0)]
    titles = [ax.get_title() for ax in _visible_axes(figures.gradient_flow(smoke))]
    assert titles == ["mlp: at init\n(no sample after initialization)"]
    titles = [ax.get_title() for ax in _visible_axes(figures.layer_response_std(smoke))]
    assert titles == ["mlp: in network order\nat init: no later sample",
                      "mlp: sorted\nat init: no later sample"]
    # with a probe at init, a train sample at step 0 is no later either
    probe = _layers()[lambda d: (d.phase == "init") | (d.step == 0)]
    titles = [ax.get_title() for ax in _visible_axes(figures.gradient_flow(probe))]
    assert titles == ["mlp: at init\n(no sample after initialization)"]


def test_late_panels_are_titled_with_their_step():
    titles = [ax.get_title() for ax in _visible_axes(figures.layer_response_std(_layers()))]
    assert titles == ["mlp: in network order\nstep 300 (epoch 3)", "mlp: sorted\nstep 300 (epoch 3)"]
    # trials stopped at different steps: the title gives the range
    uneven = _layers()[lambda d: ~((d.depth == 5) & (d.step == 300))]
    titles = [ax.get_title() for ax in _visible_axes(figures.gradient_flow(uneven))]
    assert titles[1] == "mlp: late in training\nsteps 200-300 (epochs 2-3)"


def test_a_panel_whose_trials_were_only_sampled_at_init_says_so():
    # the resnet trials have only step 0; the mlp ones were trained on
    resnet = _layers()[lambda d: d.step == 0].assign(family="resnet", model="resnet",
                                                     trial_id=lambda d: "r" + d["trial_id"])
    fig = figures.gradient_flow(pd.concat([_layers(), resnet], ignore_index=True))
    late = [ax for ax in _visible_axes(fig) if ax.get_title().startswith("resnet: late")][0]
    assert not late.lines
    assert "no completed trial\nsampled after initialization" in [t.get_text() for t in late.texts]
    assert "plain: 4 sampled only at init" in " ".join(late.get_title().split())  # wrapped


def _deep_layers(n: int = 110) -> pd.DataFrame:
    """One ResNet-like network with ``n`` tapped layers, both variants, act and grad rows."""
    names = ["stem"] + [f"layer{s}.{j}" for s in (1, 2, 3) for j in range((n - 2) // 3)] + ["fc"]
    names = names[:n]
    rows = []
    for residual in (False, True):
        for phase, step in (("init", 0), ("train", 500)):
            for i, name in enumerate(names):
                for layer, stat in ((f"{name}.weight", "grad_mean_abs"), (name, "act_mean_abs"),
                                    (name, "act_std")):
                    rows.append(dict(trial_id=f"r-{residual}", family="resnet", model="resnet",
                                     depth=n, residual=residual, seed=0, phase=phase, step=step,
                                     epoch=step // 100, layer=layer, layer_index=i, stat=stat,
                                     value=1e-3 * (1 + i) * (2 if residual else 1)))
    return pd.DataFrame(rows), names


def _tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_layer_names_are_the_x_tick_labels(layers):
    ax = _visible_axes(figures.grad_by_layer(layers))[0]
    assert _tick_texts(ax) == [f"layers.{i}" for i in range(max(DEPTHS))]
    for fig in (figures.act_through_training(layers), figures.gradient_flow(layers)):
        for ax in _visible_axes(fig):
            assert set(_tick_texts(ax)) <= {f"layers.{i}" for i in range(max(DEPTHS))}
            assert _tick_texts(ax)[0] == "layers.0"
    network, ranked = _visible_axes(figures.layer_response_std(layers))
    assert _tick_texts(network)[0] == "layers.0"
    # rank stays the x: integer ticks, no names
    assert not set(_tick_texts(ranked)) & {f"layers.{i}" for i in range(max(DEPTHS))}
    assert all(float(x).is_integer() for x in ranked.get_xticks())


@pytest.mark.parametrize("look", [Look("paper", "single"), Look("paper", "double"),
                                  Look("slides", "double")])
@pytest.mark.parametrize("fn", [figures.grad_by_layer, figures.act_by_layer,
                                figures.gradient_flow, figures.layer_response_std,
                                figures.act_through_training])
def test_deep_network_tick_labels_are_thinned_and_never_overlap(fn, look):
    frame, names = _deep_layers(110)
    fig = fn(frame, look=look)
    fig.canvas.draw()  # constrained layout: the panels' real widths
    for ax in _visible_axes(fig):
        if ax.get_xlabel() == "rank by magnitude":
            continue
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        texts = [t.get_text() for t in labels]
        assert 2 <= len(texts) <= 16, texts
        assert set(texts) <= set(names) and texts[0] == "stem" and texts[-1] == "fc"
        # Parallel labels rotated by a degrees and d points apart are d*sin(a) apart
        # across their lines; that must exceed the line height of their font.
        x = np.sort([ax.transData.transform((tick, 0))[0] for tick in ax.get_xticks()])
        d = np.diff(x).min() * 72 / fig.dpi
        a = np.radians(labels[0].get_rotation())
        assert 0 < a < np.pi / 2 + 1e-9
        assert d * np.sin(a) >= 1.2 * labels[0].get_fontsize(), (d, labels[0].get_fontsize())


# --------------------------------------------------------------------------- factors (issue 14)

from ablations import factors as _factors  # noqa: E402
from analysis.variants import keyed, level_style  # noqa: E402

ORANGE, BLUE = PALETTE["plain"], PALETTE["residual"]


def _default_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (MLP rows) with every factor column at the MLP's default level, as a
    residual-only sweep writes them today: n/a where a factor does not apply."""
    return df.assign(norm="none", block="post",
                     branch_scale=np.where(df["residual"], "one", _factors.NA),
                     shortcut=_factors.NA)


def _structure(fig) -> dict:
    """What a reader sees of a figure, colours and markers included (not the data)."""
    axes = _visible_axes(fig)
    return {"titles": [ax.get_title() for ax in axes],
            "lines": [len(ax.lines) for ax in axes],
            "styles": [sorted({(mpl.colors.to_hex(ln.get_color()), str(ln.get_marker()))
                               for ln in ax.lines}) for ax in axes],
            "legend": [[t.get_text() for t in lg.get_texts()] for lg in fig.legends],
            "size": tuple(np.round(fig.get_size_inches(), 3))}


FIGURES = {
    "degradation_vs_depth": (lambda f: figures.degradation_vs_depth(f, chance_error=0.9), _trials),
    "training_curves": (figures.training_curves, _epochs),
    "training_curves_by_depth": (figures.training_curves_by_depth, _epochs),
    "layer_response_std": (figures.layer_response_std, _layers),
    "gradient_flow": (figures.gradient_flow, _layers),
    "grad_by_layer": (figures.grad_by_layer, _layers),
    "act_by_layer": (figures.act_by_layer, _layers),
    "act_through_training": (figures.act_through_training, _layers),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_residual_only_sweep_with_factor_columns_looks_as_before(name):
    """Default-level factor columns (a residual-only sweep today) change nothing: same
    panels, titles, line counts, colours, markers and legend as the same frame written
    before the registry."""
    fn, frame = FIGURES[name]
    old, new = _structure(fn(frame())), _structure(fn(_default_columns(frame())))
    assert new == old
    said = " ".join([t for lg in old["legend"] for t in lg] + old["titles"])
    assert "plain" in said and "residual" in said


def test_residual_only_sweep_keeps_blue_circles_and_orange_squares():
    ax = _visible_axes(figures.grad_by_layer(_default_columns(_layers())))[0]
    assert {(mpl.colors.to_hex(ln.get_color()), ln.get_marker()) for ln in ax.lines} == \
        {(ORANGE, "s"), (BLUE, "o")}


# An MLP sweep crossing norm none/layer with branch scale one/invsqrt: one plain cell per
# norm, shared by both branch scales (ablations.factors.variants).
CROSSED = [("none", False, "n/a"), ("none", True, "one"), ("none", True, "invsqrt"),
           ("layer", False, "n/a"), ("layer", True, "one"), ("layer", True, "invsqrt")]


def _crossed_trials() -> pd.DataFrame:
    """Final train loss = a value per cell (so a mixed mean is detectable) + 0.01 x seed."""
    rows = []
    for k, (norm, residual, scale) in enumerate(CROSSED):
        for depth in DEPTHS:
            for seed in SEEDS:
                rows.append(dict(trial_id=f"mlp-{depth}-{k}-s{seed}", family="mlp", model="mlp",
                                 depth=depth, residual=residual, norm=norm, block="post",
                                 branch_scale=scale, shortcut="n/a", seed=seed, params=10,
                                 status="completed", final_train_loss=1.0 + k + 0.01 * seed,
                                 final_test_acc=0.5))
    return pd.DataFrame(rows)


def _crossed_layers() -> pd.DataFrame:
    """grad_mean_abs at init = 10^-k per cell k of ``CROSSED``, every layer and seed."""
    rows = []
    for k, (norm, residual, scale) in enumerate(CROSSED):
        for depth in DEPTHS:
            for seed in SEEDS:
                for i in range(depth):
                    rows.append(dict(trial_id=f"mlp-{depth}-{k}-s{seed}", family="mlp",
                                     model="mlp", depth=depth, residual=residual, norm=norm,
                                     block="post", branch_scale=scale, shortcut="n/a", seed=seed,
                                     phase="init", step=0, epoch=0, layer=f"layers.{i}.weight",
                                     layer_index=i, stat="grad_mean_abs", value=10.0 ** -k))
    return pd.DataFrame(rows)


def _legend(fig) -> list[str]:
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def _mean_lines(ax) -> list:
    """The errorbar mean lines of a headline panel (not caps, seeds or the chance line)."""
    return [ln for ln in ax.lines if ln.get_linestyle() == "-" and ln.get_marker() not in ("_", "None")]


def test_headline_facets_by_shared_factors_and_draws_residual_levels_as_lines():
    fig = figures.degradation_vs_depth(_crossed_trials())
    loss_axes = [ax for ax in _visible_axes(fig) if ax.get_title()]
    assert [ax.get_title() for ax in loss_axes] == ["mlp, layer norm", "mlp, no norm"]  # registry order
    assert _legend(fig) == ["plain", "residual, x1", "residual, x1/sqrt(blocks)", "one seed"]
    pink_diamond = level_style("branch_scale", "invsqrt")
    assert pink_diamond[0] not in (ORANGE, BLUE) and pink_diamond[1] not in ("s", "o")
    styles = {"plain": (ORANGE, "s"), "one": (BLUE, "o"), "invsqrt": pink_diamond}
    for ax, norm in zip(loss_axes, ("layer", "none")):
        lines = _mean_lines(ax)
        assert len(lines) == 3  # plain, x1, x1/sqrt(blocks): nothing pooled, nothing lost
        for ln in lines:
            scale = next(s for s, st in styles.items()
                         if (mpl.colors.to_hex(ln.get_color()), ln.get_marker()) == st)
            k = next(k for k, (n, r, s) in enumerate(CROSSED)
                     if n == norm and (s == scale or (scale == "plain" and not r)))
            assert np.allclose(ln.get_ydata(), 1.0 + k + 0.005)  # this cell's seeds only


def test_per_layer_figure_never_takes_a_median_over_two_variants():
    fig = figures.grad_by_layer(_crossed_layers())
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["mlp, layer norm", "mlp, no norm"]
    for ax, norm in zip(axes, ("layer", "none")):
        assert len(ax.lines) == len(DEPTHS) * 3
        expected = {10.0 ** -k for k, (n, _, _) in enumerate(CROSSED) if n == norm}
        for ln in ax.lines:
            y = np.unique(ln.get_ydata())
            assert len(y) == 1 and np.isclose(y[0], list(expected), rtol=1e-9).any()
    assert "residual, x1/sqrt(blocks)" in _legend(fig)


def test_a_level_has_the_same_colour_and_marker_in_every_figure():
    trials, layers = _crossed_trials(), _crossed_layers()
    epochs = layers[["trial_id", "family", "model", "depth", "residual", "norm", "block",
                     "branch_scale", "shortcut", "seed"]].drop_duplicates()
    epochs = pd.concat([epochs.assign(epoch=e, train_loss=1.0 / e, train_acc=0.1 * e,
                                      test_loss=1.0 / e, test_acc=0.1 * e, lr=0.1)
                        for e in (1, 2, 3)], ignore_index=True)

    def handles(fig):
        return {t.get_text(): (mpl.colors.to_hex(h.get_color()), h.get_marker())
                for lg in fig.legends for t, h in zip(lg.get_texts(), lg.legend_handles)
                if t.get_text().startswith(("plain", "residual"))}
    seen = [handles(figures.degradation_vs_depth(trials)), handles(figures.grad_by_layer(layers)),
            handles(figures.gradient_flow(layers)), handles(figures.training_curves(epochs))]
    assert all(s == seen[0] for s in seen) and len(seen[0]) == 3
    assert len(set(seen[0].values())) == 3


@pytest.fixture
def toy_factor(request):
    """A factor registered at test time: ``act`` relu/gelu for every variant, or with
    ``needs`` residual (a residual-only factor). Unregistered afterwards, pass or fail."""
    needs = request.param
    _factors.register(_factors.Factor(
        name="act", label="activation", tag="act",
        levels=(_factors.Level("relu", "ReLU", "#0173b2", "o"),
                _factors.Level("gelu", "GELU", "#de8f05", "s")),
        baseline="relu", default={"mlp": "relu", "resnet": "relu"}, families=("mlp", "resnet"),
        needs=needs))
    yield needs
    _factors.unregister("act")


def _toy_frame(base: pd.DataFrame, residual_only: bool) -> pd.DataFrame:
    """``base`` at act relu and again at gelu (trial ids kept apart); with a residual-only
    ``act`` the plain rows appear once, at n/a."""
    relu = base.assign(act="relu")
    gelu = base.assign(act="gelu", trial_id=base["trial_id"] + "-gelu")
    if residual_only:
        relu.loc[~relu["residual"], "act"] = _factors.NA
        gelu = gelu[gelu["residual"]]
    return pd.concat([relu, gelu], ignore_index=True)


@pytest.mark.parametrize("toy_factor", [{}, {"residual": "residual"}], indirect=True)
def test_a_factor_registered_at_test_time_shows_up_without_figure_code(toy_factor):
    residual_only = bool(toy_factor)
    fig = figures.degradation_vs_depth(_toy_frame(_trials(), residual_only), chance_error=0.9)
    titles = [ax.get_title() for ax in _visible_axes(fig) if ax.get_title()]
    if residual_only:  # lines: plain + one per level, kept apart from plain's colour
        assert titles == ["mlp"]
        assert _legend(fig) == ["plain", "residual, ReLU", "residual, GELU", "one seed"]
        gelu = fig.legends[0].legend_handles[2]
        assert mpl.colors.to_hex(gelu.get_color()) != ORANGE and gelu.get_marker() != "s"
    else:  # panels: one per level, each with plain and residual
        assert titles == ["mlp, ReLU", "mlp, GELU"]
        assert _legend(fig) == ["plain", "residual", "one seed"]
    for fn in (figures.gradient_flow, figures.grad_by_layer, figures.act_through_training):
        fig = fn(_toy_frame(_layers(), residual_only))
        said = " ".join(_legend(fig) + [ax.get_title() for ax in fig.axes])
        assert "ReLU" in said and "GELU" in said, fn.__name__
    fig = figures.training_curves(_toy_frame(_epochs(), residual_only))
    said = " ".join(_legend(fig) + [ax.get_title() for ax in fig.axes])
    assert "ReLU" in said and "GELU" in said


def test_keyed_reads_an_old_folder_as_default_levels():
    """Rows written before the registry (no columns, or NaN in a concatenated frame) read
    as their family's default level: no spurious facet, no extra variant."""
    old = _trials()
    new = _default_columns(_trials()).assign(trial_id=lambda d: d["trial_id"] + "n")
    rows, key = keyed(pd.concat([old, new], ignore_index=True))
    assert key.facet_factors == () and key.hue_factors == ()
    assert list(key.styles) == ["plain", "residual"]
    assert set(rows["facet"]) == {""}
    rows, key = keyed(pd.concat([old, new.assign(norm="layer")], ignore_index=True))
    assert key.facets == ("layer norm", "no norm")
    assert (rows.loc[rows["trial_id"].isin(old["trial_id"]), "facet"] == "no norm").all()


def test_layers_at_exactly_zero_are_named_not_hidden_by_the_log_axis():
    # a zero-initialized residual branch: its first layer gets no gradient at init
    d = _layers()
    zero = (d["residual"] & (d["phase"] == "init") & (d["stat"] == "grad_mean_abs")
            & d["layer"].isin(["layers.1.weight", "layers.3.weight"]))
    fig = figures.gradient_flow(d.assign(value=d["value"].where(~zero, 0.0)))
    init = [ax for ax in fig.axes if ax.get_title().startswith("mlp: at init")][0]
    title = " ".join(init.get_title().split())
    # two layers at each of depths 5 and 8, every seed at 0
    assert "at exactly 0 so not drawn on the log axis: residual: 4 layers" in title, title
    late = [ax for ax in fig.axes if ax.get_title().startswith("mlp: late")][0]
    assert "exactly 0" not in late.get_title()
    # a layer that is 0 in one seed only still has a line: not named
    one = zero & (d["seed"] == d["seed"].min())
    fig = figures.gradient_flow(d.assign(value=d["value"].where(~one, 0.0)))
    assert not any("exactly 0" in ax.get_title() for ax in fig.axes)


def test_a_panel_whose_every_layer_is_0_draws_and_names_them():
    d = _layers()
    d = d[d["phase"] == "init"]  # a probe: one column
    fig = figures.gradient_flow(d.assign(value=d["value"].where(
        d["stat"] != "grad_mean_abs", 0.0)))
    fig.canvas.draw()  # no log axis over limits of nothing
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert "plain: 13 layers; residual: 13 layers" in " ".join(ax.get_title().split())
