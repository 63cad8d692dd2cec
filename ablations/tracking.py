"""Weights & Biases tracking: the only module that imports wandb.

One W&B run per trial (``TrialTracker``), grouped by sweep name, plus one
``analysis`` run per sweep for the report figures (``log_figures``). The
results folder stays the source of truth; W&B is a view onto it.

Modes (``--wandb``): ``auto`` is ``online`` when credentials are configured
(``WANDB_API_KEY`` or a netrc entry for the W&B host) *and* the server answers
within ``PROBE_TIMEOUT`` (3 s), and ``offline`` otherwise; ``resolve_mode``
returns the mode with a one-line reason for the console. ``offline`` writes
``<run_dir>/wandb/offline-run-*`` folders that ``wandb sync`` uploads later
(``sync_command``) and that ``read_offline_run`` reads back without a server;
``disabled`` imports nothing and writes nothing.

Tracking never costs a result: W&B is a view onto the results folder, so no
W&B failure may stop, retry or fail a trial or the sweep. A tracker whose
online run cannot start (no credentials, no answer from the server, or
``wandb.init`` raising or timing out) logs offline instead; one whose run
fails mid-way (a call raises) starts an offline run with the same id and
replays everything logged so far into it; one that cannot even do that stops
tracking. Each such step is one warning line on stderr naming the run; no
tracker method raises for a W&B failure, and ``log_figures`` never raises.

Design points:

* Never interactive: ``wandb.login`` is never called and an online run is only
  attempted with credentials (wandb would otherwise prompt on a terminal); a
  plain HTTP request (no credentials sent) checks first that the server answers,
  so an unreachable one costs at most ``PROBE_TIMEOUT`` per run, not
  ``init_timeout``; ``init_timeout`` (``WANDB_INIT_TIMEOUT``, default 30 s) bounds
  a server that answers but cannot start a run.
* Online runs stop waiting for uploads after ``FINISH_TIMEOUT`` (a server lost
  mid-run must not hold a trial for long); what was not uploaded stays in the
  run's folder, and the warning gives its ``wandb sync`` command.
* Quiet: ``WANDB_SILENT`` (wandb's own warnings print unless it is set),
  ``console="off"`` (no stdout/stderr capture) and ``WANDB_ERROR_REPORTING=false``,
  set (unless already set) when a tracker starts. wandb reports its own errors
  to the W&B server; during an outage that report prints multi-line retry
  messages and holds the process at exit (23 s measured with a server that never
  answers).
* Ray reuses worker processes: each tracker finishes its own run, and
  ``reinit="finish_previous"`` finishes a forgotten one (wandb's default would
  silently hand back the previous run). The wandb-core service stays up for
  the life of the process, so only the first run of a process pays its start.
* ``run.finish()`` returns before wandb-core has written a run's last records
  (up to one 32 KiB block); an offline tracker's ``finish`` waits until the
  exit record is on disk, so its folder is complete when ``finish`` returns.
* A retried or resumed trial continues the same run: its id is a hash of
  (group, name), with ``resume="allow"``.
* wandb 0.31 ships no Python reader for its ``run-<id>.wandb`` log; the format
  is a LevelDB-style log (7-byte file header ``:W&B`` + magic 0xBEE1 + version
  0, then 32 KiB blocks of records with a CRC32/length/type header, records
  split FIRST/MIDDLE/LAST across blocks) of ``wandb_internal_pb2.Record``
  protobufs, read here by ``_log_records``.
"""
from __future__ import annotations

import atexit
import configparser
import hashlib
import json
import netrc
import numbers
import os
import shlex
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .results import brief, warn

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
DEFAULT_PROJECT = "resablate"
PROBE_TIMEOUT = 3.0       # seconds for the server to answer before a run goes offline
INIT_TIMEOUT = 30.0       # seconds; WANDB_INIT_TIMEOUT overrides
FINISH_TIMEOUT = 120.0    # online: stop waiting for uploads (the data stays syncable)
FLUSH_TIMEOUT = 10.0      # offline: wait for wandb-core to write the run's last records
QUIET_ENV = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_ERROR_REPORTING": "false"}

# ---------------------------------------------------------------- credentials and modes


