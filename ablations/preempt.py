"""Preemption: a worker told to stop (SIGTERM: a spot node's termination notice, a
Kubernetes pod eviction) saves its training trial mid-epoch and hands it back, at the
cost of nothing but the seconds it takes.

* ``install`` puts a SIGTERM handler in the process (it must run on the main thread:
  ``WorkerSetup`` does it as Ray Tune builds the trial's actor, ``ablations.train``
  for a trial trained in the calling process). The handler only sets a flag; the
  trial (``ablations.train``) checks it after every optimizer step, writes a
  mid-epoch checkpoint (model, optimizer, schedule, every RNG state and the
  data-loader position: the epoch's permutation, the batch reached and the epoch's
  running sums; ``ablations.checkpoint``), un-counts its attempt (``hand_back``) and
  raises ``Preempted``. ``ablations.runner`` reports that as a "preempted" result and
  runs the trial again in a next round, not as a retry: ``--max-failures`` and the
  trial's ``attempts`` are untouched. The resumed trial is bit-identical to one never
  stopped.
* The flag stays set: every later trial handed to this worker (its node is going
  away) is handed back before it starts. The first SIGTERM restores the handler that
  was there before (Ray's: exit), so a second one ends the process at once, as does a
  SIGTERM while no training trial runs here (``armed``).
* ``--checkpoint-every MINUTES`` (``due``): a trial also checkpoints mid-epoch when
  that long has passed since its last checkpoint, so a node lost without notice
  (kill -9) costs at most that much progress.

No Ray import here: ``WorkerSetup`` is a plain mixin that ``ablations.runner`` hands
to Tune (``__mixins__`` of the trainable).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from . import checkpoint, files, results

_requested = threading.Event()    # SIGTERM received: hand every trial back
_armed: list[str] = []            # the training trial(s) running in this process
_previous = None                  # the SIGTERM handler install() replaced
_installed = False


class Preempted(Exception):
    """A trial handed back after SIGTERM: checkpointed (or not started), its attempt
    not counted; to be run again elsewhere, not retried as a failure."""

    def __init__(self, trial_id: str, where: str):
        super().__init__(f"{trial_id}: preempted (SIGTERM) {where}")
        self.trial_id = trial_id


def install() -> bool:
    """Install the SIGTERM handler once per process; False (nothing done) when not
    called on the main thread, where Python cannot install signal handlers."""
    global _previous, _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    _previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _installed = True
    return True


def uninstall() -> None:
    """Put back the handler ``install`` replaced, clear the flag (tests)."""
    global _installed
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
        _installed = False
    _requested.clear()


def _on_sigterm(signum, frame) -> None:
    _requested.set()
    if _installed and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        # a second SIGTERM ends the process as it did before
        signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
    if not _armed:  # no training trial to save: stop as before
        _chain(signum, frame)
        return
    print(f"worker pid {os.getpid()}: SIGTERM: checkpointing {', '.join(_armed)} after "
          "its current step, then handing it back", file=sys.stderr, flush=True)


def _chain(signum, frame) -> None:
    prev = _previous
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:  # SIG_DFL (or unknown): terminate as the default does
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def requested() -> bool:
    """Whether this process got SIGTERM (its trials are to be handed back)."""
    return _requested.is_set()


def request() -> None:
    """Set the flag as SIGTERM does (tests; a caller that learns of a preemption
    another way)."""
    _requested.set()


class armed:
    """``with armed(trial_id):`` a training trial runs in this process: SIGTERM
    checkpoints it instead of ending the process."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id

    def __enter__(self):
        _armed.append(self.trial_id)
        return self

    def __exit__(self, *exc):
        _armed.remove(self.trial_id)
        return False


def due(run, now: float | None = None) -> bool:
    """Whether the training ``run`` (``ablations.train.Training``) should write a
    mid-epoch checkpoint after this step: SIGTERM came, or ``run.checkpoint_every_s``
    seconds passed since its last checkpoint (0: at epoch ends only)."""
    if run.tuning:
        return False
    if _requested.is_set():
        return True
    every = run.checkpoint_every_s
    return bool(every) and (time.monotonic() if now is None else now) - run.saved_at >= every


def after_step(run, position) -> None:
    """After each optimizer step of training ``run``: when ``due``, write a mid-epoch
    checkpoint at ``position()`` (a ``checkpoint.Position``); after SIGTERM, then hand
    the trial back (``Preempted``)."""
    stall(run)
    if not due(run):
        return
    checkpoint.write(run, (pos := position()).epoch - 1, pos)
    if _requested.is_set():
        hand_back(run, f"in epoch {pos.epoch} after step {pos.step}")


def stall(run) -> None:
    """Fault injection for tests: ``RESABLATE_FAULT=stall:<trial_id>:<step>`` makes that
    trial, once it has taken ``step`` steps, write its pid to the file named by
    ``RESABLATE_FAULT_PIDFILE`` and wait (60 s at most) for SIGTERM; once only (no
    wait while that file exists)."""
    kind, _, rest = os.environ.get("RESABLATE_FAULT", "").partition(":")
    if kind != "stall":
        return
    target, _, at = rest.partition(":")
    pidfile = os.environ.get("RESABLATE_FAULT_PIDFILE", "")
    if target != run.trial.trial_id or run.step != int(at or 1) or not pidfile \
            or os.path.exists(pidfile):
        return
    files.write_text(pidfile, str(os.getpid()))
    _requested.wait(60)


def hand_back(run, where: str) -> None:
    """After the trial's checkpoint: un-count this attempt (``attempts`` as before it
    started) and raise ``Preempted``."""
    uncount_attempt(run.run_dir, run.trial.trial_id)
    raise Preempted(run.trial.trial_id, where)


def uncount_attempt(run_dir, trial_id: str) -> None:
    """Take back the attempt ``results.count_attempt`` recorded as the trial started."""
    n = results.read_attempts(run_dir, trial_id)
    files.write_text(results.trial_dir(run_dir, trial_id) / "attempts", str(max(0, n - 1)))


class WorkerSetup:
    """Mixin for Ray Tune's function trainable: installs the SIGTERM handler as the
    trial's actor is set up (on the worker's main thread; the trial function itself
    runs on another thread, where no handler can be installed)."""

    def setup(self, config, *args, **kwargs):
        install()
        return super().setup(config, *args, **kwargs)
