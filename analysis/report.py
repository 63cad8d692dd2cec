"""Every figure, table and the report of one results folder: ``build(run_dir) -> BuildResult``.

Reads whichever of ``trials.parquet``, ``layers.parquet``, ``epochs.parquet``,
``features/*.npz``, ``measurements/*.parquet`` and ``spec.json`` exist (a
probe-only sweep has no epochs or features) and writes, each file atomically:

* ``figures/<name>.{pdf,png,...}``: one file per figure of ``analysis.registry`` that
  the data allows (the built-in ones: ``analysis.report_items``);
* ``tables/<name>.{md,tex}``: Markdown and booktabs LaTeX, one per table;
* ``report.md`` and ``report.html``: status counts, the training budget against He et
  al.'s schedule, the findings (``analysis.findings``: first the headline, the depth x
  residual interaction of train loss and test error, worded by its adjusted p; then each
  factor level minus its baseline; a survivorship warning where counting diverged trials
  at chance changes a conclusion; for each cell that diverged or stayed at chance, the
  mechanism measured at init and the levels that trained at that depth; a
  ``--warmup-epochs`` suggestion where the first epoch starts above chance),
  the spec, environment, plan, tables and figures with one-line captions, and
  the W&B runs. The
  HTML is self-contained: figures are embedded as base64 PNG, styles inline,
  no script, so it can be mailed or opened from a laptop;
* a "Measurements" section: the figures and tables of each measurement's view
  (``analysis.views``), for every ``measurements/<name>.parquet``
  (``analysis.report_measurements``);
* ``report_errors.log``: only when something failed (see below).

**One multiplicity family per report.** Every p value printed (contrasts' paired t and
Wilcoxon, the interactions, the factor effects) is adjusted with Holm over one family:
every test of the report's metrics on the run's full trials
(``analysis.multiplicity.report_family``, computed once by ``build``, before ``where``
filters anything), so a view prints the full report's adjusted p for the same test.
Below three seeds a contrast gives its mean only.

The last mile of a sweep must not be lost to one bug: every figure, table
and report section is made in isolation (``analysis.failures.Guard``). One
that raises becomes a line "could not draw <name>: <Type>: <message>" in
both reports (and in their "Problems" section), a one-line warning on
stderr, and its traceback in ``report_errors.log``; its own files are
removed and everything else is written. The log is rewritten by every build
and removed by a build without failures, so it always describes the latest
build. Bad input (no folder, no results, an unreadable trials.parquet, an
unknown format, a filter that matches nothing) still raises ``ResultsError``.

The parts: this module loads the results and builds; ``analysis.registry`` lists the
items, ``analysis.report_items`` and ``analysis.report_measurements`` register them,
``analysis.report_runner`` makes them, ``analysis.report_text`` and
``analysis.render`` write the two reports.

Needs only pandas, pyarrow, scipy and matplotlib/seaborn: no ray, wandb or
torch, so results copied off a cluster rebuild anywhere, in seconds. Most of
those seconds are matplotlib laying out and rendering figures, so by default
the items are made by one forked process per CPU (``jobs``; see ``build``),
which keep the isolation above: an item that raises, or a worker that dies
while making it, is that item's "could not" line.
``where`` restricts everything to some values of family, model, depth, seed or
any factor (``ablations.where``: ``{"family": ["resnet"], "norm": ["none"]}``);
such a view is written to its own folder (``views/family=resnet_norm=none`` by
default) so the full report is never replaced by a partial one. Tables and
findings show a factor other than residual only when it varies, so a sweep that
crosses only residual reads as it always did (plus the adjusted p column).
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pandas as pd

from ablations.where import ResultsError, apply_where, parse_where, where_slug
from analysis import multiplicity
from analysis import report_items, report_measurements, report_pool, tuning
from analysis.failures import BuildResult, Guard, one_line, write_error_log
from analysis.registry import ReportContext
from analysis.report_runner import make_items
from analysis.report_text import write_reports
from analysis.style import DEFAULT_LOOK, Look
from ablations.files import write_text

__all__ = ["FORMATS", "RESULT_FILES", "ResultsError", "build", "load_results", "load_spec",
           "parse_where", "resolve_jobs"]
# report_items and report_measurements register the built-in items when imported.
BUILTIN_ITEMS = (report_items, report_measurements)

RESULT_FILES = ("trials", "layers", "epochs")
FORMATS = ("pdf", "png", "svg")


# --------------------------------------------------------------------------- loading

def load_results(run_dir, guard: Guard | None = None) -> dict[str, pd.DataFrame]:
    """``{"trials": df, "layers": df, "epochs": df}`` for the Parquet files that exist.

    A file that cannot be read raises ``ResultsError`` when it is
    ``trials.parquet`` (the plan: without it every count would be wrong), when
    no file can be read, or when no ``guard`` is given. With a ``guard``, a
    damaged ``layers`` or ``epochs`` file beside readable ones is left out and
    recorded as an "input" failure: the report is built from the rest and
    says what is missing, rather than hours of training ending in a traceback.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"results folder {str(run_dir)!r} does not exist or is not a folder")
    data, broken = {}, {}
    for name in RESULT_FILES:
        path = run_dir / f"{name}.parquet"
        if path.is_file():
            try:
                data[name] = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a bad file
                broken[name] = (path, exc)
    if broken and (guard is None or "trials" in broken or not data):
        path, exc = broken.get("trials") or next(iter(broken.values()))
        raise ResultsError(f"cannot read {path}: {one_line(exc)}") from exc
    for name, (_, exc) in broken.items():
        guard.record("input", f"{name}.parquet", exc)
    if not data:
        raise ResultsError(f"{str(run_dir)!r} holds none of "
                           + ", ".join(f"{n}.parquet" for n in RESULT_FILES))
    return data


