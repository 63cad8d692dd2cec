"""Publishing a sweep's W&B Report: the only part of ``analysis`` that talks to W&B.

``publish`` syncs the sweep's offline runs (``wandb sync`` into ENTITY/PROJECT, so the
report's run sets find them), saves the report (``analysis.wandb_report.build_report``)
and records its URL in spec.json (``wandb_report_url``) and wandb_report.json (``url``).
It never raises, never prompts and never prints the key: ``WANDB_MODE`` offline or
disabled, no credentials (``ablations.tracking.has_credentials``: ``WANDB_API_KEY``, an
identity token file or a netrc entry) or no answer from the server within 3 s
(``tracking.server_problem``) return at once with one line naming the command to run
later; the sync and the save together are bounded by ``timeout`` seconds.

The report's run sets look in ENTITY/PROJECT: offline runs are synced there, but runs an
online sweep logged elsewhere (``WANDB_ENTITY``/``WANDB_PROJECT`` at sweep time) are not
moved, so publish an online sweep to the project it logged to.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ablations import results as _results
from ablations import tracking, wandb_log
from analysis.wandb_report import (SPEC_FILE, build_report, parse_target, publish_command,
                                   write_spec)

PUBLISH_TIMEOUT = 300.0  # seconds for sync + save together
# wandb sync's failures are ERROR lines with exit code 0, and WANDB_SILENT hides them
SYNC_ENV = {"WANDB_SILENT": "false", "WANDB_ERROR_REPORTING": "false"}


def _redact(text: str) -> str:
    key = os.environ.get("WANDB_API_KEY", "").strip()
    return text.replace(key, "***") if key else text


def _readable(run_folder: Path) -> bool:
    """A run log that starts with its run record: ``wandb sync`` stops at the first one
    that does not (an attempt killed before wandb wrote it), syncing nothing after it
    and exiting 0."""
    try:
        return wandb_log.read_offline_run(run_folder)["id"] is not None
    except Exception:
        return False


def sync_offline_runs(run_dir, entity: str, project: str, timeout: float) -> str:
    """``wandb sync`` into entity/project of the sweep's readable offline runs not synced
    yet, killed with its process group after ``timeout`` s; returns what it did, raises on
    a failure (an exit code, or an ERROR line: wandb sync can fail and exit 0)."""
    found = [d for d in tracking.offline_run_dirs(run_dir) if not any(d.glob("*.synced"))]
    todo = [d for d in found if _readable(d)]
    skipped = f", {len(found) - len(todo)} unreadable skipped" if len(found) > len(todo) else ""
    if not todo:
        return "no offline runs to sync" + skipped
    cmd = [sys.executable, "-m", "wandb", "sync", "--entity", entity, "--project", project,
           *(str(d.resolve()) for d in todo)]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: no wait on grandchildren
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ, **SYNC_ENV},
                                cwd=run_dir)  # its debug logs go to RESULTS/wandb/
        try:
            code = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"`wandb sync` still running after {timeout:.0f} s") from None
        log.seek(0)
        lines = [ln.strip() for ln in log.read().splitlines() if ln.strip()] or [""]
    errors = [ln.removeprefix("wandb: ") for ln in lines if "ERROR" in ln]
    if code or errors:
        what = f"`wandb sync`: {errors[-1]}" if errors else \
            f"`wandb sync` exited with {code}: {lines[-1]}"
        raise RuntimeError(_redact(what[:240]))
    return f"synced {len(todo)} offline run(s){skipped}"


def _bounded(fn, timeout: float):
    """``fn()`` in a daemon thread; TimeoutError when it has not returned in ``timeout`` s."""
    out: list = []

    def attempt():
        try:
            out.append((True, fn()))
        except BaseException as e:  # wandb may exit; the caller must not
            out.append((False, e if isinstance(e, Exception) else RuntimeError(repr(e))))
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(max(timeout, 1.0))
    if not out:
        raise TimeoutError(f"no answer from W&B within {timeout:.0f} s")
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _record_url(run_dir: Path, url: str, write_spec) -> str:
    """``wandb_report_url`` in spec.json (atomic) and ``write_spec(url)``: "" when both
    are done, else what was not (a damaged spec.json is left as it is)."""
    path = run_dir / "spec.json"

    def in_spec():
        record = json.loads(path.read_text()) if path.is_file() else {}
        _results.write_json(path, {**record, "wandb_report_url": url})
    notes = []
    for name, fn in (("spec.json", in_spec), (SPEC_FILE, lambda: write_spec(url))):
        try:
            fn()
        except Exception as e:
            notes.append(f"; URL not recorded in {name} ({_results.brief(e)})")
    return "".join(notes)


def publish(run_dir, entity_project: str, timeout: float = PUBLISH_TIMEOUT,
            findings=None) -> tuple[str | None, str]:
    """Sync the sweep's offline runs to ENTITY/PROJECT, save its report there and record the
    URL (spec.json ``wandb_report_url``, wandb_report.json ``url``).

    Returns (url or None, one line for the console). Never raises, never prompts, never
    prints or returns the key. Without credentials, with ``WANDB_MODE`` offline/disabled,
    or without an answer from the server within 3 s, it returns at once with the command
    to run later; sync and save together are bounded by ``timeout`` seconds. A failed
    sync does not stop the save (the report shows runs as they arrive), it is named.
    """
    run_dir = Path(run_dir)
    later = f"publish later with: {publish_command(run_dir, str(entity_project))}"
    note = ""
    try:
        entity, project = parse_target(entity_project)
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        problem = (f"WANDB_MODE={mode}" if mode in ("offline", "disabled", "dryrun") else
                   None if tracking.has_credentials() else
                   "no W&B credentials (set WANDB_API_KEY or run `wandb login`)")
        problem = problem or tracking.server_problem()
        if problem:
            return None, f"W&B report not published: {problem}; {later}"
        for key, value in tracking.QUIET_ENV.items():
            os.environ.setdefault(key, value)
        deadline = time.monotonic() + timeout
        try:
            note, retry = sync_offline_runs(run_dir, entity, project, timeout), ""
        except Exception as e:
            note, retry = f"offline runs not synced: {_results.brief(e, 300)}", f"; {later}"
        report = build_report(run_dir, entity, project, findings)
        url = _bounded(lambda: report.save().url, deadline - time.monotonic())
        note += _record_url(run_dir, url, lambda u: write_spec(run_dir, entity, project,
                                                               findings, url=u))
        return url, _redact(f"W&B report: {url} ({note}){retry}")
    except Exception as e:
        note = f" ({note})" if note else ""
        return None, _redact(f"W&B report not published: {_results.brief(e)}{note}; {later}")
