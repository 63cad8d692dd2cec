"""Every figure, table and the report of one results folder: ``build(run_dir) -> written paths``.

Reads whichever of ``trials.parquet``, ``layers.parquet``, ``epochs.parquet``,
``features/*.npz`` and ``spec.json`` exist (a probe-only sweep has no epochs
or features) and writes, each file atomically:

* ``figures/<name>.{pdf,png,...}``: one file per figure function of
  ``analysis.figures`` that the data allows;
* ``tables/<name>.{md,tex}``: Markdown and booktabs LaTeX;
* ``report.md`` and ``report.html``: the spec, environment, plan, status
  counts, tables and figures with one-line captions, and the W&B runs. The
  HTML is self-contained: figures are embedded as base64 PNG, styles inline,
  no script, so it can be mailed or opened from a laptop.

Needs only pandas, pyarrow, scipy and matplotlib/seaborn: no ray, wandb or
torch, so results copied off a cluster rebuild anywhere, in seconds.
``where`` restricts everything to some factor values
(``{"family": ["resnet"]}``); such a view is written to its own folder
(``views/family=resnet`` by default) so the full report is never replaced
by a partial one.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd

from analysis import figures, stats
from analysis.style import DEFAULT_LOOK, PAPER_RC, Look, model_label, save_figure
from analysis.tables import (GRAD_TABLE_FORMAT, _cell, _numeric, _specs, degradation_index_table,
                             degradation_table, escape_latex, grad_table, paired_table,
                             snapshot_rows, to_markdown, without_redundant_model, write_table,
                             write_text)

RESULT_FILES = ("trials", "layers", "epochs")
FORMATS = ("pdf", "png", "svg")
MAX_FEATURE_TRIALS = 4
WHERE_KEYS = ("family", "model", "depth", "residual", "seed")
CHANCE_ERROR = 0.9  # both datasets (CIFAR-10, synthetic) have 10 balanced classes


class ResultsError(ValueError):
    """The folder is missing, holds no results, a file cannot be read, or a filter is bad."""


def _safe(name: str) -> str:
    """A file-name-safe version of a trial or model name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(name))


# --------------------------------------------------------------------------- loading, filtering