def load_spec(run_dir, guard: Guard | None = None) -> dict:
    """``spec.json`` as a dict; ``{}`` when it is missing, unreadable or not a JSON
    object (the report then says the spec was not recorded). With a ``guard``, a
    file that exists but cannot be used is recorded as an "input" failure, like a
    damaged epochs.parquet: the report is built, and names it."""
    path = Path(run_dir) / "spec.json"
    if not path.exists():
        return {}
    try:
        spec = json.loads(path.read_text())
        if not isinstance(spec, dict):
            raise ValueError(f"expected a JSON object, found {type(spec).__name__}")
        for key in ("spec", "environment"):
            if not isinstance(spec.get(key, {}), dict):
                raise ValueError(f"{key!r} is not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        if guard is not None:
            guard.record("input", "spec.json", exc)
        return {}
    return spec


# --------------------------------------------------------------------------- build

def resolve_jobs(jobs) -> int:
    """``jobs`` as a number of processes: None = one per CPU this process may use.
    Raises ``ResultsError`` for anything but None or an integer >= 1."""
    if jobs is None:
        return report_pool.cpu_count()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ResultsError(f"jobs must be a whole number >= 1 or None (one per CPU), "
                           f"got {jobs!r}")
    return jobs


def build(run_dir, formats=("pdf", "png"), look: Look = DEFAULT_LOOK, where=None,
          out_dir=None, jobs: int | None = None) -> BuildResult:
    """Write every figure and table the folder's results allow, and the reports.

    Returns ``BuildResult(written, failures, log)``: ``written`` = the paths
    written (figures, tables, then ``report.md`` and ``report.html``);
    ``failures`` = one ``ItemFailure`` per item that raised; ``log`` = the
    path of ``report_errors.log`` (every failure's traceback) or None.

    Each figure, table and report section is made in isolation (see
    ``analysis.failures``): one that raises is named in both reports and on
    stderr, its files are removed, and everything else is still written. A
    damaged ``layers.parquet`` or ``epochs.parquet`` beside a readable
    ``trials.parquet`` is such a failure too (kind "input").

    ``where``: ``{factor: [values]}`` (see ``parse_where``) restricts every
    output; its files go to ``out_dir`` or, by default, ``run_dir/views/<slug>``.
    Without ``where`` they go to ``out_dir`` or ``run_dir``.

    ``jobs``: processes that draw the figures and make the tables (None: one per
    CPU). 1 builds in this process alone, item after item; more
    (``analysis.report_parallel``) make the items in forked workers: the same
    files (each figure laid out once for all its formats,
    ``saving.save_figure_once``), the same report.md and the same failures in the
    same order; a worker that dies costs only the item it was making. About 2x
    faster on 2 CPUs (bench/report_bench.py).

    Raises ``ResultsError`` (bad input, before anything is written) for a
    missing folder, no results, an unreadable ``trials.parquet`` (or no
    readable file at all), an unknown format, a ``where`` that matches nothing
    or a ``jobs`` that is not a whole number >= 1.
    """
    formats = tuple(formats)
    jobs = resolve_jobs(jobs)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ResultsError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    guard = Guard()
    data = load_results(run_dir, guard)
    tuned = tuning.load_tuning(run_dir, guard)  # a damaged file costs the tuning items only
    if tuned is not None:
        data["tuning"] = tuned
    where = dict(where or {})
    full = data.get("trials")
    data = apply_where(data, where)
    out = Path(out_dir) if out_dir else (run_dir / "views" / where_slug(where) if where else run_dir)
    spec = load_spec(run_dir, guard)
    trials = data.get("trials")
    trained = trials is not None and "final_test_acc" in trials
    ranges = guard.run("input", "spec.json tune_ranges", lambda: tuning.search_ranges(spec))
    # One multiplicity family per report, of the run's FULL trials: a --where view shows
    # the adjusted p values of the full report. Failing, each item computes its own.
    family = guard.run("section", "multiplicity family",
                       lambda: multiplicity.report_family(full)) if trained else None
    ctx = ReportContext(run_dir, out, trials, data.get("layers"), data.get("epochs"), formats,
                        look, trained, data.get("tuning"), ranges or {}, family)
    items = make_items(ctx, guard, jobs)
    written = [p for i in items for p in i.paths]
    written += write_reports(ctx, spec, data, items, where, guard)
    log = write_error_log(out, guard.failures,
                          f"python -m analysis {run_dir}: {_dt.datetime.now().isoformat(timespec='seconds')}",
                          write_text)
    return BuildResult(written, list(guard.failures), log)
