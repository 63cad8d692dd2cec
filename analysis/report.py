"""Every figure and table of one results folder: ``build(run_dir) -> written paths``.

Reads whichever of ``trials.parquet``, ``layers.parquet``, ``epochs.parquet``
and ``features/*.npz`` exist (a probe-only sweep has no epochs or features)
and writes ``figures/*.{pdf,png}`` and ``tables/*.{md,tex}`` inside the
folder, each file atomically. Needs only pandas, pyarrow and matplotlib: no
ray, wandb or torch, so a laptop can rebuild a report from copied results.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures
from analysis.style import save_figure
from analysis.tables import (GRAD_TABLE_FORMAT, escape_latex, grad_table, summary_table,
                             write_table)

RESULT_FILES = ("trials", "layers", "epochs")
FORMATS = ("pdf", "png", "svg")
MAX_FEATURE_TRIALS = 4


class ResultsError(ValueError):
    """The folder is missing, holds no results, or a results file cannot be read."""


def _safe(name: str) -> str:
    """A file-name-safe version of a trial or model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))


def load_results(run_dir) -> dict[str, pd.DataFrame]:
    """``{"trials": df, "layers": df, "epochs": df}`` for the Parquet files that exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"results folder {str(run_dir)!r} does not exist or is not a folder")
    data = {}
    for name in RESULT_FILES:
        path = run_dir / f"{name}.parquet"
        if path.is_file():
            try:
                data[name] = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise ResultsError(f"cannot read {path}: {exc}") from exc
    if not data:
        raise ResultsError(f"{str(run_dir)!r} holds none of "
                           + ", ".join(f"{n}.parquet" for n in RESULT_FILES))
    return data


def _feature_files(run_dir: Path, trials: pd.DataFrame | None) -> list[Path]:
    """Up to ``MAX_FEATURE_TRIALS`` feature files, one per (model, depth, variant) cell first.

    The lowest seed of each cell comes first, so four files show both
    variants at two depths rather than four seeds of one trial.
    """
    files = {p.stem: p for p in sorted((run_dir / "features").glob("*.npz"))}
    cols = {"trial_id", "family", "model", "depth", "residual", "seed"}
    if trials is None or not cols <= set(trials.columns):
        return list(files.values())[:MAX_FEATURE_TRIALS]
    known = trials[trials["trial_id"].isin(files)].sort_values(
        ["seed", "family", "model", "depth", "residual"], kind="stable")
    firsts = known.drop_duplicates(["family", "model", "depth", "residual"])
    order = list(firsts["trial_id"]) + [t for t in known["trial_id"] if t not in set(firsts["trial_id"])]
    order += [t for t in files if t not in set(order)]
    return [files[t] for t in order[:MAX_FEATURE_TRIALS]]


def _layer_outputs(layers: pd.DataFrame, fig_dir: Path, tab_dir: Path, formats) -> list[str]:
    written = []
    init = layers[layers["phase"] == "init"]
    if (init["stat"] == "grad_mean_abs").any():
        written += save_figure(figures.grad_by_layer(layers, "init"), fig_dir / "grad_by_layer", formats)
    if (init["stat"] == "act_mean_abs").any():
        written += save_figure(figures.act_by_layer(layers, "init"), fig_dir / "act_by_layer", formats)
    if ((layers["phase"] == "train") & (layers["stat"] == "act_mean_abs")).any():
        written += save_figure(figures.act_through_training(layers), fig_dir / "act_through_training",
                               formats)
    grads = init[init["stat"] == "grad_mean_abs"]
    for (model, depth), g in grads.groupby(["model", "depth"], sort=True):
        if g["residual"].nunique() < 2:
            continue
        caption = (r"Mean $|\partial L/\partial W|$ per weight layer at initialization, "
                   f"{escape_latex(model)}, depth {depth}: median over seeds without (plain) and "
                   "with (residual) shortcuts; ratio is the median over seeds of residual/plain.")
        written += write_table(grad_table(layers, model, depth, "init"),
                               tab_dir / f"grad_{_safe(model)}-{depth}", caption,
                               f"tab:grad-{_safe(model)}-{depth}", GRAD_TABLE_FORMAT)
    return written


def build(run_dir, formats=("pdf", "png")) -> list[str]:
    """Write every figure and table that the folder's results allow; return the written paths.

    Figures: ``grad_by_layer``/``act_by_layer`` (init rows), ``training_curves``
    (epochs.parquet), ``act_through_training`` (train-phase rows),
    ``features_<trial>`` (up to 4 trials). Tables: ``grad_<model>-<depth>``
    for every (model, depth) with both variants, ``summary`` (trials.parquet).

    Raises ``ResultsError`` for a missing folder, no results, an unreadable
    file, or an unknown format.
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ResultsError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    data = load_results(run_dir)
    fig_dir, tab_dir = run_dir / "figures", run_dir / "tables"
    written: list[str] = []
    layers = data.get("layers")
    if layers is not None and len(layers):
        written += _layer_outputs(layers, fig_dir, tab_dir, formats)
    epochs = data.get("epochs")
    if epochs is not None and len(epochs):
        written += save_figure(figures.training_curves(epochs), fig_dir / "training_curves", formats)
    for path in _feature_files(run_dir, data.get("trials")):
        try:
            with np.load(path, allow_pickle=False) as npz:
                maps = npz["maps"]
                image = npz["image"] if "image" in npz.files else None
        except Exception as exc:  # a truncated npz should not cost the whole report
            warnings.warn(f"skipping feature maps {path}: {exc}", stacklevel=2)
            continue
        fig = figures.feature_maps(maps, image, title=path.stem)
        written += save_figure(fig, fig_dir / f"features_{_safe(path.stem)}", formats)
    trials = data.get("trials")
    if trials is not None:
        written += write_table(summary_table(trials), tab_dir / "summary",
                               "Trials per model, depth and variant: parameter count, number of "
                               "trials by status, and (trained sweeps) final test accuracy and "
                               "train loss as mean and 95\\% CI half width over completed trials.",
                               "tab:summary")
    return written
