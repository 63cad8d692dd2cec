"""A W&B Report of a sweep, built from its results folder (``wandb-workspaces`` reports v2).

Each trial is a W&B run (``ablations.tracking``): group = the sweep's name, job type
"trial", "probe" (one run per model and depth) or "tune" (an Optuna sample), config =
``TrialConfig.record()`` (every factor, seed, lr, weight_decay, ...), history per epoch
(``val_acc``, ``test_acc``, ...), summary = the results row (``final_test_acc``, ...);
the figures are one "analysis" run, one image per file stem. ``build_report`` makes:

* curves of ``val_acc`` and ``test_acc`` over ``epoch``, one pair per key the cells differ
  by (``cell_keys``), each grouped by that config key (mean, standard-error band); their
  run set is ungrouped, so the panel's own grouping is the only one that applies;
* final test accuracy against depth: a scatter plot of config ``depth`` (log axis) and
  summary ``final_test_acc``, one run set (one colour) per residual level. Test error is
  1 - that accuracy: scatter plots take config and summary keys, not expressions, and a
  line plot's x axis must be a history key, which depth is not;
* the run set grouped by ``cell_keys`` as explicit ``config.`` keys (a bare ``State`` or
  ``Group`` is a run attribute), its runs table (factors, seed, hyperparameters, final
  metrics), a parallel-coordinates panel over keys, lr, weight_decay and final accuracy,
  and a run comparer; the figures; report.md's findings as a Markdown block; the tuning
  samples in their own grid when ``tuning.parquet`` exists.

Run sets are filtered by a filter string (``run_filter``): the library turns any filter
into one and parses it again when it serializes, after rewriting ``=``, ``<``, ``>`` and
``within_last`` everywhere in it, quotes included, and it quotes values without escaping
them; so a sweep named ``lr=0.1`` or ``bob's`` would select no group or fail to parse.
``run_filter`` writes each value as a literal that parses back to exactly that value
(``filter_literal``: all but letters, digits, space and ``_-.,:+@`` escaped), and
``check_filter`` refuses a run set whose serialized filter does not select the group: a
filter string in a wrong syntax (``"run.group == 'x'"``) serializes to an empty filter,
i.e. every run of the project. A sweep name that is not valid UTF-8 (``--name`` given
bytes of another encoding) is refused: no W&B run can have it as its group. Serializing
looks the project's internal id up over GraphQL (``Runset._to_model``, once per run set):
``write_spec`` answers that one query locally with a placeholder (``project_lookup``: no
network, no login); ``Report.save`` in ``publish`` asks the server.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import string
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from ablations import factors as _factors
from ablations import results as _results
from ablations import tracking
from ablations import levels

SPEC_FILE = "wandb_report.json"
PLACEHOLDER_ENTITY = "<entity>"                 # write_spec without an entity
PLACEHOLDER_ID = "<project id: looked up when published>"
HPARAMS = ("lr", "weight_decay")
FINALS = ("final_val_acc", "final_test_acc")
TABLE_SUMMARY = ("status", "final_val_acc", "final_test_acc", "best_val_acc",
                 "test_acc_at_best_val", "epochs_run")


def _read(run_dir: Path) -> tuple[dict, pd.DataFrame | None, pd.DataFrame | None]:
    """(spec.json's ``spec`` dict or {}, trials.parquet, tuning.parquet or None)."""
    try:
        spec = json.loads((run_dir / "spec.json").read_text()).get("spec") or {}
    except (OSError, ValueError, AttributeError):
        spec = {}
    frames = [pd.read_parquet(p) if p.is_file() else None
              for p in (run_dir / "trials.parquet", run_dir / "tuning.parquet")]
    return (spec if isinstance(spec, dict) else {}), *frames


def cell_keys(trials: pd.DataFrame | None) -> list[str]:
    """The config keys a sweep's cells differ by: model (when there are several), depth,
    residual, then every other factor that varies within a family (``levels.varying``)."""
    many = trials is not None and "model" in trials and trials["model"].nunique() > 1
    rest = levels.varying(trials) if trials is not None and len(trials) else []
    return ["model"] * many + ["depth", "residual"] + [n for n in rest if n != "residual"]


def findings_markdown(report_md: Path) -> str:
    """The ``## Findings ...`` section of report.md: its title in bold, then its text."""
    try:
        lines = Path(report_md).read_text().splitlines()
    except OSError:
        return f"_No findings: {report_md} does not exist (`python -m analysis` writes it)._"
    start = next((i for i, ln in enumerate(lines) if ln.startswith("## Findings")), None)
    if start is None:
        return "_No findings section in report.md (nothing was contrasted or failed)._"
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
               len(lines))
    return f"**{lines[start][3:]}**\n\n" + "\n".join(lines[start + 1:end]).strip()


