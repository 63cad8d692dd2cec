"""Results folder I/O: atomic writes, per-trial fragments, merged tables, provenance.

Layout of ``<out>/<name>/``::

    spec.json          resolved spec + environment (git commit, versions, device)
    trials.parquet     one row per planned trial (a trial with no result is an error row)
    layers.parquet     tidy per-layer statistics
    epochs.parquet     per-epoch metrics (train mode)
    trials/<trial_id>/ each trial's own fragment (row.json, layers.parquet, ...,
                       measure-<name>.parquet: its rows of each measurement)
    measurements/      <name>.parquet: a measurement's rows of every trial (merged)
    weights/           kept networks (ablations.weights)
    figures/ tables/   written by analysis.report (sweep.py, python -m analysis; never here)

Every file is written to a temporary name in the same folder and renamed, so a
reader (or a crash) never sees half a file.

Damaged files (a disk or a network filesystem failing, a copy cut short) cost at
most their own trial: an unreadable fragment (``row.json`` that does not parse,
a ``*.parquet`` whose footer does not, or one that fails to load in ``merge``)
is moved aside, every file of it renamed ``<name>.corrupt`` (``.corrupt-2``, ...
when that exists; never deleted, never overwritten), a one-line warning names
it on stderr, and the trial counts as not finished, so ``--resume`` reruns it.
A damaged measurement fragment costs only itself: it is moved aside with one
warning line and ``python -m ablations.measure`` measures it again.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.status import Status
from ablations.files import atomic_write, move, write_text

def factor_columns() -> list[str]:
    """The key columns of every results row: trial, family, model, depth, each registered
    factor (``ablations.factors``; residual first), seed."""
    from .factors import names
    return ["trial_id", "family", "model", "depth", *names(), "seed"]


FACTORS = factor_columns()  # the registry at import; factor_columns() sees later entries
PACKAGES = ["torch", "torchvision", "ray", "optuna", "wandb", "seaborn", "pandas", "pyarrow",
            "numpy", "matplotlib"]


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_parquet(path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def checkpoint_path(storage_dir, trial_id: str) -> Path:
    """A trial's latest checkpoint; on storage every node reaches (``--storage``)."""
    return Path(storage_dir) / "checkpoints" / f"{trial_id}.pt"


def warn(message: str) -> None:
    """One line on stderr (a worker's stderr reaches the driver's through Ray)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def brief(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: fits one line."""
    text = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def move_aside(path) -> Path | None:
    """Rename ``path`` to ``<path>.corrupt`` (``.corrupt-2``, ... if taken): kept for a
    look, out of the way of a rerun. None when it is already gone (another process
    moved it first)."""
    path = Path(path)
    n, target = 1, path.with_name(path.name + ".corrupt")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{n}")
    try:
        move(path, target)
    except FileNotFoundError:
        return None
    return target


def read_attempts(run_dir, trial_id: str) -> int:
    """How many times ``trial_id`` has started (0: never; an unreadable count is moved
    aside and starts again at 0: it only labels rows, it must not stop the trial)."""
    p = trial_dir(run_dir, trial_id) / "attempts"
    if not p.exists():
        return 0
    try:
        return int(p.read_text())
    except ValueError as e:
        moved = move_aside(p)
        warn(f"{p} is unreadable ({brief(e)}); moved aside to {moved}; counting attempts "
             "of this trial from 0")
        return 0


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


MEASURE_PREFIX = "measure-"  # trials/<id>/measure-<name>.parquet (ablations.measure_run)


def frame_files(run_dir, trial_id: str) -> list[Path]:
    """A fragment's own Parquet files (not its measurement fragments, which are
    merged into measurements/ and cost only themselves when damaged)."""
    return [p for p in sorted(trial_dir(run_dir, trial_id).glob("*.parquet"))
            if not p.name.startswith(MEASURE_PREFIX)]


def layer_frame(trial, stats, phase: str, step: int = 0, epoch: int = 0) -> pd.DataFrame:
    """A LayerStats snapshot as tidy ``layers.parquet`` rows keyed by the trial's factors."""
    df = stats.frame()
    for k, v in trial.factors().items():
        df[k] = v
    df["phase"], df["step"], df["epoch"] = phase, step, epoch
    return df[factor_columns() + ["phase", "step", "epoch", "layer", "layer_index",
                                  "stat", "value"]]


def write_fragment(run_dir, trial_id: str, row: dict, frames: dict[str, pd.DataFrame]) -> None:
    """A trial's results; ``row.json`` is written last, so its presence means complete."""
    d = trial_dir(run_dir, trial_id)
    for name, df in frames.items():
        write_parquet(d / f"{name}.parquet", df)
    write_json(d / "row.json", row)


def read_fragment_row(run_dir, trial_id: str) -> dict | None:
    """A finished trial's row, or None: not finished, or its fragment was damaged and
    has just been moved aside (see the module docstring), so the trial runs again.

    The fragment's Parquet files are checked by their footer (about 25 us each), which
    catches a truncated, empty or overwritten file; damage inside a file that leaves the
    footer intact is found when ``merge`` loads it.
    """
    d = trial_dir(run_dir, trial_id)
    p = d / "row.json"
    try:
        row = json.loads(p.read_text())
        if not isinstance(row, dict) or "status" not in row:
            raise ValueError("not a result row (a JSON object with a status)")
    except FileNotFoundError:  # not finished (or just moved aside by another process)
        return None
    except ValueError as e:  # JSON and UTF-8 decoding errors are ValueErrors
        quarantine_fragment(run_dir, trial_id, p, e)
        return None
    import pyarrow.parquet as pq
    for f in frame_files(run_dir, trial_id):
        try:
            pq.read_metadata(f)
        except Exception as e:  # pyarrow's errors: ArrowInvalid, OSError, ...
            quarantine_fragment(run_dir, trial_id, f, e)
            return None
    return row