def load_results(run_dir) -> dict[str, pd.DataFrame]:
    """``{"trials": df, "layers": df, "epochs": df}`` for the Parquet files that exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"results folder {str(run_dir)!r} does not exist or is not a folder")
    data = {}
    for name in RESULT_FILES:
        path = run_dir / f"{name}.parquet"
        if path.is_file():
            try:
                data[name] = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise ResultsError(f"cannot read {path}: {exc}") from exc
    if not data:
        raise ResultsError(f"{str(run_dir)!r} holds none of "
                           + ", ".join(f"{n}.parquet" for n in RESULT_FILES))
    return data


def load_spec(run_dir) -> dict:
    """``spec.json`` as a dict (``{}`` when missing or unreadable: the report says so)."""
    try:
        return json.loads((Path(run_dir) / "spec.json").read_text())
    except (OSError, ValueError):
        return {}


_BOOL = {"residual": True, "true": True, "on": True, "yes": True, "1": True,
         "plain": False, "false": False, "off": False, "no": False, "0": False}


def parse_where(items) -> dict[str, list]:
    """``["family=resnet", "depth=18,34"]`` -> ``{"family": ["resnet"], "depth": [18, 34]}``.

    Keys: ``WHERE_KEYS``. ``depth`` and ``seed`` take integers, ``residual``
    takes residual/plain (or true/false, on/off). A repeated key widens
    (``depth=18 depth=34`` is ``depth=18,34``). Raises ``ResultsError``.
    """
    out: dict[str, list] = {}
    for item in items or ():
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ResultsError(f"--where {item!r}: expected FACTOR=VALUE[,VALUE...], "
                               f"factors: {', '.join(WHERE_KEYS)}")
        if key not in WHERE_KEYS:
            raise ResultsError(f"--where {item!r}: unknown factor {key!r}; "
                               f"valid: {', '.join(WHERE_KEYS)}")
        for v in (v.strip() for v in values.split(",") if v.strip()):
            if key in ("depth", "seed"):
                try:
                    v = int(v)
                except ValueError:
                    raise ResultsError(f"--where {item!r}: {key} takes integers, got {v!r}") from None
            elif key == "residual":
                if v.lower() not in _BOOL:
                    raise ResultsError(f"--where {item!r}: residual takes residual or plain, "
                                       f"got {v!r}")
                v = _BOOL[v.lower()]
            out.setdefault(key, []).append(v)
    return out


def apply_where(data: dict[str, pd.DataFrame], where: dict[str, list]) -> dict[str, pd.DataFrame]:
    """The frames restricted to ``where``; a value that matches no trial is an error
    naming the values present (a typo must not give an empty report)."""
    if not where:
        return data
    trials = data.get("trials")
    ref = trials if trials is not None else next(iter(data.values()))
    for key, values in where.items():
        if key not in ref:
            raise ResultsError(f"--where {key}: the results have no {key!r} column")
        present = set(ref[key].dropna().tolist())
        missing = [v for v in values if v not in present]
        if missing:
            shown = sorted(("residual" if v else "plain") if key == "residual" else v
                           for v in present)
            raise ResultsError(f"--where {key}={','.join(map(str, missing))}: no such trials; "
                               f"present: {', '.join(map(str, shown))}")
    out = {}
    for name, df in data.items():
        keep = pd.Series(True, index=df.index)
        for key, values in where.items():
            if key in df:
                keep &= df[key].isin(values)
        out[name] = df[keep].reset_index(drop=True)
    return out


def where_slug(where: dict[str, list]) -> str:
    """``{"family": ["resnet"], "depth": [18, 34]}`` -> ``family=resnet_depth=18,34``."""
    def text(k, v):
        return ("residual" if v else "plain") if k == "residual" else str(v)
    return _safe("_".join(f"{k}=" + ",".join(text(k, v) for v in vs) for k, vs in where.items()))


def _feature_files(run_dir: Path, trials: pd.DataFrame | None) -> list[Path]:
    """Up to ``MAX_FEATURE_TRIALS`` feature files, one per (model, depth, variant) cell first.

    The lowest seed of each cell comes first, so four files show both
    variants at two depths rather than four seeds of one trial. With a
    trials frame, only its trials' files are candidates (a ``where`` view).
    """
    files = {p.stem: p for p in sorted((run_dir / "features").glob("*.npz"))}
    cols = {"trial_id", "family", "model", "depth", "residual", "seed"}
    if trials is None or not cols <= set(trials.columns):
        return list(files.values())[:MAX_FEATURE_TRIALS]
    known = trials[trials["trial_id"].isin(files)].sort_values(
        ["seed", "family", "model", "depth", "residual"], kind="stable")
    firsts = known.drop_duplicates(["family", "model", "depth", "residual"])
    order = list(firsts["trial_id"]) + [t for t in known["trial_id"] if t not in set(firsts["trial_id"])]
    return [files[t] for t in order[:MAX_FEATURE_TRIALS]]


# --------------------------------------------------------------------------- artefacts

@dataclass
class Item:
    """One figure or table of the report: its files, caption and what to embed."""
    kind: str                      # "figure" | "table"
    name: str
    caption: str
    paths: list[str] = field(default_factory=list)
    png: bytes | None = None       # figure: embedded in report.html
    frame: pd.DataFrame | None = None  # table: rendered in the reports
    floatfmt: object = "auto"


def _figure(fig, base: Path, formats, name: str, caption: str) -> Item:
    """Save ``fig`` in ``formats``; keep PNG bytes for the HTML report (rendered in memory
    when PNG is not among the formats)."""
    png = None
    if "png" not in formats:
        buf = io.BytesIO()
        with mpl.rc_context(PAPER_RC):
            fig.savefig(buf, format="png", dpi=150)
        png = buf.getvalue()
    paths = save_figure(fig, base, formats)
    if png is None:
        png = Path(base.with_name(base.name + ".png")).read_bytes()
    return Item("figure", name, caption, paths, png=png)


def _table(df: pd.DataFrame, base: Path, name: str, caption: str, floatfmt="auto") -> Item:
    label = f"tab:{_safe(name)}"
    return Item("table", name, caption, write_table(df, base, escape_latex(caption), label, floatfmt),
                frame=df, floatfmt=floatfmt)


def _has(df: pd.DataFrame | None, stat: str, phase: str | None = None) -> bool:
    if df is None or df.empty:
        return False
    rows = df[df["stat"] == stat]
    return bool(len(rows) if phase is None else (rows["phase"] == phase).any())


def _items(run_dir: Path, out: Path, data: dict, formats, look: Look, trained: bool) -> list[Item]:
    fig_dir, tab_dir = out / "figures", out / "tables"
    items: list[Item] = []
    trials, layers, epochs = data.get("trials"), data.get("layers"), data.get("epochs")

    def fig(name, make, caption):
        items.append(_figure(make(), fig_dir / name, formats, name, caption))

    # Figures, headline first.
    if trials is not None and trained and len(trials):
        fig("degradation_vs_depth",
            lambda: figures.degradation_vs_depth(trials, look, chance_error=CHANCE_ERROR),
            "Final training loss and test error against depth: mean and 95% t interval over "
            "seeds (dots: single seeds); failed trials are counted at the top of each panel.")
    if epochs is not None and len(epochs):
        fig("training_curves_by_depth", lambda: figures.training_curves_by_depth(epochs, look),
            "Error per epoch, plain (left) and residual (right), one colour per depth; dashed = "
            "train, solid = test; median over seeds (He et al. 2016, Fig. 6).")
        fig("training_curves", lambda: figures.training_curves(epochs, look),
            "Loss and accuracy per epoch for each model and depth: thin = train, bold = test; "
            "median over seeds with interquartile band; dotted lines = learning-rate drops.")
    if _has(layers, "act_std"):
        when = "late" if _has(layers, "act_std", "train") else "init"
        fig("layer_response_std", lambda: figures.layer_response_std(layers, look, when=when,
                                                              trials=trials),
            f"Std of each block's output ({'end of training' if when == 'late' else 'at init'}), "
            "in network order and sorted by magnitude (He et al. 2016, Fig. 7); median over seeds; "
            "trials that did not complete are left out and named in the panel.")
    if _has(layers, "grad_mean_abs"):
        fig("gradient_flow", lambda: figures.gradient_flow(layers, look, trials=trials),
            "Mean |dL/dW| per weight layer at initialization and late in training (log scale); "
            "median over seeds with interquartile band; late: completed trials only (the others "
            "are named in the panel).")
    if _has(layers, "grad_mean_abs", "init"):
        fig("grad_by_layer", lambda: figures.grad_by_layer(layers, "init", look),
            "Mean |dL/dW| per weight layer of the untrained network (probe), per depth.")
    if _has(layers, "act_mean_abs", "init"):
        fig("act_by_layer", lambda: figures.act_by_layer(layers, "init", look),
            "Mean |activation| per block output of the untrained network (probe), per depth.")
    if _has(layers, "act_mean_abs", "train"):
        fig("act_through_training", lambda: figures.act_through_training(layers, look=look),
            "Mean |activation| per layer at sampled training steps (colour = step); "
            "median over seeds.")
    for path in _feature_files(run_dir, trials):
        try:
            with np.load(path, allow_pickle=False) as npz:
                maps = npz["maps"]
                image = npz["image"] if "image" in npz.files else None
        except Exception as exc:  # a truncated npz should not cost the whole report
            warnings.warn(f"skipping feature maps {path}: {exc}", stacklevel=2)
            continue
        name = f"features_{_safe(path.stem)}"
        fig(name, lambda: figures.feature_maps(maps, image, title=path.stem, look=look),
            f"First-block feature maps of {path.stem} for one test image (8 channels).")

    # Tables.
    if trials is not None and len(trials):
        items.append(_table(degradation_table(trials), tab_dir / "summary", "summary",
                            "Per family, depth and variant: parameters, completed/planned trials "
                            "(failures named), final train loss and test accuracy as mean ± 95% "
                            "t half width over completed seeds."))
        if trained:
            both = trials.groupby(["family", "model", "depth"])["residual"].nunique().max() > 1
            if both:
                items.append(_table(paired_table(trials), tab_dir / "paired", "paired",
                                    "Residual minus plain, paired by seed: mean ± 95% t half width, "
                                    "two-sided paired t and exact Wilcoxon signed-rank p values."))
            deg = degradation_index_table(trials)
            if len(deg):
                items.append(_table(deg, tab_dir / "degradation", "degradation",
                                    "Degradation index: change from the shallowest depth of each "
                                    "variant, mean ± 95% Welch half width; positive = worse."))
    if _has(layers, "grad_mean_abs"):
        when = "init"
        grads = snapshot_rows(layers, "grad_mean_abs", when)
        for (model, depth), g in grads.groupby(["model", "depth"], sort=True):
            if g["residual"].nunique() < 2:
                continue
            items.append(_table(grad_table(layers, model, depth, when=when),
                                tab_dir / f"grad_{_safe(model)}-{depth}", f"grad_{model}-{depth}",
                                f"Mean |dL/dW| per weight layer at initialization, {model}, depth "
                                f"{depth}: median over seeds without (plain) and with (residual) "
                                "shortcuts; ratio = median over seeds of residual/plain.",
                                GRAD_TABLE_FORMAT))
    return items


# --------------------------------------------------------------------------- report text

def _spec_lines(spec: dict) -> list[tuple[str, str]]:
    s = spec.get("spec", {})
    if not s:
        return [("spec", "spec.json missing: regenerated from the Parquet files alone")]
    t = s.get("train") or {}
    lines = [("name", str(s.get("name"))), ("mode", str(s.get("mode"))),
             ("families", ", ".join(map(str, s.get("families") or [])) or "—"),
             ("models", ", ".join(map(str, s.get("models") or [])) or "—"),
             ("depths", ", ".join(map(str, s.get("depths") or []))),
             ("residual", str(s.get("residual"))), ("seeds", str(s.get("seeds")))]
    if s.get("mode") == "train" and t:
        lines += [("data", f"{t.get('dataset')} ({t.get('data_root') or 'synthetic'}), "
                           f"subset {t.get('subset')}, val fraction {t.get('val_fraction')}"),
                  ("schedule", f"{t.get('epochs')} epochs, SGD lr {t.get('lr')} momentum "
                               f"{t.get('momentum')} wd {t.get('weight_decay')}, batch "
                               f"{t.get('batch_size')}, milestones {t.get('milestones')}")]
    if s.get("tune"):
        lines.append(("tuning", f"Optuna per cell: {', '.join(s['tune'])}, "
                                f"{s.get('samples')} samples per cell"))
    for inv in spec.get("invocations") or []:
        argv = inv.get("argv") or []
        cmd = "python sweep.py " + (argv if isinstance(argv, str) else shlex.join(map(str, argv)))
        lines.append((f"command ({inv.get('kind')}, {inv.get('time')})", cmd))
    for sk in spec.get("skipped") or []:
        lines.append(("skipped cell", f"{sk.get('cell')}: {sk.get('reason')}"))
    return lines


def _env_lines(spec: dict, trials: pd.DataFrame | None) -> list[tuple[str, str]]:
    env = spec.get("environment") or {}
    lines = []
    if env:
        lines += [("git commit", str(env.get("git_commit"))), ("python", str(env.get("python"))),
                  ("platform", str(env.get("platform"))),
                  ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())),
                  ("CPUs", str(env.get("cpu_count"))),
                  ("CUDA devices", ", ".join(map(str, env.get("cuda_devices") or [])) or "none")]
    if trials is not None and "device" in trials:
        devs = trials["device"].dropna().astype(str).value_counts()
        lines.append(("trials ran on", ", ".join(f"{d} ({n})" for d, n in devs.items()) or "—"))
    return lines or [("environment", "not recorded (no spec.json)")]


def _findings(trials: pd.DataFrame | None, trained: bool) -> list[str]:
    """One sentence per (family, depth): residual minus plain test accuracy, from the numbers."""
    if trials is None or not trained or "final_test_acc" not in trials:
        return []
    try:
        d = stats.paired_differences(trials, "final_test_acc")
    except (KeyError, ValueError):
        return []
    out = []
    for _, r in d.iterrows():
        name = model_label(r["family"], r["model"])
        if r["n_pairs"] == 0:
            cell = trials[(trials["model"] == r["model"]) & (trials["depth"] == r["depth"])
                          & (trials["status"] != "completed")]
            why = "; ".join(f"{'residual' if res else 'plain'}: "
                            + ", ".join(f"{n} {st}" for st, n in g["status"].value_counts().items())
                            for res, g in cell.groupby("residual"))
            out.append(f"{name} depth {r['depth']}: no seed with both variants completed"
                       + (f" ({why})." if why else "."))
            continue
        ci = (f" [{100 * r['ci_lo']:+.1f}, {100 * r['ci_hi']:+.1f}]"
              if np.isfinite(r["ci_lo"]) else "")
        p = f", paired t p = {r['p_value']:.2g}" if np.isfinite(r["p_value"]) else ""
        out.append(f"{name} depth {r['depth']}: residual minus plain test accuracy "
                   f"{100 * r['mean_diff']:+.1f} pp{ci} over {r['n_pairs']} seed(s){p}"
                   + (f"; {r['n_unpaired']} seed(s) unpaired" if r["n_unpaired"] else "") + ".")
    return out


def _wandb_lines(run_dir: Path, trials: pd.DataFrame | None) -> list[str]:
    lines = []
    if trials is not None and "wandb" in trials:
        runs = trials[["trial_id", "wandb"]].dropna()
        runs = runs[runs["wandb"].astype(str).str.len() > 0]
        for tid, ref in runs.itertuples(index=False):
            lines.append(f"{tid}: {ref}")
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())
    if offline:
        lines.append(f"{len(offline)} offline run folder(s) under {run_dir / 'wandb'}; upload with "
                     f"`wandb sync {run_dir / 'wandb'}/offline-run-*`")
    return lines or ["no W&B runs recorded (--wandb disabled)"]


def _status_frame(trials: pd.DataFrame | None) -> pd.DataFrame | None:
    if trials is None or not len(trials):
        return None
    s = stats.status_counts(trials)
    s.insert(3, "variant", s["residual"].map({True: "residual", False: "plain"}).fillna(""))
    s = without_redundant_model(s.drop(columns="residual"))
    if not s["n_pending"].any():
        s = s.drop(columns="n_pending")
    return s.rename(columns=lambda c: c.removeprefix("n_"))


def _html_table(df: pd.DataFrame, floatfmt="auto") -> str:
    specs = _specs(df, floatfmt)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False, name=None):
        cells = []
        for c, v in zip(df.columns, row):
            cls = ' class="num"' if _numeric(df[c]) else ""
            cells.append(f"<td{cls}>{html.escape(_cell(v, specs.get(c), 'html'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left}
th{border-bottom:2px solid #999}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}
.files{font-size:.8em;color:#777}
"""


