"""Every figure, table and the report of one results folder: ``build(run_dir) -> BuildResult``.

Reads whichever of ``trials.parquet``, ``layers.parquet``, ``epochs.parquet``,
``features/*.npz``, ``measurements/*.parquet`` and ``spec.json`` exist (a
probe-only sweep has no epochs or features) and writes, each file atomically:

* ``figures/<name>.{pdf,png,...}``: one file per figure function of
  ``analysis.figures`` that the data allows;
* ``tables/<name>.{md,tex}``: Markdown and booktabs LaTeX;
* ``report.md`` and ``report.html``: status counts, the training budget against He et
  al.'s schedule, the findings (``analysis.findings``: first the headline, the depth x
  residual interaction of train loss and test error, worded by its adjusted p; then each
  factor level minus its baseline; a survivorship warning where counting diverged trials
  at chance changes a conclusion; for each cell that diverged or stayed at chance, the
  mechanism measured at init and the levels that trained at that depth; a
  ``--warmup-epochs`` suggestion where the first epoch starts above chance),
  the spec, environment, plan, tables and figures with one-line captions, and
  the W&B runs. The
  HTML is self-contained: figures are embedded as base64 PNG, styles inline,
  no script, so it can be mailed or opened from a laptop;
* a "Measurements" section: the figures and tables each measurement registers,
  for every ``measurements/<name>.parquet`` (``analysis.report_measurements``);
* ``report_errors.log``: only when something failed (see below).

**One multiplicity family per report.** Every p value printed (contrasts' paired t and
Wilcoxon, the interactions, the factor effects) is adjusted with Holm over one family:
every test of the report's metrics on the run's full trials
(``analysis.contrasts.report_family``, computed once by ``build``, before ``where``
filters anything), so a view prints the full report's adjusted p for the same test.
Below three seeds a contrast gives its mean only.

The last mile of a sweep must not be lost to one bug: every figure, table
and report section is made in isolation (``analysis.failures.Guard``). One
that raises becomes a line "could not draw <name>: <Type>: <message>" in
both reports (and in their "Problems" section), a one-line warning on
stderr, and its traceback in ``report_errors.log``; its own files are
removed and everything else is written. The log is rewritten by every build
and removed by a build without failures, so it always describes the latest
build. Bad input (no folder, no results, an unreadable trials.parquet, an
unknown format, a filter that matches nothing) still raises ``ResultsError``.

Needs only pandas, pyarrow, scipy and matplotlib/seaborn: no ray, wandb or
torch, so results copied off a cluster rebuild anywhere, in seconds. Most of
those seconds are matplotlib laying out and rendering figures, so by default
the items are made by one forked process per CPU (``jobs``; see ``build``),
which keep the isolation above: an item that raises, or a worker that dies
while making it, is that item's "could not" line.
``where`` restricts everything to some values of family, model, depth, seed or
any factor (``ablations.where``: ``{"family": ["resnet"], "norm": ["none"]}``);
such a view is written to its own folder (``views/family=resnet_norm=none`` by
default) so the full report is never replaced by a partial one. Tables and
findings show a factor other than residual only when it varies, so a sweep that
crosses only residual reads as it always did (plus the adjusted p column).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import shlex
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import factors as _factors
from analysis import contrasts as _contrasts
from analysis import figures, findings, stats, tuning
from ablations import levels
from analysis import report_measurements as measured
from analysis.failures import (ERRORS_LOG, BuildResult, Guard, ItemFailure, one_line,
                               write_error_log)
from analysis.style import DEFAULT_LOOK, Look, save_figure_once
from analysis.tables import (GRAD_TABLE_FORMAT, _cell, _numeric, _specs, contrast_table,
                             degradation_index_table, degradation_table, escape_latex,
                             factor_effects_table, failures_table, grad_table,
                             improvement_table, robust_table, shown_factors, snapshot_rows,
                             survivorship_table, to_markdown, without_redundant_model,
                             write_table, write_text)
from ablations.where import (ResultsError, apply_where, parse_where, safe_name as _safe,  # noqa: F401
                            where_keys, where_slug)

RESULT_FILES = ("trials", "layers", "epochs")
FORMATS = ("pdf", "png", "svg")
MAX_FEATURE_TRIALS = 4
CHANCE_ERROR = 0.9  # both datasets (CIFAR-10, synthetic) have 10 balanced classes




# --------------------------------------------------------------------------- loading, filtering

def load_results(run_dir, guard: Guard | None = None) -> dict[str, pd.DataFrame]:
    """``{"trials": df, "layers": df, "epochs": df}`` for the Parquet files that exist.

    A file that cannot be read raises ``ResultsError`` when it is
    ``trials.parquet`` (the plan: without it every count would be wrong), when
    no file can be read, or when no ``guard`` is given. With a ``guard``, a
    damaged ``layers`` or ``epochs`` file beside readable ones is left out and
    recorded as an "input" failure: the report is built from the rest and
    says what is missing, rather than hours of training ending in a traceback.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"results folder {str(run_dir)!r} does not exist or is not a folder")
    data, broken = {}, {}
    for name in RESULT_FILES:
        path = run_dir / f"{name}.parquet"
        if path.is_file():
            try:
                data[name] = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                broken[name] = (path, exc)
    if broken and (guard is None or "trials" in broken or not data):
        path, exc = broken.get("trials") or next(iter(broken.values()))
        raise ResultsError(f"cannot read {path}: {one_line(exc)}") from exc
    for name, (_, exc) in broken.items():
        guard.record("input", f"{name}.parquet", exc)
    if not data:
        raise ResultsError(f"{str(run_dir)!r} holds none of "
                           + ", ".join(f"{n}.parquet" for n in RESULT_FILES))
    return data


