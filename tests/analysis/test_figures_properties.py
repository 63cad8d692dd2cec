"""Properties of every public figure function over generated results folders.

tests/analysis/strategies.py draws what a sweep can write: families, presets,
depths, seeds and 1..n layers; every status; NaN and inf; values from 1e-30
to 1e30, constant columns and spreads narrower than 1e-6; one variant or
both; probe sweeps, train sweeps sampled only at step 0 or later. Whatever
it draws, each figure function must return a Figure that saves as PDF and
PNG (``analysis.saving.save_figure``), and what it draws must be true: no
line without a finite point (a blank panel that does not say so), nothing
infinite, positive values on log axes, layer names as the x tick labels of
per-layer panels, and no "late" panel without a sample after initialization.

The default run takes ``EXAMPLES`` derandomized examples per figure (the
"ci" profile of tests/conftest.py, with a smaller budget: every example
renders and saves a figure); ``pytest -m slow`` runs ``SLOW_EXAMPLES`` over
bigger folders.
"""
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import matplotlib as mpl
from matplotlib.figure import Figure

from analysis import figures, stats
from ablations import levels
from analysis.saving import save_figure
from analysis.style import LayerLocator, Look, log_axis
from analysis.variants import keyed
from tests.analysis.strategies import FACTORS, results_frames

# Each example renders its figure and saves it as PDF (fonts embedded) and PNG at
# 300 dpi, ~0.5 s of CPU: these budgets keep the default run near 30 s of CPU.
EXAMPLES = 5
SLOW_EXAMPLES = 40
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
QUICK = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=_QUIET)
SLOW = settings(max_examples=SLOW_EXAMPLES, deadline=None, suppress_health_check=_QUIET)
SMALL = 2  # cells (family x depth, or preset) per folder in the default run
BIG = dict(max_cells=4, max_seeds=4, max_layers=6, max_epochs=4, max_samples=3)

LOOKS = st.builds(Look, st.sampled_from(("paper", "slides")), st.sampled_from(("single", "double")))


def _saves(fig) -> None:
    assert isinstance(fig, Figure)
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_figure(fig, Path(tmp) / "fig")
        assert [Path(p).read_bytes()[:4] for p in paths] == [b"%PDF", b"\x89PNG"]


def _axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _drawn_points_are_finite(fig) -> None:
    """No line without a finite point (a blank panel that does not say "no data"), no
    infinite point, and a log axis gets positive values only. A NaN inside a line is
    allowed: it breaks the line where a depth has no finite mean."""
    for ax in _axes(fig):
        for line in ax.lines:
            if line.get_transform() == ax.get_xaxis_transform():
                continue  # a vertical marker (LR drop): its y is in axes units
            y = np.asarray(line.get_ydata(), dtype=float)
            assert np.isfinite(y).any() and not np.isinf(y).any(), (ax.get_title(), y)
            if ax.get_yscale() == "log":
                assert (y[np.isfinite(y)] > 0).all(), (ax.get_title(), y)


def _tick_labels_are_layer_names(fig, layers: pd.DataFrame) -> None:
    names = {n.removesuffix(".weight") for n in layers["layer"]} if layers is not None else set()
    for ax in _axes(fig):
        if not ax.lines or any(line.endswith("sorted") for line in ax.get_title().split("\n")):
            continue  # no data, or x = rank by magnitude
        assert isinstance(ax.xaxis.get_major_locator(), LayerLocator), ax.get_title()
        texts = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert texts and set(texts) <= names, (ax.get_title(), texts)
        assert len(texts) <= 16


def _late_titles_name_a_later_step(fig) -> None:
    """A "late" panel that draws anything names the step it shows, after step 0 (one
    with nothing left to draw says why instead)."""
    for ax in _axes(fig):
        title = ax.get_title()
        if not ax.lines:
            assert ax.texts, title
        elif "late in training" in title or re.search(r"\nsteps? \d", title):
            m = re.search(r"steps? (\d+)(?:-(\d+))?", title)
            assert m, title
            assert int(m.group(1)) > 0, title


def _with_init_rows(frames: dict, add: bool) -> dict:
    """Optionally give train trials a probe at initialization (phase "init", step 0), as a
    sweep that measures the untrained network before training does."""
    layers = frames.get("layers")
    if not add or layers is None or not (layers["phase"] == "train").any():
        return frames
    train = layers[layers["phase"] == "train"]
    first = train[train["step"] == train.groupby("trial_id")["step"].transform("min")]
    return {**frames, "layers": pd.concat([first.assign(phase="init", step=0, epoch=0), layers],
                                          ignore_index=True)}


