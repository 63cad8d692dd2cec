"""The lesion study's figures and table (``ablations.measurements.lesion``: test error
with units deleted, Veit et al. 2016): error by the unit deleted, error against the
number of units deleted at once, and a per-cell summary.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis import stats
from analysis.figure_parts import finite, fit_title, line_band, median_iqr, no_data
from analysis.formatting import fmt_ci
from analysis.style import DEFAULT_LOOK, Look, layer_tick_inches, layer_ticks, message_figure
from analysis.variants import Variants, keyed
from analysis.views import FigureSpec, TableSpec
from analysis.views.parts import cell_table, depth_panels


def _percent_axis(ax, ylabel: str, first: bool) -> None:
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel if first else "")


def _kind(df: pd.DataFrame, *kinds: str) -> tuple[pd.DataFrame, Variants]:
    """The rows of ``kinds``, keyed (``variant``, ``facet``), the error in % as ``pct``."""
    if not {"kind", "error"} <= set(df.columns):
        df = pd.DataFrame(columns=["kind", "error", "residual"])
    rows, key = keyed(df[df["kind"].isin(kinds)])
    return rows.assign(pct=pd.to_numeric(rows["error"], errors="coerce") * 100), key


def lesion_by_unit(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Test error (%) after deleting each single unit, against the unit's position (Veit
    et al. Fig. 3/4): one panel per depth (and facet), residual vs plain. Line: median
    over seeds, band: interquartile range (none with one seed); dashed: the intact
    network's median error; x at the top: a unit that cannot be deleted (a plain block
    that changes shape), named in the panel."""
    rows, key = _kind(df, "single", "intact")
    if not (rows["kind"] == "single").any():
        return message_figure("lesion: no single-unit deletions to draw", look)
    single = rows[rows["kind"] == "single"]
    with look.context():
        handles = key.handles(rows["variant"]) + [
            Line2D([], [], color="0.3", linestyle="--", label="intact"),
            Line2D([], [], color="0.3", marker="x", linestyle="none", label="not deletable")]
        room = layer_tick_inches(single["unit"].unique())
        if not single["deletable"].astype(bool).all():  # the units named under the title
            room += look.title_line_inches
        fig, boxes, width = depth_panels(rows, key, look, handles, extra_row_in=room)
        for i, (ax, sub) in enumerate(boxes):
            notes: dict[str, list[str]] = {}
            order = (sub[sub["kind"] == "single"].sort_values("unit_index")
                     .drop_duplicates("unit_index"))
            for variant in key.present(sub["variant"]):
                v, color = sub[sub["variant"] == variant], key.color(variant)
                vs = finite(v[v["kind"] == "single"], "pct")
                if len(vs):
                    line_band(ax, median_iqr(vs, "unit_index", "pct"), "unit_index", color,
                              marker=key.marker(variant), markersize=3, label=variant)
                intact = finite(v[v["kind"] == "intact"], "pct")["pct"]
                if len(intact):
                    ax.axhline(intact.median(), color=color, linestyle="--", linewidth=0.8)
                bad = v[(v["kind"] == "single") & ~v["deletable"].astype(bool)]
                bad = bad.drop_duplicates("unit_index")
                if len(bad):  # marked and named: a unit that cannot be deleted must show
                    ax.plot(bad["unit_index"], [100] * len(bad), "x", color=color,
                            clip_on=False, markersize=5)[0].set_in_layout(False)
                    notes.setdefault(", ".join(bad["unit"]), []).append(variant)
            if notes:  # "x: layers.0 (plain, residual)"
                note = "; ".join(f"x: {u} ({', '.join(v)})" for u, v in notes.items())
                ax.set_title(ax.get_title() + "\n" + fit_title(note, width))
            if finite(sub[sub["kind"] == "single"], "pct").empty:
                no_data(ax, "no finite errors", width)
            layer_ticks(ax, order["unit"].tolist())
            _percent_axis(ax, "test error (%)", i % look.columns(len(boxes)) == 0)
    return fig


