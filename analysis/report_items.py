"""The report's own figures and tables, registered in ``analysis.registry``.

The figures (the depth x residual interaction first, the headline), the tables (the
summary, then the contrasts and their checks), the tuning search's items
(``analysis.tuning.report_items``), and two providers of per-run items: one
feature-map figure per feature file shown (``feature_files``) and the replicated article's
gradient table per (model, depth, residual cell). In the report they appear in that
order: every figure, then every table.

``layer_response_std`` is declared with the measurements (``analysis.report_measurements``):
it draws the responses measurement when there is one.

Importing this module registers them, once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablations.status import Status
from ablations import factors as _factors
from ablations import levels
from ablations.where import safe_name
from analysis import contrasts as _contrasts
from analysis import multiplicity
from analysis import figures, tuning
from analysis import report_measurements as measured
from analysis.registry import (Provider, ReportContext, ReportItem, has_rows, has_stat,
                               register, register_provider)
from analysis.tables import (GRAD_TABLE_FORMAT, degradation_index_table, degradation_table,
                             grad_table, shown_factors, snapshot_rows)
from analysis.tables_contrasts import contrast_table, factor_effects_table
from analysis.tables_robust import (failures_table, improvement_table, robust_table,
                                    survivorship_table)

CHANCE_ERROR = 0.9  # both datasets (CIFAR-10, synthetic) have 10 balanced classes
MAX_FEATURE_TRIALS = 4


# --------------------------------------------------------------------------- what the data allows

def both_variants(trials: pd.DataFrame) -> bool:
    """Residual and plain in one (family, model, depth) cell."""
    keys = [k for k in ("family", "model", "depth") if k in trials]
    return bool(trials.groupby(keys)["residual"].nunique().max() > 1)


def depth_sweep(trials: pd.DataFrame | None) -> bool:
    """Both variants in one cell and two or more depths: the depth x residual
    interaction is defined."""
    return has_rows(trials) and "residual" in trials and trials["depth"].nunique() > 1 \
        and both_variants(trials)



# --------------------------------------------------------------------------- figures

INTERACTION_CAPTION = (
    "The depth x shortcut interaction, the headline: final train loss and test error "
    "against depth, one line per variant, mean and 95% t interval over completed seeds; in "
    "each panel, each residual variant's difference of differences DiD = [plain(deepest) - "
    "plain(shallowest)] - [residual(deepest) - residual(shallowest)] with its 95% interval "
    "(positive: plain degrades more than residual; means only below 3 seeds). Every depth, "
    "and the adjusted p values: the first rows of the paired table.")


FIGURES = (
    ReportItem("figure", "interaction", lambda c: c.trained and depth_sweep(c.trials),
               lambda c: figures.depth_interaction(c.trials, c.look), INTERACTION_CAPTION),
    ReportItem("figure", "degradation_vs_depth", lambda c: c.trained and has_rows(c.trials),
               lambda c: figures.degradation_vs_depth(c.trials, c.look, chance_error=CHANCE_ERROR),
               "Final training loss and test error against depth: mean and 95% t interval over "
               "seeds (dots: single seeds); failed trials are counted at the top of each panel."),
    ReportItem("figure", "training_curves_by_depth", lambda c: has_rows(c.epochs),
               lambda c: figures.training_curves_by_depth(c.epochs, c.look),
               "Error per epoch, plain (left) and residual (right), one colour per depth; dashed = "
               "train, solid = test; median over seeds (He et al. 2016, Fig. 6)."),
    ReportItem("figure", "training_curves", lambda c: has_rows(c.epochs),
               lambda c: figures.training_curves(c.epochs, c.look),
               "Loss and accuracy per epoch for each model and depth: thin = train, bold = test; "
               "median over seeds with interquartile band; dotted lines = learning-rate drops."),
    measured.LAYER_RESPONSE_STD,
    ReportItem("figure", "gradient_flow", lambda c: has_stat(c.layers, "grad_mean_abs"),
               lambda c: figures.gradient_flow(c.layers, c.look, trials=c.trials),
               "Mean |dL/dW| per weight layer at initialization and late in training (log scale); "
               "median over seeds with interquartile band; late: completed trials only (the others "
               "are named in the panel)."),
    ReportItem("figure", "grad_by_layer", lambda c: has_stat(c.layers, "grad_mean_abs", "init"),
               lambda c: figures.grad_by_layer(c.layers, "init", c.look),
               "Mean |dL/dW| per weight layer of the untrained network (probe), per depth."),
    ReportItem("figure", "act_by_layer", lambda c: has_stat(c.layers, "act_mean_abs", "init"),
               lambda c: figures.act_by_layer(c.layers, "init", c.look),
               "Mean |activation| per block output of the untrained network (probe), per depth."),
    ReportItem("figure", "act_through_training",
               lambda c: has_stat(c.layers, "act_mean_abs", "train"),
               lambda c: figures.act_through_training(c.layers, look=c.look),
               "Mean |activation| per layer at sampled training steps (colour = step); "
               "median over seeds."),
)


# --------------------------------------------------------------------------- tables

def has_contrasts(trials: pd.DataFrame) -> bool:
    """Residual and plain in one cell, or another factor at two levels."""
    return both_variants(trials) or bool(shown_factors(trials))


def multi_factor(trials: pd.DataFrame | None) -> bool:
    """Whether a factor other than residual varies (the tables and findings then
    name factors and levels)."""
    return trials is not None and bool(shown_factors(trials))


def _family(c: ReportContext) -> pd.DataFrame:
    """The report's multiplicity family: the one of the run's full trials that ``build``
    put in the context, else (a caller's own context) the one of ``c.trials``."""
    return c.family if c.family is not None else multiplicity.report_family(c.trials)


def _few_seeds(c: ReportContext) -> str:
    """``MEANS_ONLY_WHY`` when some cell has fewer than ``MIN_SEEDS`` usable seeds."""
    m = next((m for m in ("final_test_acc", "final_train_loss") if c.trials is not None
              and m in c.trials), None)
    if m is None:
        return ""
    n = _contrasts.smallest_cell(c.trials, m)
    return " " + _contrasts.MEANS_ONLY_WHY if 0 < n < _contrasts.MIN_SEEDS else ""


def _adjusted_caption(c: ReportContext) -> str:
    return (" p (t, Holm), p (Wilcoxon, Holm): " + multiplicity.family_caption(_family(c))
            + "; q (t, BH): the Benjamini-Hochberg q of the t test over the same tests (false "
            "discovery rate: the expected share of false claims among those with q below a "
            "level). n/a (view): a test this --where view changes (e.g. fewer seeds) is not "
            "in the report's family." + _few_seeds(c))


def contrasted_levels(trials: pd.DataFrame | None = None) -> str:
    """What each factor is contrasted against, from the factor registry
    (``ablations.factors``), for the factors that are columns of ``trials`` (all of them
    without): "residual minus plain; norm, block, branch scale, shortcut against batch,
    post, one, projection"."""
    names = levels.present(trials) if trials is not None else _factors.names()
    res = _factors.get("residual")
    out = " / ".join(n for n in res.level_names if n != res.baseline) + f" minus {res.baseline}"
    others = [_factors.get(n) for n in names if n != "residual"]
    if others:
        out += ("; " + ", ".join(f.name.replace("_", " ") for f in others) + " against "
                + ", ".join(f.baseline for f in others))
    return out


def _paired_caption(c: ReportContext) -> str:
    head = ("First rows (factor \"depth x residual\", depth \"d0 -> d\"): the depth x residual "
            "interaction, DiD = [plain(d) - plain(d0)] - [residual(d) - residual(d0)] of final "
            "train loss and test error per residual cell (positive: plain degrades more), "
            "paired by seed where every cell has the seeds, else Welch; mean ± 95% t half "
            "width. Then " if depth_sweep(c.trials) else "")
    if not multi_factor(c.trials):
        body = "residual minus plain, paired by seed: mean ± 95% t half width."
    else:
        body = (f"each factor level minus its baseline ({contrasted_levels(c.trials)}), within equal "
                "levels of the other factors (every residual level against the same plain "
                "cell), paired by seed: mean ± 95% t half width.")
    return (head + (body if head else body[0].upper() + body[1:]) + " Two-sided paired t and "
            "exact Wilcoxon signed-rank tests." + _adjusted_caption(c))


def _effects_applies(c: ReportContext) -> bool:
    return c.trained and has_rows(c.trials) and "residual" in c.trials and (
        both_variants(c.trials) or multi_factor(c.trials))


def _effects_caption(c: ReportContext) -> str:
    return ("Per family and contrasted factor level, on final train loss and test error: the "
            "main effect (level minus baseline, pooled over every matched pair of cells: "
            "depths, models and the other factors' levels; per seed, then a t interval over "
            "seeds, or Welch where the seeds do not line up) and the depth x factor "
            "interaction (the baseline's change minus the level's change from the shallowest "
            "to the deepest depth; positive: the baseline degrades more), each mean ± 95% "
            "half width." + " p (main, Holm), p (interaction, Holm): "
            + multiplicity.family_caption(_family(c)) + "." + _few_seeds(c))


TABLES = (
    ReportItem("table", "summary", lambda c: has_rows(c.trials),
               lambda c: degradation_table(c.trials),
               "Per family, depth and variant: parameters, completed/planned trials (failures "
               "named), final train loss and test accuracy as mean ± 95% t half width over "
               "completed seeds."),
    ReportItem("table", "paired",
               lambda c: c.trained and has_rows(c.trials) and has_contrasts(c.trials),
               lambda c: contrast_table(c.trials, _family(c)), _paired_caption),
    ReportItem("table", "factor_effects", _effects_applies,
               lambda c: factor_effects_table(c.trials, _family(c)), _effects_caption),
    ReportItem("table", "degradation", lambda c: c.trained and has_rows(c.trials),
               lambda c: degradation_index_table(c.trials),
               "Degradation index, per variant: change from the shallowest depth of each variant, "
               "mean ± 95% Welch half width (mean only below 3 seeds); positive = worse. These "
               "per-variant changes do not by themselves compare variants: whether residual "
               "connections reduce the degradation is the depth x residual interaction (the "
               "paired table's first rows, figure interaction)."),
    ReportItem("table", "robust", lambda c: c.trained and has_rows(c.trials),
               lambda c: robust_table(c.trials),
               "Next to the summary's mean ± t interval: per cell, the interquartile mean (the "
               "mean of the middle 50% of seeds: robust to one outlying seed) of final train "
               "loss and test error, with its 95% stratified percentile bootstrap interval "
               "(2,000 resamples; none below 2 seeds); n: usable seeds."),
    ReportItem("table", "improvement",
               lambda c: c.trained and has_rows(c.trials) and has_contrasts(c.trials),
               lambda c: improvement_table(c.trials),
               "P(improvement) per contrast: the probability that a run of the level beats a run "
               "of the baseline (lower final train loss or test error; ties count one half), over "
               "all pairs of runs, with its 95% stratified bootstrap interval (the estimate alone "
               "below 3 runs on either side); runs: usable runs of the level vs the baseline."),
    ReportItem("table", "failures", lambda c: has_rows(c.trials),
               lambda c: failures_table(c.trials),
               "Diverged and failed (diverged + errored) trials per cell, as rates of the finished "
               "trials (pending left out) with exact 95% Clopper-Pearson intervals: with 3 seeds, "
               "0/3 is compatible with a rate up to 71%."),
    ReportItem("table", "survivorship", lambda c: c.trained and has_rows(c.trials)
               and bool((c.trials["status"] == Status.DIVERGED).any()),
               lambda c: survivorship_table(c.trials),
               "Survivorship sensitivity: every contrast and depth x residual interaction whose "
               "cells hold a diverged trial, on the survivors only and with every diverged trial "
               "counted as a completed run at chance (train loss ln 10 = 2.30, test error 90%), "
               "mean ± 95% t interval; conclusion changes: the sign, or the side of 0 the "
               "interval lies on, differs (a finding says so)."),
)


# --------------------------------------------------------------------------- per run

def feature_files(run_dir: Path, trials: pd.DataFrame | None) -> list[Path]:
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
    first = set(firsts["trial_id"])
    order = list(firsts["trial_id"]) + [t for t in known["trial_id"] if t not in first]
    return [files[t] for t in order[:MAX_FEATURE_TRIALS]]


def _feature_items(c: ReportContext, guard=None) -> list[ReportItem]:
    """One figure per feature file shown; the file is read inside its item, so a
    truncated npz costs that figure only."""
    def make(path):
        def draw(_):
            with np.load(path, allow_pickle=False) as npz:
                maps = npz["maps"]
                image = npz["image"] if "image" in npz.files else None
            return figures.feature_maps(maps, image, title=path.stem, look=c.look)
        return draw
    return [ReportItem("figure", f"features_{safe_name(p.stem)}", lambda _: True, make(p),
                       f"First-block feature maps of {p.stem} for one test image (8 channels).")
            for p in feature_files(c.run_dir, c.trials)]


def _grad_items(c: ReportContext, guard=None) -> list[ReportItem]:
    """The replicated article's table for every (model, depth) that has both variants at init;
    with other factors varying, one per residual cell (its levels in the name, as in
    trial ids: ``grad_resnet-20-norm=none-scale=zero``) against the plain cell that
    matches it."""
    if not has_stat(c.layers, "grad_mean_abs"):
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
            out.append(ReportItem(
                "table", "-".join([f"grad_{model}-{depth}", *tags]), lambda _: True,
                lambda _, m=model, d=depth, lv=lv: grad_table(c.layers, m, d, when="init",
                                                              levels=lv),
                f"Mean |dL/dW| per weight layer at initialization, {model}, depth {depth}"
                + (f" ({where})" if where else "") + ": median over seeds without (plain) and "
                "with (residual) shortcuts; ratio = median over seeds of residual/plain.",
                floatfmt=GRAD_TABLE_FORMAT))
    return out


def _register() -> None:
    for item in (*FIGURES, *TABLES, *tuning.report_items()):
        register(item)
    register_provider(Provider("feature maps", "figure", _feature_items))
    register_provider(Provider("grad tables", "table", _grad_items))


_register()
