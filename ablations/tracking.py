"""Weights & Biases tracking: the only module that starts W&B runs.

One W&B run per trial (``TrialTracker``), grouped by sweep name, plus one
``analysis`` run per sweep for the report figures (``log_figures``). The
results folder stays the source of truth; W&B is a view onto it.

Modes (``--wandb``, resolved by ``ablations.wandb_mode.resolve_mode``): ``online``,
``offline`` (``<run_dir>/wandb/offline-run-*`` folders that ``wandb sync`` uploads
later, ``sync_command``, and that ``ablations.wandb_log.read_offline_run`` reads
back without a server) and ``disabled`` (imports nothing, writes nothing).

Tracking never costs a result: no W&B failure may stop, retry or fail a trial or
the sweep. A tracker whose online run cannot start (no credentials, no answer from
the server, or ``wandb.init`` raising or timing out) logs offline instead; one
whose run fails mid-way (a call raises) starts an offline run with the same id and
replays everything logged so far into it; one that cannot even do that stops
tracking. Each such step is one warning line on stderr naming the run; no tracker
method raises for a W&B failure, and ``log_figures`` never raises.

Design points:

* ``init_timeout`` (``WANDB_INIT_TIMEOUT``, default 30 s) bounds a server that
  answers but cannot start a run; an unreachable one is caught first, within
  ``wandb_mode.PROBE_TIMEOUT``.
* Online runs stop waiting for uploads after ``FINISH_TIMEOUT`` (a server lost
  mid-run must not hold a trial for long); what was not uploaded stays in the
  run's folder, and the warning gives its ``wandb sync`` command.
* Quiet: ``WANDB_SILENT`` (wandb's own warnings print unless it is set),
  ``console="off"`` (no stdout/stderr capture) and ``WANDB_ERROR_REPORTING=false``,
  set (unless already set) when a tracker starts. wandb reports its own errors
  to the W&B server; during an outage that report prints multi-line retry
  messages and holds the process at exit (see bench/README.md).
* Ray reuses worker processes: each tracker finishes its own run, and
  ``reinit="finish_previous"`` finishes a forgotten one (wandb's default would
  silently hand back the previous run). The wandb-core service stays up for
  the life of the process, so only the first run of a process pays its start.
* ``run.finish()`` returns before wandb-core has written a run's last records
  (up to one 32 KiB block); an offline tracker's ``finish`` waits until the
  exit record is on disk (``wandb_log.wait_for_exit_record``), so its folder is
  complete when ``finish`` returns.
* A retried or resumed trial continues the same run: its id is a hash of
  (group, name), with ``resume="allow"``.
* On a worker staged for an object-store ``--storage`` (``ablations.storage.stage``),
  an offline run's folder is put to ``URI/NAME/wandb/`` when it finishes (completed,
  failed or preempted), where the driver pulls it from.
"""
from __future__ import annotations

import atexit
import hashlib
import numbers
import os
from pathlib import Path

from ablations.status import Status
from . import storage
from .results import brief, warn
from .wandb_log import wait_for_exit_record
from .wandb_mode import (MODES, has_credentials, resolve_mode, server_problem,
                         sync_command_for, sync_hint)

DEFAULT_PROJECT = "resablate"
INIT_TIMEOUT = 30.0       # seconds; WANDB_INIT_TIMEOUT overrides
FINISH_TIMEOUT = 120.0    # online: stop waiting for uploads (the data stays syncable)
FLUSH_TIMEOUT = 10.0      # offline: wait for wandb-core to write the run's last records
QUIET_ENV = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_ERROR_REPORTING": "false"}


