"""Where a sweep's files live: a local folder (the default) or an object store
(``--storage s3://bucket/prefix``, ``gs://bucket/prefix``), through ``pyarrow.fs``.

With a local ``--storage`` (or none) nothing here does anything: workers write into the
results folder itself, which every node must reach (NFS), as always.

With an object store, the store is the truth and no node needs another's disk:

* a worker stages each group's trials in a local folder (``stage``): their fragments
  and checkpoints are pulled from ``URI/NAME/...`` first (attempt counter, finished
  rows, the last checkpoint), and every file it then writes there through
  ``ablations.files`` (fragment rows and frames, measurement fragments, kept weights,
  checkpoints, the attempts counter) is put to the store at once, and a file it
  moves or removes (a finished trial's checkpoint) is moved or removed there (``Mirror``);
* W&B offline runs, which wandb writes itself, are put to ``URI/NAME/wandb/`` by the
  tracker when a run finishes, completed, failed or preempted (``publish_folder``);
* the driver (``RunSync``) pulls ``trials/``, ``weights/``, ``features/`` and ``wandb/``
  from the store into its local results folder before reading or merging them (and
  ``tuning/``, the Optuna journal, where the store's is longer: a ``--resume`` from a
  fresh folder continues the search), mirrors its own writes under ``trials/`` (error
  rows, ``--retry-failed``'s archived rows), puts the journal to the store after every
  tuning sample (``push_tuning``), and pushes the merged files (``spec.json``, the
  tables, the report, its own W&B runs) back to the store;
* Ray Tune keeps its own state under ``URI/NAME/ray`` (``tune_storage``);
* one writer at a time holds ``URI/NAME/.lock.d/`` (``ablations.store_lock``), and
  ``python -m analysis URI``/``python -m ablations.measure URI`` read a sweep from the
  store alone (``ablations.store_sweep``).

An object is written in one call from bytes already in memory; S3 and GCS make an
object visible only when its upload completes, so a reader never sees part of one.
Credentials come from the standard environment and configuration files of each
cloud (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/credentials``, ...); an S3-compatible endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``. They are never printed and never stored: spec.json records the
URI only. ``check`` finds a wrong store within seconds, before anything is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .files import WATCHERS, atomic_write
from .spec import SpecError

VALID = "valid: a local folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"
SCHEMES = ("s3", "gs", "gcs")
WORKER_TOPS = ("trials", "weights", "features", "wandb")  # what workers write in NAME/
SKIP_PUSH = {"trials", "weights", "features", "ray", "checkpoints", ".lock"}  # not the driver's


def is_uri(value) -> bool:
    """Whether ``--storage`` names an object store (``scheme://...``), not a folder."""
    return isinstance(value, str) and "://" in value


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def bucket_of(uri: str) -> str:
    return uri.split("://", 1)[1].strip("/").partition("/")[0]


def endpoint() -> str | None:
    """An S3-compatible endpoint from the standard environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_fs(uri: str, quick: bool = False):
    """The ``pyarrow.fs`` filesystem of ``uri``; ``quick``: short timeouts, one attempt
    (for ``check``)."""
    import pyarrow.fs as pafs
    if scheme(uri) == "s3":
        kw = {}
        if endpoint():
            kw["endpoint_override"] = endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kw["region"] = region
        if quick:
            kw.update(connect_timeout=3, request_timeout=5,
                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        return pafs.S3FileSystem(**kw)
    import datetime
    return pafs.GcsFileSystem(
        **({"retry_time_limit": datetime.timedelta(seconds=5)} if quick else {}))


def has_s3_credentials() -> bool:
    """Whether the standard environment or config files name S3 credentials. An
    instance or pod role is used when ``AWS_EC2_METADATA_DISABLED=false`` says so."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(env.get(k) for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_"
                                "RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false":
        return True
    for f in (env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
              env.get("AWS_CONFIG_FILE", "~/.aws/config")):
        try:
            text = Path(f).expanduser().read_text()
        except OSError:
            continue
        if any(k in text for k in ("aws_access_key_id", "role_arn", "credential_process",
                                   "sso_")):
            return True
    return False


def fault(uri: str, error: BaseException, label: str = "--storage") -> str:
    """One line for a store that failed ``check`` (no credentials in it: pyarrow's
    messages name the operation, the bucket and the endpoint only)."""
    said = f"{label} {uri}".strip()
    text = " ".join(str(error).split())
    where = endpoint() or "AWS S3" if scheme(uri) == "s3" else "Google Cloud Storage"
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not resolve" in text:
        return f"{said}: cannot reach the store at {where} (connection failed)"
    if any(k in text for k in ("ACCESS_DENIED", "AccessDenied", "403", "InvalidAccessKeyId",
                               "SignatureDoesNotMatch")):
        return f"{said}: the store at {where} refused the credentials (access denied)"
    return f"{said}: the store at {where} failed: {text[:160]}"


def check_scheme(uri: str, label: str = "--storage") -> None:
    """``SpecError`` naming ``label uri`` when ``uri``'s scheme is not a store's."""
    if scheme(uri) not in SCHEMES:
        raise SpecError(f"{label} {uri}".strip() + f": unknown scheme {scheme(uri)!r}; {VALID}")


def check(uri: str, label: str = "--storage") -> Store:
    """The store of ``uri``, checked within seconds (scheme, credentials, endpoint,
    bucket) before anything is written; otherwise ``SpecError`` with one line, which
    names the URI after ``label`` (the flag that gave it)."""
    said = f"{label} {uri}".strip()
    check_scheme(uri, label)
    bucket = bucket_of(uri)
    if not bucket:
        raise SpecError(f"{said}: no bucket named; {VALID}")
    if scheme(uri) == "s3" and not has_s3_credentials():
        raise SpecError(f"{said}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws/credentials)")
    try:
        from pyarrow.fs import FileType
        info = make_fs(uri, quick=True).get_file_info(bucket)
    except Exception as e:  # noqa: BLE001  pyarrow: OSError, ArrowInvalid, ...
        raise SpecError(fault(uri, e, label)) from None
    if info.type == FileType.NotFound:
        where = endpoint() or "AWS S3" if scheme(uri) == "s3" else "Google Cloud Storage"
        raise SpecError(f"{said}: bucket {bucket!r} does not exist at {where}; "
                        "create it first")
    return Store(uri)


class Store:
    """Objects under one URI (or files under one local folder), by key
    (``a/b.parquet``): write, read, list, exists, delete, and whole folders up or down."""

    def __init__(self, uri: str, fs=None):
        if is_uri(uri):
            self.uri = uri.rstrip("/")
            self.fs = fs or make_fs(uri)
            self.root = self.uri.split("://", 1)[1].strip("/")
        else:
            from pyarrow.fs import LocalFileSystem
            self.uri = self.root = os.path.abspath(uri)
            self.fs = fs or LocalFileSystem()

    def path(self, key: str = "") -> str:
        return f"{self.root}/{key.strip('/')}" if key.strip("/") else self.root

    def write(self, key: str, data: bytes) -> None:
        """The object ``key`` from ``data``: one upload, visible only when complete (a
        local file: written beside and renamed)."""
        if not is_uri(self.uri):
            atomic_write(self.path(key), lambda tmp: Path(tmp).write_bytes(data), notify=False)
            return
        with self.fs.open_output_stream(self.path(key)) as f:
            f.write(data)

    def read(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.path(key)) as f:
            return f.read()

    def exists(self, key: str) -> bool:
        from pyarrow.fs import FileType
        return self.fs.get_file_info(self.path(key)).type == FileType.File

    def list(self, prefix: str = "") -> dict[str, tuple[int, int | None]]:
        """``{key: (size, mtime_ns)}`` of every object under ``prefix``."""
        from pyarrow.fs import FileSelector, FileType
        infos = self.fs.get_file_info(FileSelector(self.path(prefix), recursive=True,
                                                   allow_not_found=True))
        return {i.path[len(self.root) + 1:]: (i.size, i.mtime_ns) for i in infos
                if i.type == FileType.File}

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass

    def put_file(self, local, key: str) -> None:
        self.write(key, Path(local).read_bytes())

    def upload_dir(self, local_dir, prefix: str, skip=frozenset()) -> int:
        """Every file under ``local_dir`` (but top-level names in ``skip``) to
        ``prefix/<relative path>``; returns how many."""
        n = 0
        for p in sorted(Path(local_dir).rglob("*")):
            rel = p.relative_to(local_dir)
            if p.is_file() and rel.parts[0] not in skip and not p.name.endswith(".tmp"):
                self.put_file(p, f"{prefix}/{rel.as_posix()}")
                n += 1
        return n

    def download(self, prefix: str, local_dir, skip=frozenset()) -> int:
        """The objects under ``prefix`` (but those in its top-level folders ``skip``) into
        ``local_dir`` (written atomically, with the object's mtime), but those already
        there with the same size and mtime; returns how many were fetched."""
        n = 0
        for key, (size, mtime) in self.list(prefix).items():
            rel = key[len(prefix.strip("/")):].lstrip("/")
            if rel.split("/", 1)[0] in skip:
                continue
            local = Path(local_dir) / rel
            try:
                st = local.stat()
                if st.st_size == size and (mtime is None or st.st_mtime_ns == mtime):
                    continue
            except FileNotFoundError:
                pass
            self.fetch(key, local, mtime)
            n += 1
        return n

    def fetch(self, key: str, local, mtime_ns: int | None = None) -> None:
        """The object ``key`` to the file ``local``, atomically (not mirrored back)."""
        data = self.read(key)
        atomic_write(local, lambda tmp: Path(tmp).write_bytes(data), notify=False)
        if mtime_ns is not None:
            os.utime(local, ns=(mtime_ns, mtime_ns))


class Mirror:
    """An ``ablations.files.WATCHERS`` entry while entered: each file written under
    ``local_root`` (in the top folders ``only``, when given) is put to ``store`` at
    ``prefix/<relative path>``; a moved one is deleted there and put at its new name."""

    def __init__(self, store: Store, local_root, prefix: str, only=None):
        self.store, self.root, self.prefix = store, Path(local_root).resolve(), prefix
        self.only = set(only) if only else None

    def key(self, path) -> str | None:
        try:
            rel = Path(path).resolve().relative_to(self.root)
        except ValueError:
            return None
        if self.only is not None and rel.parts[0] not in self.only:
            return None
        return f"{self.prefix}/{rel.as_posix()}"

    def written(self, path) -> None:
        key = self.key(path)
        if key:
            self.store.put_file(path, key)

    def removed(self, path) -> None:
        key = self.key(path)
        if key:
            self.store.delete(key)

    def moved(self, src, dst) -> None:
        self.removed(src)
        self.written(dst)

    def __enter__(self):
        WATCHERS.append(self)
        return self

    def __exit__(self, *exc):
        WATCHERS.remove(self)


def publish_folder(folder) -> int:
    """Every file under ``folder``, a folder another program wrote (a W&B run), told to
    the ``files.WATCHERS``: a staged worker's ``Mirror`` puts each to the store; where
    none watches, nothing happens. Returns how many files were told."""
    if not WATCHERS or not folder or not Path(folder).is_dir():
        return 0
    n = 0
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and not p.is_symlink() and not p.name.endswith(".tmp"):
            for w in list(WATCHERS):
                w.written(p)
            n += 1
    return n


def stored_as(path) -> str:
    """``path`` as the store names it (``URI/NAME/...``) where a ``Mirror`` puts it
    there (a staged worker's files), else ``path`` itself."""
    for w in WATCHERS:
        key = w.key(path) if isinstance(w, Mirror) else None
        if key:
            return f"{w.store.uri}/{key}"
    return str(path)


def stage(spec, trial_ids):
    """A worker's local copy of a group's trials from the store (their folders and
    checkpoints replaced by the store's), the spec with ``out``/``storage`` pointing
    there, its run folder, and the ``Mirror`` that puts what the trials write back."""
    store = Store(spec.storage)
    tag = hashlib.sha1(f"{spec.storage}\0{spec.name}".encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / "resablate-stage" / tag
    local = base / spec.name
    for tid in trial_ids:
        shutil.rmtree(local / "trials" / tid, ignore_errors=True)
        (local / "checkpoints" / f"{tid}.pt").unlink(missing_ok=True)
        store.download(f"{spec.name}/trials/{tid}", local / "trials" / tid)
        if store.exists(f"{spec.name}/checkpoints/{tid}.pt"):
            store.fetch(f"{spec.name}/checkpoints/{tid}.pt", local / "checkpoints" / f"{tid}.pt")
    staged = dataclasses.replace(spec, out=str(base), storage=str(local))
    return staged, str(local), Mirror(store, local, spec.name)


def tune_storage(spec) -> tuple[str, object]:
    """Ray Tune's ``storage_path`` and ``storage_filesystem``: ``URI/NAME/ray`` on the
    store, or the local folder (``spec.storage_dir``) with Tune's default filesystem."""
    if not is_uri(spec.storage):
        return os.path.abspath(spec.storage_dir), None
    store = Store(spec.storage)
    return store.path(f"{spec.name}/ray"), store.fs


def read_spec(uri: str, name: str) -> str | None:
    """``URI/NAME/spec.json``'s text, or None when the store has no such sweep."""
    store = check(uri)
    key = f"{name}/spec.json"
    return store.read(key).decode() if store.exists(key) else None


class RunSync:
    """The driver's side of a sweep on an object store; every method does nothing
    for a local ``--storage``."""

    def __init__(self, spec):
        self.spec = spec
        self.store = Store(spec.storage) if is_uri(spec.storage) else None

    def pull(self) -> None:
        """The workers' files (``WORKER_TOPS``) from the store into the local results
        folder, those changed since the last pull, and ``tuning/`` where the store's is
        longer (a fresh folder's ``--resume`` of a tuning sweep)."""
        if self.store is not None:
            spec_json = os.path.join(self.spec.run_dir, "spec.json")
            if not os.path.exists(spec_json) and self.store.exists(f"{self.spec.name}/spec.json"):
                self.store.fetch(f"{self.spec.name}/spec.json", spec_json)  # a fresh folder
            for top in WORKER_TOPS:
                self.store.download(f"{self.spec.name}/{top}",
                                    os.path.join(self.spec.run_dir, top))
            prefix = f"{self.spec.name}/tuning"  # the journal only grows: the longer one
            for key, (size, mtime) in self.store.list(prefix).items():
                local = Path(self.spec.run_dir, "tuning", key[len(prefix) + 1:])
                if not local.exists() or local.stat().st_size < size:
                    self.store.fetch(key, local, mtime)

    def reading(self, read_row):
        """``read_row(trial_id)`` that pulls the trial's folder from the store first (the
        progress line of a trial that just ended reads its fragment)."""
        if self.store is None:
            return read_row

        def read(trial_id):
            self.store.download(f"{self.spec.name}/trials/{trial_id}",
                                os.path.join(self.spec.run_dir, "trials", trial_id))
            return read_row(trial_id)
        return read

    def push(self) -> None:
        """The driver's files (spec.json, tables, measurements, report, figures, the
        tuning journal) to the store, and its own W&B offline runs (the figures run)."""
        if self.store is None:
            return
        self.store.upload_dir(self.spec.run_dir, self.spec.name, skip=SKIP_PUSH | {"wandb"})
        root = Path(self.spec.run_dir, "wandb")  # its own runs, not those pulled already
        have = self.store.list(f"{self.spec.name}/wandb")
        for p in sorted(root.glob("offline-run-*/**/*")):
            key = f"{self.spec.name}/wandb/{p.relative_to(root).as_posix()}"
            if p.is_file() and not p.is_symlink() and have.get(key, (None,))[0] != \
                    p.stat().st_size:
                self.store.put_file(p, key)

    def push_tuning(self) -> None:
        """The driver's ``tuning/`` (the Optuna journal) to the store, after each tuning
        sample: an interrupted search continues from the store."""
        if self.store is not None:
            self.store.upload_dir(os.path.join(self.spec.run_dir, "tuning"),
                                  f"{self.spec.name}/tuning")

    def mirror(self):
        """A context in which the driver's own writes under ``trials/`` reach the store."""
        if self.store is None:
            return _Nothing()
        return Mirror(self.store, self.spec.run_dir, self.spec.name, only={"trials"})


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
