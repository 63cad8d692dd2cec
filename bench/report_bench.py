"""Report build time, serial (``--jobs 1``, the build as it was) against parallel (the default).

Workload: the results folder of the sweep benchmark (bench/sweep_bench.py: 12 MLP
trials, depths 4, 6, 8, plain and residual, 2 seeds, 8 epochs on synthetic data),
made once by the script with

    python sweep.py --recipe seed --families mlp --depths 4,6,8 --residual both --seeds 2 \\
        --dataset synthetic --subset 2000 --epochs 8 --milestones '' --lr 0.02 \\
        --cpus-per-trial 1 --wandb disabled --measure none --keep-weights none \\
        --out TMP --name w

unless ``--run DIR`` names one. Its report has 6 figures (PDF + PNG) and 7 tables.

Arms, each a fresh process, alternated ``--repeats`` times:
  command  ``python -m analysis RUN --out OUT --jobs J``: the whole command (Python
           start, imports, the build, the W&B report spec), wall seconds
  build    ``analysis.report.build(RUN, out_dir=OUT, jobs=J)`` timed inside a fresh
           process (imports excluded)
with J = 1 (serial) and J = ``--jobs`` (default auto: one per CPU). Each J writes to
its own OUT; at the end the two must hold the same files and the same report.md
(but for its time stamp and folder name); the script says which PNGs differ in bytes.
The load average before each run is printed: on a shared machine, a run beside
another busy process says little about a parallel build.

usage: python bench/report_bench.py [--run DIR] [--repeats 3] [--jobs auto]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from sweep_bench import sweep_args  # noqa: E402  the same workload, flag for flag

TIME_BUILD = ("import sys, time; import matplotlib; matplotlib.use('Agg'); "
              "from analysis.report import build; t = time.perf_counter(); "
              "build(sys.argv[1], out_dir=sys.argv[2], jobs=None if sys.argv[3] == 'auto' "
              "else int(sys.argv[3])); print(time.perf_counter() - t)")


def make_results(tmp: Path) -> Path:
    cmd = [sys.executable, "sweep.py", *sweep_args(8, 2000), "--out", str(tmp), "--name", "w"]
    print("making the results folder:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return tmp / "w"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # its workers included: it waits for them
    return r.ru_utime + r.ru_stime


def command(run: Path, out: Path, jobs: str | None, cwd: Path = ROOT) -> tuple[float, float]:
    """(wall, CPU) seconds of the whole command (``jobs`` None: an old checkout's
    command, which has no --jobs)."""
    c, t = _cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "analysis", str(run), "--out", str(out)]
                   + (["--jobs", jobs] if jobs else []), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, _cpu() - c


def build(run: Path, out: Path, jobs: str) -> tuple[float, None]:
    done = subprocess.run([sys.executable, "-c", TIME_BUILD, str(run), str(out), jobs],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1]), None


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def compare(out1: Path, outn: Path) -> None:
    a, b = _files(out1), _files(outn)
    print(f"files: serial {len(a)}, parallel {len(b)}, same set: {set(a) == set(b)}")
    if set(a) != set(b):
        print("  only serial:", sorted(set(a) - set(b)), "only parallel:", sorted(set(b) - set(a)))

    def md(raw: bytes, out: Path) -> list[str]:
        return [ln for ln in raw.decode().replace(str(out), "OUT").splitlines()
                if not ln.startswith("Generated ")]
    same_md = md(a.get("report.md", b""), out1) == md(b.get("report.md", b""), outn)
    print(f"report.md the same (but its time stamp and folder): {same_md}")
    tables = [k for k in a if k.startswith("tables/")]
    print(f"tables byte-identical: {all(a[k] == b.get(k) for k in tables)} ({len(tables)})")
    pngs = [k for k in a if k.endswith(".png")]
    differ = [k for k in pngs if a[k] != b.get(k)]
    print(f"PNGs byte-identical: {len(pngs) - len(differ)}/{len(pngs)}"
          + (f" (differ: {', '.join(differ)})" if differ else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="results folder to report on (default: make the workload's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default="auto", help="the parallel arm's --jobs (default auto)")
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of the project before this change (e.g. `git worktree "
                        "add /tmp/before 3ab771a`): its whole command is a third arm")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.jobs == "1":
        parser.error("--jobs: the parallel arm needs auto or a number > 1")
    with tempfile.TemporaryDirectory(prefix="report_bench.") as tmp:
        tmp = Path(tmp)
        run = args.run or make_results(tmp / "results")
        outs = {"1": tmp / "serial", args.jobs: tmp / "parallel"}
        times: dict = {(arm, j): [] for arm in ("command", "build") for j in outs}
        print(f"results folder {run}; {os.cpu_count()} CPUs; arms: --jobs 1 and --jobs "
              f"{args.jobs}, alternated, {args.repeats} repeat(s)", flush=True)
        cpu: dict = {j: [] for j in outs}
        for r in range(args.repeats):
            for arm, fn in (("command", command), ("build", build)):
                for j, out in outs.items():
                    load = os.getloadavg()[0]
                    wall, used = fn(run, out, j)
                    times[(arm, j)].append(wall)
                    if used is not None:
                        cpu[j].append(used)
                    print(f"  repeat {r + 1} {arm:7s} --jobs {j:4s} {wall:6.2f} s"
                          + (f" (CPU {used:5.2f} s)" if used is not None else "")
                          + f"   [load average before: {load:.2f}]", flush=True)
            if args.before:
                load = os.getloadavg()[0]
                wall, used = command(run, tmp / "before", None, cwd=args.before)
                times.setdefault("before", []).append(wall)
                print(f"  repeat {r + 1} command before     {wall:6.2f} s (CPU {used:5.2f} s)"
                      f"   [load average before: {load:.2f}]", flush=True)
        print()
        for arm in ("command", "build"):
            s, p = (statistics.median(times[(arm, j)]) for j in outs)
            print(f"{arm:7s} median wall: --jobs 1 {s:.2f} s, --jobs {args.jobs} {p:.2f} s, "
                  f"ratio {s / p:.2f}x")
        s, p = (statistics.median(cpu[j]) for j in outs)
        print(f"command median CPU (user+sys, all processes): --jobs 1 {s:.2f} s, --jobs "
              f"{args.jobs} {p:.2f} s")
        if args.before:
            b = statistics.median(times["before"])
            p = statistics.median(times[("command", args.jobs)])
            print(f"command median wall: before ({args.before}) {b:.2f} s, now (--jobs "
                  f"{args.jobs}) {p:.2f} s, ratio {b / p:.2f}x")
            print("before vs now:", end=" ")
            compare(tmp / "before", outs[args.jobs])
        compare(outs["1"], outs[args.jobs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
