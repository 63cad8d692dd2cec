"""The report's figures and tables made by several processes (``build(..., jobs=N)``).

The plan is the serial one (``analysis.registry.plan``); each item is made by
``analysis.report_runner.run_item`` in a forked worker (``analysis.report_pool``), each
figure laid out once for all its formats (``saving.save_figure_once``). What comes back
is merged so that the build reads as the serial build does:

* the items, in plan order;
* the failures, in the serial order (each section's planning failures, such as a
  measurement file that could not be read, then its items'), each warned on stderr as
  soon as everything before it is done, so the warnings keep that order too;
* an item that raises is a "could not draw/make table" failure of that item, as in
  the serial build (the worker made it in its own quiet ``Guard``); a worker that dies
  (a segfault, the OOM killer) is a failure of the one item it was making ("worker
  process died (signal SIGKILL)"), whose files are removed, and the others are made
  by a new worker.
"""
from __future__ import annotations

from analysis import registry, report_pool
from analysis.failures import Guard, ItemFailure
from analysis.report_runner import MadeItem, failed_item, outputs, remove_files, run_item


# Handed out first, so that the longest figures do not start last and leave one worker
# drawing while the others wait (measured on bench/report_bench.py's workload, where
# they take 1.2, 0.8 and 0.8 s of the 6 figures' 4.3 s). Then the other figures in
# report order, then the tables (a few ms each: they fill the gaps at the end).
HEAVY_FIRST = ("act_through_training", "training_curves", "gradient_flow")


def _dispatch_order(plan) -> list[int]:
    def rank(i):
        item = plan[i]
        heavy = HEAVY_FIRST.index(item.name) if item.name in HEAVY_FIRST else len(HEAVY_FIRST)
        return (item.kind != "figure", heavy, i)
    return sorted(range(len(plan)), key=rank)


def available() -> bool:
    return report_pool.available()


def make_items(c, guard: Guard, jobs: int) -> list[MadeItem]:
    """``report_runner.make_items`` with ``jobs`` worker processes (see the module
    docstring)."""
    sections = registry.plan(c)
    plan = [item for s in sections for item in s.items]

    def run(i):  # in a worker
        return run_item(c, Guard.quiet(), plan[i])

    # The order in which failures are adopted: each section's planning failures, then
    # each of its items'.
    sequence, failed, at = [], {}, 0
    for k, s in enumerate(sections):
        sequence += [("plan", k), *range(at, at + len(s.items))]
        failed[("plan", k)] = s.failures
        at += len(s.items)
    made: dict = {}
    at = 0

    def on_result(i, item):
        nonlocal at
        if isinstance(item, report_pool.Lost):
            remove_files(outputs(c, plan[i])[1])
            item = failed_item(plan[i], ItemFailure(plan[i].name, plan[i].kind, item.reason))
        made[i] = item
        failed[i] = [item.failure] if item is not None and item.failure is not None else []
        while at < len(sequence) and sequence[at] in failed:
            guard.adopt(failed[sequence[at]])
            at += 1

    if plan:
        report_pool.run_tasks(_dispatch_order(plan), run, jobs, on_result)
    else:
        for s in sections:
            guard.adopt(s.failures)
    return [made[i] for i in range(len(plan)) if made[i] is not None]