def run_id(group: str, name: str) -> str:
    """A stable, valid W&B run id for (group, name): 16 hex digits of a SHA-256."""
    return hashlib.sha256(f"{group}\0{name}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one run per trial


def _start_run(mode: str, run_dir, group: str, name: str, config: dict, job_type: str):
    """``wandb.init`` for a resolved, enabled mode; failures become RuntimeError."""
    if mode == "online" and not has_credentials():
        raise RuntimeError("W&B mode 'online' but no credentials: set WANDB_API_KEY or run "
                           "`wandb login` (or use --wandb offline / auto)")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import wandb
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT))
    settings = wandb.Settings(silent=True, console="off", init_timeout=timeout,
                              reinit="finish_previous",
                              finish_timeout=FINISH_TIMEOUT if mode == "online" else 0.0,
                              finish_timeout_raises=mode == "online")
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
                         entity=os.environ.get("WANDB_ENTITY") or None, group=group,
                         name=name, id=run_id(group, name), resume="allow", config=config,
                         dir=str(run_dir), mode=mode, job_type=job_type, settings=settings)
    except Exception as e:
        raise RuntimeError(f"W&B {mode} run {group}/{name} could not start: "
                           f"{type(e).__name__}: {e}") from e
    # atexit runs the newest hook first: this one now precedes wandb's own.
    atexit.unregister(_teardown_quietly)
    atexit.register(_teardown_quietly)
    return run


def _teardown_quietly() -> None:
    """At process exit, close the wandb-core connection before wandb's own exit hook does.

    Ray ends a trial actor's worker (a pruned tuning sample, the end of a Tuner) by
    killing the worker's child processes, wandb-core among them, before Python's exit
    hooks run; wandb's hook then prints a ConnectionResetError traceback for a run that
    was already finished and written. Tearing down here unregisters that hook, and the
    lost connection is expected at this point. So is wandb-core's exit status when Ray
    killed it: ``wandb.teardown`` turns it into ``SystemExit(-9)``, which in an exit
    hook changes nothing but prints a traceback.
    """
    try:
        import wandb
        wandb.teardown()
    except (Exception, SystemExit):
        pass