def load_spec(run_dir, guard: Guard | None = None) -> dict:
    """``spec.json`` as a dict; ``{}`` when it is missing, unreadable or not a JSON
    object (the report then says the spec was not recorded). With a ``guard``, a
    file that exists but cannot be used is recorded as an "input" failure, like a
    damaged epochs.parquet: the report is built, and names it."""
    path = Path(run_dir) / "spec.json"
    if not path.exists():
        return {}
    try:
        spec = json.loads(path.read_text())
        if not isinstance(spec, dict):
            raise ValueError(f"expected a JSON object, found {type(spec).__name__}")
        for key in ("spec", "environment"):
            if not isinstance(spec.get(key, {}), dict):
                raise ValueError(f"{key!r} is not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        if guard is not None:
            guard.record("input", "spec.json", exc)
        return {}
    return spec


def _feature_files(run_dir: Path, trials: pd.DataFrame | None) -> list[Path]:
    """Up to ``MAX_FEATURE_TRIALS`` feature files, one per (model, depth, variant) cell first.

    The lowest seed of each cell comes first, so four files show both
    variants at two depths rather than four seeds of one trial. With a
    trials frame, only its trials' files are candidates (a ``where`` view).
    """
    files = {p.stem: p for p in sorted((run_dir / "features").glob("*.npz"))}
    cols = {"trial_id", "family", "model", "depth", "residual", "seed"}
    if trials is None or not cols <= set(trials.columns):
        return list(files.values())[:MAX_FEATURE_TRIALS]
    keys = [*levels.BASE_KEYS, *levels.present(trials)]  # one file per cell first
    known = levels.sort_cells(trials[trials["trial_id"].isin(files)], ["seed", *keys])
    firsts = known.drop_duplicates(keys)
    order = list(firsts["trial_id"]) + [t for t in known["trial_id"] if t not in set(firsts["trial_id"])]
    return [files[t] for t in order[:MAX_FEATURE_TRIALS]]


# --------------------------------------------------------------------------- artefacts
#
# Every figure and table is an entry of a registry: a name, a test of whether
# the data allows it, the code that makes it and a caption. ``_items`` runs
# each entry in its own ``Guard``, so an entry that raises (in its test, its
# drawing or its saving) becomes an ``ItemFailure`` and the others are made.

@dataclass
class Item:
    """One figure or table of the report: its files, caption and what to embed,
    or the failure that replaced it."""
    kind: str                      # "figure" | "table"
    name: str
    caption: str
    paths: list[str] = field(default_factory=list)
    png: bytes | None = None       # figure: embedded in report.html
    frame: pd.DataFrame | None = None  # table: rendered in the reports
    floatfmt: object = "auto"
    failure: ItemFailure | None = None
    section: str = ""              # "" = Tables/Figures; measured.SECTION: a measurement's


@dataclass(frozen=True)
class _Ctx:
    """What every registry entry reads."""
    run_dir: Path
    out: Path
    trials: pd.DataFrame | None
    layers: pd.DataFrame | None
    epochs: pd.DataFrame | None
    formats: tuple
    look: Look
    trained: bool
    tuning: pd.DataFrame | None = None  # tuning.parquet (analysis.tuning.load_tuning)
    tune_ranges: dict = field(default_factory=dict)  # analysis.tuning.search_ranges(spec)
    # The report's multiplicity family (analysis.contrasts.report_family) of the run's
    # FULL trials, also in a --where view; None: each table computes it from its trials.
    family: pd.DataFrame | None = None


@dataclass(frozen=True)
class _Entry:
    name: str
    applies: Callable[[_Ctx], bool]
    make: Callable[[_Ctx], object]  # a Figure, or a table's DataFrame (None or empty: skip)
    caption: object                 # a string, or a function of the context
    floatfmt: object = "auto"


def _rows(df: pd.DataFrame | None) -> bool:
    return df is not None and len(df) > 0


def _has(df: pd.DataFrame | None, stat: str, phase: str | None = None) -> bool:
    if df is None or df.empty:
        return False
    rows = df[df["stat"] == stat]
    return bool(len(rows) if phase is None else (rows["phase"] == phase).any())


def _std_when(c: _Ctx) -> str:
    return "late" if _has(c.layers, "act_std", "train") else "init"


def _response_std(c: _Ctx):
    """He et al. Fig. 7 from measurements/responses.parquet (the 3x3 convs after BN, before
    the ReLU and the addition) when it is there; else, under the same name, the block
    outputs in layers.parquet (after the addition: not Fig. 7's quantity, and labelled so)."""
    if measured.has_responses(c):
        rows, when, ylabel = measured.response_rows(c)
        return figures.layer_response_std(rows, c.look, when=when, trials=c.trials,
                                          ylabel=ylabel)
    return figures.layer_response_std(c.layers, c.look, when=_std_when(c), trials=c.trials)


def _depth_sweep(trials: pd.DataFrame | None) -> bool:
    """Both variants in one cell and two or more depths: the depth x residual
    interaction is defined."""
    return _rows(trials) and "residual" in trials and trials["depth"].nunique() > 1 \
        and _both_variants(trials)


INTERACTION_CAPTION = (
    "The depth x shortcut interaction, the headline: final train loss and test error "
    "against depth, one line per variant, mean and 95% t interval over completed seeds; in "
    "each panel, each residual variant's difference of differences DiD = [plain(deepest) - "
    "plain(shallowest)] - [residual(deepest) - residual(shallowest)] with its 95% interval "
    "(positive: plain degrades more than residual; means only below 3 seeds). Every depth, "
    "and the adjusted p values: the first rows of the paired table.")


FIGURES = (
    _Entry("interaction", lambda c: c.trained and _depth_sweep(c.trials),
           lambda c: figures.depth_interaction(c.trials, c.look), INTERACTION_CAPTION),
    _Entry("degradation_vs_depth", lambda c: c.trained and _rows(c.trials),
           lambda c: figures.degradation_vs_depth(c.trials, c.look, chance_error=CHANCE_ERROR),
           "Final training loss and test error against depth: mean and 95% t interval over "
           "seeds (dots: single seeds); failed trials are counted at the top of each panel."),
    _Entry("training_curves_by_depth", lambda c: _rows(c.epochs),
           lambda c: figures.training_curves_by_depth(c.epochs, c.look),
           "Error per epoch, plain (left) and residual (right), one colour per depth; dashed = "
           "train, solid = test; median over seeds (He et al. 2016, Fig. 6)."),
    _Entry("training_curves", lambda c: _rows(c.epochs),
           lambda c: figures.training_curves(c.epochs, c.look),
           "Loss and accuracy per epoch for each model and depth: thin = train, bold = test; "
           "median over seeds with interquartile band; dotted lines = learning-rate drops."),
    _Entry("layer_response_std",
           lambda c: _has(c.layers, "act_std") or measured.has_responses(c), _response_std,
           lambda c: measured.responses_caption(c) if measured.has_responses(c) else
                     "Block output std: the std of the stem's, each block's and the "
                     "classifier's output over the whole batch (a block's: after the addition "
                     "of branch and shortcut, and a post-activation ResNet block's final ReLU), "
                     "from layers.parquet "
                     f"({'end of training' if _std_when(c) == 'late' else 'at init'}), in network "
                     "order and sorted by magnitude; not He et al.'s Fig. 7, whose responses "
                     "are the 3x3 convs' outputs after BN, before the ReLU and the addition "
                     "(the responses measurement); median over seeds; trials that did not "
                     "complete are left out and named in the panel."),
    _Entry("gradient_flow", lambda c: _has(c.layers, "grad_mean_abs"),
           lambda c: figures.gradient_flow(c.layers, c.look, trials=c.trials),
           "Mean |dL/dW| per weight layer at initialization and late in training (log scale); "
           "median over seeds with interquartile band; late: completed trials only (the others "
           "are named in the panel)."),
    _Entry("grad_by_layer", lambda c: _has(c.layers, "grad_mean_abs", "init"),
           lambda c: figures.grad_by_layer(c.layers, "init", c.look),
           "Mean |dL/dW| per weight layer of the untrained network (probe), per depth."),
    _Entry("act_by_layer", lambda c: _has(c.layers, "act_mean_abs", "init"),
           lambda c: figures.act_by_layer(c.layers, "init", c.look),
           "Mean |activation| per block output of the untrained network (probe), per depth."),
    _Entry("act_through_training", lambda c: _has(c.layers, "act_mean_abs", "train"),
           lambda c: figures.act_through_training(c.layers, look=c.look),
           "Mean |activation| per layer at sampled training steps (colour = step); "
           "median over seeds."),
)


def _both_variants(trials: pd.DataFrame) -> bool:
    keys = [k for k in ("family", "model", "depth") if k in trials]
    return bool(trials.groupby(keys)["residual"].nunique().max() > 1)


def _has_contrasts(trials: pd.DataFrame) -> bool:
    """Residual and plain in one cell, or another factor at two levels."""
    return _both_variants(trials) or bool(shown_factors(trials))


def _multi(trials: pd.DataFrame | None) -> bool:
    """Whether a factor other than residual varies (the tables and findings then
    name factors and levels)."""
    return trials is not None and bool(shown_factors(trials))


def _family(c: "_Ctx") -> pd.DataFrame:
    """The report's multiplicity family: the one of the run's full trials that ``build``
    put in the context, else (a caller's own context) the one of ``c.trials``."""
    return c.family if c.family is not None else _contrasts.report_family(c.trials)


def _few_seeds(c: "_Ctx") -> str:
    """``MEANS_ONLY_WHY`` when some cell has fewer than ``MIN_SEEDS`` usable seeds."""
    m = next((m for m in ("final_test_acc", "final_train_loss") if c.trials is not None
              and m in c.trials), None)
    if m is None:
        return ""
    n = _contrasts.smallest_cell(c.trials, m)
    return " " + _contrasts.MEANS_ONLY_WHY if 0 < n < _contrasts.MIN_SEEDS else ""


def _adjusted_caption(c: "_Ctx") -> str:
    return (" p (t, Holm), p (Wilcoxon, Holm): " + _contrasts.family_caption(_family(c))
            + "; q (t, BH): the Benjamini-Hochberg q of the t test over the same tests (false "
            "discovery rate: the expected share of false claims among those with q below a "
            "level). n/a (view): a test this --where view changes (e.g. fewer seeds) is not "
            "in the report's family." + _few_seeds(c))


def _paired_caption(c: "_Ctx") -> str:
    head = ("First rows (factor \"depth x residual\", depth \"d0 -> d\"): the depth x residual "
            "interaction, DiD = [plain(d) - plain(d0)] - [residual(d) - residual(d0)] of final "
            "train loss and test error per residual cell (positive: plain degrades more), "
            "paired by seed where every cell has the seeds, else Welch; mean ± 95% t half "
            "width. Then " if _depth_sweep(c.trials) else "")
    if not _multi(c.trials):
        body = "residual minus plain, paired by seed: mean ± 95% t half width."
    else:
        body = ("each factor level minus its baseline (residual minus plain; norm, block, "
                "branch scale, shortcut against batch, post, one, projection), within equal "
                "levels of the other factors (every residual level against the same plain "
                "cell), paired by seed: mean ± 95% t half width.")
    return (head + (body if head else body[0].upper() + body[1:]) + " Two-sided paired t and "
            "exact Wilcoxon signed-rank tests." + _adjusted_caption(c))


def _effects_applies(c: "_Ctx") -> bool:
    return c.trained and _rows(c.trials) and "residual" in c.trials and (
        _both_variants(c.trials) or _multi(c.trials))


def _effects_caption(c: "_Ctx") -> str:
    return ("Per family and contrasted factor level, on final train loss and test error: the "
            "main effect (level minus baseline, pooled over every matched pair of cells: "
            "depths, models and the other factors' levels; per seed, then a t interval over "
            "seeds, or Welch where the seeds do not line up) and the depth x factor "
            "interaction (the baseline's change minus the level's change from the shallowest "
            "to the deepest depth; positive: the baseline degrades more), each mean ± 95% "
            "half width." + " p (main, Holm), p (interaction, Holm): "
            + _contrasts.family_caption(_family(c)) + "." + _few_seeds(c))


TABLES = (
    _Entry("summary", lambda c: _rows(c.trials), lambda c: degradation_table(c.trials),
           "Per family, depth and variant: parameters, completed/planned trials (failures "
           "named), final train loss and test accuracy as mean ± 95% t half width over "
           "completed seeds."),
    _Entry("paired", lambda c: c.trained and _rows(c.trials) and _has_contrasts(c.trials),
           lambda c: contrast_table(c.trials, _family(c)), _paired_caption),
    _Entry("factor_effects", _effects_applies,
           lambda c: factor_effects_table(c.trials, _family(c)), _effects_caption),
    _Entry("degradation", lambda c: c.trained and _rows(c.trials),
           lambda c: degradation_index_table(c.trials),
           "Degradation index, per variant: change from the shallowest depth of each variant, "
           "mean ± 95% Welch half width (mean only below 3 seeds); positive = worse. These "
           "per-variant changes do not by themselves compare variants: whether residual "
           "connections reduce the degradation is the depth x residual interaction (the "
           "paired table's first rows, figure interaction)."),
    _Entry("robust", lambda c: c.trained and _rows(c.trials),
           lambda c: robust_table(c.trials),
           "Next to the summary's mean ± t interval: per cell, the interquartile mean (the mean "
           "of the middle 50% of seeds: robust to one outlying seed) of final train loss and "
           "test error, with its 95% stratified percentile bootstrap interval (2,000 "
           "resamples; none below 2 seeds); n: usable seeds."),
    _Entry("improvement", lambda c: c.trained and _rows(c.trials) and _has_contrasts(c.trials),
           lambda c: improvement_table(c.trials),
           "P(improvement) per contrast: the probability that a run of the level beats a run "
           "of the baseline (lower final train loss or test error; ties count one half), over "
           "all pairs of runs, with its 95% stratified bootstrap interval (the estimate alone "
           "below 3 runs on either side); runs: usable runs of the level vs the baseline."),
    _Entry("failures", lambda c: _rows(c.trials), lambda c: failures_table(c.trials),
           "Diverged and failed (diverged + errored) trials per cell, as rates of the finished "
           "trials (pending left out) with exact 95% Clopper-Pearson intervals: with 3 seeds, "
           "0/3 is compatible with a rate up to 71%."),
    _Entry("survivorship", lambda c: c.trained and _rows(c.trials)
           and bool((c.trials["status"] == "diverged").any()),
           lambda c: survivorship_table(c.trials),
           "Survivorship sensitivity: every contrast and depth x residual interaction whose "
           "cells hold a diverged trial, on the survivors only and with every diverged trial "
           "counted as a completed run at chance (train loss ln 10 = 2.30, test error 90%), "
           "mean ± 95% t interval; conclusion changes: the sign, or the side of 0 the "
           "interval lies on, differs (a finding says so)."),
)


# The tuning search (``analysis.tuning``): isolation plots, progress, the selected values.
FIGURES += tuple(_Entry(*e[1:]) for e in tuning.report_entries() if e.kind == "figure")
TABLES += tuple(_Entry(*e[1:]) for e in tuning.report_entries() if e.kind == "table")


def _feature_entries(c: _Ctx) -> list[_Entry]:
    """One entry per feature file shown; the file is read inside its entry, so a
    truncated npz costs that figure only."""
    def make(path):
        def draw(_):
            with np.load(path, allow_pickle=False) as npz:
                maps = npz["maps"]
                image = npz["image"] if "image" in npz.files else None
            return figures.feature_maps(maps, image, title=path.stem, look=c.look)
        return draw
    return [_Entry(f"features_{_safe(p.stem)}", lambda _: True, make(p),
                   f"First-block feature maps of {p.stem} for one test image (8 channels).")
            for p in _feature_files(c.run_dir, c.trials)]


def _grad_entries(c: _Ctx) -> list[_Entry]:
    """The seed article's table for every (model, depth) that has both variants at init;
    with other factors varying, one per residual cell (its levels in the name, as in
    trial ids: ``grad_resnet-20-norm=none-scale=zero``) against the plain cell that
    matches it."""
    if not _has(c.layers, "grad_mean_abs"):
        return []
    grads = snapshot_rows(c.layers, "grad_mean_abs", "init")
    pinned = [n for n in levels.present(grads) if n != "residual"]
    out = []
    for (model, depth), g in grads.groupby(["model", "depth"], sort=True):
        if g["residual"].nunique() < 2:
            continue
        res = g[g["residual"] == True]  # noqa: E712
        combos = ([{n: v for n, v in zip(pinned, k)} for k in
                   levels.sort_cells(res[pinned].drop_duplicates(), pinned).itertuples(
                       index=False, name=None)] if pinned else [{}])
        for lv in combos:
            plain = g[g["residual"] == False]  # noqa: E712
            for n, v in lv.items():
                plain = plain[(plain[n] == v) | (plain[n] == levels.NA)]
            if not len(plain):
                continue
            family = str(g["family"].iloc[0]) if "family" in g else str(model)
            names = {n: levels.level_of(n, v) for n, v in lv.items()}
            tags = _factors.id_parts(family, {**names, "residual": "residual"})[1:]
            where = levels.describe(names, [n for n in pinned if n in shown_factors(grads)])
            out.append(_Entry(
                "-".join([f"grad_{model}-{depth}", *tags]), lambda _: True,
                lambda _, m=model, d=depth, lv=lv: grad_table(c.layers, m, d, when="init",
                                                              levels=lv),
                f"Mean |dL/dW| per weight layer at initialization, {model}, depth {depth}"
                + (f" ({where})" if where else "") + ": median over seeds without (plain) and "
                "with (residual) shortcuts; ratio = median over seeds of residual/plain.",
                GRAD_TABLE_FORMAT))
    return out


def _remove(paths) -> None:
    """A failed item leaves no file behind: neither a half-written one nor an older
    build's, which the report would no longer describe."""
    for p in paths:
        Path(p).unlink(missing_ok=True)


def _outputs(c: _Ctx, kind: str, e: _Entry) -> tuple[Path, list[Path]]:
    """An entry's base path and the files it writes."""
    base = (c.out / ("figures" if kind == "figure" else "tables")) / _safe(e.name)
    return base, ([base.with_name(f"{base.name}.{x}") for x in c.formats] if kind == "figure"
                  else [base.with_name(base.name + ".md"), base.with_name(base.name + ".tex")])


def _run_entry(c: _Ctx, guard: Guard, kind: str, e: _Entry) -> Item | None:
    base, outputs = _outputs(c, kind, e)
    state = {}

    def attempt():
        if not e.applies(c):
            return None
        state["caption"] = caption = e.caption(c) if callable(e.caption) else e.caption
        made = e.make(c)
        if kind == "figure":
            # laid out once for every format; the PNG (rendered in memory when not
            # among the formats) goes into the HTML report
            paths, png = save_figure_once(made, base, c.formats)
            return Item(kind, e.name, caption, paths, png=png)
        if made is None or not len(made):
            return None
        paths = write_table(made, base, escape_latex(caption), f"tab:{_safe(e.name)}",
                            e.floatfmt)
        return Item(kind, e.name, caption, paths, frame=made, floatfmt=e.floatfmt)

    def failed(failure):
        _remove(outputs)
        state["failure"] = failure

    item = guard.run(kind, e.name, attempt, on_failure=failed)
    if "failure" in state:
        return Item(kind, e.name, state.get("caption", ""), failure=state["failure"])
    return item


def _main_plan(c: _Ctx, guard: Guard) -> list[tuple[str, _Entry]]:
    """Every figure (headline first) then every table, as ``(kind, entry)``."""
    plan = [("figure", e) for e in FIGURES]
    plan += [("figure", e) for e in guard.run("figure", "feature maps",
                                              lambda: _feature_entries(c)) or []]
    plan += [("table", e) for e in TABLES]
    plan += [("table", e) for e in guard.run("table", "grad tables",
                                             lambda: _grad_entries(c)) or []]
    return plan


def _items(c: _Ctx, guard: Guard, jobs: int = 1) -> list[Item]:
    """Every figure (headline first) then every table, each made in isolation; with
    ``jobs`` > 1 in that many worker processes (``analysis.report_parallel``), with the
    same items and the same failures in the same order."""
    if jobs > 1:
        from analysis import report_parallel
        if report_parallel.available():
            return report_parallel.items(c, guard, jobs)
    items = [_run_entry(c, guard, kind, e) for kind, e in _main_plan(c, guard)]
    for kind, e in measured.entries(c, guard):  # the "Measurements" section
        item = _run_entry(c, guard, kind, e)
        items.append(item and dataclasses.replace(item, section=measured.SECTION))
    return [i for i in items if i is not None]


# --------------------------------------------------------------------------- report text

def _spec_lines(spec: dict) -> list[tuple[str, str]]:
    s = spec.get("spec", {})
    if not s:
        return [("spec", "spec.json missing or unreadable: regenerated from the Parquet "
                         "files alone")]
    t = s.get("train") or {}
    lines = [("name", str(s.get("name"))), ("mode", str(s.get("mode"))),
             ("families", ", ".join(map(str, s.get("families") or [])) or "—"),
             ("models", ", ".join(map(str, s.get("models") or [])) or "—"),
             ("depths", ", ".join(map(str, s.get("depths") or []))),
             ("residual", str(s.get("residual"))), ("seeds", str(s.get("seeds")))]
    if s.get("recipe"):  # absent in folders from before recipes: the seed article's
        lines.append(("recipe", str(s["recipe"])))
    levels = [f"{n} {','.join(map(str, lv))}" for n, lv in s.get("factors") or []]
    levels += [f"{fam}: {n} {','.join(map(str, lv))}"
               for fam, lvs in s.get("family_factors") or [] for n, lv in lvs]
    if levels:
        lines.append(("factor levels", "; ".join(levels)))
    if s.get("mode") == "train" and t:
        lines += [("data", f"{t.get('dataset')} ({t.get('data_root') or 'synthetic'}), "
                           f"subset {t.get('subset')}, val fraction {t.get('val_fraction')}"),
                  ("schedule", f"{t.get('epochs')} epochs, SGD lr {t.get('lr')} momentum "
                               f"{t.get('momentum')} wd {t.get('weight_decay')}"
                               + (f" on {'every parameter' if t['decay'] == 'all' else 'weights only'}"
                                  if t.get("decay") else "") + ", batch "
                               f"{t.get('batch_size')}, milestones {t.get('milestones')}")]
    if s.get("tune"):
        lines.append(("tuning", f"Optuna per cell: {', '.join(s['tune'])}, "
                                f"{s.get('samples')} samples per cell"))
    for inv in spec.get("invocations") or []:
        argv = inv.get("argv") or []
        cmd = "python sweep.py " + (argv if isinstance(argv, str) else shlex.join(map(str, argv)))
        lines.append((f"command ({inv.get('kind')}, {inv.get('time')})", cmd))
    for sk in spec.get("skipped") or []:
        lines.append(("skipped cell", f"{sk.get('cell')}: {sk.get('reason')}"))
    return lines


def _env_lines(spec: dict, trials: pd.DataFrame | None) -> list[tuple[str, str]]:
    env = spec.get("environment") or {}
    lines = []
    if env:
        lines += [("git commit", str(env.get("git_commit"))), ("python", str(env.get("python"))),
                  ("platform", str(env.get("platform"))),
                  ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())),
                  ("CPUs", str(env.get("cpu_count"))),
                  ("CUDA devices", ", ".join(map(str, env.get("cuda_devices") or [])) or "none")]
    if trials is not None and "device" in trials:
        devs = trials["device"].dropna().astype(str).value_counts()
        lines.append(("trials ran on", ", ".join(f"{d} ({n})" for d, n in devs.items()) or "—"))
    return lines or [("environment", "not recorded (no usable spec.json)")]


