"""W&B's run log read back without a server: an offline run folder's
``run-<id>.wandb`` as its records (``run_records``) and as plain values
(``read_offline_run``).

wandb 0.31 ships no Python reader for this log. The format is a LevelDB-style log:
a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of
records, each with a CRC32/length/type header and split FIRST/MIDDLE/LAST across
blocks, of ``wandb_internal_pb2.Record`` protobufs. The tracker waits here for a
run's exit record (``wait_for_exit_record``); tests and ``analysis.wandb_publish``
read runs back.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from .results import warn

_BLOCK, _HEADER = 32768, 7                  # LevelDB log: block size, record header size
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_records(path) -> list[bytes]:
    """The records of a ``.wandb`` log; a truncated tail (a killed writer) is dropped."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER].ljust(_HEADER, b"\0"))
    if (ident, magic) != (b":W&B", 0xBEE1) or version != 0:
        raise ValueError(f"{path}: not a version-0 W&B log ({ident!r}, {magic:#x}, {version})")
    records, parts, pos = [], [], _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:     # block trailer: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:           # preallocated zeros: skip the block
            pos += -pos % _BLOCK
            continue
        if len(chunk) < length:
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos - length - _HEADER}")
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        elif kind in (_MIDDLE, _LAST):
            parts.append(chunk)
        if kind in (_FULL, _LAST):
            records.append(b"".join(parts))
    return records


def run_records(run_folder):
    """(record type, ``wandb_internal_pb2.Record``) of a run folder's ``run-<id>.wandb``."""
    from wandb.proto import wandb_internal_pb2 as pb
    logs = sorted(Path(run_folder).glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_folder}: no run-*.wandb log (not a W&B run folder?)")
    for raw in _log_records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        yield record.WhichOneof("record_type"), record


def wait_for_exit_record(run_folder, timeout: float) -> None:
    """Wait for the exit record, the last one, to be on disk.

    ``run.finish()`` returns before wandb-core has closed the run's log (the
    service is told to close the stream and nobody waits): the last block,
    up to 32 KiB of history, summary and the exit record, can lag behind.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(kind == "exit" for kind, _ in run_records(run_folder)):
                return
        except (OSError, ValueError):  # not created yet, or caught mid-write
            pass
        time.sleep(0.02)
    warn(f"W&B run {run_folder} not complete on disk after {timeout:.0f} s; "
         "wandb-core is still writing it")


def _apply(target: dict, item, value) -> None:
    """Set ``item``'s key (``key`` or ``nested_key`` path) in ``target``."""
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = value


def _remove(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.get(k, {})
    target.pop(keys[-1], None)


def _update(target: dict, updates, removes) -> None:
    for item in updates:
        _apply(target, item, json.loads(item.value_json) if item.value_json else None)
    for item in removes:
        _remove(target, item)


def read_offline_run(path) -> dict:
    """An offline run folder read back without a server.

    Returns ``{"id", "name", "group", "project", "job_type", "config", "history",
    "summary", "exit_code"}``: config values as plain JSON values (wandb's own
    ``_wandb`` entry dropped), history as one dict per logged step (with
    ``_step``, ``_runtime``, ``_timestamp``; media as their JSON descriptors),
    summary with every update applied in order, ``exit_code`` None when the run
    never finished (a killed process).
    """
    out = {"id": None, "name": None, "group": None, "project": None, "job_type": None,
           "config": {}, "history": [], "summary": {}, "exit_code": None}
    for kind, record in run_records(path):
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, name=r.display_name, group=r.run_group,
                       project=r.project, job_type=r.job_type)
            _update(out["config"], r.config.update, r.config.remove)
        elif kind == "config":
            _update(out["config"], record.config.update, record.config.remove)
        elif kind == "history":
            row: dict = {}
            _update(row, record.history.item, [])
            out["history"].append(row)
        elif kind == "summary":
            _update(out["summary"], record.summary.update, record.summary.remove)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    out["config"].pop("_wandb", None)
    return out
