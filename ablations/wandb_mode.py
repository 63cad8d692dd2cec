"""Which W&B mode a sweep runs in, decided without prompting or logging in.

``--wandb auto`` is ``online`` when credentials are configured (``WANDB_API_KEY``,
an identity token file, or a netrc entry for the W&B host) *and* the server answers
within ``PROBE_TIMEOUT`` (3 s), and ``offline`` otherwise; ``resolve_mode`` returns
the mode with a one-line reason for the console. ``online`` without credentials
degrades to ``offline``: tracking never stops a sweep.

Never interactive: ``wandb.login`` is never called and an online run is only
attempted with credentials (wandb would otherwise prompt on a terminal); a plain
HTTP request (no credentials sent) checks first that the server answers, so an
unreachable one costs at most ``PROBE_TIMEOUT`` per run. No wandb import here.
"""
from __future__ import annotations

import configparser
import netrc
import os
import shlex
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .results import brief

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
PROBE_TIMEOUT = 3.0       # seconds for the server to answer before a run goes offline


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


def sync_hint(run_dir) -> str:
    """How to upload the offline runs later, for a warning or the console."""
    if run_dir is None:
        return "upload later with `wandb sync`"
    return f"upload later with: {sync_command_for(run_dir)}"


def sync_command_for(run_dir) -> str:
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
    later = sync_hint(run_dir)
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
