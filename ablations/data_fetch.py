"""``--data-root s3://BUCKET/PREFIX`` (or ``gs://...``): CIFAR-10 fetched from an object
store once per node into a local cache, checked by checksum.

The store holds ``PREFIX/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``
and, when there, ``batches.meta``). ``localize`` gives the settings with ``data_root``
pointing into the cache, ``$RESABLATE_CACHE/data/<hash of the URI>/`` (default
``~/.cache/resablate``), filling it first when needed. ``ablations.data.load_arrays``
calls it, so the driver fetches and checks the data before Ray starts
(``check_data``) and a worker node does before its first trial (``load_dataset``);
the URI stays in spec.json, so a resume on another machine fetches again.

``manifest.json`` beside the files records, for each, the store object's size and
time and the local copy's size, mtime and sha256. A cache hit costs one listing of
the store and a ``stat`` per file: a file whose size or mtime no longer matches the
manifest is hashed again, and fetched again unless its sha256 still matches; a file
changed in the store (size or time) is fetched again. Every fetched batch is read
and checked at once (``ablations.data.read_batch``): a damaged or foreign one is
removed from the cache and is one line naming the store object and the fault
(``DataError``, exit 2 on the driver, the trial's error row on a worker). Processes
of one node fetch one at a time (``flock`` on the cache folder's lock file).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path

from . import storage
from .data import CIFAR_DIR, TEST_FILE, TRAIN_FILES, DataError, read_batch
from .files import atomic_write

REQUIRED = [*TRAIN_FILES, TEST_FILE]
OPTIONAL = ["batches.meta"]
MANIFEST = "manifest.json"


def cache_root() -> Path:
    return Path(os.environ.get("RESABLATE_CACHE") or "~/.cache/resablate").expanduser()


def cache_dir(uri: str) -> Path:
    """The local folder that stands for ``uri`` (``data_root``: it holds CIFAR_DIR)."""
    tag = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / "data" / tag


def localize(t):
    """``TrainSettings`` ``t`` with an object-store ``data_root`` replaced by its local
    cache (fetched and checked when needed); ``t`` itself for a local folder."""
    if not storage.is_uri(t.data_root):
        return t
    return dataclasses.replace(t, data_root=str(fetch(t.data_root)))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(root: Path, uri: str) -> dict:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return m.get("files", {}) if isinstance(m, dict) and m.get("uri") == uri else {}


def _fresh(local: Path, rec: dict | None, obj: tuple) -> bool:
    """Whether the cached ``local`` is the store's object ``obj`` (size, mtime_ns)."""
    if not rec or [rec.get("store_size"), rec.get("store_mtime")] != list(obj):
        return False
    try:
        st = local.stat()
    except FileNotFoundError:
        return False
    if st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime"):
        return True
    return st.st_size == rec.get("size") and _sha256(local) == rec.get("sha256")


def fetch(uri: str) -> Path:
    """The cache folder of ``uri`` with every batch file in it, fetched where missing
    or changed; SpecError/DataError (one line) for a bad store or damaged data."""
    uri = uri.rstrip("/")
    store = storage.check(uri, "--data-root")
    root = cache_dir(uri)
    folder = root / CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    objects = store.list(CIFAR_DIR)
    missing = [n for n in REQUIRED if f"{CIFAR_DIR}/{n}" not in objects]
    if missing:
        raise DataError(f"--data-root {uri}: CIFAR-10 not found in the store (missing "
                        f"{CIFAR_DIR}/{', '.join(missing)}); upload the official python "
                        "batches (data_batch_1..5, test_batch) there")
    with open(root / ".lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # one fetcher per node; the others then hit
        files = _read_manifest(root, uri)
        changed = False
        for name in REQUIRED + [n for n in OPTIONAL if f"{CIFAR_DIR}/{n}" in objects]:
            obj = objects[f"{CIFAR_DIR}/{name}"]
            local = folder / name
            if _fresh(local, files.get(name), obj):
                continue
            files[name] = _fetch_one(store, uri, name, local, obj)
            changed = True
        if changed:
            atomic_write(root / MANIFEST, lambda tmp: Path(tmp).write_text(
                json.dumps({"uri": uri, "files": files}, indent=1) + "\n"), notify=False)
    return root


def _fetch_one(store, uri: str, name: str, local: Path, obj: tuple) -> dict:
    """One object into the cache, checked; its manifest record."""
    store.fetch(f"{CIFAR_DIR}/{name}", local)
    if name not in OPTIONAL:
        try:
            read_batch(str(local))
        except DataError as e:
            local.unlink(missing_ok=True)
            raise DataError(str(e).replace(str(local), f"{uri}/{CIFAR_DIR}/{name}", 1)) from None
    st = local.stat()
    return {"size": st.st_size, "mtime": st.st_mtime_ns, "sha256": _sha256(local),
            "store_size": obj[0], "store_mtime": obj[1]}
