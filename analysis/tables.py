"""Tables of the ablation: pure statistics on the tidy frames, then text renderers.

``grad_table`` reproduces the seed article's table (mean |dL/dW| per layer
with and without shortcuts, and their ratio); ``summary_table`` counts the
trials of each cell. ``to_markdown``/``to_latex`` are written by hand so
that the report needs neither tabulate nor jinja2.
"""
from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.style import VARIANT_ORDER, with_variant

# Two-sided 95% Student t quantiles for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# --------------------------------------------------------------------------- statistics

def stat_rows(layers: pd.DataFrame, stat: str, phase: str = "init") -> pd.DataFrame:
    """Rows of one statistic and phase; for a phase sampled at many steps, each trial's last step.

    Pooling steps would mix a network at step 0 with the same network at step
    10 000, so a multi-step phase ("train") is reduced to its final sample.
    """
    rows = layers[(layers["stat"] == stat) & (layers["phase"] == phase)]
    if len(rows) and "step" in rows:
        last = rows.groupby("trial_id")["step"].transform("max")
        rows = rows[rows["step"] == last]
    return rows


def network_order(rows: pd.DataFrame) -> list[str]:
    """Layer names in network order, merged over trials whose layer lists differ.

    The plain ResNet lacks the projection shortcuts (``layer2.0.shortcut.0.weight``),
    so ``layer_index`` of the same layer differs between variants. The longest
    list is the base; a layer missing from it is inserted after its
    predecessor in its own list, so shared layers keep one position.

    >>> network_order(frame)  # residual: a, b, s, c; plain: a, b, c
    ['a', 'b', 's', 'c']
    """
    key = "trial_id" if "trial_id" in rows else "residual"
    seqs: list[list[str]] = []
    for _, g in rows.groupby(key, sort=True):
        seq = list(g.sort_values("layer_index", kind="stable")["layer"].drop_duplicates())
        if seq not in seqs:
            seqs.append(seq)
    seqs.sort(key=len, reverse=True)
    order = list(seqs[0]) if seqs else []
    for seq in seqs[1:]:
        pos = -1
        for name in seq:
            if name in order:
                pos = order.index(name)
            else:
                pos += 1
                order.insert(pos, name)
    return order


GRAD_TABLE_FORMAT = {"plain": "sci", "residual": "sci", "ratio": "sig"}


def grad_table(layers: pd.DataFrame, model: str, depth: int, phase: str = "init") -> pd.DataFrame:
    """Mean |dL/dW| per weight layer without (``plain``) and with (``residual``) shortcuts.

    ``plain`` and ``residual`` are medians over seeds of ``grad_mean_abs``;
    ``ratio`` is the median over seeds of the per-seed ratio residual/plain
    (paired by seed, so seed-to-seed spread that both variants share cancels).
    Rows follow network order; a layer only one variant has (a projection
    shortcut) gets NaN in the other column and in ``ratio``. NaN values are
    skipped; +-inf are kept (a diverged seed shows as inf rather than vanish).

    Raises ValueError if either variant has no rows for this model and depth.
    """
    rows = stat_rows(layers, "grad_mean_abs", phase)
    rows = with_variant(rows[(rows["model"] == model) & (rows["depth"] == depth)])
    missing = [v for v in VARIANT_ORDER if not (rows["variant"] == v).any()]
    if missing:
        raise ValueError(f"no {phase!r} grad_mean_abs rows for model {model!r} depth {depth} "
                         f"with variant(s) {', '.join(missing)}")
    by_seed = (rows.groupby(["layer", "seed", "variant"])["value"].median()
               .unstack("variant"))  # (layer, seed) x variant
    # inf/inf and 0/0 are NaN and drop out of the median; x/0 is inf and stays.
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed_ratio = by_seed["residual"] / by_seed["plain"]
    order = network_order(rows)
    out = pd.DataFrame({
        "plain": by_seed["plain"].groupby("layer").median(),
        "residual": by_seed["residual"].groupby("layer").median(),
        "ratio": per_seed_ratio.groupby("layer").median(),
    }).reindex(order)
    return out.rename_axis("layer").reset_index()