def _base_url() -> str:
    """The W&B server: ``WANDB_BASE_URL``, else ``wandb login --host``'s settings file."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.expanduser("~/.config/wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(os.path.join(config_dir, "settings"))
        return parser.get("default", "base_url", fallback=None) or DEFAULT_HOST
    except configparser.Error:
        return DEFAULT_HOST


def _netrc_path() -> Path:
    """The netrc file wandb reads: ``NETRC``, else ``~/.netrc``, else ``~/_netrc``."""
    if path := os.environ.get("NETRC"):
        return Path(path).expanduser()
    home = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not home.exists() and windows.exists() else home


def _netrc_has_key(url: str) -> bool:
    """An entry with a password for the host of ``url`` (not the netrc ``default``)."""
    parts = urlsplit(url)
    try:
        hosts = netrc.netrc(str(_netrc_path())).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    entry = hosts.get(parts.netloc) or hosts.get(parts.hostname or "")
    return bool(entry and entry[2])


def has_credentials() -> bool:
    """True when W&B credentials are configured; never prompts, logs in or prints a key.

    ``WANDB_API_KEY``, an identity token file (``WANDB_IDENTITY_TOKEN_FILE``, that
    exists) or a netrc entry for the W&B host (``WANDB_BASE_URL`` or api.wandb.ai).
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    token = os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token and os.path.isfile(token):
        return True
    return _netrc_has_key(_base_url())


def server_problem(url: str | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the W&B server (``url``, default ``_base_url()``) answers an HTTP request
    within ``timeout`` seconds, else why not, in a few words.

    Any HTTP status counts as an answer (the request carries no credentials, so 401 or
    404 is normal), and so does a certificate this process does not trust: the server
    is there, and whether wandb trusts it is for its own start to find out. The request
    runs in a thread joined with ``timeout``: the socket timeout alone does not bound
    a name lookup, which can hang far longer offline.
    """
    url = url or _base_url()
    outcome: list = []

    def attempt():
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError as e:  # an answer, whatever it says
            e.close()
            outcome.append(None)
        except Exception as e:
            cert = isinstance(getattr(e, "reason", e), ssl.SSLCertVerificationError)
            outcome.append(None if cert else e)

    thread = threading.Thread(target=attempt, name="wandb-server-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from {url} within {timeout:g} s"
    if outcome[0] is None:
        return None
    cause = getattr(outcome[0], "reason", outcome[0])  # URLError wraps the socket error
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return f"no answer from {url} within {timeout:g} s"
    what = cause.strerror if isinstance(cause, OSError) and cause.strerror else brief(cause)
    return f"no answer from {url} ({what})"


class Resolution(NamedTuple):
    """What ``--wandb`` resolved to: ``mode`` (online, offline or disabled) and a
    one-line ``reason`` for the console. Never contains a key."""
    mode: str
    reason: str


def _sync_hint(run_dir) -> str:
    if run_dir is None:
        return "upload later with `wandb sync`"
    return f"upload later with: {_sync_of(run_dir)}"


def _sync_of(run_dir) -> str:
    """The ``wandb sync`` command for the offline runs of a results folder."""
    return f"wandb sync {shlex.quote(str(Path(run_dir) / 'wandb'))}/offline-run-*"


def resolve_mode(mode: str, run_dir=None, timeout: float = PROBE_TIMEOUT) -> Resolution:
    """``auto`` -> ``online`` with credentials and a server that answers within
    ``timeout`` seconds, else ``offline``; ``online`` without credentials -> ``offline``
    (tracking degrades, it does not stop a sweep); other modes unchanged.

    ``run_dir``: the results folder, to name the ``wandb sync`` command in the reason.
    """
    if mode not in MODES:
        raise ValueError(f"unknown W&B mode {mode!r} (choose from {', '.join(MODES)})")
    later = _sync_hint(run_dir)
    no_key = "no W&B credentials (set WANDB_API_KEY or run `wandb login`)"
    if mode == "disabled":
        return Resolution("disabled", "--wandb disabled: nothing is tracked")
    if mode == "offline":
        return Resolution("offline", f"--wandb offline; {later}")
    if not has_credentials():
        return Resolution("offline", ("--wandb online but " if mode == "online" else "")
                          + f"{no_key}; {later}")
    if mode == "online":
        return Resolution("online", "--wandb online; a trial whose run cannot start or "
                          "fails logs offline instead")
    problem = server_problem(_base_url(), timeout)
    if problem:
        return Resolution("offline", f"credentials found, but {problem}; {later}")
    return Resolution("online", f"credentials found and {_base_url()} answers")


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

    From plain rows: ``Table(dataframe=...)`` reads cell by cell, 4x slower
    (10,000 rows: about 5 s against 1.3 s).
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
                # starts a new one (about a second)
                _teardown_quietly()
        warn(f"W&B: {self._name}: {problem}; logging offline instead "
             f"({_sync_hint(self._run_dir)})")
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
                 f"in an offline run with the same id ({_sync_hint(self._run_dir)})")
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
            _wait_until_written(self._path)
        if failed:
            # The process is likely about to die (Ray kills a failed trial's actor):
            # close the wandb-core connection now, not in an atexit hook that would
            # print a ConnectionResetError traceback once the service is gone.
            _teardown_quietly()

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish({"status": "error"} if exc_type else {}, failed=exc_type is not None)
        return False


def _plain(value):
    """Numbers (numpy scalars included) as Python numbers, other values as they are."""
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
    return _sync_of(run_dir) if offline_run_dirs(run_dir) else None


_BLOCK, _HEADER = 32768, 7                  # LevelDB log: block size, record header size
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_records(path) -> list[bytes]:
    """The records of a ``.wandb`` log; a truncated tail (a killed writer) is dropped."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER].ljust(_HEADER, b"\0"))
    if (ident, magic) != (b":W&B", 0xBEE1) or version != 0:
        raise ValueError(f"{path}: not a version-0 W&B log ({ident!r}, {magic:#x}, {version})")
    records, parts, pos = [], [], _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:     # block trailer: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:           # preallocated zeros: skip the block
            pos += -pos % _BLOCK
            continue
        if len(chunk) < length:
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos - length - _HEADER}")
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        elif kind in (_MIDDLE, _LAST):
            parts.append(chunk)
        if kind in (_FULL, _LAST):
            records.append(b"".join(parts))
    return records


