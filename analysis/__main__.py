"""``python -m analysis RESULTS_DIR``: rebuild a results folder's figures, tables and report.

Reads only the stored Parquet files (no Ray, torch or GPU) and prints
each written path on its own line; ``report.html`` is the last. Bad input
(a missing or empty folder, an unreadable trials.parquet, an unknown format,
style, width or factor, a filter that matches nothing, a ``--wandb-report``
target that is not ENTITY/PROJECT) is one line on stderr and exit code 2,
before anything is written.

The W&B report: every run also writes ``RESULTS_DIR/wandb_report.json``, the
spec of the sweep's W&B Report (``analysis.wandb_report``: the whole sweep,
whatever ``--where`` says; written without network); a failure there is one
warning line on stderr. ``--wandb-report ENTITY/PROJECT`` then publishes it
(``analysis.wandb_publish``): one line on stderr with the URL, or with what to
run later when there are no credentials or no server; it never changes the
exit code.

A figure, table or report section that fails does not stop the others
(``analysis.report.build``): each failure is one warning line on stderr as
it happens, the rest is written, and the exit code is 1; the last line on
stderr counts the failures and names ``report_errors.log``, which holds
their tracebacks. Exit codes: 0 everything written, 1 written with failures,
2 bad input (``--jobs`` included: ``auto`` or a whole number >= 1).

A sweep in an object store is read by its URI (``python -m analysis
s3://BUCKET/PREFIX/NAME --out DIR``): copied from the store into DIR (default
``./NAME``; only what changed since the last copy, and no per-trial fragments,
weights, checkpoints or Ray state), and the report is written there. The store is
only read: its lock (``ablations.store_lock``) is neither taken nor broken, so a
sweep still running there can be looked at. A bad URI, an unreachable store, a
missing bucket or sweep is one line and exit 2, before anything is written.

``--jobs N`` (default ``auto``: one per CPU) draws the figures and makes the
tables in N forked processes, each figure laid out once for all its formats
(``analysis.report.build``); ``--jobs 1`` is the serial build as it was.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ablations import helptext
from ablations.cli import OneLineParser
from ablations.spec import SpecError
from analysis.style import STYLES, WIDTHS

READER_SKIPS = ("trials", "weights", "figures", "tables", "views")  # not read or rebuilt
FORMATS = ("pdf", "png", "svg")  # kept equal to analysis.report.FORMATS (tested)


def _formats(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return parts


def _jobs(text: str) -> int | None:
    """``auto`` (one process per CPU) -> None, or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return None
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; valid: auto or a whole number >= 1")
    return jobs


