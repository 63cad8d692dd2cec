"""The report's figures and tables made by several processes (``build(..., jobs=N)``).

The plan is the serial one (``analysis.report._main_plan``, then the
"Measurements" entries); each entry is made by ``report._run_entry`` in a forked
worker (``analysis.report_pool``), each figure laid out once for all its formats
(``style.save_figure_once``). What comes back is merged so that the build reads
as the serial build does:

* the items, in plan order;
* the failures, in the serial order (the main items', then the measurement
  files' that could not be read, then the measurement items'), each warned on
  stderr as soon as everything before it is done, so the warnings keep that
  order too;
* an entry that raises is a "could not draw/make table" failure of that entry,
  as in the serial build (the worker made it in its own quiet ``Guard``); a
  worker that dies (a segfault, the OOM killer) is a failure of the one entry
  it was making ("worker process died (signal SIGKILL)"), whose files are
  removed, and the others are made by a new worker.
"""
from __future__ import annotations

import dataclasses

from analysis import report_measurements as measured
from analysis import report_pool
from analysis.failures import Guard, ItemFailure


# Handed out first, so that the longest figures do not start last and leave one worker
# drawing while the others wait (measured on bench/report_bench.py's workload, where
# they take 1.2, 0.8 and 0.8 s of the 6 figures' 4.3 s). Then the other figures in
# report order, then the tables (a few ms each: they fill the gaps at the end).
HEAVY_FIRST = ("act_through_training", "training_curves", "gradient_flow")


def _dispatch_order(plan) -> list[int]:
    def rank(i):
        kind, e, _ = plan[i]
        heavy = HEAVY_FIRST.index(e.name) if e.name in HEAVY_FIRST else len(HEAVY_FIRST)
        return (kind != "figure", heavy, i)
    return sorted(range(len(plan)), key=rank)


def available() -> bool:
    return report_pool.available()


def items(c, guard: Guard, jobs: int) -> list:
    """``report._items`` with ``jobs`` worker processes (see the module docstring)."""
    from analysis import report
    plan = [(kind, e, "") for kind, e in report._main_plan(c, guard)]
    n_main = len(plan)
    reading = Guard.quiet()  # measurement files that cannot be read: warned in serial order
    plan += [(kind, e, measured.SECTION) for kind, e in measured.entries(c, reading)]

    def run(i):  # in a worker
        kind, e, _ = plan[i]
        return report._run_entry(c, Guard.quiet(), kind, e)

    # The order in which failures are adopted: each item's, with the unreadable
    # measurement files between the main items and the measurement items.
    sequence = [*range(n_main), "reading", *range(n_main, len(plan))]
    failed: dict = {"reading": reading.failures}
    made: dict = {}
    at = 0

    def on_result(i, item):
        nonlocal at
        if isinstance(item, report_pool.Lost):
            kind, e, _ = plan[i]
            report._remove(report._outputs(c, kind, e)[1])
            item = report.Item(kind, e.name, "", failure=ItemFailure(e.name, kind, item.reason))
        made[i] = item
        failed[i] = [item.failure] if item is not None and item.failure is not None else []
        while at < len(sequence) and sequence[at] in failed:
            guard.adopt(failed[sequence[at]])
            at += 1

    if plan:
        report_pool.run_tasks(_dispatch_order(plan), run, jobs, on_result)
    else:
        guard.adopt(reading.failures)
    return [made[i] if not section else dataclasses.replace(made[i], section=section)
            for i, (_, _, section) in enumerate(plan) if made[i] is not None]
