"""The per-cell hyperparameter search, made visible: its samples, ranges, table and boundary check.

``sweep.py --tune lr`` (``ablations.tuning``) runs one Optuna study per ablation cell
and writes every sample to ``RESULTS/tuning.parquet``: the cell's label and factors,
Optuna's ``number``, ``value`` (the objective: validation accuracy after the last
epoch, 0.0 for a diverged sample), ``state`` (COMPLETE, PRUNED, FAIL, ...), one column
per tuned hyperparameter, ``status`` (completed, pruned, diverged, error, no result),
``val_acc_epoch_1..N`` (what the sample reported to the pruner) and ``selected`` (the
sample whose hyperparameters every seed of the cell was then trained with).

The tuning playbook (Godbole, Dahl, Gilmer, Shallue, Nado: "Deep Learning Tuning
Playbook", Google 2023) asks two things of such a search before its comparison is
trusted: *isolation plots* (per cell, the validation metric of every sample against
each tuned hyperparameter; ``analysis.figures_tuning``) and the *search-space
boundary check*: a best value near the edge of its range means the optimum may lie
outside it. Here a selected value is "at a bound" when, on the log scale on which the
search samples, it lies within ``MARGIN`` (10%) of the range's width from a bound:
``log(v) - log(lo) <= 0.1 * (log(hi) - log(lo))`` or the same from ``hi`` (a value
beyond the bound counts too).

Ranges are read from ``spec.json`` (``spec.tune``, ``spec.tune_ranges``) over the
default ranges ``TUNE_SPACE`` (``ablations.factors``: torch-free, the very ranges the
search uses); tests/analysis/test_tuning.py checks that ``search_ranges`` resolves like
``AblationSpec.search_space``. Without a
usable spec.json the ranges are unknown: no bounds are drawn and nothing is flagged
(a default range guessed for a sweep run with ``--tune-range`` would be wrong).

Pure functions on DataFrames, plus ``load_tuning`` and the report's items
(``report_items``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.status import Status
from ablations.factors import TUNE_SPACE
from ablations import levels as _levels
from analysis.failures import Guard, one_line
from analysis.registry import ReportItem
from ablations.where import ResultsError

MARGIN = 0.1            # "at a bound": within 10% of the range's log width from it
REL_TOL = 1e-9          # a value at exactly 10% in floating point counts as inside
REQUIRED = ("cell", "number", "state", "value")
OUTCOMES = ("completed", "pruned", "failed")
EPOCH_PREFIX = "val_acc_epoch_"


# --------------------------------------------------------------------------- input

def load_tuning(run_dir, guard: Guard | None = None) -> pd.DataFrame | None:
    """``RESULTS/tuning.parquet``, or None when the sweep did not tune.

    A file that cannot be read, or lacks one of ``REQUIRED``, is an "input" failure of
    the tuning items only: with a ``guard`` it is recorded (the report names it) and
    None is returned; without one it raises ``ResultsError``."""
    path = Path(run_dir) / "tuning.parquet"
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
        missing = [c for c in REQUIRED if c not in df]
        if missing:
            raise ValueError(f"no column(s) {', '.join(missing)}")
    except Exception as exc:  # pyarrow raises several types for a damaged file
        if guard is None:
            raise ResultsError(f"cannot read {path}: {one_line(exc)}") from exc
        guard.record("input", "tuning.parquet", exc)
        return None
    return df


def search_ranges(spec: dict | None) -> dict[str, tuple[float, float]]:
    """The log-uniform range of each tuned hyperparameter, from spec.json's content (as
    ``analysis.report.load_spec`` returns it): ``TUNE_SPACE`` overridden by
    ``spec.tune_ranges``, for the names of ``spec.tune``, as
    ``AblationSpec.search_space`` resolves them. ``{}`` when nothing was tuned or the
    spec is missing; ValueError for a ``tune_ranges`` entry that is not
    ``[name, low, high]``."""
    s = (spec or {}).get("spec") or {}
    ranges = dict(TUNE_SPACE)
    for item in s.get("tune_ranges") or ():
        try:
            name, lo, hi = item
            ranges[str(name)] = (float(lo), float(hi))
        except (TypeError, ValueError):
            raise ValueError(f"spec.json: tune_ranges entry {item!r} is not "
                             "[name, low, high]") from None
    return {n: ranges[n] for n in s.get("tune") or () if n in ranges}


def tuned_names(samples: pd.DataFrame, ranges: dict | None = None) -> list[str]:
    """The tuned hyperparameters that are columns of ``samples``: those of ``ranges``
    first (the spec's order), then the other names of ``TUNE_SPACE``."""
    names = list(ranges or {}) + [n for n in TUNE_SPACE if n not in (ranges or {})]
    return [n for n in names if n in samples]


# --------------------------------------------------------------------------- samples

def last_reported(samples: pd.DataFrame) -> pd.Series:
    """Per sample, the validation accuracy of the last epoch it reported (the highest
    ``val_acc_epoch_N`` that is finite); NaN when it reported none."""
    cols = sorted((c for c in samples if c.startswith(EPOCH_PREFIX)
                   and c[len(EPOCH_PREFIX):].isdigit()), key=lambda c: int(c[len(EPOCH_PREFIX):]))
    if not cols:
        return pd.Series(np.nan, index=samples.index, dtype=float)
    v = samples[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    v = v.where(np.isfinite(v))
    return v.ffill(axis=1).iloc[:, -1]


def classify(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` with ``outcome`` and ``shown`` columns.

    ``outcome``: "completed" (state COMPLETE, a finite value, not diverged), "pruned"
    (state PRUNED), else "failed" (diverged: scored 0.0; errored; no result; a sample
    left running). ``shown``: the validation accuracy a figure draws: the objective of
    a completed sample, the last reported one of a pruned sample (its value when it
    reported none), NaN for a failed one."""
    state = samples["state"].astype(str).str.rsplit(".", n=1).str[-1].str.upper()
    status = samples["status"].astype(str) if "status" in samples else \
        pd.Series("", index=samples.index)
    value = pd.to_numeric(samples["value"], errors="coerce").astype(float)
    done = (state == "COMPLETE") & (status != Status.DIVERGED) & np.isfinite(value)
    pruned = (state == "PRUNED") & ~done
    last = last_reported(samples).fillna(value.where(np.isfinite(value)))
    return samples.assign(outcome=np.where(done, "completed", np.where(pruned, "pruned", "failed")),
                          shown=np.where(done, value, np.where(pruned, last, np.nan)))


def selected(samples: pd.DataFrame) -> pd.Series:
    """Whether each sample is its cell's selected one: the ``selected`` column, or, in a
    frame without it, ``ablations.tuning.selection``'s rule (the completed sample of
    highest value, the lowest number among equals)."""
    if "selected" in samples:
        return samples["selected"].eq(True)
    c = classify(samples)
    done = c[c["outcome"] == "completed"].sort_values(["value", "number"],
                                                       ascending=[False, True], kind="stable")
    best = done.drop_duplicates("cell").index
    return pd.Series(samples.index.isin(best), index=samples.index)


# --------------------------------------------------------------------------- boundary check

def bound_side(value, lo, hi, margin: float = MARGIN) -> str | None:
    """"lower" or "upper" when ``value`` lies within ``margin`` of the log width of
    ``[lo, hi]`` from that bound (``|log v - log bound| <= margin * (log hi - log lo)``,
    inclusive up to ``REL_TOL``; beyond the bound counts too), else None. None for a
    value or range that is not finite and positive, or ``lo >= hi``."""
    try:
        v, lo, hi = float(value), float(lo), float(hi)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite([v, lo, hi]).all() and v > 0 and 0 < lo < hi):
        return None
    room = margin * (math.log(hi) - math.log(lo)) * (1 + REL_TOL)
    if math.log(v) - math.log(lo) <= room:
        return "lower"
    if math.log(hi) - math.log(v) <= room:
        return "upper"
    return None


def margin_edges(lo: float, hi: float, margin: float = MARGIN) -> tuple[float, float]:
    """The inner edges of the two margins: ``lo * (hi/lo)**margin``, ``hi / (hi/lo)**margin``."""
    step = (hi / lo) ** margin
    return lo * step, hi / step


def boundary_rows(samples: pd.DataFrame | None, ranges: dict | None,
                  margin: float = MARGIN) -> pd.DataFrame:
    """One row per (cell, tuned hyperparameter) whose selected value is at a bound of
    its range: ``cell, name, value, lo, hi, side`` ("lower"/"upper"), cells in
    factor order."""
    cols = ["cell", "name", "value", "lo", "hi", "side"]
    if samples is None or not len(samples) or not ranges:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, r in _sorted(samples[selected(samples)]).iterrows():
        for name in tuned_names(samples, ranges):
            if name not in ranges:
                continue
            lo, hi = ranges[name]
            side = bound_side(r[name], lo, hi, margin)
            if side:
                rows.append(dict(cell=r["cell"], name=name, value=float(r[name]), lo=lo, hi=hi,
                                 side=side))
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- table

def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in cell order: family, model, depth, then the factors' level order."""
    return _levels.sort_cells(df, [*_levels.BASE_KEYS, *_levels.present(df), "cell", "number"])


def fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g}]"


def tuning_table(samples: pd.DataFrame, ranges: dict | None = None,
                 margin: float = MARGIN) -> pd.DataFrame:
    """Per cell: the selected value of each tuned hyperparameter (NaN when no sample
    completed: the cell then trained with the fixed default) and its range, the
    selected sample's validation accuracy (%), the number of samples completed,
    pruned and failed (diverged ones included), and ``at bound``: the hyperparameters
    whose selected value is at a bound (``bound_side``), "no" when none is, "n/a"
    without a selection or a recorded range (then the range columns read "n/a" too)."""
    ranges = ranges or {}
    names = tuned_names(samples, ranges)
    c = classify(samples).assign(_selected=selected(samples))
    cells = _sorted(c.drop_duplicates("cell"))["cell"]
    out = []
    for cell in cells:
        g = c[c["cell"] == cell]
        pick = g[g["_selected"]]
        row = {"cell": cell}
        flags = []
        for n in names:
            v = float(pick[n].iloc[0]) if len(pick) and pd.notna(pick[n].iloc[0]) else math.nan
            row[n] = v
            row[f"{n} range"] = fmt_range(*ranges[n]) if n in ranges else _levels.NA
            if n in ranges and (side := bound_side(v, *ranges[n], margin)):
                flags.append(f"{n} ({side})")
        acc = pd.to_numeric(pick["value"], errors="coerce").astype(float)
        row["val acc (%)"] = 100 * float(acc.iloc[0]) if len(acc) else math.nan
        for o in OUTCOMES:
            row[o] = int((g["outcome"] == o).sum())
        known = len(pick) and any(n in ranges for n in names)
        row["at bound"] = ", ".join(flags) if flags else ("no" if known else _levels.NA)
        out.append(row)
    return pd.DataFrame(out, columns=["cell", *[k for n in names for k in (n, f"{n} range")],
                                      "val acc (%)", *OUTCOMES, "at bound"])


# --------------------------------------------------------------------------- report items

def _has(c, name: str | None = None) -> bool:
    t = getattr(c, "tuning", None)
    return t is not None and len(t) > 0 and (name is None or name in t)


def _isolation_caption(name: str) -> Callable:
    def caption(c) -> str:
        where = (f"dashed lines: the search range {fmt_range(*c.tune_ranges[name])}, "
                 f"shaded: within {MARGIN:.0%} of its log width from a bound"
                 if name in (c.tune_ranges or {}) else "search range not recorded (no spec.json)")
        return (f"Tuning isolation plot for {name} (tuning playbook): per cell, the final "
                f"validation accuracy of every Optuna sample against {name} (log scale); "
                "filled: completed, hollow: pruned (at its last reported validation accuracy), "
                "x at the bottom: diverged or failed, star: the selected sample; " + where + ".")
    return caption


def report_items() -> list[ReportItem]:
    """The tuning figures (one isolation plot per hyperparameter of ``TUNE_SPACE`` that
    was tuned, and the search progress) and the ``tuning`` table, as report items
    (``analysis.registry``; ``analysis.report_items`` registers them). They read
    ``c.tuning`` (``load_tuning``'s frame or None), ``c.tune_ranges``
    (``search_ranges``) and ``c.look`` of the report's context."""
    from analysis import figures_tuning as ft  # it imports this module
    iso = [ReportItem("figure", f"tuning_isolation_{n}", lambda c, n=n: _has(c, n),
                      lambda c, n=n: ft.tuning_isolation(c.tuning, n, c.tune_ranges, c.look),
                      _isolation_caption(n)) for n in TUNE_SPACE]
    return iso + [
        ReportItem("figure", "tuning_progress", _has,
                   lambda c: ft.tuning_progress(c.tuning, c.look),
                   "Tuning progress: per cell, the best validation accuracy among the "
                   "completed Optuna samples so far against the sample number (dots: each "
                   "completed sample; star: the selected one)."),
        ReportItem("table", "tuning", _has,
                   lambda c: tuning_table(c.tuning, c.tune_ranges),
                   f"Per cell: the selected value of each tuned hyperparameter (best final "
                   f"validation accuracy among completed Optuna samples; a dash when none "
                   f"completed and the fixed default was used), its search range "
                   f"(log-uniform), the selected sample's validation accuracy, the samples "
                   f"completed, pruned and failed (diverged included), and whether the "
                   f"selected value lies within {MARGIN:.0%} of a bound on the log scale "
                   f"(then the optimum may lie outside the range)."),
    ]
