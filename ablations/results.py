"""Results folder I/O: atomic writes, per-trial fragments, merged tables, provenance.

Layout of ``<out>/<name>/``::

    spec.json          resolved spec + environment (git commit, versions, device)
    trials.parquet     one row per planned trial (a trial with no result is an error row)
    layers.parquet     tidy per-layer statistics
    epochs.parquet     per-epoch metrics (train mode)
    trials/<trial_id>/ each trial's own fragment (row.json, layers.parquet, ...)
    figures/ tables/   written by analysis.report

Every file is written to a temporary name in the same folder and renamed, so a
reader (or a crash) never sees half a file.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FACTORS = ["trial_id", "family", "model", "depth", "residual", "seed"]
PACKAGES = ["torch", "torchvision", "ray", "optuna", "wandb", "seaborn", "pandas", "pyarrow",
            "numpy", "matplotlib"]


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_parquet(path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def checkpoint_path(storage_dir, trial_id: str) -> Path:
    """A trial's latest checkpoint; on storage every node reaches (``--storage``)."""
    return Path(storage_dir) / "checkpoints" / f"{trial_id}.pt"


def read_attempts(run_dir, trial_id: str) -> int:
    """How many times ``trial_id`` has started (0: never)."""
    p = trial_dir(run_dir, trial_id) / "attempts"
    return int(p.read_text()) if p.exists() else 0


def count_attempt(run_dir, trial_id: str) -> int:
    """Record that ``trial_id`` starts (again); returns the attempt number (1 = first)."""
    n = read_attempts(run_dir, trial_id) + 1
    write_text(trial_dir(run_dir, trial_id) / "attempts", str(n))
    return n


def write_npz(path, arrays: dict) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
    atomic_write(path, write)


def trial_dir(run_dir, trial_id: str) -> Path:
    return Path(run_dir) / "trials" / trial_id


def write_fragment(run_dir, trial_id: str, row: dict, frames: dict[str, pd.DataFrame]) -> None:
    """A trial's results; ``row.json`` is written last, so its presence means complete."""
    d = trial_dir(run_dir, trial_id)
    for name, df in frames.items():
        write_parquet(d / f"{name}.parquet", df)
    write_json(d / "row.json", row)


def read_fragment_row(run_dir, trial_id: str) -> dict | None:
    p = trial_dir(run_dir, trial_id) / "row.json"
    return json.loads(p.read_text()) if p.exists() else None


def merge(run_dir, trials, final: bool = True) -> dict[str, pd.DataFrame]:
    """Merge every planned trial's fragment into the run's tables (and write them).

    ``final``: a planned trial without a fragment becomes a ``status=error`` row
    (nothing planned silently disappears from ``trials.parquet``); during a sweep
    (``final=False``) it is ``pending`` and only ``trials.parquet`` is refreshed.
    """
    rows, frames = [], {}
    for t in trials:
        row = read_fragment_row(run_dir, t.trial_id)
        if row is None:
            row = {**t.record(),
                   **({"status": "error", "error": "trial produced no result"} if final
                      else {"status": "pending"})}
        rows.append(row)
        if final:
            for p in sorted(trial_dir(run_dir, t.trial_id).glob("*.parquet")):
                frames.setdefault(p.stem, []).append(pd.read_parquet(p))
    out = {"trials": pd.DataFrame(rows)}
    for name, parts in frames.items():
        out[name] = pd.concat(parts, ignore_index=True)
    for name, df in out.items():
        write_parquet(Path(run_dir) / f"{name}.parquet", df)
    return out


def write_error(run_dir, trial, error: str) -> None:
    """``status=error`` for a trial that failed after all its retries, with the traceback."""
    write_fragment(run_dir, trial.trial_id,
                   {**trial.record(), "status": "error", "error": error,
                    "attempts": read_attempts(run_dir, trial.trial_id),
                    "finished_at": time.time()}, {})


def archive_error(run_dir, trial_id: str) -> None:
    """Before ``--retry-failed`` reruns a trial: its error row moves to errors/<n>.json
    (kept, not deleted), so the trial counts as not done."""
    d = trial_dir(run_dir, trial_id)
    n = len(list((d / "errors").glob("*.json"))) + 1 if (d / "errors").exists() else 1
    (d / "errors").mkdir(parents=True, exist_ok=True)
    os.replace(d / "row.json", d / "errors" / f"{n}.json")


def git_commit() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty.strip() else "")) if sha else "unknown"


def cpu_has_bf16() -> bool:
    """Native bfloat16 on this CPU (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def environment() -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    import torch
    return {"git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions,
            "cpu_count": os.cpu_count(), "cpu_bf16": cpu_has_bf16(),
            "cuda_devices": [torch.cuda.get_device_name(i)
                             for i in range(torch.cuda.device_count())]}


def spec_record(spec) -> dict:
    return {"spec": dataclasses.asdict(spec), "environment": environment()}
