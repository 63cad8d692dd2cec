"""The Ray processes this test session started, and only those.

``tests/conftest.py`` puts ``RESABLATE_TEST_RAY=<a fresh token>`` in the environment of
the pytest process; every process a test starts (a ``sweep.py``, the Ray it starts,
``ray start`` nodes, their workers) inherits it, and Ray rewrites process titles but
not environments. So a test finds and kills its own Ray by that token, never another
session's or another user's Ray on a shared machine (``pgrep -f raylet`` or ``ray stop
--force`` would). Not collected as a test.
"""
from __future__ import annotations

import os
import re
import signal
import time

MARK = "RESABLATE_TEST_RAY"


def marker() -> str:
    return os.environ[MARK]


def marked_pids(pattern: str | None = None, token: str | None = None) -> set[int]:
    """Pids of the processes carrying ``RESABLATE_TEST_RAY=<token>`` (this session's by
    default) whose command line (as ``pgrep -f`` sees it) matches ``pattern``."""
    needle = f"{MARK}={token or marker()}".encode()
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            if pattern is not None:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
                if not re.search(pattern, cmdline):
                    continue
        except OSError:
            continue
        found.add(int(pid))
    return found


def kill_marked(token: str | None = None, pids=None, seconds: float = 30) -> None:
    """SIGKILL ``pids`` (default: every process of ``token``, this session's by default)
    and wait until they are gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = set(pids) if pids is not None else marked_pids(token=token)
        left = {p for p in left if os.path.exists(f"/proc/{p}")}
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