_PLAIN = frozenset(string.ascii_letters + string.digits + " _-.,:+@")


def filter_literal(value: str | bool) -> str:
    """``value`` as a literal of a filter string that parses back to exactly ``value``: a
    bool as ``True``/``False``, a string in single quotes with every character outside
    ``_PLAIN`` as a ``\\x``, ``\\u`` or ``\\U`` escape, so that none of ``=<>'()\\``, a
    newline or a lone surrogate (``os.fsdecode`` of a non-UTF-8 argument) reaches the
    parser's rewrites or breaks the quotes."""
    if isinstance(value, bool):
        return str(value)
    return "'" + "".join(c if c in _PLAIN else _escape(ord(c)) for c in value) + "'"


def _escape(n: int) -> str:
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: os.fsdecode of bytes that are not UTF-8
        return False
    return True


def run_filter(group: str, job_type: str, **config) -> str:
    """The filter string of the runs of ``group`` with ``job_type`` and each config key
    equal to its value (a str or bool), e.g. ``Metric("Group") == 'lr\\x3d0.1' and
    Metric("JobType") == 'trial' and Config("residual") == True``."""
    leaves = [("Metric", "Group", group), ("Metric", "JobType", job_type),
              *(("Config", k, v) for k, v in config.items())]
    return " and ".join(f'{kind}("{key}") == {filter_literal(v)}' for kind, key, v in leaves)


def check_filter(runset, group: str) -> dict:
    """The run set's serialized filter; ValueError unless it has ``group == <group>``."""
    from wandb_workspaces import expr
    v2 = expr.filters_tree_to_v2(expr.expr_to_filters(runset.filters))
    ok = any(f.get("key") == {"section": "run", "name": "group"} and f.get("op") == "="
             and f.get("value") == group for f in v2.get("filters", []))
    if not ok:
        raise ValueError(f"run set {runset.name!r}: filter {runset.filters!r} does not select "
                         f"group {group!r} (it would show every run of the project)")
    return v2


def _tile(panels: list, sizes: list[tuple[int, int]]) -> list:
    """Place panels left to right in rows of width 24 (the report grid)."""
    from wandb_workspaces.reports.v2 import Layout
    x = y = row_h = 0
    for p, (w, h) in zip(panels, sizes):
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p.layout = Layout(x=x, y=y, w=w, h=h)
        x, row_h = x + w, max(row_h, h)
    return panels


