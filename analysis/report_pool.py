"""Run numbered tasks in forked worker processes, and survive a worker that dies.

``analysis.report`` draws its figures and makes its tables here when it builds
with more than one job: most of a report's time is matplotlib laying out and
rendering figures, one core at a time, so N workers take about 1/N of it.

Workers are forked (``multiprocessing`` "fork"), so a task is only its number:
the closures, DataFrames and monkeypatches of the parent are already in the
child, nothing is pickled on the way in and nothing is imported again. The
parent hands out one task at a time, so a slow figure does not hold back the
rest. Results come back pickled.

A task that raises is the caller's business (``run`` should turn it into a
value). A worker that dies (a segfault in a C extension, the OOM killer) costs
the one task it was running: that task comes back as ``Lost(reason)`` and a new
worker takes over the remaining ones. Where "fork" does not exist (Windows)
``available()`` is False and the caller runs the tasks itself.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import wait


@dataclass(frozen=True)
class Lost:
    """A task whose worker died, or whose result could not be sent back."""
    reason: str


def available() -> bool:
    return "fork" in mp.get_all_start_methods()


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker process died (signal {signal.Signals(-code).name})"
        except ValueError:
            return f"worker process died (signal {-code})"
    return f"worker process died (exit code {code})"


def _serve(conn, run) -> None:
    """A worker: run each task number it is sent, send ``(i, result)`` back; stop on None."""
    while True:
        i = conn.recv()
        if i is None:
            return
        try:
            result = run(i)
        except Exception as exc:  # noqa: BLE001  run should not raise; never lose the worker
            result = Lost(f"the worker raised {type(exc).__name__}: {exc}")
        try:
            conn.send((i, result))
        except Exception as exc:  # noqa: BLE001  e.g. a result that cannot be pickled
            conn.send((i, Lost(f"its result could not be sent back: "
                               f"{type(exc).__name__}: {exc}")))


# A task that has not answered after this long is lost and its worker killed: a forked
# child can deadlock on a lock some thread of the parent held at the fork (a report
# built in a process that ran other threads), and a report must end.
TASK_TIMEOUT_S = 600.0


class _Worker:
    def __init__(self, ctx, run):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, run), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None
        self.started = 0.0
        self.timed_out = False

    def give(self, task: int | None) -> None:
        """Send a task (None: stop). A worker that has just died cannot take it; its
        sentinel reports it, and ``task`` as lost, on the next wait."""
        self.task = task
        self.started = time.monotonic()
        try:
            self.conn.send(task)
        except OSError:
            pass


def run_tasks(order: Iterable[int], run: Callable[[int], object], jobs: int,
              on_result: Callable[[int, object], None],
              task_timeout: float | None = None) -> None:
    """``on_result(i, run(i))`` for every ``i`` in ``order``, ``run`` in up to ``jobs``
    forked workers; ``on_result(i, Lost(...))`` for a task whose worker died.

    ``on_result`` runs in the parent as each result arrives (in completion
    order). ``KeyboardInterrupt`` stops every worker. A task running longer than
    ``task_timeout`` seconds (default ``TASK_TIMEOUT_S``) is lost, its worker killed.
    """
    limit = TASK_TIMEOUT_S if task_timeout is None else task_timeout
    todo = list(order)[::-1]  # pop() from the end: the first task first
    ctx = mp.get_context("fork")
    workers: list[_Worker] = []
    try:
        for _ in range(min(jobs, len(todo))):
            workers.append(_Worker(ctx, run))
        for w in workers:
            w.give(todo.pop())
        while any(w.task is not None for w in workers):
            busy = [w for w in workers if w.task is not None]
            left = min(w.started for w in busy) + limit - time.monotonic()
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                         timeout=max(0.0, left))
            for w in busy:
                if w.conn not in ready and w.proc.sentinel not in ready:
                    if time.monotonic() - w.started < limit:
                        continue
                    w.proc.kill()  # hung: its task is lost like a dead worker's
                    w.timed_out = True
                task, w.task = w.task, None
                try:
                    if w.conn not in ready:
                        raise EOFError
                    i, result = w.conn.recv()
                except (EOFError, OSError):  # died before or while answering
                    w.proc.join()
                    on_result(task, Lost(f"worker process timed out after {limit:g} s"
                                         if w.timed_out else _died(w.proc.exitcode)))
                    workers.remove(w)
                    if todo:
                        w = _Worker(ctx, run)
                        workers.append(w)
                    else:
                        continue
                else:
                    on_result(i, result)
                if todo:
                    w.give(todo.pop())
    finally:
        for w in workers:
            if w.task is None:
                w.give(None)
                w.task = None
        for w in workers:
            w.proc.join(timeout=5 if w.task is None else 0)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join()
            w.conn.close()
