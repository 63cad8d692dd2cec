"""``python -m analysis RUN_DIR [--format pdf,png]``: write a results folder's figures and tables.

Prints each written path on its own line. A missing or invalid RUN_DIR, or
an unknown format, is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


FORMATS = ("pdf", "png", "svg")  # kept equal to analysis.report.FORMATS (tested)


def _formats(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return parts


def main(argv=None) -> int:
    parser = _OneLineParser(prog="python -m analysis",
                            description="Write figures/ and tables/ for a results folder.")
    parser.add_argument("run_dir", help="results folder holding trials/layers/epochs.parquet")
    parser.add_argument("--format", type=_formats, default=("pdf", "png"),
                        help="comma-separated figure formats: pdf, png, svg (default pdf,png)")
    args = parser.parse_args(argv)

    # Headless: no display on a cluster node, and the figures never need one.
    import matplotlib
    matplotlib.use("Agg")
    from analysis.report import ResultsError, build

    try:
        written = build(args.run_dir, args.format)
    except ResultsError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
