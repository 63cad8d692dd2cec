"""Tables of the ablation: pure statistics on the tidy frames, the per-cell tables, the
column helpers every table shares, and the Markdown/LaTeX renderers.

``grad_table`` reproduces the replicated article's table (mean |dL/dW| per layer with and
without shortcuts, and their ratio); ``degradation_table`` and
``degradation_index_table`` put ``analysis.stats`` in paper form (mean ± 95% interval,
counts of failed trials; below ``analysis.contrasts.MIN_SEEDS`` seeds a difference is
its mean alone). The contrast tables are in ``analysis.tables_contrasts``, the robust
ones in ``analysis.tables_robust``; how a number reads as text is
``analysis.formatting``.

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
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.files import write_text
from analysis import contrasts as _contrasts
from ablations import levels as _levels
from analysis import formatting, stats
from analysis.formatting import escape_latex, fmt_ci
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
    replicated article's measurement at initialization.

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


def diff_title(metric: str) -> str:
    """Column title of a difference of ``metric`` ("test acc (pp)": percentages become
    points)."""
    title, scale, _ = METRICS[metric]
    return title.replace(" (%)", "") + (" (pp)" if scale == 100.0 else "")


def without_redundant_model(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without its ``model`` column when every model is its family's own network
    (``model == family``; rows with an empty model, such as a total row, do not count):
    a family sweep has no presets, and the column would only repeat ``family``."""
    rows = df[df["model"].astype(str) != ""]
    return df.drop(columns="model") if len(rows) and (rows["family"] == rows["model"]).all() else df


def status_text(row) -> str:
    """A cell's trials as text: "3" when all planned trials completed, else "1/3 (2
    diverged)" and so on."""
    parts = [f"{int(row[f'n_{s}'])} {s}" for s in ("diverged", "error", "pending")
             if int(row.get(f"n_{s}", 0))]
    done, planned = int(row["n_completed"]), int(row["n_planned"])
    return str(done) if done == planned else f"{done}/{planned} ({', '.join(parts)})"


def shown_factors(trials: pd.DataFrame) -> list[str]:
    """The factors other than residual that vary in ``trials`` (registry order): the
    factor columns a table shows after ``variant``."""
    return [n for n in _levels.varying(trials) if n != "residual"]


def factor_cells(frame: pd.DataFrame, shown: list[str]) -> dict[str, list]:
    """The factor columns of a table: ``variant`` and each shown factor's level, per row
    of a stats frame."""
    out = {"variant": list(variant_of(frame["residual"]))}
    for n in shown:
        out[n] = ([_levels.level_of(n, v) for v in frame[n]] if n in frame
                  else [_levels.NA] * len(frame))
    return out


def fmt_diff(mean: float, lo: float, hi: float, n: int, decimals: int, scale: float) -> str:
    """A difference as ``fmt_ci``, its interval left out below ``MIN_SEEDS`` seeds."""
    if _contrasts.means_only(n):
        lo = hi = math.nan
    return fmt_ci(mean, lo, hi, decimals, scale)


def depth_span(base, depth) -> str:
    """"20 -> 56": the depths a difference of differences compares."""
    return f"{int(base)} -> {int(depth)}"


