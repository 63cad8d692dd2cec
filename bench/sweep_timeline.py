"""Where a short sweep's wall time goes: the sweep benchmark's workload
(`bench/sweep_bench.py`) through `cluster.connect` + `runner.run_groups`, with a timeline.

Prints, relative to the start of `runner.run_groups`:
- when each Ray process appeared (sampled from /proc every 0.1 s),
- each trial's start and end on its worker,
- the CPU seconds every busy process used before the first trial started and after,

and one summary line (Ray start-up, run_groups wall, first trial start, efficiency).
Linux only (reads /proc).

usage: python bench/sweep_timeline.py [--epochs 8] [--subset 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ablations import cluster, results, runner  # noqa: E402
from ablations.arguments import spec_from_args  # noqa: E402
from ablations.plan import expand  # noqa: E402

import sweep  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
from sweep_bench import sweep_args  # noqa: E402


class ProcSampler(threading.Thread):
    """Every 0.1 s: each process's command line (first seen) and CPU seconds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen, self.cpu, self.stop = {}, {}, False
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self):
        while not self.stop:
            now = time.time()
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(d) not in self.seen:
                        with open(f"/proc/{d}/cmdline", "rb") as f:
                            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                        self.seen[int(d)] = (now, cmd)
                except OSError:
                    continue
                used = (int(fields[11]) + int(fields[12])) / self.tick
                self.cpu.setdefault(int(d), []).append((now, used))
            time.sleep(0.1)

    def cpu_at(self, pid, t):
        used = 0.0
        for ts, c in self.cpu.get(pid, []):
            if ts <= t:
                used = c
        return used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--subset", type=int, default=2000)
    args = ap.parse_args()
    import ray

    sampler = ProcSampler()
    sampler.start()
    spec = spec_from_args(sweep.build_parser().parse_args(
        sweep_args(args.epochs, args.subset)
        + ["--out", tempfile.mkdtemp(prefix="sweep-timeline-"), "--name", "timeline"]))
    trials, _ = expand(spec)
    t0 = time.time()
    cluster.connect(None, prewarm=cluster.plan_local(spec, len(trials)))
    t1 = time.time()
    errors = runner.run_groups([[t] for t in trials], spec, spec.run_dir, "bench")
    t2 = time.time()
    sampler.stop = True
    ray.shutdown()
    assert not errors, errors
    rows = [results.read_fragment_row(spec.run_dir, t.trial_id) for t in trials]
    first = min(r["started_at"] for r in rows)
    compute = sum(r["wall_seconds"] for r in rows)

    print("processes (appeared, relative to run_groups start):")
    for pid, (ts, cmd) in sorted(sampler.seen.items(), key=lambda kv: kv[1][0]):
        if "ray" in cmd and ts >= t0 - 1:
            print(f"  {pid:>7} {ts - t1:6.2f} {cmd[:100]}")
    print("trials (start of the trial function, start of training, end):")
    for r in sorted(rows, key=lambda r: (r["pid"], r["started_at"])):
        print(f"  pid {r['pid']} {r['started_at'] - t1:6.2f} "
              f"{r['finished_at'] - r['wall_seconds'] - t1:6.2f} {r['finished_at'] - t1:6.2f}")
    print("CPU seconds: [run_groups start, first trial start)  [first trial start, end]")
    for pid in sorted(sampler.cpu):
        a, b, c = (sampler.cpu_at(pid, t) for t in (t1, first, t2))
        if c - a > 0.05:
            print(f"  {pid:>7} {b - a:6.2f} {c - b:6.2f}  {sampler.seen[pid][1][:90]}")
    print(f"ray start {t1 - t0:.2f} s, run_groups {t2 - t1:.2f} s, first trial at "
          f"{first - t1:.2f} s, compute {compute:.2f} s, efficiency {compute / 2 / (t2 - t1):.3f}, "
          f"from ray start {compute / 2 / (t2 - t0):.3f}")


if __name__ == "__main__":
    main()