def build_report(run_dir, entity: str, project: str, findings=None):
    """The ``wandb_workspaces.reports.v2.Report`` of the sweep in ``run_dir`` (see the
    module docstring), for the runs of ``entity/project``. ``findings``: the report.md
    to quote (default ``run_dir/report.md``). Reads spec.json, trials.parquet,
    tuning.parquet and figures/; no network. ValueError for a sweep name that is not
    valid UTF-8, or a run set whose filter would not select the sweep's group."""
    import wandb_workspaces.reports.v2 as wr
    run_dir = Path(run_dir)
    spec, trials, tuning = _read(run_dir)
    name = str(spec.get("name") or run_dir.name)
    if not _utf8(name):
        raise ValueError(f"sweep name {name!r} is not valid UTF-8 (an --name of other bytes): "
                         "no W&B run can have it as its group, so no report can select them")
    mode = spec.get("mode") or ("probe" if trials is not None and "probe_loss" in trials
                                and "final_test_acc" not in trials else "train")
    keys = cell_keys(trials)
    present = levels.present(trials) if trials is not None else ["residual"]
    C, S = wr.Config, wr.SummaryMetric

    def runset(title, job_type, where=None, groupby=(), columns=()):
        rs = wr.Runset(entity=entity, project=project, name=title,
                       filters=run_filter(name, job_type, **(where or {})),
                       groupby=[f"config.{k}" for k in groupby],
                       pinned_columns=["run:displayName"], visible_columns=list(columns),
                       lock_columns=True if columns else None)
        check_filter(rs, name)
        return rs

    def grid(runsets, panels, sizes):
        return wr.PanelGrid(runsets=runsets, panels=_tile(panels, sizes))

    def curves(y, by):
        return wr.LinePlot(title=f"{y} by {by}", x="epoch", y=[y], groupby=C(by),
                           groupby_aggfunc="mean", groupby_rangefunc="stderr",
                           range_y=(0, 1))

    blocks = [wr.P(f"Sweep {name} ({mode} mode, {0 if trials is None else len(trials)} "
                   f"trials), results folder {run_dir}. The runs are the W&B runs of group "
                   f"{name}; generated by resablate's analysis.wandb_report."),
              wr.H2("Findings"),
              wr.MarkdownBlock(text=findings_markdown(findings or run_dir / "report.md"))]
    table = [f"config:{k}.value" for k in ("model", "depth", *present, "seed", *HPARAMS,
                                           "hp_source")]
    if mode == "train":
        plots = [curves(y, k) for k in keys for y in ("val_acc", "test_acc")]
        blocks += [wr.H2("Accuracy curves"),
                   grid([runset("trials", "trial")], plots, [(12, 8)] * len(plots))]
        res = sorted(trials["residual"].dropna().unique()) if trials is not None \
            and "residual" in trials else []
        sets = [runset(_factors.get("residual").level_of(bool(r)), "trial",
                       {"residual": bool(r)}) for r in res] \
            or [runset("trials", "trial")]
        final = wr.ScatterPlot(title="final test accuracy against depth (error = 1 - "
                                     "accuracy)", x=C("depth"), y=S("final_test_acc"),
                               log_x=True, range_y=(0, 1))
        blocks += [wr.H2("Final test accuracy against depth"), grid(sets, [final], [(24, 9)])]
        cols = [C(k) for k in keys] + [C(h) for h in HPARAMS] + [S(m) for m in FINALS]
        cells = [wr.ParallelCoordinatesPlot(
                     title="factors, hyperparameters and final accuracy",
                     columns=[wr.ParallelCoordinatesPlotColumn(metric=c) for c in cols]),
                 wr.RunComparer(diff_only="split")]
        table += [f"summary:{m}" for m in TABLE_SUMMARY]
        blocks += [wr.H2("Cells (runs grouped by " + ", ".join(keys) + ")"),
                   grid([runset("trials by cell", "trial", groupby=keys, columns=table)],
                        cells, [(24, 9), (24, 10)])]
    else:  # probe: one run per model and depth, its config lists the levels probed
        probe_cols = ["config:model.value", "config:depth.value", "config:seeds.value",
                      "summary:completed", "summary:diverged"]
        blocks += [wr.H2("Probe runs"), grid([runset("probe runs", "probe",
                                                     columns=probe_cols)],
                                              [wr.RunComparer(diff_only="split")], [(24, 10)])]
    stems = sorted(p.stem for p in (run_dir / "figures").glob("*.png"))
    if stems:
        media = [wr.MediaBrowser(title=s, media_keys=[s], num_columns=1) for s in stems]
        blocks += [wr.H2("Figures"), grid([runset("figures", "analysis")], media,
                                          [(12, 10)] * len(media))]
    if tuning is not None and len(tuning):
        blocks += _tuning_blocks(wr, runset, grid, tuning, spec, keys)
    return wr.Report(entity=entity, project=project, title=f"resablate sweep {name}"[:128],
                     description=f"Residual-connection ablation sweep {name}", blocks=blocks)


