"""Does the printed estimate hold? For each command: the dry run's estimate (``sweep.py
... --dry-run``, which writes nothing), then the same sweep run for real, its wall time
measured from outside (process start to exit), side by side in one run.

    python bench/estimate_check.py [--data-root ../shared/data/cifar10-subset] [--out DIR]

Prints one row per command: estimate, measured wall time, estimate / measured.
Results and commands: bench/README.md "Estimates".
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def seconds(text: str) -> float:
    """``42s``, ``6m12s``, ``1h05m`` -> seconds."""
    return float(sum(int(n) * UNIT[u] for n, u in re.findall(r"(\d+)([dhms])", text)))


def commands(data_root: str) -> dict[str, list[str]]:
    return {
        "smoke": ["--smoke"],
        "cifar-12": ["--families", "resnet", "--depths", "4,8", "--residual", "both",
                     "--seeds", "3", "--epochs", "3", "--data-root", data_root],
        # the README's main command, one seed and 2 epochs: its deep models, in minutes
        "main-2ep": ["--depths", "5,18,34", "--residual", "both", "--seeds", "1",
                     "--epochs", "2", "--data-root", data_root],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data",
                                                       "cifar10-subset"))
    p.add_argument("--only", default="", help="comma-separated names of the commands to run")
    args = p.parse_args()
    rows = []
    only = set(filter(None, args.only.split(",")))
    for name, argv in commands(args.data_root).items():
        if only and name not in only:
            continue
        out = tempfile.mkdtemp(prefix="estimate-check-")
        base = [sys.executable, os.path.join(ROOT, "sweep.py"), *argv, "--out", out,
                "--name", name]
        dry = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in dry.stdout.splitlines() if x.startswith("estimate:")), "")
        m = re.match(r"estimate: about (\S+)", line)
        if dry.returncode != 0 or not m:
            sys.exit(f"{name}: no estimate from the dry run (exit {dry.returncode}):\n"
                     f"{dry.stdout}{dry.stderr}")
        est = seconds(m.group(1))
        t0 = time.perf_counter()
        run = subprocess.run(base, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            sys.exit(f"{name}: sweep failed (exit {run.returncode}):\n{run.stdout[-3000:]}"
                     f"{run.stderr[-3000:]}")
        rows.append((name, est, wall, line))
        shutil.rmtree(out, ignore_errors=True)
    print(f"{'command':<10} {'estimate':>9} {'measured':>9} {'ratio':>6}")
    for name, est, wall, _ in rows:
        print(f"{name:<10} {est:>8.0f}s {wall:>8.1f}s {est / wall:>6.2f}")
    for name, _, _, line in rows:
        print(f"{name}: {line}")


if __name__ == "__main__":
    main()