def _number(value) -> int | float | None:
    """A plain int/float for a real number (NaN and inf included), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _fit_rows(df, limit: int):
    """At most ``limit`` rows: keep evenly spaced ``step`` values (first and last
    included) with all their rows, then cut; wandb would silently truncate."""
    if len(df) <= limit:
        return df
    if "step" in df.columns:
        import numpy as np
        steps = np.sort(df["step"].unique())
        keep = max(1, int(limit / (len(df) / len(steps))))
        picked = steps[np.unique(np.linspace(0, len(steps) - 1, keep).round().astype(int))]
        df = df[df["step"].isin(picked)]
    return df.iloc[:limit]


def _table(df):
    """A ``wandb.Table`` of a frame, typed per column where the values allow it.

    From plain rows: ``Table(dataframe=...)`` reads cell by cell, several times
    slower (bench/README.md).
    """
    import wandb
    columns, rows = [str(c) for c in df.columns], df.to_dict("split")["data"]
    try:
        return wandb.Table(columns=columns, data=rows)
    except TypeError:  # a column mixing types, e.g. numbers and strings
        return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)


class TrialTracker:
    """One W&B run: per-epoch metrics, a per-layer statistics table, a final summary.

    ``mode`` is resolved (online/offline/disabled; ``auto`` is resolved here too).
    Disabled: every method is a no-op, nothing is imported or written. Usable as a
    context manager: an exception leaving the block finishes the run as failed.
    One run at a time per process: starting a tracker finishes one still open as
    failed with ``status="abandoned"`` (its later calls do nothing).

    No method raises for a W&B failure (see the module docstring): an online run
    that cannot start becomes an offline one, a run that fails mid-way is replaced
    by an offline run with everything logged so far; ``mode`` is the mode in effect
    (``disabled`` when not even an offline run works).
    """

    _open: TrialTracker | None = None  # the process's unfinished tracker, if any

    def __init__(self, mode: str, run_dir: str, group: str, name: str, config: dict,
                 job_type: str = "trial"):
        if mode not in MODES:
            raise ValueError(f"unknown W&B mode {mode!r} (choose from {', '.join(MODES)})")
        self.mode = resolve_mode(mode).mode if mode == "auto" else mode
        self._run, self._url, self._path = None, None, None
        self._run_dir, self._name = str(run_dir), name
        self._init = {"group": group, "name": name, "config": config, "job_type": job_type}
        self._ops: list = []        # every call on the run so far, to replay into a new one
        self._replaced = False      # a failed run was replaced by an offline one already
        if self.mode == "disabled":
            return
        if TrialTracker._open is not None:
            TrialTracker._open.finish({"status": "abandoned"}, failed=True)
        if self.mode == "online":
            self._start_online()
        if self._run is None and self.mode == "offline":
            self._start_offline()
        if self._run is not None:
            TrialTracker._open = self

    def _start_online(self) -> None:
        problem = None if has_credentials() else "no W&B credentials"
        problem = problem or server_problem()
        if problem is None:
            try:
                self._run = _start_run("online", self._run_dir, **self._init)
                self._url, self._path = self._run.url, str(self._run.settings.sync_dir)
                return
            except Exception as e:
                problem = f"its online run could not start ({brief(e.__cause__ or e)})"
                # wandb-core keeps the failed run's id "in use" (an offline run with the
                # same id is refused) until its service is shut down; the next init
                # starts a new one
                _teardown_quietly()
        warn(f"W&B: {self._name}: {problem}; logging offline instead "
             f"({sync_hint(self._run_dir)})")
        self.mode = "offline"

    def _start_offline(self, replay: bool = False) -> None:
        try:
            self._run = _start_run("offline", self._run_dir, **self._init)
            self._path = str(self._run.settings.sync_dir)
            for op in self._ops if replay else ():
                op(self._run)
        except Exception as e:
            warn(f"W&B: {self._name}: no offline run either ({brief(e)}); not tracked")
            self._drop(self._run)
            self._run, self.mode = None, "disabled"

    def _do(self, op) -> None:
        """``op(run)``, kept for a replay; a W&B failure replaces the run (once)."""
        if self._run is None:
            return
        self._ops.append(op)
        try:
            op(self._run)
        except Exception as e:
            broken, self._run, self._url = self._run, None, None
            self._drop(broken)
            if self._replaced:
                warn(f"W&B: {self._name}: its {self.mode} run failed again ({brief(e)}); "
                     "not tracked from here")
                self.mode = "disabled"
                return
            self._replaced = True
            warn(f"W&B: {self._name}: its {self.mode} run failed ({brief(e)}); continuing "
                 f"in an offline run with the same id ({sync_hint(self._run_dir)})")
            self.mode = "offline"
            self._start_offline(replay=True)

    @staticmethod
    def _drop(run) -> None:
        """Finish a failed run as failed (uploads bounded by ``FINISH_TIMEOUT``); when even
        that fails, its service is likely gone: shut it down so a new run can start."""
        if run is None:
            return
        try:
            run.finish(exit_code=1)
        except (Exception, SystemExit):
            _teardown_quietly()

    @property
    def url(self) -> str | None:
        """The run's page when online, else None."""
        return self._url

    @property
    def run_path(self) -> str | None:
        """The run's local folder (``<run_dir>/wandb/offline-run-...``), None when disabled."""
        return self._path

    @property
    def kept_at(self) -> str | None:
        """Where the run's folder is kept: ``run_path``, or its place in the object store
        on a staged worker (``storage.stored_as``)."""
        return self._path and storage.stored_as(self._path)

    def log_epoch(self, row: dict) -> None:
        """The numeric values of ``row`` at ``step = row["epoch"]``; other values skipped.

        NaN and inf are logged as such (W&B stores them): a diverged loss stays visible.
        """
        if self._run is None:
            return
        metrics = {k: v for k, v in ((k, _number(v)) for k, v in row.items()) if v is not None}
        step = int(row["epoch"])
        self._do(lambda run: run.log(metrics, step=step))

    def log_layers(self, df) -> None:
        """A tidy per-layer statistics frame as the table ``layers`` (at the current step).

        Tables above wandb's row limit (10,000) keep evenly spaced sampling steps; the
        summary gets ``layers_rows`` (all) and ``layers_rows_logged``.
        """
        if self._run is None or df is None or len(df) == 0:
            return
        try:
            import wandb
            logged = _fit_rows(df, wandb.Table.MAX_ROWS)
            table = _table(logged)
        except Exception as e:  # the frame, not the server: skip the table, keep the run
            warn(f"W&B: {self._name}: layers table not logged ({brief(e)})")
            return
        counts = {"layers_rows": len(df), "layers_rows_logged": len(logged)}
        self._do(lambda run: run.log({"layers": table}))
        self._do(lambda run: run.summary.update(counts))

    def _log(self, values: dict) -> None:
        self._do(lambda run: run.log(values))

    def finish(self, summary: dict, failed: bool = False) -> None:
        """Summary values (``status`` included), then finish; later calls do nothing."""
        if TrialTracker._open is self:
            TrialTracker._open = None
        if self._run is None:
            return
        values = {k: _plain(v) for k, v in summary.items()}
        if failed:
            # A trial ending by an exception, often because Ray is ending its actor (a
            # pruned tuning sample at the end of its Tuner) and kills wandb-core (the
            # actor's child process) meanwhile: a lost connection here is expected, and
            # no replacement run is started for a run that is over. What was logged is
            # on disk; the trial's own end is what the user needs to hear.
            try:
                self._run.summary.update(values)
            except Exception:
                pass
        else:
            self._do(lambda run: run.summary.update(values))
        run, self._run, self._ops = self._run, None, []
        if run is None:  # the summary's failure left no run
            return
        try:
            run.finish(exit_code=1 if failed else 0)
        except TimeoutError:
            warn(f"W&B: {self._name}: uploads not done after {FINISH_TIMEOUT:g} s; the run "
                 f"stays in {self._path}; upload later with: wandb sync {self._path}")
        except Exception as e:
            # A trial that ends by an exception (a pruned tuning sample that Tune stops, a
            # crash that is reported anyway) often interrupts wandb mid-finish; what was
            # logged is on disk and the trial's own end is what the user needs to hear.
            if not failed:
                warn(f"W&B: {self._name}: finishing its run failed ({brief(e)}); what was "
                     f"logged is in {self._path}")
        if self.mode == "offline":
            wait_for_exit_record(self._path, FLUSH_TIMEOUT)
            self._publish()
        if failed:
            # The process is likely about to die (Ray kills a failed trial's actor):
            # close the wandb-core connection now, not in an atexit hook that would
            # print a ConnectionResetError traceback once the service is gone.
            _teardown_quietly()

    def _publish(self) -> None:
        """A staged worker's offline run to the object store (``storage.publish_folder``):
        a fault is one warning, the run stays on this node."""
        try:
            storage.publish_folder(self._path)
        except Exception as e:
            warn(f"W&B: {self._name}: its offline run was not copied to the store "
                 f"({brief(e)}); it stays in {self._path}")

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish({"status": Status.ERROR} if exc_type else {}, failed=exc_type is not None)
        return False


