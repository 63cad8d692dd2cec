"""Pieces the figure modules share: finite values, medians over seeds, panel keys in
display order, titles that fit their panel, layer axes and grid labels."""
from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from ablations import levels as _levels
from analysis.style import layer_tick_inches, layer_ticks
from analysis.variants import Variants, keyed


def finite(df: pd.DataFrame, col: str = "value", positive: bool = False) -> pd.DataFrame:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
    return df[keep]


def median_iqr(df: pd.DataFrame, x: str, col: str = "value") -> pd.DataFrame:
    """Median and interquartile range of ``col`` over seeds at each ``x``."""
    g = df.groupby(x)[col]
    return pd.DataFrame({"median": g.median(), "q25": g.quantile(0.25),
                         "q75": g.quantile(0.75), "n": g.size()}).reset_index()


def line_band(ax, agg: pd.DataFrame, x: str, color, band: bool = True, **line_kw) -> None:
    ax.plot(agg[x], agg["median"], color=color, **line_kw)
    if band and (agg["n"] > 1).any():  # one seed: just the line
        ax.fill_between(agg[x], agg["q25"], agg["q75"], where=agg["n"] > 1, color=color,
                        alpha=0.2, linewidth=0)


def fits(text: str, width_in: float, size="axes.titlesize") -> bool:
    """Whether one line of ``text`` fits over a panel of a column ``width_in`` wide, less
    its y tick labels (~0.55 em a character): text does not wrap itself, and a title
    that overruns its neighbour's is unreadable. ``size``: an rcParams key or a size."""
    size = FontProperties(size=mpl.rcParams.get(size, size)).get_size_in_points()
    return len(text) * 0.55 * size <= (width_in - 0.3) * 72


def wrap(text: str, width_in: float, size="axes.titlesize") -> list[str]:
    """``text`` as lines that fit the panel, broken at the strongest separator first
    ("; " then ", " then ": " then spaces): "resnet: small_resnet18, plain" in a
    narrow panel is "resnet:", "small_resnet18", "plain". A word wider than the
    panel stays whole."""
    if fits(text, width_in, size):
        return [text]
    sep = next((s for s in ("; ", ", ", ": ", " ") if s in text), None)
    if sep is None:
        return [text]
    parts = text.split(sep)
    pieces = [p + sep.strip() for p in parts[:-1]] + [parts[-1]]
    lines: list[str] = []
    for piece in pieces:
        if lines and fits(f"{lines[-1]} {piece}", width_in, size):
            lines[-1] = f"{lines[-1]} {piece}"
        else:
            lines.append(piece)
    return [w.removesuffix(",") for line in lines for w in wrap(line, width_in, size)]


def fit_title(text: str, width_in: float, size="axes.titlesize") -> str:
    return "\n".join(wrap(text, width_in, size))


def fit_parts(head: str, tail: str, width_in: float, sep: str = ", ",
              size="axes.titlesize") -> str:
    """``head + sep + tail`` on one line if it fits, else ``head`` and ``tail`` each on
    lines of their own ("mlp, layer norm, depth 4" over "residual, x1/sqrt(blocks)")."""
    if not head or not tail or fits(f"{head}{sep}{tail}", width_in, size):
        return fit_title(f"{head}{sep}{tail}" if head and tail else head or tail, width_in, size)
    head += sep.rstrip() if sep.strip() == ":" else ""  # "residual, x1:" over "2 diverged"
    return f"{fit_title(head, width_in, size)}\n{fit_title(tail, width_in, size)}"


def mean_ci_errorbar(ax, cells: pd.DataFrame, metric: str, x: np.ndarray, scale: float,
                     style, label: str) -> None:
    """``<metric>_mean`` with its ``_ci_lo``/``_ci_hi`` interval (a ``cell_summary`` frame)
    as one errorbar line at ``x``, times ``scale``. A non-finite interval end draws no bar;
    no finite mean (every completed seed's metric NaN) draws no line at all, so a panel's
    "no completed trials" note sees it as empty."""
    mean = cells[f"{metric}_mean"].to_numpy(dtype=float) * scale
    lo = cells[f"{metric}_ci_lo"].to_numpy(dtype=float) * scale
    hi = cells[f"{metric}_ci_hi"].to_numpy(dtype=float) * scale
    err = np.vstack([mean - lo, hi - mean])
    err = np.where(np.isfinite(err), err, 0.0)
    if np.isfinite(mean).any():
        ax.errorbar(x, mean, yerr=err, color=style.color, marker=style.marker, capsize=2,
                    linewidth=1.2, markersize=4, label=label, zorder=3)


def epoch_axis(ax) -> None:
    """Integer epoch ticks; a panel whose lines all sit at one epoch gets a unit of room
    either side (an integer locator has nothing to tick in 0.95..1.05)."""
    # "auto": as many ticks as the panel's length holds (ten epochs in an inch overlap)
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    lo, hi = ax.dataLim.intervalx
    if ax.has_data() and np.isfinite([lo, hi]).all() and hi - lo < 1:
        ax.set_xlim(lo - 1, hi + 1)


def no_data(ax, text: str = "no finite data", width_in: float | None = None) -> None:
    if width_in is not None:
        text = "\n".join(w for line in text.split("\n") for w in wrap(line, width_in, "font.size"))
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.4", transform=ax.transAxes)
    # tick_params, not set_xticks([]): locators are shared with sibling panels.
    ax.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)