def _write_reports(out: Path, run_dir: Path, spec: dict, data: dict, items: list[Item],
                   where: dict, trained: bool) -> list[str]:
    trials = data.get("trials")
    title = f"resablate sweep {spec.get('spec', {}).get('name') or run_dir.name}"
    if where:
        title += f" (view: {where_slug(where)})"
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    status = _status_frame(trials)
    findings = _findings(trials, trained)
    figs = [i for i in items if i.kind == "figure"]
    tabs = [i for i in items if i.kind == "table"]
    totals = ""
    if trials is not None and len(trials):
        c = trials["status"].value_counts()
        totals = (f"{len(trials)} trials: {int(c.get('completed', 0))} completed, "
                  f"{int(c.get('diverged', 0))} diverged, {int(c.get('error', 0))} errored"
                  + (f", {int(c.get('pending', 0))} pending" if c.get("pending", 0) else ""))

    def rel(p):
        return str(Path(p).relative_to(out))

    # ---- Markdown
    md = [f"# {title}", "", f"Generated {stamp} by `python -m analysis {run_dir}` from the stored "
          "results alone.", ""]
    if totals:
        md += [f"**{totals}.**", ""]
    if findings:
        md += ["## Findings (residual minus plain, paired by seed)", ""]
        md += [f"- {f}" for f in findings] + [""]
    md += ["## Spec", ""] + [f"- **{k}**: {v}" for k, v in _spec_lines(spec)] + [""]
    md += ["## Environment", ""] + [f"- **{k}**: {v}" for k, v in _env_lines(spec, trials)] + [""]
    if status is not None:
        md += ["## Plan and status", "", to_markdown(status)]
    md += ["## Tables", ""]
    for t in tabs:
        md += [f"### {t.name}", "", t.caption, "", to_markdown(t.frame, t.floatfmt),
               "Files: " + ", ".join(f"`{rel(p)}`" for p in t.paths), ""]
    md += ["## Figures", ""]
    for f in figs:
        shown = next((p for p in f.paths if p.endswith(".png")), None) or \
            next((p for p in f.paths if p.endswith(".svg")), f.paths[0])
        md += [f"### {f.name}", "", f"![{f.name}]({rel(shown)})", "", f.caption, "",
               "Files: " + ", ".join(f"`{rel(p)}`" for p in f.paths), ""]
    md += ["## Weights & Biases", ""] + [f"- {w}" for w in _wandb_lines(run_dir, trials)] + [""]

    # ---- HTML
    esc = html.escape
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{esc(title)}</title>", f"<style>{_CSS}</style></head><body>",
         f"<h1>{esc(title)}</h1>",
         f"<p>Generated {esc(stamp)} by <code>python -m analysis {esc(str(run_dir))}</code> from "
         "the stored results alone.</p>"]
    if totals:
        h.append(f"<p><strong>{esc(totals)}.</strong></p>")
    if findings:
        h.append("<h2>Findings (residual minus plain, paired by seed)</h2><ul>"
                 + "".join(f"<li>{esc(f)}</li>" for f in findings) + "</ul>")
    h.append("<h2>Spec</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>"
                                           for k, v in _spec_lines(spec)) + "</dl>")
    h.append("<h2>Environment</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>"
                                                  for k, v in _env_lines(spec, trials)) + "</dl>")
    if status is not None:
        h.append("<h2>Plan and status</h2>" + _html_table(status))
    h.append("<h2>Tables</h2>")
    for t in tabs:
        h.append(f'<h3 id="{esc(_safe(t.name))}">{esc(t.name)}</h3><p>{esc(t.caption)}</p>'
                 + _html_table(t.frame, t.floatfmt)
                 + f'<p class="files">{esc(", ".join(rel(p) for p in t.paths))}</p>')
    h.append("<h2>Figures</h2>")
    for f in figs:
        data_uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
        h.append(f'<figure id="{esc(_safe(f.name))}"><img alt="{esc(f.name)}" src="{data_uri}">'
                 f"<figcaption><strong>{esc(f.name)}.</strong> {esc(f.caption)}</figcaption>"
                 f'<p class="files">{esc(", ".join(rel(p) for p in f.paths))}</p></figure>')
    h.append("<h2>Weights &amp; Biases</h2><ul>"
             + "".join(f"<li>{esc(w)}</li>" for w in _wandb_lines(run_dir, trials)) + "</ul>")
    h.append("</body></html>")
    return [write_text(out / "report.md", "\n".join(md)),
            write_text(out / "report.html", "\n".join(h) + "\n")]


# --------------------------------------------------------------------------- entry point

def build(run_dir, formats=("pdf", "png"), look: Look = DEFAULT_LOOK, where=None,
          out_dir=None) -> list[str]:
    """Write every figure and table the folder's results allow, and the reports;
    return the written paths (figures, tables, then ``report.md`` and ``report.html``).

    ``where``: ``{factor: [values]}`` (see ``parse_where``) restricts every
    output; its files go to ``out_dir`` or, by default, ``run_dir/views/<slug>``.
    Without ``where`` they go to ``out_dir`` or ``run_dir``.

    Raises ``ResultsError`` for a missing folder, no results, an unreadable
    file, an unknown format or a ``where`` that matches nothing.
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ResultsError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    data = load_results(run_dir)
    where = dict(where or {})
    data = apply_where(data, where)
    out = Path(out_dir) if out_dir else (run_dir / "views" / where_slug(where) if where else run_dir)
    spec = load_spec(run_dir)
    trials = data.get("trials")
    trained = trials is not None and "final_test_acc" in trials
    items = _items(run_dir, out, data, formats, look, trained)
    written = [p for i in items for p in i.paths]
    written += _write_reports(out, run_dir, spec, data, items, where, trained)
    return written
