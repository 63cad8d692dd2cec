"""One look for every figure: variant colours and markers, paper sizes, axes.

Every figure colours and marks a variant the same way (``PALETTE``,
``MARKERS`` here for plain/residual; ``analysis.variants`` for every factor's
levels), so "residual" is the same blue in the gradient plot, the
training curves and the slides. Colours come from seaborn's "colorblind"
palette (Okabe-Ito-like, safe for the common colour-vision deficiencies),
and each variant also has its own marker so the plots survive greyscale.

Nothing here imports pyplot: figures are built on ``matplotlib.figure.Figure``
directly, which needs no GUI backend and leaves no global figure registry. Writing
them to files: ``analysis.saving``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib as mpl
import pandas as pd
from tueplots import figsizes as _tp_figsizes
from tueplots import fontsizes as _tp_fontsizes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter, Locator, LogFormatter, NullLocator, ScalarFormatter

from ablations import factors as _factors

VARIANT_ORDER = ("plain", "residual")

# The residual factor's registry levels: seaborn's "colorblind" orange squares (plain)
# and blue circles (residual). Fixed by name, not by order of appearance, so a figure
# with only one variant keeps that variant's colour. The other factors' levels are
# styled by ``analysis.variants`` from the same registry.
_RESIDUAL = _factors.get("residual")
PALETTE = {lv.name: lv.color for lv in _RESIDUAL.levels}
MARKERS = {lv.name: lv.marker for lv in _RESIDUAL.levels}

# Depths are the "style" factor; cycle these in sorted depth order.
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))

# Text widths (inches) from tueplots, which reads them off each venue's LaTeX
# template (\showthe\columnwidth / \textwidth): ICML 2024's two-column layout
# for papers (3.25 / 6.75 in), a 16:9 beamer frame for slides.
_PAPER_WIDTH = {"single": _tp_figsizes.icml2024_half()["figure.figsize"][0],
                "double": _tp_figsizes.icml2024_full()["figure.figsize"][0]}
_SLIDES_WIDTH = {"single": _tp_figsizes.beamer_169(rel_width=0.48)["figure.figsize"][0],
                 "double": _tp_figsizes.beamer_169(rel_width=0.96)["figure.figsize"][0]}
COLUMN_WIDTH = dict(_PAPER_WIDTH)
STYLES = ("paper", "slides")
WIDTHS = ("single", "double")

PAPER_RC = {
    # Type 42 = TrueType: editable text in Illustrator, no Type 3 bitmaps, and
    # accepted by the venues that reject Type 3 fonts.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.family": "sans-serif",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.figsize": (COLUMN_WIDTH["double"], 2.4),
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "image.cmap": "viridis",
    # A nearly constant curve (an error stuck at 99.99999%) reads "99.99999", not
    # "1e-10+9.999999e1" with ticks 0 and 1; large and small numbers as x10^k.
    "axes.formatter.useoffset": False,
    "axes.formatter.use_mathtext": True,
}

# Slides are read from across a room: beamer's font sizes (tueplots), thicker
# lines and bigger markers, same colours and markers as the paper.
_SLIDES_EXTRA = {"axes.linewidth": 0.8, "lines.linewidth": 1.6, "lines.markersize": 4,
                 "xtick.major.width": 0.8, "ytick.major.width": 0.8,
                 "legend.title_fontsize": 9, "figure.titlesize": 11}


# A legend entry beside its text, in em: handle 1.8 + handletextpad 0.8 (+ border
# slack); columns 1.0 em apart.
_LEGEND_EM = 2.8
_COLUMN_SPACING = 1.0


@dataclass(frozen=True)
class Look:
    """How figures are sized and lettered: ``style`` paper|slides, ``width`` single|double.

    Every figure function takes ``look=``; the width is the venue's column
    (single) or text width (double), and a figure fills it, adding rows
    rather than shrinking panels when there are many.

    >>> fig = figures.degradation_vs_depth(trials, look=Look("paper", "single"))
    """
    style: str = "paper"
    width: str = "double"

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)} (got {self.style!r})")
        if self.width not in WIDTHS:
            raise ValueError(f"width must be one of {', '.join(WIDTHS)} (got {self.width!r})")

    @property
    def inches(self) -> float:
        """The figure width in inches."""
        return (_PAPER_WIDTH if self.style == "paper" else _SLIDES_WIDTH)[self.width]

    @property
    def rc(self) -> dict:
        rc = {**PAPER_RC, "figure.figsize": (self.inches, 0.62 * self.inches)}
        if self.style == "slides":
            rc.update(_tp_fontsizes.beamer())
            rc.update(_SLIDES_EXTRA)
        return rc

    def context(self):
        """``matplotlib.rc_context`` with this look's rcParams."""
        return mpl.rc_context(self.rc)

    def columns(self, n: int) -> int:
        """Panels per row for ``n`` panels: 2 in a single column, 3 across a page."""
        return max(1, min(n, 2 if self.width == "single" else 3))

    def panel_width(self, ncols: int, legend: bool = True) -> float:
        """Width of one of ``ncols`` panels once an outside legend has its share
        (a single-column figure puts its legend above, so it takes no width)."""
        share = 0.8 if legend and self.width == "double" else 1.0
        return self.inches * share / ncols

    def row_height(self, ncols: int, aspect: float = 0.62) -> float:
        """Height of one row of panels: ``aspect`` x panel width, never below 1.1 in
        (room for a title, ticks and a label at this look's font size)."""
        return max(1.1 if self.style == "paper" else 1.5, aspect * self.panel_width(ncols))

    def legend_inches(self, handles) -> float:
        """Height a legend adds to a figure: none across a page (it sits right of the
        panels), its rows in a column (it sits above). ``handles``: the legend's
        handles (rows of ``legend_columns``), or their count (rows of three)."""
        n = handles if isinstance(handles, int) else len(handles)
        if self.width == "double" or not n:
            return 0.0
        ncols = 3 if isinstance(handles, int) else self.legend_columns(handles)
        size = FontProperties(size=self.rc["legend.fontsize"]).get_size_in_points()
        return (math.ceil(n / ncols) * 1.4 * size + 6) / 72

    def legend_columns(self, handles) -> int:
        """Columns of a legend set above the panels: up to three, as many as the
        figure's width holds. Matplotlib fills columns top to bottom, each as wide as
        its longest label (~0.6 em a character) plus the handle and spacing."""
        labels = [str(h.get_label()) for h in handles]
        size = FontProperties(size=self.rc["legend.fontsize"]).get_size_in_points()
        for ncols in range(min(len(labels), 3), 1, -1):
            rows, large = divmod(len(labels), ncols)
            heights = [rows + 1] * large + [rows] * (ncols - large)
            starts = [sum(heights[:i]) for i in range(ncols)]
            widths = [max((len(t) for t in labels[a:a + h]), default=0) * 0.6 + _LEGEND_EM
                      for a, h in zip(starts, heights)]
            if (sum(widths) + _COLUMN_SPACING * (ncols - 1)) * size / 72 <= self.inches:
                return ncols
        return 1

    @property
    def title_line_inches(self) -> float:
        """Height of one more line of a panel title."""
        return 1.25 * FontProperties(size=self.rc["axes.titlesize"]).get_size_in_points() / 72

    def legend(self, fig, handles) -> None:
        """The figure legend: right of the panels across a page, above them in a column."""
        if self.width == "double":
            fig.legend(handles=handles, loc="outside right upper")
        else:
            fig.legend(handles=handles, loc="outside upper center",
                       ncols=self.legend_columns(handles), columnspacing=_COLUMN_SPACING,
                       handlelength=1.8)


