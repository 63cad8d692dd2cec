"""The signal-propagation figures and table (``ablations.measurements.signal``: per
unit, the branch/skip RMS ratio and the output's channel statistics, Brock et al.
2021): the ratio and the average channel variance per unit, init and trained, and a
per-cell summary.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ablations.measurements.signal import COLUMNS
from analysis.style import DEFAULT_LOOK, Look
from analysis.views import FigureSpec, TableSpec
from analysis.views.parts import cell_table, per_trial, when_grid, when_means


def _with_skip(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["has_skip"].astype(bool)] if len(df) else df


def signal_ratio(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Branch-to-skip RMS ratio per unit (units with a skip: residual networks), one row of
    panels per model, facet and variant, init and trained, one line per depth; median
    over seeds, log y. A zero-initialized branch scale gives exactly 0 at init."""
    return when_grid(_with_skip(df), "unit_index", "ratio", "unit (network order)",
                     "branch RMS / skip RMS", look, log=True, empty="no units with a skip")


def signal_variance(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Brock et al.'s signal propagation plot: the average channel variance of each unit's
    output, plain and residual per depth, init and trained; median over seeds, log y."""
    return when_grid(df, "unit_index", "act_var", "unit (network order)",
                     "average channel variance of the unit output", look,
                     log=True, empty="no signal rows")


def signal_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell: the mean branch/skip ratio over a trial's units with a skip, and the
    average channel variance of its last unit's output, at init and trained; mean ± 95%
    interval over seeds ("—" for plain networks' ratio)."""
    if df.empty:
        return None
    last = df[df["unit_index"] == df.groupby(["trial_id", "when"])["unit_index"].transform("max")]
    t = per_trial(last, "act_var", own=COLUMNS)
    ratio = per_trial(_with_skip(df), "ratio", own=COLUMNS)[["trial_id", "when", "ratio"]]
    t = t.merge(ratio, on=["trial_id", "when"], how="left")
    return cell_table(t, when_means([("branch/skip at init", "init", "ratio"),
                                     ("branch/skip trained", "final", "ratio"),
                                     ("last-unit variance at init", "init", "act_var"),
                                     ("last-unit variance trained", "final", "act_var")]))


FIGURES = (FigureSpec("signal_ratio", signal_ratio,
                      "RMS of the residual branch over the RMS of the skip, per unit, at "
                      "init and trained; median over seeds (500 test images)."),
           FigureSpec("signal_variance", signal_variance,
                      "Average channel variance of each unit's output (Brock et al. 2021's "
                      "signal propagation plot), plain and residual, at init and trained; "
                      "median over seeds (500 test images)."))
TABLES = (TableSpec("signal", signal_table,
                    "Mean branch/skip RMS ratio over the units with a skip, and the last "
                    "unit's average channel variance, mean ± 95% t half width over "
                    "seeds."),)
