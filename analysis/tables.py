"""Tables of the ablation: pure statistics on the tidy frames, then text renderers.

``grad_table`` reproduces the seed article's table (mean |dL/dW| per layer
with and without shortcuts, and their ratio); ``degradation_table``,
``contrast_table`` and ``degradation_index_table`` put ``analysis.stats`` and
``analysis.contrasts`` in paper form (mean ± 95% interval, counts of failed
trials, raw and Holm-adjusted p values).

Factor columns: ``variant`` (plain/residual) always, as before the factor registry,
then one column per other factor that *varies* in the trials (``norm``, ``block``,
``branch_scale``, ``shortcut``; "n/a" where it does not apply). A factor at one level
throughout is not shown, so a sweep that crosses only residual gives the tables it
always did.

``to_markdown``/``to_latex`` are written by hand so that the report needs
neither tabulate nor jinja2.
"""
from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import contrasts as _contrasts
from analysis import levels as _levels
from analysis import stats
from analysis.style import VARIANT_ORDER, variant_of, with_variant

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


WHEN = ("init", "late")


def snapshot_rows(layers: pd.DataFrame, stat: str, when: str = "late") -> pd.DataFrame:
    """Rows of one statistic at one moment of every trial: ``when`` = "init" or "late".

    "init": the trial's ``phase == "init"`` rows when it has them (a probe
    sweep measures the untrained network), else its first training sample
    (step 0: the first batch's gradients, taken at the initial weights).
    "late": the trial's last training sample. A trial without the rows a
    moment needs (a probe has no "late") contributes nothing.
    """
    if when not in WHEN:
        raise ValueError(f"when must be one of {', '.join(WHEN)} (got {when!r})")
    rows = layers[layers["stat"] == stat]
    train = rows[rows["phase"] == "train"]
    if when == "late":
        return train[train["step"] == train.groupby("trial_id")["step"].transform("max")]
    init = rows[rows["phase"] == "init"]
    train = train[~train["trial_id"].isin(set(init["trial_id"]))]
    first = train[train["step"] == train.groupby("trial_id")["step"].transform("min")]
    return pd.concat([init, first], ignore_index=True)


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


def grad_table(layers: pd.DataFrame, model: str, depth: int, phase: str = "init",
               when: str | None = None, levels: dict | None = None) -> pd.DataFrame:
    """Mean |dL/dW| per weight layer without (``plain``) and with (``residual``) shortcuts.

    ``plain`` and ``residual`` are medians over seeds of ``grad_mean_abs``;
    ``ratio`` is the median over seeds of the per-seed ratio residual/plain
    (paired by seed, so seed-to-seed spread that both variants share cancels).
    Rows follow network order; a layer only one variant has (a projection
    shortcut) gets NaN in the other column and in ``ratio``. NaN values are
    skipped; +-inf are kept (a diverged seed shows as inf rather than vanish).

    ``when`` ("init"/"late", see ``snapshot_rows``) replaces ``phase``: a
    trained sweep has no "init" phase, and its first training step is the
    seed article's measurement at initialization.

    ``levels``: ``{factor: column value}`` to compare plain and residual at, e.g.
    ``{"norm": "none", "branch_scale": "zero"}``; a row whose factor is "n/a" (a plain
    network's branch scale) counts as matching. Without it, rows of every level are
    pooled, so pin every factor that varies.

    Raises ValueError if either variant has no rows for this model and depth.
    """
    rows = (snapshot_rows(layers, "grad_mean_abs", when) if when
            else stat_rows(layers, "grad_mean_abs", phase))
    phase = when or phase
    rows = rows[(rows["model"] == model) & (rows["depth"] == depth)]
    for k, v in (levels or {}).items():
        if k in rows:
            rows = rows[(rows[k] == v) | (rows[k] == _levels.NA)]
    rows = with_variant(rows)
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


# --------------------------------------------------------------------------- paper tables
#
# Cells are pre-formatted strings ("0.523 ± 0.012"), so that Markdown and
# LaTeX show the same digits; the numbers behind them are the frames of
# ``analysis.stats``. Rounding: losses to 3 decimals, accuracies and errors
# in percent to 1 decimal, p values to 2 significant digits (< 0.001 below).

