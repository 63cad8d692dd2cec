"""One writer per results folder: an exclusive lock file, ``RUN_DIR/.lock``.

A sweep (new, ``--resume``, ``--retry-failed``; ``ablations.orchestrate``) and
``python -m ablations.measure`` take the lock before they write anything to the
folder and release it when they end (normally, on an error, on Ctrl-C; at the
latest at interpreter exit). The lock file is created atomically (a complete
temporary file hard-linked to ``.lock``: ``os.link`` fails when the name exists) and
holds JSON: host, pid (and the process's start time, against a reused pid), start
time, the command, and a heartbeat time that a daemon thread refreshes every
``HEARTBEAT_S`` seconds while the lock is held.

A second writer is refused (``LockHeld``, a ``SpecError``: one line naming the
holder, exit 2). A lock whose holder is gone is taken over with a one-line warning:
on this host, when its pid is dead (or now another process); on another host
(a shared filesystem), when its heartbeat is older than ``STALE_S``. A lock this
process already holds is taken again silently (one process, one writer).
Readers (``python -m analysis``) never look at the lock. With an object-store
``--storage`` the sweep is locked in the store as well (``ablations.store_lock``), since
drivers with different local folders never meet here.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
import uuid

from .spec import SpecError

NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0        # a heartbeat older than this (holder on another host): gone
GUARD_STALE_S = 60.0   # a takeover guard older than this: its taker died mid-takeover


class LockHeld(SpecError):
    """The results folder is locked by a live writer; the message names it."""


def path_of(run_dir) -> str:
    return os.path.join(str(run_dir), NAME)


def proc_start(pid: int) -> str | None:
    """The process's start time since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stamp(t) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
    except (TypeError, ValueError, OverflowError):
        return "an unknown time"


def describe(info: dict) -> str:
    """``pid 1234 on host h since 2025-01-02 10:11:12 (python sweep.py ...)``."""
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since "
            f"{_stamp(info.get('started'))} ({info.get('command') or 'unknown command'})")


