"""Weights & Biases tracking: the only module that imports wandb.

One W&B run per trial (``TrialTracker``), grouped by sweep name, plus one
``analysis`` run per sweep for the report figures (``log_figures``). The
results folder stays the source of truth; W&B is a view onto it.

Modes (``--wandb``): ``auto`` is ``online`` when credentials are configured
(``WANDB_API_KEY`` or a netrc entry for the W&B host) and ``offline``
otherwise; ``offline`` writes ``<run_dir>/wandb/offline-run-*`` folders that
``wandb sync`` uploads later (``sync_command``) and that ``read_offline_run``
reads back without a server; ``disabled`` imports nothing and writes nothing.

Design points:

* Never interactive: ``online`` without credentials is an error before wandb
  is touched (wandb would otherwise prompt on a terminal), ``wandb.login`` is
  never called, and ``init_timeout`` bounds a start against an unreachable
  server (``WANDB_INIT_TIMEOUT``, default 60 s); any wandb failure to start
  becomes a ``RuntimeError`` naming the cause, the caller decides.
* Quiet: ``WANDB_SILENT`` (wandb's own warnings print unless it is set) and
  ``console="off"`` (no stdout/stderr capture), set when a tracker starts.
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
import struct
import time
import warnings
import zlib
from pathlib import Path
from urllib.parse import urlsplit

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
DEFAULT_PROJECT = "resablate"
INIT_TIMEOUT = 60.0       # seconds; WANDB_INIT_TIMEOUT overrides
FINISH_TIMEOUT = 600.0    # online: stop waiting for uploads (the data stays syncable)
FLUSH_TIMEOUT = 10.0      # offline: wait for wandb-core to write the run's last records
QUIET_ENV = {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}

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


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` with credentials, else ``offline``; other modes unchanged."""
    if mode not in MODES:
        raise ValueError(f"unknown W&B mode {mode!r} (choose from {', '.join(MODES)})")
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


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
                              finish_timeout=FINISH_TIMEOUT if mode == "online" else 0.0)
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
    """

    _open: TrialTracker | None = None  # the process's unfinished tracker, if any

    def __init__(self, mode: str, run_dir: str, group: str, name: str, config: dict,
                 job_type: str = "trial"):
        self.mode = resolve_mode(mode)
        self._run, self._url, self._path = None, None, None
        if self.mode == "disabled":
            return
        if TrialTracker._open is not None:
            TrialTracker._open.finish({"status": "abandoned"}, failed=True)
        self._run = _start_run(self.mode, run_dir, group, name, config, job_type)
        TrialTracker._open = self
        self._url = self._run.url if self.mode == "online" else None
        self._path = str(self._run.settings.sync_dir)

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
        self._run.log(metrics, step=int(row["epoch"]))

    def log_layers(self, df) -> None:
        """A tidy per-layer statistics frame as the table ``layers`` (at the current step).

        Tables above wandb's row limit (10,000) keep evenly spaced sampling steps; the
        summary gets ``layers_rows`` (all) and ``layers_rows_logged``.
        """
        if self._run is None or df is None or len(df) == 0:
            return
        import wandb
        logged = _fit_rows(df, wandb.Table.MAX_ROWS)
        self._run.log({"layers": _table(logged)})
        self._run.summary.update({"layers_rows": len(df), "layers_rows_logged": len(logged)})

    def finish(self, summary: dict, failed: bool = False) -> None:
        """Summary values (``status`` included), then finish; later calls do nothing."""
        run, self._run = self._run, None
        if run is None:
            return
        if TrialTracker._open is self:
            TrialTracker._open = None
        try:
            run.summary.update({k: _plain(v) for k, v in summary.items()})
        finally:
            run.finish(exit_code=1 if failed else 0)
            if self.mode == "offline":
                _wait_until_written(self._path)
            if failed:
                # The process is likely about to die (Ray kills a failed trial's actor):
                # close the wandb-core connection now, not in an atexit hook that would
                # print a ConnectionResetError traceback once the service is gone.
                import wandb
                wandb.teardown()

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
    returns the run's folder, or None when disabled."""
    tracker = TrialTracker(mode, run_dir, group, f"{group}-figures", {"sweep": group},
                           job_type="analysis")
    if tracker.mode == "disabled":
        return None
    with tracker:
        import wandb
        tracker._run.log({Path(p).stem: wandb.Image(str(p)) for p in paths})
        tracker.finish({"figures": len(paths), **(summary or {})})
    return tracker.run_path


# ---------------------------------------------------------------- offline runs


def offline_run_dirs(run_dir) -> list[Path]:
    """``<run_dir>/wandb/offline-run-*`` folders, sorted (by start time, then id)."""
    return sorted(p for p in (Path(run_dir) / "wandb").glob("offline-run-*") if p.is_dir())


def sync_command(run_dir) -> str | None:
    """The command that uploads this sweep's offline runs, or None when there are none."""
    if not offline_run_dirs(run_dir):
        return None
    return f"wandb sync {shlex.quote(str(Path(run_dir) / 'wandb'))}/offline-run-*"


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
    warnings.warn(f"W&B run {run_folder} not complete on disk after {timeout:.0f} s; "
                  "wandb-core is still writing it", RuntimeWarning, stacklevel=3)


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