def _records(run_folder):
    """(record type, ``wandb_internal_pb2.Record``) of a run folder's ``run-<id>.wandb``."""
    from wandb.proto import wandb_internal_pb2 as pb
    logs = sorted(Path(run_folder).glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_folder}: no run-*.wandb log (not a W&B run folder?)")
    for raw in _log_records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        yield record.WhichOneof("record_type"), record


def _wait_until_written(run_folder, timeout: float = FLUSH_TIMEOUT) -> None:
    """Wait for the exit record, the last one, to be on disk.

    ``run.finish()`` returns before wandb-core has closed the run's log (the
    service is told to close the stream and nobody waits): the last block,
    up to 32 KiB of history, summary and the exit record, can lag behind.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(kind == "exit" for kind, _ in _records(run_folder)):
                return
        except (OSError, ValueError):  # not created yet, or caught mid-write
            pass
        time.sleep(0.02)
    warn(f"W&B run {run_folder} not complete on disk after {timeout:.0f} s; "
         "wandb-core is still writing it")


def _apply(target: dict, item, value) -> None:
    """Set ``item``'s key (``key`` or ``nested_key`` path) in ``target``."""
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _remove(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.get(k, {})
    target.pop(keys[-1], None)


def _update(target: dict, updates, removes) -> None:
    for item in updates:
        _apply(target, item, json.loads(item.value_json) if item.value_json else None)
    for item in removes:
        _remove(target, item)


def read_offline_run(path) -> dict:
    """An offline run folder read back without a server.

    Returns ``{"id", "name", "group", "project", "job_type", "config", "history",
    "summary", "exit_code"}``: config values as plain JSON values (wandb's own
    ``_wandb`` entry dropped), history as one dict per logged step (with
    ``_step``, ``_runtime``, ``_timestamp``; media as their JSON descriptors),
    summary with every update applied in order, ``exit_code`` None when the run
    never finished (a killed process).
    """
    out = {"id": None, "name": None, "group": None, "project": None, "job_type": None,
           "config": {}, "history": [], "summary": {}, "exit_code": None}
    for kind, record in _records(path):
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, name=r.display_name, group=r.run_group,
                       project=r.project, job_type=r.job_type)
            _update(out["config"], r.config.update, r.config.remove)
        elif kind == "config":
            _update(out["config"], record.config.update, record.config.remove)
        elif kind == "history":
            row: dict = {}
            _update(row, record.history.item, [])
            out["history"].append(row)
        elif kind == "summary":
            _update(out["summary"], record.summary.update, record.summary.remove)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    out["config"].pop("_wandb", None)
    return out
