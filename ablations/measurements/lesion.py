"""Lesion study (Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles
of relatively shallow networks", arXiv 1605.06431): the test error of a trained network
with units deleted at test time.

Deleting a unit replaces it by what is left without its branch (``models.units.lesioned``):
a residual block becomes its shortcut (``relu(shortcut(x))`` for a post-activation
ResNet block, ``x`` for an MLP block), a plain block the identity where its input and
output shapes match. A plain block that changes shape (a stage's first block, an MLP's
projection layer) cannot be deleted: it gets a row with ``deletable=False`` and NaN
error, so it is named rather than silently missing. Rows (``kind``):

* ``intact`` (k=0): the network as trained;
* ``single`` (k=1): each unit deleted on its own (Veit et al. Fig. 3 and 4);
* ``random``: k deletable units deleted at once, k = 1..n (n deletable units; 12 values
  of k evenly spread over 1..n, both ends included, when n > 12), ``DRAWS`` sets per k
  drawn from ``seed_for(trial.seed, "lesion")`` (Veit et al. Fig. 5).

Error = fraction of the test split misclassified, BN in eval mode (running statistics).
Batched and cached: one intact forward per chunk of ``CHUNK`` test images keeps the input
of every unit, and a lesion whose first deleted unit is i resumes from the cached input of
unit i (``units.forward_units(..., start=i, h=cache[i])``); identical sets (all draws at
k = n) are evaluated once. Conv inputs go channels-last (faster oneDNN kernels on CPU;
the model is not touched).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablations.measurements import FigureSpec, Measurement, TableSpec, register, seed_for
from analysis import stats
from analysis.figure_parts import finite, fit_title, line_band, median_iqr, no_data
from analysis.measure_parts import cell_table, depth_panels
from analysis.style import DEFAULT_LOOK, Look, layer_tick_inches, layer_ticks, message_figure
from analysis.tables import fmt_ci
from analysis.variants import Variants, keyed

CHUNK = 128     # test images per forward (the cache holds every unit's input for one chunk):
                # on CPU a small chunk stays in cache, 2-3x faster than 512 here (bench/)
DRAWS = 3       # random sets per k
MAX_K = 12      # most values of k in the random lesions
COLUMNS = ["kind", "k", "draw", "unit", "unit_index", "deletable", "error", "intact_error",
           "images"]


# --------------------------------------------------------------------------- measurement

def k_values(n: int) -> list[int]:
    """The numbers of units deleted at once: 1..n, or ``MAX_K`` values evenly spread over
    1..n (1 and n included) when n > ``MAX_K``."""
    if n <= MAX_K:
        return list(range(1, n + 1))
    return [int(round(v)) for v in np.linspace(1, n, MAX_K)]  # distinct: step > 1


def random_sets(candidates: list[int], seed: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(k, draw, unit indices)`` for every k of ``k_values`` and ``DRAWS`` draws: k of
    ``candidates`` (deletable unit indices) without replacement, sorted; deterministic
    given ``seed``."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in k_values(len(candidates)):
        for draw in range(DRAWS):
            pick = torch.randperm(len(candidates), generator=g)[:k].tolist()
            out.append((k, draw, tuple(sorted(candidates[j] for j in pick))))
    return out


def lesioned_logits(model, x, sets) -> dict:
    """The logits of ``x`` with each set of unit indices deleted (``frozenset()``: the
    intact network), keyed by frozenset. One intact forward caches the input of every
    unit; a lesion whose first deleted unit is i resumes at unit i from that cache, so no
    prefix is computed twice. Equals ``units.forward_units(model, x, deleted=s)``."""
    from models import units
    cache = [model.stem(x)]  # cache[i]: the input of unit i; cache[-1]: the last output
    for _, unit in model.units():
        cache.append(unit(cache[-1]))
    out = {}
    for s in map(frozenset, sets):
        if s in out:
            continue
        out[s] = (model.head(cache[-1]) if not s else
                  units.forward_units(model, x, deleted=s, start=min(s), h=cache[min(s)]))
    return out


def _fast_layout(x):
    import torch
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def measure(model, data, trial) -> pd.DataFrame:
    """Test error of ``model`` intact, with each unit deleted, and with k random deletable
    units deleted (see the module docstring); rows of ``COLUMNS``."""
    import torch
    from models import units
    named = model.units()
    ok = [units.deletable(u) for _, u in named]
    candidates = [i for i, d in enumerate(ok) if d]
    draws = random_sets(candidates, seed_for(trial.seed, "lesion"))
    wrong = dict.fromkeys([frozenset()] + [frozenset([i]) for i in candidates]
                          + [frozenset(s) for *_, s in draws], 0)
    n = len(data.test_y)
    with torch.inference_mode():
        for a in range(0, n, CHUNK):
            y = data.test_y[a:a + CHUNK]
            for s, logits in lesioned_logits(model, _fast_layout(data.test_x[a:a + CHUNK]),
                                             wrong).items():
                wrong[s] += int((logits.argmax(1) != y).sum())
    err = {s: w / n if n else math.nan for s, w in wrong.items()}
    intact = err[frozenset()]

    def row(kind, k, draw, unit, index, deletable, error):
        return dict(kind=kind, k=k, draw=draw, unit=unit, unit_index=index,
                    deletable=deletable, error=error, intact_error=intact, images=n)
    rows = [row("intact", 0, 0, "", -1, True, intact)]
    rows += [row("single", 1, 0, name, i, ok[i], err[frozenset([i])] if ok[i] else math.nan)
             for i, (name, _) in enumerate(named)]
    rows += [row("random", k, draw, ",".join(named[i][0] for i in s), -1, True, err[frozenset(s)])
             for k, draw, s in draws]
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- figures

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


register(Measurement(
    name="lesion", when=("final",), cost="moderate", fn=measure, default=True,
    summary="test error after deleting each unit and k random units (Veit et al. 2016)",
    figures=(FigureSpec("lesion_by_unit", lesion_by_unit,
                        "Test error after deleting one unit, by unit position (Veit et al. "
                        "2016, Fig. 3/4): median over seeds, band = interquartile range; "
                        "dashed: intact network; x at the top: a plain unit that changes "
                        "shape and cannot be deleted (named in the panel)."),
             FigureSpec("lesion_vs_k", lesion_vs_k,
                        "Test error after deleting k random units at once (Veit et al. "
                        "2016, Fig. 5; k = 0: intact): mean over seeds of the mean over 3 "
                        "draws, band = 95% t interval over seeds.")),
    tables=(TableSpec("lesion", lesion_table,
                      "Lesion study: intact test error, median and largest increase in "
                      "test error from deleting one unit (mean ± 95% t half width over "
                      "seeds), units that cannot be deleted."),),
))