# --------------------------------------------------------------------------- trials and epochs

def _epochs(frames) -> pd.DataFrame:
    # a folder without epochs.parquet: the report does not call these, but the
    # functions must still answer an empty frame with a figure that says so
    epochs = frames.get("epochs")
    return epochs if epochs is not None else pd.DataFrame(columns=FACTORS)


def _check(fig) -> None:
    _drawn_points_are_finite(fig)
    _saves(fig)


@QUICK
@given(results_frames(mode="train", max_cells=SMALL), LOOKS)
def test_degradation_vs_depth(frames, look):
    _check(figures.degradation_vs_depth(frames["trials"], look=look, chance_error=0.9))


@QUICK
@given(results_frames(mode="train", max_cells=SMALL), LOOKS)
def test_training_curves_by_depth(frames, look):
    _check(figures.training_curves_by_depth(_epochs(frames), look=look))


@QUICK
@given(results_frames(mode="train", max_cells=SMALL), LOOKS)
def test_training_curves(frames, look):
    _check(figures.training_curves(_epochs(frames), look=look))


# --------------------------------------------------------------------------- variants (issue 14)

def _one_cell_per_variant(frame: pd.DataFrame) -> None:
    """Every (family, model, depth, facet, variant) group that a figure draws as one line
    holds one combination of factor levels (missing values read as the family default):
    no median or mean pools two variants."""
    rows, _ = keyed(frame)
    names = levels.present(rows)
    filled = levels.with_levels(rows, names)
    for _, g in filled.groupby(["family", "model", "depth", "facet", "variant"]):
        combos = {tuple(levels.level_of(n, v) for n, v in zip(names, row))
                  for row in g[names].itertuples(index=False, name=None)}
        assert len(combos) == 1, combos


@QUICK
@given(results_frames(mode="train", max_cells=SMALL, factors="crossed"), LOOKS)
def test_headline_variants_are_kept_apart_and_told_apart(frames, look):
    """Crossed factors: one line per variant, each with its own label and its own
    (colour, marker), the same as the figure's key gives every other figure."""
    for frame in frames.values():
        _one_cell_per_variant(frame)
    fig = figures.degradation_vs_depth(frames["trials"], look=look, chance_error=0.9)
    _check(fig)
    if not fig.legends:
        return  # no trained trial: the figure says so
    entries = [(t.get_text(), mpl.colors.to_hex(h.get_color()), h.get_marker())
               for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)
               if t.get_text() != "one seed"]
    cells, key = keyed(stats.cell_summary(frames["trials"], ("final_train_loss", "final_test_error")))
    assert [e[0] for e in entries] == list(key.styles)  # unique labels, in the key's order
    # Within a panel no two variants look alike. (Across families they may: an MLP has
    # no shortcut type, so its "residual" is drawn like resnet's "residual, projection".)
    for _, g in cells.groupby(["family", "model", "facet"]):
        looks = [(key.color(v), key.marker(v)) for v in set(g["variant"])]
        assert len(set(looks)) == len(looks), looks
    for ax in _axes(fig):
        for line in ax.lines:
            if line.get_marker() in ("_", "None", "") or line.get_linestyle() != "-":
                continue  # caps, seed dots, the chance line
            style = (mpl.colors.to_hex(line.get_color()), line.get_marker())
            assert style in {e[1:] for e in entries}, (ax.get_title(), style)


# --------------------------------------------------------------------------- per-layer figures

# Probe sweeps, train sweeps sampled only at step 0 (stats_every > steps) and
# sampled later, with or without an init probe before training.
LAYER_FRAMES = st.builds(_with_init_rows,
                         st.one_of(results_frames(max_cells=SMALL),
                                   results_frames(mode="train", max_cells=SMALL, max_samples=3)),
                         st.booleans())


def _check_layers(fig, layers) -> None:
    _drawn_points_are_finite(fig)
    _tick_labels_are_layer_names(fig, layers)
    _late_titles_name_a_later_step(fig)
    _saves(fig)


@QUICK
@given(LAYER_FRAMES, LOOKS, st.sampled_from(("late", "init")), st.booleans())
def test_layer_response_std(frames, look, when, with_trials):
    assume("layers" in frames)
    trials = frames.get("trials") if with_trials else None
    _check_layers(figures.layer_response_std(frames["layers"], look, when=when, trials=trials),
                  frames["layers"])


@QUICK
@given(LAYER_FRAMES, LOOKS, st.booleans())
def test_gradient_flow(frames, look, with_trials):
    assume("layers" in frames)
    trials = frames.get("trials") if with_trials else None
    _check_layers(figures.gradient_flow(frames["layers"], look, trials=trials), frames["layers"])