def _per_seed_k(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean error (%) over draws per seed and k; the intact rows are k = 0."""
    return finite(rows, "pct").groupby(["seed", "k"], as_index=False)["pct"].mean()


def lesion_vs_k(df: pd.DataFrame, look: Look = DEFAULT_LOOK) -> Figure:
    """Test error (%) against the number k of randomly chosen units deleted at once
    (Veit et al. Fig. 5; k = 0: intact), residual vs plain, one panel per depth (and
    facet). Line: mean over seeds of each seed's mean over draws; band: 95% t interval
    over seeds (none with one seed)."""
    rows, key = _kind(df, "random", "intact")
    if not (rows["kind"] == "random").any():
        return message_figure("lesion: no random deletions to draw", look)
    with look.context():
        fig, boxes, width = depth_panels(rows, key, look, key.handles(rows["variant"]))
        for i, (ax, sub) in enumerate(boxes):
            for variant in key.present(sub["variant"]):
                per_seed = _per_seed_k(sub[sub["variant"] == variant])
                if per_seed.empty:
                    continue
                ci = pd.DataFrame([(k, *stats.mean_ci(g["pct"])[:3])
                                   for k, g in per_seed.groupby("k")],
                                  columns=["k", "m", "lo", "hi"])
                color = key.color(variant)
                ax.plot(ci["k"], ci["m"], color=color, marker=key.marker(variant), markersize=3)
                ok = np.isfinite(ci[["lo", "hi"]].to_numpy(dtype=float)).all(axis=1)
                ax.fill_between(ci["k"], ci["lo"], ci["hi"], where=ok, color=color, alpha=0.2,
                                linewidth=0)
            if not ax.lines:
                no_data(ax, "no finite errors", width)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("units deleted (k)")
            _percent_axis(ax, "test error (%)", i % look.columns(len(boxes)) == 0)
    return fig


# --------------------------------------------------------------------------- table

def _single_summary(g: pd.DataFrame) -> dict:
    single = g[g["kind"] == "single"]
    ok = single["deletable"].astype(bool)
    inc = finite(single[ok].assign(inc=pd.to_numeric(single["error"], errors="coerce")
                                   - pd.to_numeric(single["intact_error"], errors="coerce")),
                 "inc")
    by_unit = inc.groupby("unit")["inc"].mean()
    top = by_unit.idxmax() if len(by_unit) else None
    intact = g[g["kind"] == "intact"].groupby("seed")["error"].mean()
    median = inc.groupby("seed")["inc"].median()
    return {"intact error (%)": fmt_ci(*stats.mean_ci(intact)[:3], 1, 100),
            "median single increase (pp)": fmt_ci(*stats.mean_ci(median)[:3], 1, 100),
            "largest increase (pp)": "—" if top is None else f"{100 * by_unit[top]:.1f} ({top})",
            "not deletable": int(single.loc[~ok, "unit_index"].nunique())}


def lesion_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per cell (family, model, depth, variant and each varying factor): seeds, the intact
    test error, the median increase in error from deleting one unit (median over the
    deletable units, per seed; mean ± 95% t half width over seeds), the largest single
    increase (units' increases averaged over seeds) and its unit, and the number of units
    that cannot be deleted."""
    if df.empty or "kind" not in df:
        return None
    return cell_table(df, _single_summary)


FIGURES = (FigureSpec("lesion_by_unit", lesion_by_unit,
                      "Test error after deleting one unit, by unit position (Veit et al. "
                      "2016, Fig. 3/4): median over seeds, band = interquartile range; "
                      "dashed: intact network; x at the top: a plain unit that changes "
                      "shape and cannot be deleted (named in the panel)."),
           FigureSpec("lesion_vs_k", lesion_vs_k,
                      "Test error after deleting k random units at once (Veit et al. "
                      "2016, Fig. 5; k = 0: intact): mean over seeds of the mean over 3 "
                      "draws, band = 95% t interval over seeds."))
TABLES = (TableSpec("lesion", lesion_table,
                    "Lesion study: intact test error, median and largest increase in "
                    "test error from deleting one unit (mean ± 95% t half width over "
                    "seeds), units that cannot be deleted."),)
