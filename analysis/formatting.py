"""Numbers and table cells as text: the one place that decides how a value reads.

``fmt_ci`` ("m ± h"), ``fmt_interval`` ("v [lo, hi]") and ``fmt_p`` write the
pre-formatted cells of the paper tables, so that Markdown, LaTeX and HTML show the same
digits. ``specs`` picks one number format per column of a frame and ``cell`` writes one
value in that format for a target ("md", "tex", "html"); ``numeric`` says which columns
are right-aligned. The table renderers (``analysis.tables.to_markdown``/``to_latex``)
and the HTML report build on these three.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd

BIG = 1e6  # from here on, fixed point is a wall of digits


def fmt_ci(mean: float, lo: float, hi: float, decimals: int, scale: float = 1.0,
           small: str = "zero") -> str:
    """"m ± h" with the t interval's half width h; just "m" when there is no interval
    (one value), "—" when there is no value. ``scale`` converts (100: to percent).

    Fixed point with ``decimals``, except in scientific notation with 3
    significant digits (both numbers alike) when the mean or the half width
    reaches ``BIG`` (a diverging loss of 1e30 would print 31 digits), and, with
    ``small="sci"``, when a non-zero mean would read as zero: a converged
    train loss of 4e-05 is not "0.000". Differences keep the default
    ``small="zero"``: a residual-minus-plain gap of 1e-5 pp *is* no gap.
    """
    if mean is None or not np.isfinite(mean):
        return "—"
    m = mean * scale
    half = ((hi - lo) / 2 * scale if lo is not None and hi is not None
            and np.isfinite(lo) and np.isfinite(hi) else None)
    big = max(abs(m), abs(half or 0.0)) >= BIG
    hidden = small == "sci" and m != 0 and float(f"{m:.{decimals}f}") == 0
    spec = ".2e" if big or hidden else f".{decimals}f"
    return f"{m:{spec}}" + (f" ± {half:{spec}}" if half is not None else "")


def fmt_p(p: float) -> str:
    """Two significant digits; "< 0.001" below; "—" when the test is undefined."""
    if p is None or not np.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def fmt_interval(v: float, lo: float, hi: float, decimals: int, scale: float = 1.0,
                 show_interval: bool = True) -> str:
    """"0.512 [0.490, 0.530]": a value and an interval that need not be symmetric
    (bootstrap, Clopper-Pearson); the value alone without a finite interval; "—"
    without a value."""
    if v is None or not np.isfinite(v):
        return "—"
    text = f"{v * scale:.{decimals}f}"
    if show_interval and lo is not None and hi is not None and np.isfinite(lo) \
            and np.isfinite(hi):
        text += f" [{lo * scale:.{decimals}f}, {hi * scale:.{decimals}f}]"
    return text


# --------------------------------------------------------------------------- cells

def _auto_spec(col: pd.Series) -> str:
    """"sig" when every finite non-zero value is in [1e-2, 1e3), else "sci".

    One spec per column keeps a column's digits aligned: gradients spanning
    1e-2..1e-5 all read as 4.81e-05, ratios and accuracies read as 1.23 or 12.3.
    """
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    v = np.abs(v[np.isfinite(v) & (v != 0)])
    return "sig" if v.size == 0 or ((v >= 1e-2) & (v < 1e3)).all() else "sci"


def _format_float(v: float, spec: str) -> str:
    """"sci": 3 significant digits in scientific notation (4.81e-05); "sig": 3 significant
    digits in fixed point inside [1e-3, 1e3) (0.00115, 4.20, 129), scientific outside;
    anything else is a Python format spec."""
    if spec == "sci":
        return f"{v:.2e}"
    if spec == "sig":
        if v == 0:
            return "0"
        if 1e-3 <= abs(v) < 1e3:
            return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"
        return f"{v:.2e}"
    return format(v, spec)


def specs(df: pd.DataFrame, floatfmt) -> dict:
    """Column -> number format of ``cell`` for each float or text column of ``df``.

    ``floatfmt``: "auto" ("sig" if every value is in [1e-2, 1e3), else "sci"), "sci",
    "sig", a Python format spec, or a dict column -> one of those ("auto" if missing).
    """
    out = {}
    for c in df.columns:
        if not (pd.api.types.is_float_dtype(df[c]) or df[c].dtype == object):
            continue
        out[c] = floatfmt.get(c, "auto") if isinstance(floatfmt, dict) else floatfmt
        if out[c] == "auto":
            out[c] = _auto_spec(df[c])
    return out


def cell(v, spec: str | None, target: str = "md") -> str:
    """One table cell as text for ``target`` "md" (``|`` escaped), "tex" (LaTeX
    escaped, math for 1e-5 and inf) or "html" (raw text: the caller escapes it)."""
    latex = target == "tex"
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "--" if latex else "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, Integral):
        return f"{int(v):,}".replace(",", "{,}") if latex else f"{int(v):,}"
    if isinstance(v, Real):
        v = float(v)
        if math.isinf(v):
            sign = "-" if v < 0 else ""
            return f"${sign}\\infty$" if latex else f"{sign}inf"
        text = _format_float(v, spec or "sig")
        if latex and "e" in text:
            mant, exp = text.split("e")
            return f"${mant}\\times10^{{{int(exp)}}}$"
        return text
    if latex:
        return escape_latex(str(v))
    return str(v).replace("|", "\\|") if target == "md" else str(v)


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters (``_`` in layer and model names above all)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
            "±": r"$\pm$", "−": "-"}
    return "".join(repl.get(ch, ch) for ch in text)


def numeric(col: pd.Series) -> bool:
    """Whether a column holds numbers (not booleans): right-aligned in every renderer."""
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
