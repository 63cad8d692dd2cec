"""Isolation of report items: one figure, table or section that raises never costs the rest.

A sweep's report is built after hours of training; a bug in one figure (a
matplotlib formatter that rejects a log axis, a NaN nobody expected) must
cost that figure, not the report. ``Guard.run`` calls one item's code and
turns an exception into an ``ItemFailure``: a one-line entry for report.md
and report.html, a one-line warning on stderr, and the full traceback for
``report_errors.log``. ``KeyboardInterrupt`` and ``SystemExit`` are not
``Exception`` and still stop the build.

No pandas or matplotlib here: what a failure is does not depend on what failed.
"""
from __future__ import annotations

import io
import sys
import traceback as _tb
from dataclasses import dataclass, field
from pathlib import Path

# How the entry of each kind of item reads: "could not draw gradient_flow: ...".
VERBS = {"figure": "draw", "table": "make table", "section": "write", "input": "read"}
MAX_REASON = 300  # a pandas repr can be one enormous line; the log keeps the whole message
ERRORS_LOG = "report_errors.log"


@dataclass(frozen=True)
class ItemFailure:
    """One item that could not be built.

    ``kind``: "figure", "table", "section" (a part of the report text, such as
    "findings") or "input" (a damaged optional file, such as
    "epochs.parquet"); ``reason``: ``"<ExceptionType>: <first line of the
    message>"``; ``traceback``: the full traceback, for the log only.
    """
    name: str
    kind: str
    reason: str
    traceback: str = field(default="", repr=False, compare=False)

    @property
    def entry(self) -> str:
        """The one line the report and stderr show: ``could not draw <name>: <reason>``."""
        return f"could not {VERBS.get(self.kind, 'build')} {self.name}: {self.reason}"


@dataclass(frozen=True)
class BuildResult:
    """What ``analysis.report.build`` wrote and what it could not build.

    ``written``: paths of figures, tables, then ``report.md`` and
    ``report.html`` (never the log); ``failures``: in the order they
    happened; ``log``: the path of ``report_errors.log`` when something
    failed, else None (and no such file exists).
    """
    written: list[str]
    failures: list[ItemFailure]
    log: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def one_line(exc: BaseException) -> str:
    """``"<ExceptionType>: <first non-empty line of the message>"``, at most ``MAX_REASON`` chars."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "…"


class Guard:
    """Runs items in isolation and collects their failures (see the module docstring)."""

    def __init__(self, stream=None):
        self.failures: list[ItemFailure] = []
        self._stream = stream  # None: sys.stderr at the time of writing (pytest swaps it)

    @classmethod
    def quiet(cls) -> "Guard":
        """A guard that records without a warning line: its failures are ``adopt``-ed
        by the build's guard, in the build's order."""
        return cls(stream=io.StringIO())

    def record(self, kind: str, name: str, exc: BaseException) -> ItemFailure:
        failure = ItemFailure(name, kind, one_line(exc),
                              "".join(_tb.format_exception(type(exc), exc, exc.__traceback__)))
        self.adopt([failure])
        return failure

    def adopt(self, failures) -> None:
        """Add failures recorded elsewhere (a quiet ``Guard`` in a worker process), in
        order, each with its warning line, as if recorded here."""
        for failure in failures:
            self.failures.append(failure)
            print(f"warning: {failure.entry}", file=self._stream or sys.stderr, flush=True)

    def run(self, kind: str, name: str, fn, on_failure=None):
        """``fn()``, or None when it raises (then the failure is recorded and
        ``on_failure(failure)`` is called, e.g. to remove a half-written file)."""
        try:
            return fn()
        except Exception as exc:  # the point: any bug in one item stays in that item
            failure = self.record(kind, name, exc)
            if on_failure is not None:
                on_failure(failure)
            return None


def write_error_log(out_dir, failures: list[ItemFailure], header: str, write_text) -> str | None:
    """Write ``<out_dir>/report_errors.log`` with every failure's traceback, or remove it.

    Overwritten by every build, so it always describes the latest one; a
    build without failures removes it, so an old log never suggests a
    problem that is gone. ``write_text(path, text)`` writes atomically.
    """
    path = Path(out_dir) / ERRORS_LOG
    if not failures:
        path.unlink(missing_ok=True)
        return None
    parts = [header.rstrip("\n"), f"{len(failures)} item(s) failed.", ""]
    for f in failures:
        parts += [f"=== {f.kind} {f.name}: {f.reason}", f.traceback.rstrip("\n") or "(no traceback)", ""]
    return write_text(path, "\n".join(parts))
