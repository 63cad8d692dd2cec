"""A finished (or running) sweep read from an object store by URI, ``s3://BUCKET/PREFIX/NAME``,
for ``python -m analysis`` and ``python -m ablations.measure``: neither needs the disk of
the driver that ran it.

``open_sweep`` checks the URI within seconds (scheme, credentials, endpoint, bucket,
the sweep's ``spec.json``) and says what is wrong in one line (``SpecError``).
``fetch`` copies the sweep into a local folder (only the objects that changed since
the last copy), leaving out what a reader never needs: Ray Tune's state, checkpoints
and the store's lock claims (``ablations.store_lock``), which a reader never touches.
``stage_trial`` is a measuring worker's side: the trial's kept weights and fragments
in a local folder of its own node, and a ``storage.Mirror`` that puts every fragment
it writes back to the store.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from . import storage, store_lock
from .spec import SpecError

NEVER = frozenset({"ray", "checkpoints", store_lock.PREFIX, ".lock"})  # no reader needs


def split(uri: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX/NAME`` -> (``s3://BUCKET/PREFIX``, ``NAME``)."""
    base, _, name = uri.rstrip("/").rpartition("/")
    return base, name


def open_sweep(uri: str, label: str = "") -> tuple[storage.Store, str]:
    """The store and the sweep's name of ``uri``; SpecError (one line) for a bad URI,
    an unreachable store, a missing bucket or a URI that names no sweep."""
    base, name = split(uri)
    if "://" not in base or not storage.bucket_of(base) or not name:
        if storage.scheme(uri) in storage.SCHEMES:
            raise SpecError(f"{uri}: name a sweep in the store: "
                            f"{storage.scheme(uri)}://BUCKET/PREFIX/NAME")
        base = uri  # check() names the unknown scheme
    try:
        store = storage.check(base, label)
    except SpecError as e:  # named by the whole URI given
        raise SpecError(str(e).replace(base, uri, 1)) from None
    if not store.exists(f"{name}/spec.json"):
        sweeps = sorted({k.split("/")[0] for k in store.list() if k.endswith("/spec.json")
                         and k.count("/") == 1})
        raise SpecError(f"{uri}: no sweep there (no {name}/spec.json in {base}); sweeps in "
                        f"{base}: {', '.join(sweeps) or 'none'}")
    return store, name


def fetch(store, name: str, local_dir, skip=frozenset()) -> int:
    """The sweep ``NAME`` from ``store`` into ``local_dir`` (but the top-level folders in
    ``skip`` and those no reader needs); returns how many files changed."""
    return store.download(name, local_dir, skip=NEVER | set(skip))


def stage_trial(uri: str, name: str, trial_id: str):
    """A worker's local copy of one trial's kept weights and folder (fragments) from the
    store: (its run folder, the ``Mirror`` that puts what is written there back)."""
    store = storage.Store(uri)
    tag = hashlib.sha1(f"{uri}\0{name}".encode()).hexdigest()[:12]
    local = Path(tempfile.gettempdir()) / "resablate-measure" / tag / name
    for top in ("weights", "trials"):
        shutil.rmtree(local / top / trial_id, ignore_errors=True)
        store.download(f"{name}/{top}/{trial_id}", local / top / trial_id)
    return str(local), storage.Mirror(store, local, name, only={"trials"})


def push(store, name: str, local_dir) -> int:
    """The driver's files of the local copy (spec.json, tables, measurements, report,
    figures) back to the store; returns how many."""
    return store.upload_dir(local_dir, name, skip=storage.SKIP_PUSH | NEVER)


def local_copy(out: str | None, name: str) -> str:
    """Where a sweep read from a store is copied: ``out``, or ``./NAME``."""
    return os.path.abspath(out or name)
