"""Make the report's items, each in isolation: ``make_items(ctx, guard, jobs)``.

The plan is ``analysis.registry.plan(ctx)``; ``run_item`` makes one item in its own
``Guard``, so an item that raises (in ``applies``, its caption, its drawing or its
saving) becomes an ``ItemFailure`` whose files are removed (``remove_files``), and
the others are made. A figure is laid out once for all its formats
(``saving.save_figure_once``); a table is written as Markdown and booktabs LaTeX.

With ``jobs`` > 1 the items are made by forked worker processes
(``analysis.report_parallel``), with the same items and the same failures in the
same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablations.where import safe_name
from analysis import registry
from analysis.failures import Guard, ItemFailure
from analysis.formatting import escape_latex
from analysis.registry import ReportContext, ReportItem
from analysis.saving import save_figure_once
from analysis.tables import write_table


@dataclass
class MadeItem:
    """One figure or table as made: its files, caption and what to embed in the
    reports, or the failure that replaced it."""
    kind: str                      # "figure" | "table"
    name: str
    caption: str
    paths: list[str] = field(default_factory=list)
    png: bytes | None = None       # figure: embedded in report.html
    frame: pd.DataFrame | None = None  # table: rendered in the reports
    floatfmt: object = "auto"
    failure: ItemFailure | None = None
    section: str = registry.MAIN   # the section that shows it (ReportItem.section)


def remove_files(paths) -> None:
    """A failed item leaves no file behind: neither a half-written one nor an older
    build's, which the report would no longer describe."""
    for p in paths:
        Path(p).unlink(missing_ok=True)


def outputs(c: ReportContext, item: ReportItem) -> tuple[Path, list[Path]]:
    """An item's base path and the files it writes."""
    base = (c.out / ("figures" if item.kind == "figure" else "tables")) / safe_name(item.name)
    if item.kind == "figure":
        return base, [base.with_name(f"{base.name}.{x}") for x in c.formats]
    return base, [base.with_name(base.name + ".md"), base.with_name(base.name + ".tex")]


def failed_item(item: ReportItem, failure: ItemFailure, caption: str = "") -> MadeItem:
    return MadeItem(item.kind, item.name, caption, failure=failure, section=item.section)


def run_item(c: ReportContext, guard: Guard, item: ReportItem) -> MadeItem | None:
    """Make ``item`` and write its files; None when it does not apply (or a table
    comes out empty). A failure is recorded in ``guard`` and returned as the item's
    ``failure``, its files removed."""
    base, files = outputs(c, item)
    kind, state = item.kind, {}

    def attempt():
        if not item.applies(c):
            return None
        state["caption"] = caption = item.caption_for(c)
        made = item.make(c)
        if kind == "figure":
            # laid out once for every format; the PNG (rendered in memory when not
            # among the formats) goes into the HTML report
            paths, png = save_figure_once(made, base, c.formats)
            return MadeItem(kind, item.name, caption, paths, png=png, section=item.section)
        if made is None or not len(made):
            return None
        paths = write_table(made, base, escape_latex(caption), f"tab:{safe_name(item.name)}",
                            item.floatfmt)
        return MadeItem(kind, item.name, caption, paths, frame=made, floatfmt=item.floatfmt,
                        section=item.section)

    def failed(failure):
        remove_files(files)
        state["failure"] = failure

    made = guard.run(kind, item.name, attempt, on_failure=failed)
    if "failure" in state:
        return failed_item(item, state["failure"], state.get("caption", ""))
    return made


def make_items(c: ReportContext, guard: Guard, jobs: int = 1) -> list[MadeItem]:
    """Every planned item, section by section (the report's own figures, then its
    tables, then each other section's), each made in isolation; a section's planning
    failures (a provider that raised, a file it could not read) come before its items'.
    With ``jobs`` > 1 in that many worker processes (``analysis.report_parallel``)."""
    if jobs > 1:
        from analysis import report_parallel
        if report_parallel.available():
            return report_parallel.make_items(c, guard, jobs)
    made = []
    for section in registry.plan(c):
        guard.adopt(section.failures)
        made += [run_item(c, guard, item) for item in section.items]
    return [m for m in made if m is not None]
