"""What a user sees while a sweep runs: one line per finished trial with an ETA, and a
live bar on a terminal.

Driver-side only: it is fed by Ray Tune's callbacks (per-epoch results, trial ends) and
reads the trials' fragments, never the workers' prints, so it works the same on a
cluster. No Ray here: a test feeds it events directly.

ETA: every unfinished unit (a training trial, or a probe cell) has epochs left; its
seconds per epoch are its own measured mean once it reported an epoch, else the mean
measured on the same model and depth, else the plan's estimate (``ablations.estimate``)
scaled by how far measured epochs have run from their estimates so far. The work left
is shared among the trials that run at once: ETA = max(work left / slots, the longest
single unit's time left).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from ablations.status import Status


def duration(seconds: float | None) -> str:
    """``42s``, ``6m12s``, ``1h05m``, ``2d03h``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass
class Unit:
    """One Tune trial of the sweep: its result trials, epochs and estimated epoch time."""
    label: str
    trial_ids: list[str]
    key: tuple            # (model, depth): units that should take the same time per epoch
    epochs: int
    estimate_s: float | None = None  # seconds per epoch before any measurement
    done_epochs: int = 0
    measured: list[float] = field(default_factory=list)
    started_at: float | None = None
    finished: bool = False


def _fmt_row(row: dict | None) -> str:
    """``completed in 6m12s: test acc 41.2%, train loss 1.61`` from a fragment row."""
    if row is None:
        return "failed after all retries (status=error; traceback in trials.parquet)"
    status = row.get("status", "?")
    text = status
    if status == Status.DIVERGED and row.get("diverged_epoch") is not None:
        text += f" at epoch {int(row['diverged_epoch'])}"
    secs = row.get("wall_seconds")
    if secs is None and row.get("started_at") and row.get("finished_at"):
        secs = row["finished_at"] - row["started_at"]
    if secs is not None:
        text += f" in {duration(secs)}"
    parts = []
    acc, loss = row.get("final_test_acc"), row.get("final_train_loss")
    if isinstance(acc, (int, float)) and math.isfinite(acc):
        parts.append(f"test acc {100 * acc:.1f}%")
    if isinstance(loss, (int, float)) and math.isfinite(loss):
        parts.append(f"train loss {loss:.3g}")
    probe = row.get("probe_loss")
    if isinstance(probe, (int, float)):
        parts.append(f"probe loss {probe:.3g}")
    if status == Status.ERROR:
        parts.append(f"{row.get('attempts', '?')} attempt(s); traceback in trials.parquet")
    return text + (": " + ", ".join(parts) if parts else "")


class SweepProgress:
    """Progress of one Tune run. ``epoch`` per reported epoch, ``finished`` per unit end.

    ``read_row(trial_id) -> dict | None`` reads a trial's fragment (the results folder);
    ``stream`` gets the lines; a live tqdm bar is drawn when ``live`` (default: the
    stream is a terminal), with the lines printed above it.
    """

    def __init__(self, units: list[Unit], slots: int, read_row, stream=None,
                 live: bool | None = None, clock=time.monotonic):
        self.units, self.slots, self.read_row, self.clock = units, max(1, slots), read_row, clock
        self.stream = stream or sys.stdout
        self.total = sum(len(u.trial_ids) for u in units)
        self.done = 0
        self.t0 = clock()
        self.bar = None
        if live if live is not None else getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=self.total, file=self.stream, unit="trial",
                                dynamic_ncols=True, leave=False,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} trials "
                                           "[{elapsed}{postfix}]")
            except Exception:  # the bar is a nicety: plain lines without it
                self.bar = None

    # -------------------------------------------------------------- events

    def epoch(self, index: int, epoch: int | None, seconds: float | None) -> None:
        u = self.units[index]
        if u.started_at is None:
            u.started_at = self.clock()
        if epoch is not None:
            u.done_epochs = max(u.done_epochs, int(epoch))
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            u.measured.append(float(seconds))
        self._refresh()

    def started(self, index: int) -> None:
        if self.units[index].started_at is None:
            self.units[index].started_at = self.clock()

    def finished(self, index: int) -> list[str]:
        """Mark unit ``index`` done; print and return its lines."""
        u = self.units[index]
        if u.finished:
            return []
        u.finished = True
        lines = []
        eta = self.eta()
        for tid in u.trial_ids:
            self.done += 1
            tail = f" | ETA {duration(eta)}" if self.done < self.total and eta is not None else ""
            lines.append(f"[{self.done}/{self.total}] {tid} {_fmt_row(self.read_row(tid))}{tail}")
        if len(lines) > 3:  # a probe cell of many seeds: one line, not one per seed
            rows = [self.read_row(t) for t in u.trial_ids]
            statuses = [r.get("status", "?") if r else "no result" for r in rows]
            counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
            tail = f" | ETA {duration(eta)}" if self.done < self.total and eta is not None else ""
            lines = [f"[{self.done}/{self.total}] {u.label} ({len(rows)} trials): {counts}{tail}"]
        for line in lines:
            self._write(line)
        if self.bar is not None:
            self.bar.update(len(u.trial_ids))
        self._refresh()
        return lines

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -------------------------------------------------------------- estimate

    def _epoch_seconds(self, u: Unit) -> float | None:
        if u.measured:
            return sum(u.measured) / len(u.measured)
        same = [s for v in self.units if v.key == u.key for s in v.measured]
        if same:
            return sum(same) / len(same)
        if u.estimate_s is None:
            return None
        # how far measured epochs ran from their estimates (threads, contention, data)
        ratios = [sum(v.measured) / len(v.measured) / v.estimate_s
                  for v in self.units if v.measured and v.estimate_s]
        return u.estimate_s * (sorted(ratios)[len(ratios) // 2] if ratios else 1.0)

    def eta(self) -> float | None:
        """Seconds until every unit has finished; None when some unit has no estimate."""
        left = []
        for u in self.units:
            if u.finished:
                continue
            per = self._epoch_seconds(u)
            if per is None:
                return None
            left.append(max(0, u.epochs - u.done_epochs) * per)
        if not left:
            return 0.0
        return max(sum(left) / self.slots, max(left))

    # -------------------------------------------------------------- output

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {duration(self.eta())}", refresh=True)


def for_groups(groups, spec, run_dir, per_epoch: dict, slots: int) -> SweepProgress:
    """The progress of one Tune run over ``groups`` (each a list of planned trials run as
    one Tune trial), ``slots`` at a time; ``per_epoch``: the plan's seconds per epoch by
    cell (``ablations.estimate``); finished rows are read from the fragments in ``run_dir``."""
    from . import results
    units = []
    for g in groups:
        first = g[0]
        label = first.trial_id if len(g) == 1 else f"{first.model}-{first.depth} probe"
        units.append(Unit(
            label=label, trial_ids=[t.trial_id for t in g], key=(first.model, first.depth),
            epochs=spec.train.epochs if spec.mode == "train" else 1,
            estimate_s=per_epoch.get(first.cell)))
    return SweepProgress(units, slots, lambda tid: results.read_fragment_row(run_dir, tid))