def _ci95(values: pd.Series) -> float:
    """Half width of the 95% t interval of the mean; NaN for fewer than two values."""
    v = values[np.isfinite(values)]
    n = len(v)
    if n < 2:
        return float("nan")
    df = n - 1
    # Beyond the table, the Cornish-Fisher correction z + (z^3 + z) / (4 df)
    # is within 0.002 of the exact quantile.
    t = _T95[df - 1] if df <= len(_T95) else 1.959964 + (1.959964 ** 3 + 1.959964) / (4 * df)
    return float(t * v.std(ddof=1) / math.sqrt(n))


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per model x depth x variant: params, trial count, status counts, final metrics.

    ``final_test_acc``/``final_train_loss`` (when the sweep trained) are
    reported as mean and 95% CI half width over *completed* trials with a
    finite value: a diverged run's accuracy is not a sample of the same
    distribution.
    """
    t = with_variant(trials)
    keys = ["model", "depth", "variant"]
    sort = ["family"] + keys  # every row carries family (the model name if absent)
    rows = []
    for (model, depth, variant), g in t.groupby(keys, sort=False):
        status = g["status"] if "status" in g else pd.Series(dtype=object)
        params = g["params"].dropna() if "params" in g else pd.Series(dtype=float)
        row = {"family": g["family"].iloc[0] if "family" in g else model,
               "model": model, "depth": depth, "variant": variant,
               "params": int(params.median()) if len(params) else pd.NA,
               "n": len(g),
               **{s: int((status == s).sum()) for s in ("completed", "diverged", "error")}}
        done = g[status == "completed"] if len(status) else g.iloc[:0]
        for col in ("final_test_acc", "final_train_loss"):
            if col in t:
                vals = done[col].astype(float)
                vals = vals[np.isfinite(vals)]
                row[f"{col}_mean"] = float(vals.mean()) if len(vals) else float("nan")
                row[f"{col}_ci95"] = _ci95(vals)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=keys + ["params", "n", "completed", "diverged", "error"])
    out = pd.DataFrame(rows)
    out["variant"] = pd.Categorical(out["variant"], VARIANT_ORDER, ordered=True)
    out = out.sort_values(sort, kind="stable").drop(columns="family")
    out["variant"] = out["variant"].astype(str)
    for col in ("params", "n", "completed", "diverged", "error"):
        out[col] = out[col].astype("Int64")
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- rendering

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


def _specs(df: pd.DataFrame, floatfmt) -> dict:
    specs = {}
    for c in df.columns:
        if not (pd.api.types.is_float_dtype(df[c]) or df[c].dtype == object):
            continue
        specs[c] = floatfmt.get(c, "auto") if isinstance(floatfmt, dict) else floatfmt
        if specs[c] == "auto":
            specs[c] = _auto_spec(df[c])
    return specs


def _cell(v, spec: str | None, latex: bool) -> str:
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
    return escape_latex(str(v)) if latex else str(v).replace("|", "\\|")


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters (``_`` in layer and model names above all)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def to_markdown(df: pd.DataFrame, floatfmt="auto") -> str:
    """GitHub-flavoured Markdown table; numbers right-aligned.

    ``floatfmt``: "auto" (per column: "sig" if every value is in [1e-2, 1e3),
    else "sci"), "sci" (4.81e-05), "sig" (3 significant digits: 0.00115, 4.20),
    any Python format spec (".4f"), or a dict column -> one of those.
    """
    specs = _specs(df, floatfmt)
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if _numeric(df[c]) else ":---" for c in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, specs.get(c), False) for c, v in zip(df.columns, row))
            + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str, floatfmt="auto") -> str:
    """A booktabs ``table`` float (\\toprule, \\midrule, \\bottomrule).

    ``caption`` is LaTeX source and is not escaped (use ``escape_latex`` on
    names); cells and headers are escaped. Scientific numbers render as
    ``$4.81\\times10^{-5}$``. Needs ``\\usepackage{booktabs}``.
    """
    specs = _specs(df, floatfmt)
    cols = "".join("r" if _numeric(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}",
             f"  \\label{{{label}}}", f"  \\begin{{tabular}}{{{cols}}}", r"    \toprule",
             "    " + " & ".join(escape_latex(str(c)) for c in df.columns) + r" \\",
             r"    \midrule"]
    for row in df.itertuples(index=False, name=None):
        lines.append("    " + " & ".join(_cell(v, specs.get(c), True)
                                         for c, v in zip(df.columns, row)) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writers

def write_text(path, text: str) -> str:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def write_table(df: pd.DataFrame, path_without_suffix, caption: str, label: str,
                floatfmt="auto") -> list[str]:
    """Write ``<path>.md`` and ``<path>.tex``; return both paths."""
    base = Path(path_without_suffix)
    return [write_text(base.with_name(base.name + ".md"), to_markdown(df, floatfmt)),
            write_text(base.with_name(base.name + ".tex"), to_latex(df, caption, label, floatfmt))]