def degradation_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per family x depth x variant (x each other factor that varies): params,
    completed/planned with the failures named, final train loss and test accuracy as
    mean ± 95% t half width over completed seeds."""
    metrics = [m for m in ("final_train_loss", "final_test_acc") if m in trials]
    cells = stats.cell_summary(trials, metrics=metrics)
    out = pd.DataFrame({"family": cells["family"], "model": cells["model"],
                        "depth": cells["depth"].astype("int64"),
                        **factor_cells(cells, shown_factors(trials)),
                        "params": cells["params"],
                        "n": [status_text(r) for _, r in cells.iterrows()]})
    for m in metrics:
        title, scale, decimals = METRICS[m]
        out[title] = [fmt_ci(r[f"{m}_mean"], r[f"{m}_ci_lo"], r[f"{m}_ci_hi"], decimals, scale,
                             small="sci") for _, r in cells.iterrows()]
    return without_redundant_model(out)


def degradation_index_table(trials: pd.DataFrame) -> pd.DataFrame:
    """How much worse each deeper network is than the shallowest of its combination of
    levels: change in final train loss and test error (pp) vs the base depth, mean ±
    95% Welch half width (the mean alone below ``MIN_SEEDS`` values on either side); a
    positive change is degradation. Per variant: these changes do not by themselves
    compare variants (the depth x residual interaction in ``contrast_table`` does)."""
    parts = {}
    for m in ("final_train_loss", "final_test_error"):
        acc = stats.DERIVED.get(m, m)
        if acc in trials:
            parts[m] = stats.degradation_index(trials, m)
    if not parts:
        return pd.DataFrame()
    base = next(iter(parts.values()))
    out = pd.DataFrame({"family": base["family"], "model": base["model"],
                        **factor_cells(base, shown_factors(trials)),
                        "depth": base["depth"].astype("int64"),
                        "vs depth": base["base_depth"].astype("int64"),
                        "n": [status_text(r) for _, r in base.iterrows()],
                        "n base": base["n_base"].astype("int64")})
    for m, d in parts.items():
        _, scale, decimals = METRICS[m]
        out["change in " + diff_title(m)] = [
            "0 (base)" if r["depth"] == r["base_depth"] and np.isfinite(r["delta"])
            else fmt_diff(r["delta"], r["ci_lo"], r["ci_hi"], min(r["n"], r["n_base"]),
                          decimals, scale)
            for _, r in d.iterrows()]
    out = out[out["model"].map(out.groupby("model")["depth"].nunique()) > 1]
    return without_redundant_model(out.reset_index(drop=True))


# --------------------------------------------------------------------------- rendering

def to_markdown(df: pd.DataFrame, floatfmt="auto") -> str:
    """GitHub-flavoured Markdown table; numbers right-aligned.

    ``floatfmt``: "auto" (per column: "sig" if every value is in [1e-2, 1e3),
    else "sci"), "sci" (4.81e-05), "sig" (3 significant digits: 0.00115, 4.20),
    any Python format spec (".4f"), or a dict column -> one of those.
    """
    specs = formatting.specs(df, floatfmt)
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---:" if formatting.numeric(df[c]) else ":---"
                          for c in df.columns) + "|"
    body = ["| " + " | ".join(formatting.cell(v, specs.get(c), "md")
                              for c, v in zip(df.columns, row))
            + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(df: pd.DataFrame, caption: str, label: str, floatfmt="auto") -> str:
    """A booktabs ``table`` float (\\toprule, \\midrule, \\bottomrule).

    ``caption`` is LaTeX source and is not escaped (use ``escape_latex`` on
    names); cells and headers are escaped. Scientific numbers render as
    ``$4.81\\times10^{-5}$``. Needs ``\\usepackage{booktabs}``.
    """
    specs = formatting.specs(df, floatfmt)
    cols = "".join("r" if formatting.numeric(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}",
             f"  \\label{{{label}}}", f"  \\begin{{tabular}}{{{cols}}}", r"    \toprule",
             "    " + " & ".join(escape_latex(str(c)) for c in df.columns) + r" \\",
             r"    \midrule"]
    for row in df.itertuples(index=False, name=None):
        lines.append("    " + " & ".join(formatting.cell(v, specs.get(c), "tex")
                                         for c, v in zip(df.columns, row)) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writers

def write_table(df: pd.DataFrame, path_without_suffix, caption: str, label: str,
                floatfmt="auto") -> list[str]:
    """Write ``<path>.md`` and ``<path>.tex``; return both paths."""
    base = Path(path_without_suffix)
    return [write_text(base.with_name(base.name + ".md"), to_markdown(df, floatfmt)),
            write_text(base.with_name(base.name + ".tex"), to_latex(df, caption, label, floatfmt))]