def read(run_dir) -> dict | None:
    """The lock's record; None without a lock; ``{}`` for an unreadable one."""
    try:
        with open(path_of(run_dir)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


_HELD: dict = {}  # lock path -> FolderLock held by this process


def gone(info: dict, lock_path: str, now: float | None = None,
         stale_s: float | None = None) -> str | None:
    """Why the lock ``info`` (read from ``lock_path``) has no live holder, or None when
    it has one (or is this process's own)."""
    now = time.time() if now is None else now
    stale_s = STALE_S if stale_s is None else stale_s
    if not info:  # unreadable: judged by the file's age
        try:
            age = now - os.stat(lock_path).st_mtime
        except OSError:
            return "it is gone"
        return f"the lock file is unreadable and {age / 60:.0f} min old" if age > stale_s \
            else None
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        pid = None
    if info.get("host") == socket.gethostname() and pid is not None:
        if pid == os.getpid() and lock_path in _HELD:
            return None
        if not _alive(pid):
            return "its process is gone"
        start = info.get("pid_start")
        if start and proc_start(pid) not in (None, start):
            return "its process is gone (the pid is now another process's)"
        return None
    try:
        beat = float(info.get("heartbeat"))
    except (TypeError, ValueError):
        beat = 0.0
    if now - beat > stale_s:
        return f"no heartbeat for {(now - beat) / 60:.0f} min"
    return None


def _own(info: dict | None) -> bool:
    return bool(info) and info.get("host") == socket.gethostname() \
        and info.get("pid") == os.getpid()


def _refusal(run_dir, info: dict, what: str) -> LockHeld:
    holder = describe(info) if info else "an unreadable lock file"
    return LockHeld(f"{run_dir} is in use by another writer: {holder}; {what} cannot write "
                    f"to it until that ends (if it is surely gone, remove {path_of(run_dir)})")


def check(run_dir, what: str = "this sweep") -> None:
    """``LockHeld`` when a live writer other than this process holds ``run_dir``;
    touches nothing (a first look, before any work)."""
    info = read(run_dir)
    if info is not None and not _own(info) and gone(info, path_of(run_dir)) is None:
        raise _refusal(run_dir, info, what)


class FolderLock:
    """A held lock: ``release()`` (idempotent; also at interpreter exit) removes it when
    it is still this holder's and removes the folders the lock itself created, if
    empty."""

    def __init__(self, run_dir, info: dict, created: list, heartbeat_s: float):
        self.run_dir, self.path, self.info = str(run_dir), path_of(run_dir), info
        self.created = created
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,),
                                        name="resablate-lock-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _still_ours(self) -> bool:
        current = read(self.run_dir)
        return bool(current) and current.get("token") == self.info["token"]

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self._still_ours():
                print(f"warning: the lock of {self.run_dir} was taken over by "
                      f"{describe(read(self.run_dir) or {})}; two writers may now share "
                      "the folder", file=sys.stderr, flush=True)
                return
            self.info["heartbeat"] = time.time()
            try:
                _write_replace(self.path, self.info)
            except OSError:  # a full disk: the next beat tries again
                pass

    @property
    def held(self) -> bool:
        return not self._stop.is_set()

    def release(self) -> None:
        if self._stop.is_set() or os.getpid() != self.info["pid"]:  # a forked child: not ours
            return
        self._stop.set()
        _HELD.pop(self.path, None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._still_ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        for d in self.created:  # deepest first: a folder only the lock made
            try:
                os.rmdir(d)
            except OSError:
                break


def _tmp_beside(path: str, info: dict) -> str:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode from the umask
    try:
        os.write(fd, (json.dumps(info, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _write_replace(path: str, info: dict) -> None:
    tmp = _tmp_beside(path, info)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _makedirs(run_dir: str) -> list:
    """Create ``run_dir`` and its missing parents; the ones created, deepest first."""
    missing, d = [], os.path.abspath(run_dir)
    while not os.path.isdir(d):
        missing.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    os.makedirs(run_dir, exist_ok=True)
    return missing


def _takeover(path: str, seen: dict, info: dict) -> bool:
    """Replace the stale lock ``seen`` by ``info``; False when another process changed
    or took it meanwhile. One taker at a time: a guard file created exclusively."""
    guard = path + ".takeover"
    try:
        os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        try:
            if time.time() - os.stat(guard).st_mtime > GUARD_STALE_S:
                os.unlink(guard)  # its taker died mid-takeover; the next try takes it
        except FileNotFoundError:
            pass
        return False
    try:
        with open(path) as f:
            if f.read() != seen["_text"]:
                return False
        _write_replace(path, info)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.unlink(guard)


def acquire(run_dir, command: str, what: str = "this sweep", *,
            heartbeat_s: float | None = None, stale_s: float | None = None,
            wait_s: float = 5.0) -> FolderLock:
    """Take the lock of ``run_dir`` (created with its parents when missing) for
    ``command``; ``LockHeld`` when a live writer holds it (``what``: who is refused, for
    the message). A stale lock is taken over with a warning line on stderr."""
    run_dir, path = str(run_dir), path_of(run_dir)
    if path in _HELD:  # this process again (e.g. a resume after a sweep, in-process)
        _HELD.pop(path).release()
    try:
        return _acquire(run_dir, path, command, what, stale_s, wait_s,
                        HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
    except OSError as e:  # a read-only or vanished folder: one line, not a traceback
        raise SpecError(f"cannot lock {run_dir} for writing ({e.strerror or e}); choose "
                        "a writable --out") from None


def _acquire(run_dir, path, command, what, stale_s, wait_s, heartbeat_s) -> FolderLock:
    created = _makedirs(run_dir)
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": proc_start(os.getpid()), "started": now, "heartbeat": now,
            "command": command, "token": uuid.uuid4().hex}
    deadline = time.monotonic() + wait_s
    while True:
        tmp = _tmp_beside(path, info)
        try:
            os.link(tmp, path)  # atomic, and fails when the lock exists
            break
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            continue  # released meanwhile: try again
        seen = read(run_dir) or {}
        seen["_text"] = text
        why = gone(seen, path, stale_s=stale_s)
        if why is None:
            raise _refusal(run_dir, {k: v for k, v in seen.items() if k != "_text"}, what)
        if _takeover(path, seen, info):
            print(f"warning: taking over the lock of {run_dir} from "
                  f"{describe(seen)}: {why}", file=sys.stderr, flush=True)
            break
        if time.monotonic() > deadline:  # another taker keeps the guard
            raise _refusal(run_dir, {k: v for k, v in seen.items() if k != "_text"}, what)
        time.sleep(0.1)
    held = FolderLock(run_dir, info, created, heartbeat_s)
    _HELD[path] = held
    return held
