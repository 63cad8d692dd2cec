"""One writer per sweep in an object store: the lock of ``URI/NAME``, beside the local one.

With ``--storage s3://...`` two drivers on different machines (or with different
``--out`` folders) write the same sweep, ``URI/NAME``, while their local locks
(``ablations.lock``) never meet. So the store holds a lock too: each writer puts a
*claim*, ``URI/NAME/.lock.d/<token>.json`` (host, pid and its start time, start time,
command, heartbeat), and holds the lock when, after its claim is stored, a listing of
``.lock.d/`` shows no other live claim.

Why claims, not one lock object. S3 can create an object only if absent
(``If-None-Match: *``), but ``pyarrow.fs`` (the client this project uses) does not
send that header, and neither does it expose GCS's ``ifGenerationMatch=0``. A single
object written and then read back for one's own token leaves a window: two writers
that both find no lock both write it, and the first one's read-back may come before
the second one's write, so both go on. Claims close that window on a store whose
listing is strongly consistent after a write (AWS S3 since December 2020, GCS, MinIO,
moto): of two claims, the one stored second is in the listing of its own writer,
which therefore sees the first and backs off; the first may see the second too, and
then both back off (each deletes its claim, waits a random 0.2-1 s and looks again).
A winner marks its claim ``held``: a writer that finds a held claim is refused at
once, one that finds only undecided claims waits for them to win or withdraw (at most
``WAIT_S``). On a store whose listing lags behind writes this is only as good as the
lag allows.

A live claim of another writer refuses this one (``LockHeld``: one line naming it,
exit 2). A claim is stale, and is deleted with a one-line warning once this writer
holds the lock, when its pid is dead (or now another process's) on this host, or its
heartbeat is older than ``lock.STALE_S`` (another host; hosts' clocks are assumed to
agree within a minute or so). The holder refreshes its claim every
``lock.HEARTBEAT_S`` seconds from a daemon thread; if it finds its claim gone or
another live claim beside it (a writer that judged it stale: its heartbeat was late
by minutes, a hung process), it says so in one warning line, as the local lock does.
Readers (``python -m analysis``) never look at the lock.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import socket
import sys
import threading
import time
import uuid

from . import lock, storage
from .spec import SpecError

PREFIX = ".lock.d"
WAIT_S = 10.0  # how long an undecided claim of another writer is waited for
_HELD: dict = {}  # (store uri, name) -> StoreLock held by this process


def _key(name: str, token: str) -> str:
    return f"{name}/{PREFIX}/{token}.json"


def claims(store, name: str) -> dict:
    """``{key: info}`` of every claim under ``NAME/.lock.d/`` (``{}`` for an unreadable
    one, with ``_mtime``: the object's time in seconds)."""
    out = {}
    for key, (_, mtime) in store.list(f"{name}/{PREFIX}").items():
        try:
            info = json.loads(store.read(key))
            info = info if isinstance(info, dict) else {}
        except FileNotFoundError:
            continue  # withdrawn meanwhile
        except ValueError:
            info = {}
        info["_mtime"] = mtime / 1e9 if mtime else 0.0
        out[key] = info
    return out


def stale(info: dict, now: float | None = None, stale_s: float | None = None) -> str | None:
    """Why the claim ``info`` has no live holder, or None when it has one."""
    now = time.time() if now is None else now
    stale_s = lock.STALE_S if stale_s is None else stale_s
    if not {k: v for k, v in info.items() if k != "_mtime"}:  # unreadable: by its age
        age = now - info.get("_mtime", 0.0)
        return f"the claim is unreadable and {age / 60:.0f} min old" if age > stale_s else None
    return lock.gone(info, os.devnull, now=now, stale_s=stale_s)


def where(store, name: str) -> str:
    return f"{store.uri}/{name}"


def _refusal(store, name: str, info: dict, what: str) -> lock.LockHeld:
    holder = lock.describe(info) if len(info) > 1 else "an unreadable lock claim"
    return lock.LockHeld(
        f"{where(store, name)} is in use by another writer: {holder}; {what} cannot write "
        f"to it until that ends (if it is surely gone, delete {where(store, name)}/{PREFIX}/)")


class StoreLock:
    """A held claim: ``release()`` (idempotent; also at interpreter exit) deletes it."""

    def __init__(self, store, name: str, info: dict, heartbeat_s: float):
        self.store, self.name, self.info = store, name, info
        self.key = _key(name, info["token"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,),
                                        name="resablate-store-lock-heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                seen = claims(self.store, self.name)
                others = [i for k, i in seen.items() if k != self.key and stale(i) is None]
                if self.key not in seen or others:
                    print(f"warning: the lock of {where(self.store, self.name)} was taken over"
                          f" by {lock.describe(others[0]) if others else 'another writer'};"
                          " two writers may now share the sweep", file=sys.stderr, flush=True)
                    return
                self.info["heartbeat"] = time.time()
                self.store.write(self.key, json.dumps(self.info).encode())
            except Exception:  # noqa: BLE001  the store unreachable for a while: next beat
                pass

    @property
    def held(self) -> bool:
        return not self._stop.is_set()

    @property
    def beating(self) -> bool:
        """Whether the heartbeat still runs (it stops when it finds a takeover)."""
        return self._thread.is_alive()

    def release(self) -> None:
        if self._stop.is_set() or os.getpid() != self.info["pid"]:  # a forked child: not ours
            return
        self._stop.set()
        _HELD.pop((self.store.uri, self.name), None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.store.delete(self.key)
        except Exception:  # noqa: BLE001  unreachable: the claim goes stale on its own
            pass


def acquire(store, name: str, command: str, what: str = "this sweep", *,
            heartbeat_s: float | None = None, stale_s: float | None = None,
            wait_s: float = WAIT_S) -> StoreLock:
    """Take the store's lock of ``NAME`` (see the module docstring); ``LockHeld`` when a
    live writer holds it, or when another writer's claim is still undecided after
    ``wait_s`` seconds. Stale claims are deleted, with a warning, once it is held."""
    own = _HELD.pop((store.uri, name), None)
    if own is not None:  # this process again (a resume after a sweep, in-process)
        own.release()
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": lock.proc_start(os.getpid()), "started": now, "heartbeat": now,
            "command": command, "token": uuid.uuid4().hex, "held": False}
    key = _key(name, info["token"])
    deadline = time.monotonic() + wait_s
    while True:
        try:
            live = [i for i in claims(store, name).values()
                    if stale(i, stale_s=stale_s) is None]
            if any(i.get("held") for i in live) or (live and time.monotonic() > deadline):
                raise _refusal(store, name, next((i for i in live if i.get("held")), live[0]),
                               what)
            if not live:  # a first look: written only when no live claim is there
                store.write(key, json.dumps(info).encode())
                others = {k: i for k, i in claims(store, name).items() if k != key}
                why = {k: stale(i, stale_s=stale_s) for k, i in others.items()}
                if all(w is not None for w in why.values()):
                    break
                store.delete(key)  # another claim at the same time: both may withdraw
        except OSError as e:  # the store failed a request: again until the deadline
            if time.monotonic() > deadline:
                try:
                    store.delete(key)
                except OSError:
                    pass  # unreachable: the claim, never held, goes stale on its own
                raise SpecError("the lock could not be taken: " + storage.fault(
                    store.uri, e, label="")) from e
        time.sleep(random.uniform(0.2, 1.0))  # an undecided claim: it wins or withdraws
    info["held"] = True  # decided: a later writer is refused at once
    store.write(key, json.dumps(info).encode())
    for k, w in why.items():
        print(f"warning: taking over the lock of {where(store, name)} from "
              f"{lock.describe(others[k])}: {w}", file=sys.stderr, flush=True)
        store.delete(k)
    held = StoreLock(store, name, info, lock.HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
    _HELD[(store.uri, name)] = held
    return held


class Both:
    """The local lock of the results folder and the store's lock of the sweep, held
    together; ``release()`` lets go of both."""

    def __init__(self, local, remote):
        self.local, self.remote = local, remote

    @property
    def held(self) -> bool:
        return self.local.held and self.remote.held

    def release(self) -> None:
        self.remote.release()
        self.local.release()


def check(store, name: str, what: str = "this sweep") -> None:
    """``LockHeld`` when a live writer holds the store's lock of ``NAME``; writes nothing
    (a first look, before any work)."""
    live = [i for i in claims(store, name).values() if i.get("held") and stale(i) is None]
    if live:
        raise _refusal(store, name, live[0], what)


def acquire_pair(run_dir, store, name: str, command: str, what: str = "this sweep"):
    """``lock.acquire`` of the local ``run_dir``, and with a ``store`` (None: a local
    sweep) its lock of ``NAME`` too (the local one let go again when that is refused)."""
    local = lock.acquire(run_dir, command, what)
    if store is None:
        return local
    try:
        return Both(local, acquire(store, name, command, what))
    except BaseException:
        local.release()
        raise


def acquire_both(spec, command: str, what: str = "this sweep"):
    """``acquire_pair`` of a sweep: its results folder, and with an object-store
    ``--storage`` the store's lock of ``URI/NAME``."""
    store = storage.Store(spec.storage) if storage.is_uri(spec.storage) else None
    return acquire_pair(spec.run_dir, store, spec.name, command, what)