def _plain(value):
    """Numbers (numpy scalars included) as Python numbers, a string subclass (a
    ``Status``) as a plain string (W&B would store an enum by its member name), other
    values as they are."""
    if isinstance(value, str):
        return str.__str__(value)
    number = _number(value)
    return value if number is None else number


def log_figures(mode: str, run_dir: str, group: str, paths: list[str],
                summary: dict | None = None) -> str | None:
    """One ``analysis`` run in the group with each PNG as an image under its file stem;
    returns the run's folder, or None when disabled or failed.

    Never raises: the figures are in the results folder whatever W&B does, so a
    failure here is one warning line, not the end of a finished sweep.
    """
    try:
        tracker = TrialTracker(mode, run_dir, group, f"{group}-figures", {"sweep": group},
                               job_type="analysis")
        if tracker.mode == "disabled":
            return None
        with tracker:
            import wandb
            tracker._log({Path(p).stem: wandb.Image(str(p)) for p in paths})
            tracker.finish({"figures": len(paths), **(summary or {})})
        return tracker.run_path if tracker.mode != "disabled" else None
    except Exception as e:
        warn(f"W&B: {group}-figures: figures not logged ({brief(e)}); they are in "
             f"{Path(run_dir) / 'figures'}")
        return None


# ---------------------------------------------------------------- offline runs


def offline_run_dirs(run_dir) -> list[Path]:
    """``<run_dir>/wandb/offline-run-*`` folders that hold a run log, sorted (by start
    time, then id). A folder without a ``run-*.wandb`` log is an attempt whose process
    was killed (Ray ends a failed trial's actor) before wandb wrote anything: nothing in
    it can be read or synced, and the retried attempt has its own folder."""
    return sorted(p for p in (Path(run_dir) / "wandb").glob("offline-run-*")
                  if p.is_dir() and any(p.glob("run-*.wandb")))


def sync_command(run_dir) -> str | None:
    """The command that uploads this sweep's offline runs, or None when there are none."""
    return sync_command_for(run_dir) if offline_run_dirs(run_dir) else None