def quarantine_fragment(run_dir, trial_id: str, bad, error: BaseException) -> None:
    """Move a damaged fragment aside (``row.json`` and every ``frame_files`` Parquet of
    it: a rerun must not merge stale frames, e.g. when it ends in an error row that has
    none) and say so in one line. Its measurement fragments stay: the rerun rewrites
    them, and an error row's are not merged."""
    d = trial_dir(run_dir, trial_id)
    moved = [move_aside(p) for p in [d / "row.json", *frame_files(run_dir, trial_id)]
             if p.exists()]
    moved = [m.name for m in moved if m is not None]
    if moved:
        warn(f"{bad} is unreadable ({brief(error)}); moved aside in {d}: {', '.join(moved)}; "
             f"trial {trial_id} is unfinished again (--resume reruns it)")


def merge(run_dir, trials, final: bool = True) -> dict[str, pd.DataFrame]:
    """Merge every planned trial's fragment into the run's tables (and write them).

    ``final``: a planned trial without a fragment becomes a ``status=error`` row
    (nothing planned silently disappears from ``trials.parquet``); during a sweep
    (``final=False``) it is ``pending`` and only ``trials.parquet`` is refreshed.
    """
    rows, frames = [], {}
    for t in trials:
        row = read_fragment_row(run_dir, t.trial_id)
        loaded = _read_frames(run_dir, t.trial_id) if final and row is not None else {}
        if loaded is None:  # damaged inside a Parquet file: moved aside like a bad row
            row = None
        if row is None:
            row = {**t.record(),
                   **({"status": Status.ERROR, "error": _no_result(run_dir, t.trial_id)} if final
                      else {"status": Status.PENDING})}
        rows.append(row)
        for name, df in (loaded or {}).items():
            frames.setdefault(name, []).append(df)
    out = {"trials": pd.DataFrame(rows)}
    for name, parts in frames.items():
        out[name] = pd.concat(parts, ignore_index=True)
    for name, df in out.items():
        write_parquet(Path(run_dir) / f"{name}.parquet", df)
    if final:
        merge_measurements(run_dir, [r["trial_id"] for r in rows
                                     if r.get("status") in (Status.COMPLETED, Status.DIVERGED)])
    return out


def merge_measurements(run_dir, trial_ids) -> dict[str, pd.DataFrame]:
    """``measurements/<name>.parquet`` for each measurement with fragments among
    ``trial_ids`` (the concatenation, in their order). A fragment that does not load is
    moved aside with one warning line and left out: it costs only itself."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for tid in trial_ids:
        for p in sorted(trial_dir(run_dir, tid).glob(f"{MEASURE_PREFIX}*.parquet")):
            try:
                df = pd.read_parquet(p)
            except Exception as e:  # pyarrow: ArrowInvalid, OSError, ...
                moved = move_aside(p)
                if moved is not None:
                    warn(f"{p} is unreadable ({brief(e)}); moved aside to {moved.name}; "
                         f"`python -m ablations.measure {run_dir}` measures it again")
                continue
            parts.setdefault(p.stem.removeprefix(MEASURE_PREFIX), []).append(df)
    out = {name: pd.concat(dfs, ignore_index=True) for name, dfs in parts.items()}
    for name, df in out.items():
        write_parquet(Path(run_dir) / "measurements" / f"{name}.parquet", df)
    return out


def _read_frames(run_dir, trial_id: str) -> dict[str, pd.DataFrame] | None:
    """Every ``*.parquet`` of a fragment by name, or None (then moved aside) when one
    does not load: all of a trial's frames or none of them."""
    out = {}
    for p in frame_files(run_dir, trial_id):
        try:
            out[p.stem] = pd.read_parquet(p)
        except Exception as e:  # pyarrow: ArrowInvalid, OSError ("Corrupt snappy ..."), ...
            quarantine_fragment(run_dir, trial_id, p, e)
            return None
    return out


def _no_result(run_dir, trial_id: str) -> str:
    d = trial_dir(run_dir, trial_id)
    if any(d.glob("row.json.corrupt*")):
        run = Path(run_dir)
        return (f"its result was unreadable and is moved aside ({d}/*.corrupt*); "
                f"`python sweep.py --out {run.parent} --resume {run.name}` reruns it")
    return "trial produced no result"


def write_error(run_dir, trial, error: str) -> None:
    """``status=error`` for a trial that failed after all its retries, with the traceback."""
    write_fragment(run_dir, trial.trial_id,
                   {**trial.record(), "status": Status.ERROR, "error": error,
                    "attempts": read_attempts(run_dir, trial.trial_id),
                    "finished_at": time.time()}, {})


def archive_error(run_dir, trial_id: str) -> None:
    """Before ``--retry-failed`` reruns a trial: its error row moves to errors/<n>.json
    (kept, not deleted), so the trial counts as not done."""
    d = trial_dir(run_dir, trial_id)
    n = len(list((d / "errors").glob("*.json"))) + 1 if (d / "errors").exists() else 1
    (d / "errors").mkdir(parents=True, exist_ok=True)
    move(d / "row.json", d / "errors" / f"{n}.json")


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
    """Native bfloat16 on this CPU (AVX512-BF16 or AMX), read from /proc/cpuinfo; False
    when ATen is restricted below AVX512 (``ATEN_CPU_CAPABILITY=avx2``: its kernels then
    emulate bf16)."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if cap and not cap.startswith("avx512"):
        return False
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
    """spec.json's record of a new sweep: the resolved spec and where it runs."""
    from .spec import spec_to_dict
    return {"spec": spec_to_dict(spec), "environment": environment()}