def positions(rows: pd.DataFrame, order: list[str]) -> pd.Series:
    """x = position in ``order``, a merged network order (``network_order``) over every
    line of a panel, so same-named layers of all variants and depths align and each
    tick's name is true of every line through it."""
    pos = {name: i for i, name in enumerate(order)}
    return rows["layer"].map(pos)


def tick_name(layer: str) -> str:
    # "layers.3.weight" -> "layers.3": the panel's y label already says weight.
    return layer.removesuffix(".weight")


def layer_axis(ax, order: list[str]) -> None:
    layer_ticks(ax, [tick_name(n) for n in order])


def tick_room(rows: pd.DataFrame) -> float:
    """Extra inches per row for the rotated layer names of ``rows``."""
    return layer_tick_inches([tick_name(n) for n in rows["layer"].unique()]) if len(rows) else 0.0


def label_edges(axes, xlabels, ylabel: str) -> None:
    """x labels under the bottom row (one string, or one per column), the y label left of
    the first column: a grid labels its edges, not every panel."""
    if isinstance(xlabels, str):
        xlabels = [xlabels] * axes.shape[1]
    for ax, xlabel in zip(axes[-1], xlabels):
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def panels(rows: pd.DataFrame, keys: list[str], variants: Variants | None = None) -> list[tuple]:
    """The distinct values of ``keys`` in ``rows``, sorted; a ``facet`` key in the
    order of ``variants.facets`` (registry level order), a ``variant`` key in hue order."""
    def order(col: pd.Series) -> pd.Series:
        if variants is not None and col.name == "facet":
            return col.map(variants.facet_rank)
        if variants is not None and col.name == "variant":
            return col.map({v: i for i, v in enumerate(variants.order)})
        return col
    distinct = rows[keys].drop_duplicates()
    return list(distinct.sort_values(keys, key=order).itertuples(index=False, name=None))


def where(rows: pd.DataFrame, keys: list[str], values: tuple) -> pd.DataFrame:
    """The rows whose ``keys`` equal ``values`` (one panel's rows)."""
    mask = np.ones(len(rows), dtype=bool)
    for k, v in zip(keys, values):
        mask &= (rows[k] == v).to_numpy()
    return rows[mask]


def depth_colors(depths) -> dict:
    """Depth -> colour, light to dark in depth order (a sequential, colour-blind safe map)."""
    depths = sorted(set(depths))
    cmap = mpl.colormaps["viridis"]
    # 0.85 .. 0.05: avoid viridis' pale yellow end, which vanishes on white.
    stops = np.linspace(0.85, 0.05, len(depths)) if len(depths) > 1 else [0.35]
    return {d: cmap(float(x)) for d, x in zip(depths, stops)}


def mark_diverged(ax, sub: pd.DataFrame, width_in: float, variants: Variants,
                  name_variant: bool = True) -> None:
    """Say which variant's trials diverged, and when: a diverged run has no finite
    points to draw, and must not silently vanish from the figure. Notes stack up
    from the bottom left, on two lines where one is wider than the panel."""
    loss = pd.to_numeric(sub["train_loss"], errors="coerce").to_numpy(dtype=float)
    bad = sub[~np.isfinite(loss)]
    size = FontProperties(size="small").get_size_in_points()
    lines = 0
    for variant in variants.present(bad["variant"]):
        vbad = bad[bad["variant"] == variant]
        n = vbad["trial_id"].nunique() if "trial_id" in vbad else 1
        count = f"{n} diverged (epoch {int(vbad['epoch'].min())})"
        # the variant's name on a line of its own when the whole does not fit
        text = fit_parts(variant if name_variant else "", count, width_in, ": ", size)
        note = ax.annotate(text, xy=(0.02, 0.04), xycoords="axes fraction",
                           xytext=(0, 1.2 * size * lines), textcoords="offset points",
                           color=variants.color(variant), ha="left", va="bottom", fontsize=size,
                           bbox=dict(facecolor="white", alpha=0.7, edgecolor="none", pad=0.3))
        # a note that overruns the panel must not make the layout squeeze the panel to nothing
        note.set_in_layout(False)
        lines += text.count("\n") + 1


def zero_layers(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial variant, depth, layer) whose every finite value is exactly 0:
    a log axis cannot draw it (a zero-initialized residual branch's first layer gets no
    gradient at init), so the panel names it rather than hiding it."""
    rows = finite(rows)
    if rows.empty or "layer" not in rows:
        return rows.iloc[:0]
    group = ["model", "depth", "layer", *_levels.present(rows)]
    group = [g for g in dict.fromkeys(["family", *group]) if g in rows]
    top = rows.groupby(group, dropna=False)["value"].transform("max")
    return rows[top <= 0].drop_duplicates(group)


def zero_notes(zeros: pd.DataFrame, key: Variants, keys: list[str]) -> dict:
    """(family, model, facet) -> "at exactly 0 so not drawn on the log axis: residual: 4
    layers"."""
    if zeros.empty:
        return {}
    out, _ = keyed(zeros, like=key)
    notes = {}
    for box in panels(out, keys, key):
        g = where(out, keys, box)
        counts = g["variant"].value_counts()
        parts = [f"{v}: {counts[v]} layer{'s' if counts[v] > 1 else ''}"
                 for v in key.present(g["variant"]) + sorted(set(counts.index) - set(key.order))]
        notes[box] = "at exactly 0 so not drawn on the log axis: " + "; ".join(parts)
    return notes