DEFAULT_LOOK = Look()


def paper_context(width: str = "double"):
    """Context manager with the paper rcParams (TrueType fonts, 7-9 pt text).

    ``width`` ("single" ~3.3 in, "double" ~6.8 in) sets the default figure size.

    >>> with paper_context("single"):
    ...     fig = Figure()  # 3.25 in wide, 8 pt text
    """
    if width not in COLUMN_WIDTH:
        raise ValueError(f"width must be one of {sorted(COLUMN_WIDTH)} (got {width!r})")
    return Look("paper", width).context()


def variant_of(residual: pd.Series) -> pd.Series:
    """"residual"/"plain" labels from the bool ``residual`` column (NaN for anything else)."""
    return residual.map({True: "residual", False: "plain"})


def with_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` with a ``variant`` column; rows whose ``residual`` is not a bool are dropped."""
    out = df.assign(variant=variant_of(df["residual"]))
    return out[out["variant"].notna()]


def depth_linestyles(depths) -> dict:
    """Depth -> line style, assigned in sorted order so the mapping is stable across figures."""
    return {d: LINESTYLES[i % len(LINESTYLES)] for i, d in enumerate(sorted(set(depths)))}


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (0.3, 2)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:.3g}"


def log_axis(ax) -> None:
    """Log y, or linear for a narrow range, decided once over every panel sharing ``ax``'s y.

    Within two decades log ticks read 0.3, 2 rather than 3x10^-1, 2x10^0.
    Data spanning less than a factor 1.5 (a loss stuck at 2.302..2.303) stays
    linear without an offset: a log axis there only repeats "2.3" at every tick.

    Panels made with ``sharey`` share one scale and one formatter, so a choice
    made per panel from that panel's data alone would let the last panel undo
    (or, with the formatter, break) what an earlier one chose. Call it after
    every panel of the group is drawn; calling it again on a sibling is a no-op.
    """
    # a panel of lines with no finite point (every value masked) has data but no limits
    group = [a for a in ax.get_shared_y_axes().get_siblings(ax)
             if a.has_data() and math.isfinite(a.dataLim.intervaly[0])
             and math.isfinite(a.dataLim.intervaly[1])]
    if not group:
        return
    lo = min(a.dataLim.intervaly[0] for a in group)
    hi = max(a.dataLim.intervaly[1] for a in group)
    if hi <= 0:  # nothing a log axis can show: linear, as drawn
        return
    if lo > 0 and math.log10(hi) - math.log10(lo) < math.log10(1.5):  # not hi / lo: overflows
        for a in group:
            a.set_yscale("linear")
        # Not ticklabel_format(style="plain"): that writes 1e-30 as forty zeros.
        # Scientific notation outside 1e-3..1e4, but never an offset.
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False, useMathText=True))
        ax.yaxis.get_major_formatter().set_powerlimits((-3, 4))
        return
    for a in group:
        a.set_yscale("log")
    lo, hi = ax.get_ylim()
    if lo > 0 and math.log10(hi) - math.log10(lo) < 2:
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


# Layer-name tick labels: rotated, one per LAYER_TICK_SPACING font heights
# (across the slanted lines) of the panel's drawn width, never more than
# MAX_LAYER_TICKS: a 110-layer network gets every ~8th name.
MAX_LAYER_TICKS = 16
LAYER_TICK_ROTATION = 45
LAYER_TICK_SPACING = 1.5


def _tick_points() -> float:
    return FontProperties(size="x-small").get_size_in_points()


def layer_tick_stride(n: int, width_pt: float, fontsize: float) -> int:
    """Every how many of ``n`` evenly spread layers a panel ``width_pt`` wide can name."""
    # Parallel labels rotated by a, d apart, are d*sin(a) apart across their
    # lines: that must exceed a line of text.
    need = LAYER_TICK_SPACING * fontsize / math.sin(math.radians(LAYER_TICK_ROTATION))
    fit = math.ceil(need * n / max(width_pt, 1e-9))
    cap = math.ceil((n - 1) / (MAX_LAYER_TICKS - 1)) if n > 1 else 1
    return max(1, fit, cap)


class LayerLocator(Locator):
    """Ticks at layer positions 0..n-1, as many as the axes' width at draw time fits:
    every k-th layer, the last one in place of the k-th before it, so no two
    ticks are closer than k and both ends are named. Decided when drawn, after
    the layout has given the panel its real width (legend, colour bar and
    neighbours' labels included), not from a guess made before."""

    def __init__(self, n: int, fontsize: float):
        self.n, self.fontsize = n, fontsize

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        ax = self.axis.axes
        span = abs(vmax - vmin) or 1.0
        width_pt = ax.bbox.width * 72 / ax.figure.dpi * self.n / span
        k = layer_tick_stride(self.n, width_pt, self.fontsize)
        ticks = list(range(0, self.n, k))
        if len(ticks) > 1 and ticks[-1] != self.n - 1:
            ticks[-1] = self.n - 1
        return ticks


def layer_ticks(ax, names) -> None:
    """Name x positions 0..len(names)-1 with ``names``: small rotated labels, thinned at
    draw time to what the panel's width holds (``LayerLocator``)."""
    names = [str(n) for n in names]
    if not names:
        return
    size = _tick_points()
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.xaxis.set_major_locator(LayerLocator(len(names), size))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, pos: names[int(round(x))] if 0 <= round(x) < len(names) else ""))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelrotation=LAYER_TICK_ROTATION, labelsize=size)
    # Right-aligned, each label ends at its tick. Ticks made later copy the first's
    # alignment (tick_params has no key for it before matplotlib 3.10).
    for tick in ax.xaxis.get_major_ticks():
        tick.label1.set_horizontalalignment("right")


def layer_tick_inches(names) -> float:
    """Height the rotated names take below a panel beyond an ordinary tick label: what
    a figure adds to each row so that the panels keep their height."""
    longest = max((len(str(n)) for n in names), default=0)
    # ~0.6 em per character of a sans-serif name
    return 0.6 * _tick_points() * longest * math.sin(math.radians(LAYER_TICK_ROTATION)) / 72


def message_figure(text: str, look: Look = DEFAULT_LOOK) -> Figure:
    """A small figure that only says ``text``: what a figure function returns with no data."""
    with look.context():
        fig = Figure(figsize=(look.inches, 1.2))
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return fig
