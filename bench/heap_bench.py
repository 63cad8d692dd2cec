"""The trainer's allocator setting (``ablations.device.keep_freed_memory``) alone: the
same fp32 SmallResNet-18 training step (bench/fp32_variants.py, variants nchw and cl)
in fresh processes with and without it, alternated in one command.

usage: python bench/heap_bench.py [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def one(keep: bool, threads: int) -> dict:
    out = subprocess.run([sys.executable, os.path.join(HERE, "fp32_variants.py"), "--variants",
                          "nchw,cl", "--threads", str(threads), "--rounds", "4", "--steps", "10"]
                         + (["--keep-heap"] if keep else []), capture_output=True, text=True,
                         check=True).stdout
    ms = dict(re.findall(r"^\| (nchw|cl) \| [0-9.]+ \| ([0-9.]+) \|", out, re.M))
    faults = int(re.search(r"(\d+) page faults", out).group(1))
    return {"nchw": float(ms["nchw"]), "cl": float(ms["cl"]), "faults": faults}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    runs = {False: [], True: []}
    for r in range(a.repeats):
        for keep in (False, True):
            runs[keep].append(one(keep, a.threads))
            print(r + 1, "kept" if keep else "default", runs[keep][-1], flush=True)
    print("| heap | nchw step (ms) | channels_last step (ms) | page faults per run |")
    print("| --- | ---: | ---: | ---: |")
    for keep in (False, True):
        med = {k: statistics.median(x[k] for x in runs[keep]) for k in ("nchw", "cl", "faults")}
        print(f"| {'kept (trainer)' if keep else 'glibc default'} | {med['nchw']:.1f} | "
              f"{med['cl']:.1f} | {med['faults']:,.0f} |")


if __name__ == "__main__":
    main()