@QUICK
@given(LAYER_FRAMES, LOOKS, st.sampled_from(("init", "train")),
       st.sampled_from((figures.grad_by_layer, figures.act_by_layer)))
def test_grad_by_layer_and_act_by_layer(frames, look, phase, fn):
    assume("layers" in frames)
    _check_layers(fn(frames["layers"], phase, look), frames["layers"])


@QUICK
@given(LAYER_FRAMES, LOOKS, st.sampled_from(("step", "epoch")))
def test_act_through_training(frames, look, progress):
    assume("layers" in frames)
    _check_layers(figures.act_through_training(frames["layers"], progress, look), frames["layers"])


# --------------------------------------------------------------------------- feature maps

# the report titles a map with its trial id ("resnet-18-plain-s0"), or none
TITLES = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.\-]{0,40}", fullmatch=True))
MAP_VALUES = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def _maps(draw):
    c = draw(st.integers(1, 10))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if draw(st.booleans()):  # constant maps: a colour scale of zero width
        maps = np.full((c, h, w), draw(MAP_VALUES))
    else:
        maps = draw(hnp.arrays(np.float64, (c, h, w), elements=MAP_VALUES))
    if c == 1 and draw(st.booleans()):
        maps = maps[0]  # one (H, W) map
    image = draw(st.one_of(st.none(),
                           hnp.arrays(np.float64, st.sampled_from([(3, h, w), (1, h, w)]),
                                      elements=MAP_VALUES)))
    return maps, image


@settings(QUICK, max_examples=12)
@given(_maps(), TITLES, LOOKS)
def test_feature_maps(maps_image, title, look):
    maps, image = maps_image
    _saves(figures.feature_maps(maps, image, title=title, look=look))


# --------------------------------------------------------------------------- log axes

POSITIVE = st.floats(1e-30, 1e30)
PANEL = st.one_of(
    st.lists(POSITIVE, min_size=1, max_size=4),
    # a nearly constant panel: spread below 1e-6 relative
    st.tuples(POSITIVE, st.floats(0, 1e-6)).map(lambda t: [t[0], t[0] * (1 + t[1])]))


@settings(QUICK, max_examples=15)
@given(st.lists(PANEL, min_size=1, max_size=4), st.permutations(range(4)))
def test_log_axis_is_one_decision_per_shared_group(panels, order):
    """Panels sharing y, drawn in any order and log_axis called on each in any order:
    one scale for all, decided by their union, and it renders."""
    fig = Figure()
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, ys in zip(axes, panels):
        ax.plot(range(len(ys)), ys)
    for i in order:
        if i < len(axes):
            log_axis(axes[i])
    lo = min(min(p) for p in panels)
    hi = max(max(p) for p in panels)
    expected = "linear" if hi / lo < 1.5 else "log"
    assert {ax.get_yscale() for ax in axes} == {expected}
    _saves(fig)


# --------------------------------------------------------------------------- slow variants

BIG_LAYER_FRAMES = st.builds(_with_init_rows,
                             st.one_of(results_frames(**BIG), results_frames(mode="train", **BIG)),
                             st.booleans())


@pytest.mark.slow
@SLOW
@given(results_frames(mode="train", **BIG), LOOKS)
def test_trials_and_epochs_figures_slow(frames, look):
    _check(figures.degradation_vs_depth(frames["trials"], look=look, chance_error=0.9))
    _check(figures.training_curves_by_depth(_epochs(frames), look=look))
    _check(figures.training_curves(_epochs(frames), look=look))


@pytest.mark.slow
@SLOW
@given(BIG_LAYER_FRAMES, LOOKS, st.sampled_from(("late", "init")), st.sampled_from(("init", "train")),
       st.sampled_from(("step", "epoch")))
def test_per_layer_figures_slow(frames, look, when, phase, progress):
    layers, trials = frames.get("layers"), frames.get("trials")
    assume(layers is not None)
    for fig in (figures.layer_response_std(layers, look, when=when, trials=trials),
                figures.gradient_flow(layers, look, trials=trials),
                figures.gradient_flow(layers, look),
                figures.grad_by_layer(layers, phase, look),
                figures.act_by_layer(layers, phase, look),
                figures.act_through_training(layers, progress, look)):
        _check_layers(fig, layers)


@pytest.mark.slow
@SLOW
@given(_maps(), TITLES, LOOKS)
def test_feature_maps_slow(maps_image, title, look):
    test_feature_maps.hypothesis.inner_test(maps_image, title, look)