def _wandb_lines(run_dir: Path, trials: pd.DataFrame | None, spec: dict | None = None
                 ) -> list[str]:
    lines = []
    url = (spec or {}).get("wandb_report_url")  # recorded by analysis.wandb_publish
    if url:
        lines.append(f"W&B report: {url}")
    elif (run_dir / "wandb_report.json").is_file():
        lines.append(f"W&B report: not published (its spec: {run_dir / 'wandb_report.json'}); "
                     f"publish with: python -m analysis {run_dir} --wandb-report ENTITY/PROJECT")
    if trials is not None and "wandb" in trials:
        runs = trials[["trial_id", "wandb"]].dropna()
        runs = runs[runs["wandb"].astype(str).str.len() > 0]
        for tid, ref in runs.itertuples(index=False):
            lines.append(f"{tid}: {ref}")
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())
    if offline:
        lines.append(f"{len(offline)} offline run folder(s) under {run_dir / 'wandb'}; upload with "
                     f"`wandb sync {run_dir / 'wandb'}/offline-run-*`")
    return lines or ["no W&B runs recorded (--wandb disabled)"]


def _status_frame(trials: pd.DataFrame | None) -> pd.DataFrame | None:
    if trials is None or not len(trials):
        return None
    s = stats.status_counts(trials)
    s.insert(3, "variant", s["residual"].map({True: "residual", False: "plain"}).fillna(""))
    hidden = [n for n in levels.present(trials) if n != "residual"
              and n not in shown_factors(trials)]  # one level throughout: not shown
    s = without_redundant_model(s.drop(columns=["residual", *hidden]))
    if not s["n_pending"].any():
        s = s.drop(columns="n_pending")
    return s.rename(columns=lambda c: c.removeprefix("n_"))