def _tuning_blocks(wr, runset, grid, tuning: pd.DataFrame, spec: dict, keys) -> list:
    """The tuning samples' grid: curves, accuracy against each tuned hyperparameter, parallel
    coordinates, and a Markdown panel with the selected values per cell."""
    hps = [h for h in (spec.get("tune") or HPARAMS) if h in tuning] or \
        [h for h in HPARAMS if h in tuning]
    C, S = wr.Config, wr.SummaryMetric
    panels = [wr.LinePlot(title="val_acc of every sample", x="epoch", y=["val_acc"],
                          range_y=(0, 1), max_runs_to_show=1000)]
    panels += [wr.ScatterPlot(title=f"last val_acc against {h}", x=C(h), y=S("val_acc"),
                              log_x=True, range_y=(0, 1)) for h in hps]  # log-sampled
    panels.append(wr.ParallelCoordinatesPlot(
        title="cell, tuned hyperparameters and last val_acc",
        columns=[wr.ParallelCoordinatesPlotColumn(metric=c)
                 for c in [C(k) for k in keys] + [C(h) for h in hps] + [S("val_acc")]]))
    rows = ["| cell | " + " | ".join(hps) + " | val acc | samples |",
            "|---" * (len(hps) + 3) + "|"]
    for cell, g in tuning.groupby("cell", sort=True):
        pick = g[g["selected"].eq(True)] if "selected" in g else g.iloc[:0]
        vals = [f"{pick[h].iloc[0]:.4g}" if len(pick) else "—" for h in hps]
        acc = f"{pick['value'].iloc[0]:.3f}" if len(pick) and "value" in pick else "—"
        rows.append(f"| {cell} | " + " | ".join(vals) + f" | {acc} | {len(g)} |")
    panels.append(wr.MarkdownPanel(markdown="**Selected per cell** (tuning.parquet)\n\n"
                                   + "\n".join(rows)))
    cols = [f"config:{k}.value" for k in (*keys, *hps)] + ["summary:val_acc", "summary:status"]
    sizes = [(12, 8)] * (1 + len(hps)) + [(24, 9), (24, 2 + len(rows))]
    return [wr.H2("Tuning samples (Optuna, per cell)"),
            grid([runset("tuning samples", "tune", columns=cols)], panels, sizes)]


@contextlib.contextmanager
def project_lookup(lookup):
    """While inside, the reports library's project lookup (the one GraphQL query that
    serializing a run set makes) is answered by ``lookup(entity, project) -> id or None``;
    any other GraphQL call raises. Nothing else of the library is replaced."""
    from wandb_workspaces.reports.v2 import gql, interface

    def execute(api, query, variables=None):
        if query != gql.projectInternalId:
            raise RuntimeError("offline report spec: only the project lookup is answered")
        found = lookup(variables["entityName"], variables["projectName"])
        return {"project": None if found is None else {"internalId": found}}
    saved = interface.execute_graphql, interface._get_api
    interface.execute_graphql, interface._get_api = execute, lambda: None
    try:
        yield
    finally:
        interface.execute_graphql, interface._get_api = saved


def viewspec(report, lookup=None) -> dict:
    """The report's viewspec (what ``Report.save`` uploads) as JSON values; the project
    lookup answered by ``lookup`` (default: the placeholder id, no network)."""
    with project_lookup(lookup or (lambda entity, project: PLACEHOLDER_ID)):
        model = report._to_model()  # the pinned version has no public to_model
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def write_spec(run_dir, entity=None, project=None, findings=None, url=None,
               out_dir=None) -> Path:
    """Write ``wandb_report.json`` into ``out_dir`` (default ``run_dir``) atomically, without network: the viewspec with
    the placeholder project id, the entity/project it is for (default ``$WANDB_ENTITY`` or
    a placeholder, ``$WANDB_PROJECT`` or the project sweeps log to), the command that
    publishes it, and ``url`` once published."""
    run_dir = Path(run_dir)
    entity = entity or os.environ.get("WANDB_ENTITY") or PLACEHOLDER_ENTITY
    project = project or os.environ.get("WANDB_PROJECT") or tracking.DEFAULT_PROJECT
    record = {"what": "W&B report viewspec (wandb_workspaces.reports.v2) of this sweep",
              "wandb_workspaces": version("wandb-workspaces"), "entity": entity,
              "project": project, "project_id": PLACEHOLDER_ID, "url": url,
              "publish": publish_command(run_dir, f"{entity}/{project}"),
              "viewspec": viewspec(build_report(run_dir, entity, project, findings))}
    path = Path(out_dir or run_dir) / SPEC_FILE
    _results.write_json(path, record)
    return path


def parse_target(text: str) -> tuple[str, str]:
    """``"ENTITY/PROJECT"`` -> (entity, project); ValueError in one line otherwise."""
    entity, sep, project = str(text).strip().partition("/")
    if not (sep and entity and project) or "/" in project or any(c.isspace() for c in text.strip()):
        raise ValueError(f"expected ENTITY/PROJECT (e.g. my-team/resablate), got {text!r}")
    return entity, project


def publish_command(run_dir, target: str) -> str:
    """The command that publishes the report of ``run_dir`` to ``target`` (ENTITY/PROJECT)."""
    return f"python -m analysis {shlex.quote(str(run_dir))} --wandb-report {shlex.quote(target)}"
