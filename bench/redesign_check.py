#!/usr/bin/env python
"""Is the user-visible output of a fixed sweep unchanged by a refactoring?

Compares two results folders of the same sweep command, one made by the code before a
change and one after (see bench/README.md, "Redesign check", for the commands):

* ``tables/``: every table file, byte for byte;
* ``figures/``: the same set of figure files (pixels are not compared: a PDF/PNG holds
  matplotlib's metadata, and the same data draws the same figure);
* ``report.md``: the same section headings in the same order;
* the results: trials.parquet, epochs.parquet, layers.parquet and every
  measurements/*.parquet hold the same columns and the same numbers, except the columns
  that record when and how fast a trial ran (wall times, timestamps, host, paths).

Exit 0 when everything matches, 1 with one line per difference otherwise.

    python bench/redesign_check.py BEFORE_RUN AFTER_RUN [--new-column activation]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Columns that differ between two runs of one command whatever the code: time, machine,
# place, version.
VOLATILE = re.compile(r"(^|_)(time|seconds|wall|started|ended|finished|timestamp|host|node|"
                      r"pid|path|dir|commit|git|elapsed|duration|s_per|per_s|rate_s)($|_)"
                      r"|^(logdir|checkpoint|error|traceback)$")


def table_differences(before: Path, after: Path) -> list[str]:
    out = []
    b = {p.name: p for p in (before / "tables").glob("*") if p.is_file()}
    a = {p.name: p for p in (after / "tables").glob("*") if p.is_file()}
    out += [f"tables/{n}: only before" for n in sorted(b.keys() - a.keys())]
    out += [f"tables/{n}: only after" for n in sorted(a.keys() - b.keys())]
    out += [f"tables/{n}: bytes differ" for n in sorted(b.keys() & a.keys())
            if b[n].read_bytes() != a[n].read_bytes()]
    return out


def figure_differences(before: Path, after: Path) -> list[str]:
    b = {p.name for p in (before / "figures").glob("*")}
    a = {p.name for p in (after / "figures").glob("*")}
    return ([f"figures/{n}: only before" for n in sorted(b - a)]
            + [f"figures/{n}: only after" for n in sorted(a - b)])


def headings(report: Path) -> list[str]:
    return [ln for ln in report.read_text().splitlines() if ln.startswith("#")] \
        if report.is_file() else []


def frame_differences(name: str, before: Path, after: Path, new=()) -> list[str]:
    if not before.is_file() and not after.is_file():
        return []
    if not (before.is_file() and after.is_file()):
        return [f"{name}: only {'before' if before.is_file() else 'after'}"]
    b, a = pd.read_parquet(before), pd.read_parquet(after)
    a = a.drop(columns=[c for c in new if c in a and c not in b])  # a factor added since
    keep = lambda df: [c for c in df.columns if not VOLATILE.search(c)]  # noqa: E731
    if keep(b) != keep(a):
        return [f"{name}: columns differ: only before {sorted(set(keep(b)) - set(keep(a)))}, "
                f"only after {sorted(set(keep(a)) - set(keep(b)))}"]
    cols = keep(b)
    key = [c for c in ("trial_id", "phase", "epoch", "step", "layer", "when", "unit", "stat")
           if c in cols]
    b = b[cols].sort_values(key).reset_index(drop=True) if key else b[cols]
    a = a[cols].sort_values(key).reset_index(drop=True) if key else a[cols]
    if len(a) != len(b):
        return [f"{name}: {len(b)} rows before, {len(a)} after"]
    out = []
    for c in cols:
        x, y = b[c], a[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            same = np.array_equal(x.to_numpy(float), y.to_numpy(float), equal_nan=True)
        else:
            same = x.astype(str).tolist() == y.astype(str).tolist()
        if not same:
            out.append(f"{name}: column {c} differs")
    return out


def differences(before: Path, after: Path, new=()) -> list[str]:
    out = table_differences(before, after) + figure_differences(before, after)
    if headings(before / "report.md") != headings(after / "report.md"):
        out.append("report.md: section headings differ")
    for f in ("trials", "epochs", "layers"):
        out += frame_differences(f"{f}.parquet", before / f"{f}.parquet", after / f"{f}.parquet",
                                 new)
    names = {p.name for d in (before, after) for p in (d / "measurements").glob("*.parquet")}
    for n in sorted(names):
        out += frame_differences(f"measurements/{n}", before / "measurements" / n,
                                 after / "measurements" / n, new)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="results folder made by the code before")
    p.add_argument("after", type=Path, help="results folder made by the code after")
    p.add_argument("--new-column", action="append", default=[], metavar="NAME",
                   help="a results column the change adds on purpose (a new factor's, e.g. "
                        "activation): ignored when only the after folder has it")
    args = p.parse_args(argv)
    diffs = differences(args.before, args.after, args.new_column)
    for d in diffs:
        print(d)
    n_tables = len(list((args.before / "tables").glob("*")))
    print(f"{len(diffs)} difference(s); {n_tables} table files compared" if diffs else
          f"identical: {n_tables} table files byte for byte, figure sets, report headings, "
          f"results and measurement numbers")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