def _target(text: str) -> str:
    from analysis.wandb_report import parse_target
    try:
        return "/".join(parse_target(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _wandb_spec(prog: str, run_dir, findings, out=None, stream=None) -> list[str]:
    """Write the W&B report's spec into ``out`` (default ``run_dir``: the folder read is
    never written to when ``--out`` names another); [its path], or [] after one warning
    line."""
    try:
        from analysis.wandb_report import write_spec
        return [str(write_spec(run_dir, findings=findings, out_dir=out))]
    except Exception as exc:  # the report is written: this must not cost it
        from analysis.failures import one_line
        print(f"{prog}: warning: W&B report spec not written: {one_line(exc)}",
              file=stream or sys.stderr, flush=True)
        return []


def _spec_child(conn, prog: str) -> None:
    """Import what the W&B report spec needs, wait for the build, write the spec."""
    try:
        import wandb_workspaces.reports.v2  # noqa: F401  the ~0.7 s this process is for
        import analysis.wandb_report  # noqa: F401
    except Exception:  # noqa: BLE001  write_spec raises it again, and that is reported
        pass
    try:
        job = conn.recv()
    except EOFError:
        return
    if job is not None:
        from io import StringIO
        err = StringIO()
        written = _wandb_spec(prog, *job, stream=err)
        conn.send((written, err.getvalue()))


class _SpecWriter:
    """The W&B report spec, written by a forked process that imports wandb_workspaces
    (and wandb: ~0.7 s) while this one builds the report, on the CPU that the imports
    of this one leave idle. Used with more than one job; with ``--jobs 1`` the spec is
    written here after the build, as before. If the process is gone, so is nothing:
    the spec is then written here."""

    def __init__(self, prog: str):
        import multiprocessing as mp
        self.prog = prog
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_spec_child, args=(child, prog), daemon=True)
        self.proc.start()
        child.close()

    def write(self, run_dir, findings, out=None) -> list[str]:
        try:
            self.conn.send((run_dir, findings, out))
            written, err = self.conn.recv()
        except (EOFError, OSError):
            return _wandb_spec(self.prog, run_dir, findings, out)
        finally:
            self.close()
        if err:
            print(err, end="", file=sys.stderr, flush=True)
        return written

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()


def _with_spec(written: list[str], spec: list[str]) -> list[str]:
    """The spec's path before the trailing report.md/report.html (report.html stays last)."""
    tail = 0
    while tail < len(written) and Path(written[-1 - tail]).name in ("report.md", "report.html"):
        tail += 1
    return written[:len(written) - tail] + spec + written[len(written) - tail:]


def build_parser() -> argparse.ArgumentParser:
    """``python -m analysis``'s parser; its ``--help`` says each default once, in words
    (``ablations.helptext``). Sections: view, figures, output, tracking."""
    parser = OneLineParser(prog="python -m analysis", formatter_class=helptext.HelpFormatter,
                           description="Rebuild figures/, tables/, report.md and report.html "
                                       "of a results folder from its Parquet files. "
                                       + helptext.defaults_said(switches=False))
    parser.add_argument("run_dir", metavar="RESULTS_DIR",
                        help="results folder holding trials/layers/epochs.parquet, or a "
                        "sweep's URI in an object store (s3://BUCKET/PREFIX/NAME)")
    v = parser.add_argument_group("view", "which rows the figures, tables and report show")
    v.add_argument("--where", action="append", default=[], metavar="FACTOR=V[,V]",
                   help="keep only these values of family, model, depth, seed or a factor ("
                   + helptext.where_levels() + "; rows where a factor is n/a are kept); "
                   "repeatable, e.g. --where family=resnet --where branch_scale=zero,invsqrt; "
                   "the view goes to RESULTS_DIR/views/<filter> unless --out is given "
                   "(default: every row)")
    f = parser.add_argument_group("figures", "how the figures are drawn")
    f.add_argument("--format", type=_formats, default=("pdf", "png"), metavar="FORMATS",
                   help="figure formats, comma list: " + ", ".join(FORMATS))
    f.add_argument("--style", choices=STYLES, default="paper",
                   help="paper: 8 pt text for a paper; slides: beamer 16:9 sizes")
    f.add_argument("--width", choices=WIDTHS, default="double",
                   help="single: one column (3.25 in, ICML); double: the full text width "
                   "(6.75 in)")
    o = parser.add_argument_group("output", "where the report goes and how it is built")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="write here instead; with a URI: the local copy of the sweep, which "
                   "the report is written into (default: RESULTS_DIR, or its "
                   "views/<filter> folder with --where; with a URI: ./NAME)")
    o.add_argument("--jobs", type=_jobs, default=None, metavar="N|auto",
                   help="processes that draw the figures and make the tables: N, or auto "
                   "for one per CPU; 1: this process alone, item after item, each format "
                   "of a figure laid out on its own, as before parallel builds "
                   "(default: auto)")
    t = parser.add_argument_group("tracking", "Weights & Biases")
    t.add_argument("--wandb-report", type=_target, default=None, metavar="ENTITY/PROJECT",
                   help="publish the sweep's W&B report there: sync its offline runs, save "
                   "the report, print its URL and record it in spec.json (needs W&B "
                   "credentials; without them or a server: one line saying what to run "
                   "later; the exit code is unchanged); its spec, wandb_report.json, is "
                   "written next to the report either way (default: none: not published)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import multiprocessing as mp
    speccer = (_SpecWriter(parser.prog) if args.jobs != 1 and "fork" in mp.get_all_start_methods()
               else None)
    try:
        return _run(parser, args, speccer)
    finally:
        if speccer is not None and speccer.proc.is_alive():
            speccer.close()


def _from_store(args) -> str | None:
    """With a URI for RESULTS_DIR: the sweep copied from the store into the local
    folder (``args.run_dir`` then names it, and the report goes into it); returns that
    folder when this call created it. SpecError for a bad URI or store."""
    from ablations import storage, store_sweep
    if not storage.is_uri(args.run_dir):
        return None
    store, name = store_sweep.open_sweep(args.run_dir)
    local = store_sweep.local_copy(args.out, name)
    created = None if os.path.exists(local) else local
    store_sweep.fetch(store, name, local, skip=READER_SKIPS)
    args.run_dir, args.out = local, None
    return created


def _run(parser, args, speccer) -> int:
    # Headless: no display on a cluster node, and the figures never need one.
    import matplotlib
    matplotlib.use("Agg")
    from analysis.report import ResultsError, build, parse_where
    from analysis.style import Look

    try:
        copied = _from_store(args)
    except SpecError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = build(args.run_dir, args.format, look=Look(args.style, args.width),
                       where=parse_where(args.where), out_dir=args.out, jobs=args.jobs)
    except ResultsError as exc:
        if copied:  # bad input: the copy made for it goes again
            shutil.rmtree(copied, ignore_errors=True)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.run_dir)
    findings = out / "report.md" if not args.where else None
    spec = (speccer.write(args.run_dir, findings, out) if speccer is not None
            else _wandb_spec(parser.prog, args.run_dir, findings, out))
    for path in _with_spec(list(result.written), spec):
        print(path, flush=True)
    if args.wandb_report:
        from analysis.wandb_publish import publish
        _, message = publish(args.run_dir, args.wandb_report, findings=findings)
        print(message, file=sys.stderr, flush=True)
    if result.failures:
        print(f"{parser.prog}: {len(result.failures)} item(s) failed (named in the report); "
              f"everything else was written; tracebacks in {result.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
