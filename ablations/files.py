"""The one way the project writes a file: atomically, with the mode the umask gives.

Every results file, kept network, table, figure and report goes through
``atomic_write``: it is written to a temporary file in the target's folder and renamed
onto the target (``os.replace``, atomic within one filesystem), so a reader never sees
half a file and an interrupted run never leaves one behind; on failure the temporary
file is removed and the target is left as it was. The temporary file is created
private (``mkstemp``: 0600); before the rename it gets the mode a plain ``open`` would
have given (0666 minus the umask: 0644 under umask 022, 0600 under 077), so colleagues
on a shared filesystem or a web server can read a sweep's results when the umask says so.

``WATCHERS``: objects told of every file written (``written(path)``) or moved
(``moved(src, dst)``) or removed (``removed(path)``) through this module; ``ablations.storage`` mirrors a trial's
files to an object store this way (empty, and so free, otherwise).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

WATCHERS: list = []  # see the module docstring


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else
    by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write, notify: bool = True) -> str:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto
    ``path`` (creating the folder); ``WATCHERS`` are told unless ``notify`` is false.
    Returns ``str(path)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if notify:
        for w in WATCHERS:
            w.written(path)
    return str(path)


def remove(path: str | os.PathLike) -> None:
    """``os.unlink(path)``, and ``WATCHERS`` told."""
    os.unlink(path)
    for w in WATCHERS:
        w.removed(Path(path))


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)``, and ``WATCHERS`` told."""
    os.replace(src, dst)
    for w in WATCHERS:
        w.moved(Path(src), Path(dst))


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns ``str(path)``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically. Returns ``str(path)``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