def _html_table(df: pd.DataFrame, floatfmt="auto") -> str:
    specs = _specs(df, floatfmt)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False, name=None):
        cells = []
        for c, v in zip(df.columns, row):
            cls = ' class="num"' if _numeric(df[c]) else ""
            cells.append(f"<td{cls}>{html.escape(_cell(v, specs.get(c), 'html'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class _Section:
    """One part of the report, rendered to both targets."""
    md: list[str]
    html: list[str]


def _failed_section(title: str | None, failure: ItemFailure) -> _Section:
    head_md = [f"## {title}", ""] if title else []
    head_html = [f"<h2>{html.escape(title)}</h2>"] if title else []
    return _Section(head_md + [f"- **{failure.entry}**", ""],
                    head_html + [f'<p class="failed">{html.escape(failure.entry)}</p>'])


def _section(guard: Guard, name: str, title: str | None, render) -> _Section:
    """``render()`` -> ``_Section`` in isolation; on failure the section keeps its
    heading and says what went wrong."""
    state = {}
    out = guard.run("section", name, render, on_failure=lambda f: state.setdefault("f", f))
    return _failed_section(title, state["f"]) if "f" in state else out


def _pairs_section(title: str, pairs: list[tuple[str, str]]) -> _Section:
    esc = html.escape
    return _Section([f"## {title}", ""] + [f"- **{k}**: {v}" for k, v in pairs] + [""],
                    [f"<h2>{esc(title)}</h2><dl>"
                     + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
                     + "</dl>"])


def _list_section(title: str, lines: list[str]) -> _Section:
    esc = html.escape
    return _Section([f"## {title}", ""] + [f"- {w}" for w in lines] + [""],
                    [f"<h2>{esc(title)}</h2><ul>"
                     + "".join(f"<li>{esc(w)}</li>" for w in lines) + "</ul>"])


def _totals(trials: pd.DataFrame | None) -> _Section:
    if trials is None or not len(trials):
        return _Section([], [])
    c = trials["status"].value_counts()
    text = (f"{len(trials)} trials: {int(c.get('completed', 0))} completed, "
            f"{int(c.get('diverged', 0))} diverged, {int(c.get('error', 0))} errored"
            + (f", {int(c.get('pending', 0))} pending" if c.get("pending", 0) else ""))
    return _Section([f"**{text}.**", ""], [f"<p><strong>{html.escape(text)}.</strong></p>"])


def _findings_title(trials) -> str:
    first = ("the depth x residual interaction first; then "
             if trials is not None and "final_test_acc" in trials and _depth_sweep(trials)
             else "")
    return (f"Findings ({first}each level minus its factor's baseline, paired by seed)"
            if _multi(trials) else f"Findings ({first}residual minus plain, paired by seed)")


def _findings_section(guard: Guard, data: dict, spec: dict, trained: bool,
                      family: pd.DataFrame | None = None) -> _Section:
    """The depth x residual interactions first (the headline), then the contrast
    findings, the survivorship warnings, what explains each failed cell and each cell that
    starts above chance. Each part runs in isolation: a failure is an entry in the list.
    ``family``: the report's multiplicity family (``build``: of the full trials)."""
    trials, layers, epochs = data.get("trials"), data.get("layers"), data.get("epochs")
    title = _findings_title(trials)
    lines: list[str] = []
    failed: list[str] = []

    def part(name, fn):
        got = guard.run("section", name, fn,
                        on_failure=lambda f: failed.append(f.entry))
        lines.extend(got or [])

    tag = (guard.run("section", "budget tag", lambda: findings.budget_text(trials, spec)[1])
           or "") if trained else ""
    if trained:
        part("interaction findings",
             lambda: findings.interaction_findings(trials, family, budget_tag=tag))
        part("findings", lambda: findings.contrast_findings(trials, family=family,
                                                            budget_tag=tag)[0])
        part("survivorship findings",
             lambda: findings.survivorship_findings(trials, budget_tag=tag))
    stated = list(lines)
    if not lines:  # a probe sweep: no contrasts, only what explains its failures
        title = "Findings"
    part("failure findings", lambda: findings.failure_findings(trials, layers))
    warm = (spec.get("spec") or {}).get("train") or {}
    part("warmup findings", lambda: findings.warmup_findings(
        trials, epochs, int(warm.get("warmup_epochs") or 0) if isinstance(warm, dict) else 0))
    part("tuning findings", lambda: findings.tuning_findings(data.get("tuning"),
                                                             tuning.search_ranges(spec)))
    if not lines and not failed:
        return _Section([], [])
    notes = []
    if any("Holm p = " in w for w in stated):
        notes.append(guard.run("section", "findings note",
                               lambda: findings.adjustment_note(
                                   family if family is not None
                                   else _contrasts.report_family(trials))) or "")
    if any("means only" in w for w in stated):
        notes.append(_contrasts.MEANS_ONLY_WHY)
    note = " ".join(n for n in notes if n)
    esc = html.escape
    md = [f"## {title}", ""] + ([note, ""] if note else []) + [f"- {w}" for w in lines] \
        + [f"- **{e}**" for e in failed] + [""]
    page = ([f"<h2>{esc(title)}</h2>"] + ([f"<p>{esc(note)}</p>"] if note else [])
            + ["<ul>" + "".join(f"<li>{esc(w)}</li>" for w in lines)
               + "".join(f'<li class="failed">{esc(e)}</li>' for e in failed) + "</ul>"])
    return _Section(md, page)


def _budget_section(trials, spec: dict, trained: bool) -> _Section:
    """Near the top of a trained report: the training budget against He et al.'s
    schedule (``findings.budget_text``), or that nothing recorded it."""
    if not trained or trials is None or not len(trials):
        return _Section([], [])
    text, _ = findings.budget_text(trials, spec)
    text = ("Budget: " + text) if text else (
        "Budget: not recorded (trials.parquet has no steps column and spec.json no train "
        "settings): the findings cannot say how far into training they are.")
    return _Section([f"**{text}.**" if not text.endswith(".") else f"**{text}**", ""],
                    [f"<p><strong>{html.escape(text)}</strong></p>"])


def _status_section(trials) -> _Section:
    status = _status_frame(trials)
    if status is None:
        return _Section([], [])
    return _Section(["## Plan and status", "", to_markdown(status)],
                    ["<h2>Plan and status</h2>" + _html_table(status)])


def _problems_section(failures: list[ItemFailure]) -> _Section:
    """Near the top: what is missing from this report and where the tracebacks are."""
    if not failures:
        return _Section([], [])
    lead = (f"{len(failures)} item(s) could not be built; the rest of the report is complete. "
            f"Tracebacks: {ERRORS_LOG}.")
    esc = html.escape
    return _Section(["## Problems", "", lead, ""] + [f"- {f.entry}" for f in failures] + [""],
                    [f"<h2>Problems</h2><p>{esc(lead)}</p><ul>"
                     + "".join(f'<li class="failed">{esc(f.entry)}</li>' for f in failures)
                     + "</ul>"])


def _table_section(t: Item, rel) -> _Section:
    esc = html.escape
    if t.failure is not None:
        return _Section([f"### {t.name}", "", f"- **{t.failure.entry}**", ""],
                        [f'<h3 id="{esc(_safe(t.name))}">{esc(t.name)}</h3>'
                         f'<p class="failed">{esc(t.failure.entry)}</p>'])
    files = [rel(p) for p in t.paths]
    return _Section([f"### {t.name}", "", t.caption, "", to_markdown(t.frame, t.floatfmt),
                     "Files: " + ", ".join(f"`{p}`" for p in files), ""],
                    [f'<h3 id="{esc(_safe(t.name))}">{esc(t.name)}</h3><p>{esc(t.caption)}</p>'
                     + _html_table(t.frame, t.floatfmt)
                     + f'<p class="files">{esc(", ".join(files))}</p>'])


def _figure_section(f: Item, rel) -> _Section:
    esc = html.escape
    if f.failure is not None:
        return _Section([f"### {f.name}", "", f"- **{f.failure.entry}**", ""],
                        [f'<figure id="{esc(_safe(f.name))}" class="failed">'
                         f"<figcaption><strong>{esc(f.name)}.</strong> "
                         f"{esc(f.failure.entry)}</figcaption></figure>"])
    files = [rel(p) for p in f.paths]
    shown = next((p for p in files if p.endswith(".png")), None) or \
        next((p for p in files if p.endswith(".svg")), files[0])
    data_uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
    return _Section([f"### {f.name}", "", f"![{f.name}]({shown})", "", f.caption, "",
                     "Files: " + ", ".join(f"`{p}`" for p in files), ""],
                    [f'<figure id="{esc(_safe(f.name))}"><img alt="{esc(f.name)}" '
                     f'src="{data_uri}"><figcaption><strong>{esc(f.name)}.</strong> '
                     f'{esc(f.caption)}</figcaption>'
                     f'<p class="files">{esc(", ".join(files))}</p></figure>'])


def _item_sections(guard: Guard, title: str, items: list[Item], render, rel) -> _Section:
    """A heading and one isolated sub-section per item; a table whose frame cannot be
    rendered becomes that table's failure (its files may already be fine)."""
    out = _Section([f"## {title}", ""], [f"<h2>{html.escape(title)}</h2>"])
    for item in items:
        state = {}
        part = guard.run(item.kind, item.name, lambda: render(item, rel),
                         on_failure=lambda f: state.setdefault("f", f))
        if "f" in state:
            part = render(Item(item.kind, item.name, item.caption, failure=state["f"]), rel)
        out.md += part.md
        out.html += part.html
    return out


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left}
th{border-bottom:2px solid #999}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}
.files{font-size:.8em;color:#777}.failed{color:#a40000}
"""


def _write_reports(out: Path, run_dir: Path, spec: dict, data: dict, items: list[Item],
                   where: dict, trained: bool, guard: Guard,
                   family: pd.DataFrame | None = None) -> list[str]:
    """report.md and report.html, every section in isolation; a section that raises
    keeps its heading and names the failure. A "Problems" section near the top
    lists every failure of the build, the sections' own included."""
    trials = data.get("trials")
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    title = guard.run("section", "title",
                      lambda: str(spec.get("spec", {}).get("name") or run_dir.name)) or run_dir.name
    title = f"resablate sweep {title}" + (f" (view: {where_slug(where)})" if where else "")

    def rel(p):
        return str(Path(p).relative_to(out))

    esc = html.escape
    head = _Section([f"# {title}", "", f"Generated {stamp} by `python -m analysis {run_dir}` "
                     "from the stored results alone.", ""],
                    [f"<h1>{esc(title)}</h1>",
                     f"<p>Generated {esc(stamp)} by <code>python -m analysis "
                     f"{esc(str(run_dir))}</code> from the stored results alone.</p>"])
    body = [
        _section(guard, "status totals", None, lambda: _totals(trials)),
        _section(guard, "budget", None, lambda: _budget_section(trials, spec, trained)),
        _section(guard, "findings section",
                 guard.run("section", "findings title", lambda: _findings_title(trials))
                 or "Findings",
                 lambda: _findings_section(guard, data, spec, trained, family)),
        _section(guard, "spec", "Spec", lambda: _pairs_section("Spec", _spec_lines(spec))),
        _section(guard, "environment", "Environment",
                 lambda: _pairs_section("Environment", _env_lines(spec, trials))),
        _section(guard, "plan and status", "Plan and status", lambda: _status_section(trials)),
        _item_sections(guard, "Tables", [i for i in items if i.kind == "table" and not i.section],
                       _table_section, rel),
        _item_sections(guard, "Figures", [i for i in items if i.kind == "figure"
                                          and not i.section], _figure_section, rel),
        _section(guard, "measurements", measured.SECTION, lambda: measured.section(
            run_dir, [i for i in items if i.section], guard, rel)),
        _section(guard, "W&B runs", "Weights & Biases",
                 lambda: _list_section("Weights & Biases", _wandb_lines(run_dir, trials, spec))),
    ]
    # Last, so that it also names the failures of the sections above.
    sections = [head, _problems_section(guard.failures), *body]
    md = [line for s in sections for line in s.md]
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{esc(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    h += [part for s in sections for part in s.html] + ["</body></html>"]
    return [write_text(out / "report.md", "\n".join(md)),
            write_text(out / "report.html", "\n".join(h) + "\n")]


# --------------------------------------------------------------------------- entry point

def resolve_jobs(jobs) -> int:
    """``jobs`` as a number of processes: None = one per CPU this process may use.
    Raises ``ResultsError`` for anything but None or an integer >= 1."""
    if jobs is None:
        from analysis.report_pool import cpu_count
        return cpu_count()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ResultsError(f"jobs must be a whole number >= 1 or None (one per CPU), "
                           f"got {jobs!r}")
    return jobs


def build(run_dir, formats=("pdf", "png"), look: Look = DEFAULT_LOOK, where=None,
          out_dir=None, jobs: int | None = None) -> BuildResult:
    """Write every figure and table the folder's results allow, and the reports.

    Returns ``BuildResult(written, failures, log)``: ``written`` = the paths
    written (figures, tables, then ``report.md`` and ``report.html``);
    ``failures`` = one ``ItemFailure`` per item that raised; ``log`` = the
    path of ``report_errors.log`` (every failure's traceback) or None.

    Each figure, table and report section is made in isolation (see
    ``analysis.failures``): one that raises is named in both reports and on
    stderr, its files are removed, and everything else is still written. A
    damaged ``layers.parquet`` or ``epochs.parquet`` beside a readable
    ``trials.parquet`` is such a failure too (kind "input").

    ``where``: ``{factor: [values]}`` (see ``parse_where``) restricts every
    output; its files go to ``out_dir`` or, by default, ``run_dir/views/<slug>``.
    Without ``where`` they go to ``out_dir`` or ``run_dir``.

    ``jobs``: processes that draw the figures and make the tables (None: one per
    CPU). 1 builds in this process alone, item after item; more
    (``analysis.report_parallel``) make the items in forked workers: the same
    files (each figure laid out once for all its formats,
    ``style.save_figure_once``), the same report.md and the same failures in the
    same order; a worker that dies costs only the item it was making. About 2x
    faster on 2 CPUs (bench/report_bench.py).

    Raises ``ResultsError`` (bad input, before anything is written) for a
    missing folder, no results, an unreadable ``trials.parquet`` (or no
    readable file at all), an unknown format, a ``where`` that matches nothing
    or a ``jobs`` that is not a whole number >= 1.
    """
    formats = tuple(formats)
    jobs = resolve_jobs(jobs)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ResultsError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    guard = Guard()
    data = load_results(run_dir, guard)
    tuned = tuning.load_tuning(run_dir, guard)  # a damaged file costs the tuning items only
    if tuned is not None:
        data["tuning"] = tuned
    where = dict(where or {})
    full = data.get("trials")
    data = apply_where(data, where)
    out = Path(out_dir) if out_dir else (run_dir / "views" / where_slug(where) if where else run_dir)
    spec = load_spec(run_dir, guard)
    trials = data.get("trials")
    trained = trials is not None and "final_test_acc" in trials
    ranges = guard.run("input", "spec.json tune_ranges", lambda: tuning.search_ranges(spec))
    # One multiplicity family per report, of the run's FULL trials: a --where view shows
    # the adjusted p values of the full report. Failing, each item computes its own.
    family = guard.run("section", "multiplicity family",
                       lambda: _contrasts.report_family(full)) if trained else None
    ctx = _Ctx(run_dir, out, trials, data.get("layers"), data.get("epochs"), formats, look,
               trained, data.get("tuning"), ranges or {}, family)
    items = _items(ctx, guard, jobs)
    written = [p for i in items for p in i.paths]
    written += _write_reports(out, run_dir, spec, data, items, where, trained, guard, family)
    log = write_error_log(out, guard.failures,
                          f"python -m analysis {run_dir}: {_dt.datetime.now().isoformat(timespec='seconds')}",
                          write_text)
    return BuildResult(written, list(guard.failures), log)