# metric -> (column title, scale, decimals)
METRICS = {"final_train_loss": ("train loss", 1.0, 3),
           "final_test_acc": ("test acc (%)", 100.0, 1),
           "final_test_error": ("test error (%)", 100.0, 1)}


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


def _diff_title(metric: str) -> str:
    """Column title of a difference of ``metric``: percentages become points ("test acc (pp)")."""
    title, scale, _ = METRICS[metric]
    return title.replace(" (%)", "") + (" (pp)" if scale == 100.0 else "")


def without_redundant_model(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its ``model`` column when every model is its family's own network
    (``model == family``; rows with an empty model, such as a total row, do not count):
    a family sweep has no presets, and the column would only repeat ``family``."""
    rows = df[df["model"].astype(str) != ""]
    return df.drop(columns="model") if len(rows) and (rows["family"] == rows["model"]).all() else df


def _status_text(row) -> str:
    """"3" when all planned trials completed, else "1/3 (2 diverged)" and so on."""
    parts = [f"{int(row[f'n_{s}'])} {s}" for s in ("diverged", "error", "pending")
             if int(row.get(f"n_{s}", 0))]
    done, planned = int(row["n_completed"]), int(row["n_planned"])
    return str(done) if done == planned else f"{done}/{planned} ({', '.join(parts)})"


def shown_factors(trials: pd.DataFrame) -> list[str]:
    """The factors other than residual that vary in ``trials`` (registry order): the
    factor columns a table shows after ``variant``."""
    return [n for n in _levels.varying(trials) if n != "residual"]


def _factor_cells(frame: pd.DataFrame, shown: list[str]) -> dict[str, list]:
    """``variant`` and each shown factor's level, per row of a stats frame."""
    out = {"variant": list(variant_of(frame["residual"]))}
    for n in shown:
        out[n] = [_levels.level_of(n, v) for v in frame[n]] if n in frame else [_levels.NA] * len(frame)
    return out


def degradation_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per family x depth x variant (x each other factor that varies): params,
    completed/planned with the failures named, final train loss and test accuracy as
    mean ± 95% t half width over completed seeds."""
    metrics = [m for m in ("final_train_loss", "final_test_acc") if m in trials]
    cells = stats.cell_summary(trials, metrics=metrics)
    out = pd.DataFrame({"family": cells["family"], "model": cells["model"],
                        "depth": cells["depth"].astype("int64"),
                        **_factor_cells(cells, shown_factors(trials)),
                        "params": cells["params"],
                        "n": [_status_text(r) for _, r in cells.iterrows()]})
    for m in metrics:
        title, scale, decimals = METRICS[m]
        out[title] = [fmt_ci(r[f"{m}_mean"], r[f"{m}_ci_lo"], r[f"{m}_ci_hi"], decimals, scale,
                             small="sci") for _, r in cells.iterrows()]
    return without_redundant_model(out)


def p_adjusted_title(method: str = _contrasts.ADJUSTMENT) -> str:
    """Column title of the adjusted paired-t p value: "p (t, Holm)"."""
    return f"p (t, {_contrasts.ADJUSTMENT_LABEL[method]})"


CONTRAST_METRICS = ("final_test_acc", "final_train_loss")


def contrast_table(trials: pd.DataFrame, method: str = _contrasts.ADJUSTMENT) -> pd.DataFrame:
    """Each factor level minus its baseline, paired by seed, per family x depth and metric
    (``analysis.contrasts.contrasts``): mean difference ± 95% t half width, pairs used,
    unpaired seeds, p values (paired t and exact Wilcoxon signed-rank, two-sided) and
    the paired-t p adjusted over the table's contrasts of that metric (Holm by default).

    A sweep that varies only residual keeps the layout it always had: ``family, model,
    depth, metric, residual - plain, pairs, unpaired, p (t), p (Wilcoxon)`` plus
    ``p (t, Holm)``. Otherwise: ``family, model, depth, factor, contrast`` ("zero - one";
    "batch only" for a baseline cell without a counterpart), ``within`` (the levels of the
    other varying factors, e.g. "residual, norm=none"), ``metric, difference, pairs,
    unpaired, p (t), p (Wilcoxon), p (t, Holm)``. ``model`` is dropped when it only
    repeats ``family``.
    """
    factors = _contrasts.contrasted_factors(trials) if "residual" in trials else []
    varying = _levels.varying(trials)
    simple = factors == ["residual"]
    adj = p_adjusted_title(method)
    parts = []
    for k, m in enumerate(CONTRAST_METRICS):
        if m not in trials:
            continue
        _, scale, decimals = METRICS[m]
        d = _contrasts.contrasts(trials, m, factors=factors, method=method)
        for i, r in d.iterrows():
            diff = fmt_ci(r["mean_diff"], r["ci_lo"], r["ci_hi"], decimals, scale)
            row = {"_row": i, "_metric": k, "family": r["family"], "model": r["model"],
                   "depth": int(r["depth"])}
            if simple:
                row.update({"metric": _diff_title(m), "residual - plain": diff})
            else:
                within = _levels.describe(r, [n for n in varying if n != r["factor"]])
                row.update({"factor": r["factor"],
                            "contrast": (f"{r['level']} - {r['baseline']}" if pd.notna(r["level"])
                                         else f"{r['baseline']} only"),
                            "within": within or "—", "metric": _diff_title(m),
                            "difference": diff})
            row.update({"pairs": int(r["n_pairs"]), "unpaired": int(r["n_unpaired"]),
                        "p (t)": fmt_p(r["p_value"]), "p (Wilcoxon)": fmt_p(r["p_wilcoxon"]),
                        adj: fmt_p(r["p_adjusted"])})
            parts.append(row)
    head = (["family", "model", "depth", "metric", "residual - plain"] if simple else
            ["family", "model", "depth", "factor", "contrast", "within", "metric", "difference"])
    cols = head + ["pairs", "unpaired", "p (t)", "p (Wilcoxon)", adj]
    out = pd.DataFrame(parts, columns=["_row", "_metric"] + cols)
    out = out.sort_values(["_row", "_metric"], kind="stable").drop(columns=["_row", "_metric"])
    return without_redundant_model(out.reset_index(drop=True))


def degradation_index_table(trials: pd.DataFrame) -> pd.DataFrame:
    """How much worse each deeper network is than the shallowest of its combination of
    levels: change in final train loss and test error (pp) vs the base depth, mean ±
    95% Welch half width; a positive change is degradation."""
    parts = {}
    for m in ("final_train_loss", "final_test_error"):
        acc = stats.DERIVED.get(m, m)
        if acc in trials:
            parts[m] = stats.degradation_index(trials, m)
    if not parts:
        return pd.DataFrame()
    base = next(iter(parts.values()))
    out = pd.DataFrame({"family": base["family"], "model": base["model"],
                        **_factor_cells(base, shown_factors(trials)),
                        "depth": base["depth"].astype("int64"),
                        "vs depth": base["base_depth"].astype("int64"),
                        "n": [_status_text(r) for _, r in base.iterrows()],
                        "n base": base["n_base"].astype("int64")})
    for m, d in parts.items():
        _, scale, decimals = METRICS[m]
        out["change in " + _diff_title(m)] = [
            "0 (base)" if r["depth"] == r["base_depth"] and np.isfinite(r["delta"])
            else fmt_ci(r["delta"], r["ci_lo"], r["ci_hi"], decimals, scale)
            for _, r in d.iterrows()]
    out = out[out["model"].map(out.groupby("model")["depth"].nunique()) > 1]
    return without_redundant_model(out.reset_index(drop=True))


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


def _cell(v, spec: str | None, target: str = "md") -> str:
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
    body = ["| " + " | ".join(_cell(v, specs.get(c), "md") for c, v in zip(df.columns, row))
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
        lines.append("    " + " & ".join(_cell(v, specs.get(c), "tex")
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
