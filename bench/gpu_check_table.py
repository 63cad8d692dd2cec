"""The one table of ``bench/gpu_check.sh``, built from what its steps left in OUT.

Reads ``OUT/steps.tsv`` (step, exit code, start, end: written by the script),
``OUT/plain.log`` (the plain loop's own lines and the runner's device line) and the
sweeps' results folders ``OUT/runs/<step>/`` (``trials.parquet``, ``epochs.parquet``,
``spec.json``). A step that failed or left nothing becomes a row saying so, never a
traceback: the table is what the GPU check is for.

Definitions:
- images/s: the plain loop's own: epochs x training images / wall seconds of the
  training loop including each epoch's test evaluation (the trainer records that wall
  as ``wall_seconds``); one-time costs inside it (cuDNN warm-up, torch.compile) count.
- steady: epochs 2..E only (no warm-up, no compile). Plain loop: training images /
  median epoch time from its log (evaluation included); trainer: training images /
  median ``epoch_seconds`` (training steps only).
- at once: the most trials whose [started_at, finished_at] overlap at one instant
  (``max_overlap``; trials that only touch do not overlap).

usage: python bench/gpu_check_table.py OUT [--limit-s 300] [--started-at EPOCH_SECONDS]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import statistics
import sys

SKIPPED = -1  # exit code steps.tsv gives a step the script chose not to run
TRAIN_STEPS = ("train-fp32", "train-fp32-compile", "train-bf16", "train-bf16-compile")


def max_overlap(intervals) -> tuple[int, tuple[float, float] | None]:
    """(most intervals open at one instant, (from, to) of the first stretch with that many).

    >>> max_overlap([(0, 10), (1, 5), (2, 3)])
    (3, (2, 3))
    >>> max_overlap([(0, 1), (1, 2)])  # touching is not overlapping
    (1, (0, 1))
    """
    events = []
    for start, end in intervals:
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"not an interval: ({start}, {end})")
        events += [(start, 1), (end, -1)]
    events.sort()  # at one instant, ends (-1) before starts (+1)
    best, now, span = 0, 0, None
    for i, (t, step) in enumerate(events):
        now += step
        if now > best:  # the count changes again at the next event
            best, span = now, (t, events[i + 1][0])
    return best, span


def read_steps(out: str) -> dict:
    """``{step: {"rc", "start", "end"}}`` from OUT/steps.tsv (missing: empty)."""
    steps = {}
    try:
        with open(os.path.join(out, "steps.tsv")) as f:
            for line in f:
                name, rc, start, end = line.split()
                steps[name] = {"rc": int(rc), "start": float(start), "end": float(end)}
    except OSError:
        pass
    return steps


def parse_plain(text: str) -> dict:
    """The plain loop's figures from its log (and the runner's device line)."""
    got = {}
    for key in ("train_images_per_s", "final_test_acc", "total"):
        m = re.search(rf"^{key} ([0-9.]+)", text, re.M)
        if m:
            got[key] = float(m.group(1))
    times = [float(t) for t in re.findall(r"^epoch \d+ .* t ([0-9.]+)s$", text, re.M)]
    got["epochs"] = len(times)
    per_epoch = [b - a for a, b in zip([0.0] + times, times)][1:]  # epochs 2..E
    if per_epoch and min(per_epoch) > 0:
        got["epoch_s"] = statistics.median(per_epoch)
    m = re.search(r"^plain_loop_train_images (\d+)$", text, re.M)
    if m:
        got["images"] = int(m.group(1))
    m = re.search(r"^plain_loop_device (\S+): (.*)$", text, re.M)
    if m:
        got["device"], got["where"] = m.group(1), m.group(2)
    return got


def _read(run_dir: str):
    """(trials, epochs, spec record) of a results folder; parts that are missing: None."""
    import pandas as pd
    frames = []
    for name in ("trials", "epochs"):
        path = os.path.join(run_dir, f"{name}.parquet")
        frames.append(pd.read_parquet(path) if os.path.isfile(path) else None)
    try:
        with open(os.path.join(run_dir, "spec.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    return frames[0], frames[1], record


def _gpu(record) -> str:
    devices = (record or {}).get("environment", {}).get("cuda_devices") or []
    names = [d.get("name", str(d)) if isinstance(d, dict) else str(d) for d in devices]
    return names[0] if names else ""


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if x is not None and math.isfinite(x) else "-"


def plain_row(out: str, steps: dict) -> dict:
    row = {"part": "1 train", "run": "plain loop (../shared/bench/plain_loop.py)"}
    try:
        with open(os.path.join(out, "plain.log")) as f:
            p = parse_plain(f.read())
    except OSError:
        p = {}
    if "train_images_per_s" not in p:
        return {**row, "result": "failed", "detail": f"no result; see {out}/plain.log"
                + _rc(steps, "plain")}
    # per epoch; from the rounded figures when the runner's own count is missing
    images = p.get("images") or p["train_images_per_s"] * p["total"] / max(p["epochs"], 1)
    steady = images / p["epoch_s"] if "epoch_s" in p else None
    where = p.get("where", "no device line")
    return {**row, "device": p.get("device", "?") + ", fp32", "ips": p["train_images_per_s"],
            "result": f"{_n(p['train_images_per_s'])} img/s",
            "detail": f"steady {_n(steady)} img/s (epochs 2..{p['epochs']}, eval included); "
                      f"final test acc {p.get('final_test_acc', math.nan):.4f}; "
                      f"{p['epochs']} epochs x {images:.0f} images in {p['total']:.1f} s; "
                      f"{where}"}


def _rc(steps: dict, name: str) -> str:
    s = steps.get(name)
    if s is None:
        return " (step not run)"
    if s["rc"] == SKIPPED:
        return " (skipped by the script)"
    return f" (exit {s['rc']}{', timed out' if s['rc'] == 124 else ''}, {s['end'] - s['start']:.0f} s)"


def trainer_row(out: str, name: str, steps: dict) -> dict:
    label = "trainer " + name.removeprefix("train-").replace("-", " + ")
    row = {"part": "1 train", "run": label}
    if steps.get(name, {}).get("rc") == SKIPPED:
        return {**row, "result": "skipped", "detail": "not run in this mode (see the script)"}
    trials, epochs, record = _read(os.path.join(out, "runs", name))
    ok = trials is not None and len(trials) and trials["status"].iloc[0] == "completed"
    if not ok or epochs is None or not len(epochs):
        status = trials["status"].iloc[0] if trials is not None and len(trials) else "no result"
        return {**row, "result": "failed", "detail": f"{status}; see {out}/{name}.log"
                + _rc(steps, name)}
    t = trials.iloc[0]
    e = epochs.sort_values("epoch")
    n = float((e["train_images_per_s"] * e["epoch_seconds"]).iloc[0])  # training images
    ips = t["epochs_run"] * n / t["wall_seconds"]
    later = e[e["epoch"] >= 2]["epoch_seconds"]
    steady = n / float(later.median()) if len(later) else None
    compiled = bool(((record or {}).get("spec", {}).get("train", {})).get("compile"))
    gpu = _gpu(record)
    return {**row, "device": f"{t['device']}, {t['precision']}" + (", compiled" if compiled
                                                                   else ""),
            "ips": ips, "result": f"{_n(ips)} img/s",
            "detail": f"steady {_n(steady)} img/s (epochs 2..{int(t['epochs_run'])}, training "
                      f"only); final test acc {t['final_test_acc']:.4f}; {int(t['epochs_run'])} "
                      f"epochs x {n:.0f} images, wall {t['wall_seconds']:.1f} s"
                      + (f"; {gpu}" if gpu else "")}


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-4]


def concurrent_row(out: str, steps: dict, name: str = "concurrent") -> dict:
    trials, _, record = _read(os.path.join(out, "runs", name))
    spec = (record or {}).get("spec", {})
    gpt, cpt = spec.get("gpus_per_trial"), spec.get("cpus_per_trial")
    share = f"--gpus-per-trial {gpt:g}" if gpt else \
        f"--cpus-per-trial {cpt:g}, no GPU" if cpt else "sharing one machine"
    row = {"part": "2 sharing",
           "run": f"{len(trials) if trials is not None else '?'} trials, {share}"}
    if trials is None or "started_at" not in trials:
        return {**row, "result": "failed", "detail": f"no trials; see {out}/{name}.log"
                + _rc(steps, name)}
    done = trials.dropna(subset=["started_at", "finished_at"]).sort_values("started_at")
    if done.empty:
        return {**row, "result": "failed", "detail": f"no trial finished; see {out}/{name}.log"}
    most, span = max_overlap(zip(done["started_at"], done["finished_at"]))
    t0 = float(done["started_at"].min())
    rel = lambda ts: "/".join(f"{x - t0:+.1f}" for x in ts)  # noqa: E731
    pids = done["pid"].nunique() if "pid" in done else "?"
    devices = ",".join(sorted(set(done["device"].astype(str)))) if "device" in done else "?"
    return {**row, "device": f"{devices}, {','.join(sorted(set(done['precision'])))}"
            if "precision" in done else devices,
            "result": f"{most} of {len(trials)} at once",
            "detail": f"all {most} running from {span[0] - t0:+.1f} s to {span[1] - t0:+.1f} s "
                      f"({span[1] - span[0]:.1f} s) after the first start at {_clock(t0)} "
                      f"({dt.datetime.fromtimestamp(t0).date()}); started_at "
                      f"{rel(done['started_at'])} s, finished_at {rel(done['finished_at'])} s; "
                      f"{pids} worker processes"
                      + (f"; {_gpu(record)}" if _gpu(record) else "")}


def probe_row(out: str, steps: dict, name: str = "probe") -> dict:
    trials, _, record = _read(os.path.join(out, "runs", name))
    spec = (record or {}).get("spec", {})
    what = (f"probe {','.join(spec.get('families', []))} depths "
            f"{','.join(str(d) for d in spec.get('depths', []))}, {spec.get('seeds')} seeds"
            if spec else "probe")
    row = {"part": "3 probe", "run": what}
    if trials is None or not len(trials):
        return {**row, "result": "failed", "detail": f"no probes; see {out}/{name}.log"
                + _rc(steps, name)}
    timing = ((record or {}).get("invocations") or [{}])[-1].get("timing", {})
    run_s = timing.get("run_ended_at", math.nan) - timing.get("run_started_at", math.nan)
    whole = steps.get(name)
    done = int((trials["status"] == "completed").sum())
    # probe mode records no device; ablations/trial.py run_probe_group passes none to the probe
    device = ",".join(sorted(set(trials["device"].astype(str)))) if "device" in trials else \
        "cpu (probe mode has no device path)"
    return {**row, "device": device, "result": f"{_n(len(trials) / run_s)} probes/s",
            "detail": f"{len(trials)} probes ({done} completed) in {run_s:.1f} s of Tune run "
                      "(one results fragment per probe included)"
                      + (f"; whole command {whole['end'] - whole['start']:.1f} s" if whole
                         else "")}


def total_row(steps: dict, limit_s: float, started_at: float | None = None) -> dict:
    if not steps:
        return {"part": "all", "run": "script", "result": "-", "detail": "no steps.tsv"}
    first = min(s["start"] for s in steps.values())
    wall = max(s["end"] for s in steps.values()) - min(first, started_at or first)
    parts = ", ".join(f"{k} skipped" if v["rc"] == SKIPPED else
                      f"{k} {v['end'] - v['start']:.0f} s"
                      + ("" if v["rc"] == 0 else f" (exit {v['rc']})")
                      for k, v in steps.items())
    verdict = "within" if wall <= limit_s else "OVER"
    checks = f"checks before the steps {first - started_at:.0f} s, " if started_at else ""
    return {"part": "all", "run": "whole check", "result": f"{wall:.0f} s",
            "detail": f"{verdict} the {limit_s:.0f} s limit (this table not included); "
                      f"{checks}{parts}"}


def _safe(build, part: str, *args) -> dict:
    """``build(*args)``, or a row naming the fault: a damaged file must not cost the table."""
    try:
        return build(*args)
    except Exception as e:  # noqa: BLE001
        return {"part": part, "run": getattr(build, "__name__", "?"), "result": "unreadable",
                "detail": f"{type(e).__name__}: {e}"}


def build_rows(out: str, limit_s: float = 300.0, started_at: float | None = None
               ) -> list[dict]:
    steps = read_steps(out)
    rows = [_safe(plain_row, "1 train", out, steps)]
    rows += [_safe(trainer_row, "1 train", out, name, steps) for name in TRAIN_STEPS
             if name in steps or os.path.isdir(os.path.join(out, "runs", name))]
    rows += [_safe(concurrent_row, "2 sharing", out, steps),
             _safe(probe_row, "3 probe", out, steps), _safe(total_row, "all", steps, limit_s, started_at)]
    plain = rows[0].get("ips")
    for r in rows[1:]:
        if plain and r.get("ips"):
            r["ratio"] = f"{r['ips'] / plain:.2f}x"
    return rows


COLUMNS = (("part", "part"), ("run", "run"), ("device", "device, precision"),
           ("result", "result"), ("ratio", "vs plain"), ("detail", "detail"))


def format_table(rows: list[dict]) -> str:
    """A Markdown table; each column as wide as its widest cell (the detail column last)."""
    cells = [[h for _, h in COLUMNS]] + [[str(r.get(k, "") or "") for k, _ in COLUMNS]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)] + [0]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * max(w, 3) for w in widths])]
                     + [line(c) for c in cells[1:]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check_table.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the folder bench/gpu_check.sh wrote")
    ap.add_argument("--limit-s", type=float, default=300.0, help="time limit of the whole check")
    ap.add_argument("--started-at", type=float, default=None,
                    help="when the check started (epoch seconds): counted in its total")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.out):
        print(f"gpu_check_table.py: error: no folder {a.out}", file=sys.stderr)
        return 2
    table = format_table(build_rows(a.out, a.limit_s, a.started_at))
    print(table)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
