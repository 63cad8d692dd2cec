#!/usr/bin/env python
"""resablate: ablation sweeps of residual connections.

    python sweep.py --depths 5,18,34 --residual both            # train (default)
    python sweep.py --depths 5,18,34 --mode probe --seeds 20    # statistics at init
    python sweep.py --models small_resnet18 --residual on       # a registry preset
    python sweep.py --list-models

Results: <out>/<name>/ with spec.json, trials.parquet, layers.parquet,
epochs.parquet (train), figures/ and tables/ (see README.md).

The command line is ``ablations.arguments``; the sweep itself (resume checks, the
plan, Ray, the merged results) is ``ablations.orchestrate``. This entry point adds
what follows the trials: the report (``analysis.report``), the figures logged to
W&B and the W&B report spec (``analysis.wandb_report``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ablations.status import Status
import models
from ablations import arguments, orchestrate


def _wandb_target(text: str) -> str:
    from analysis.wandb_report import parse_target
    try:
        return "/".join(parse_target(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    return arguments.build_parser(report_target=_wandb_target)


def main(argv=None) -> int:
    clock = {"started_at": time.time()}  # stored with the invocation (orchestrate.record_timing)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        return list_models(args, arguments.given_flags(parser, argv))
    if args.dry_run:
        from ablations import dry_run
        return dry_run.main(parser, args, argv)
    outcome = orchestrate.run(parser, args, argv, clock)
    if outcome.error is not None:
        print(f"sweep.py: error: {outcome.error}", file=sys.stderr)
        return 2
    if not outcome.finished:
        return outcome.code
    try:
        return finish(outcome, args.wandb_report)
    finally:
        outcome.release()  # the results folder's lock, held through the report


def list_models(args, given: set[str]) -> int:
    """``--list-models``: the layout and parameter counts of the models a sweep with these
    flags would train: the presets of ``--models`` or the ``--families`` typed (every
    registered model when neither is), at ``--depths``. An unknown name: one line, 2."""
    for flag, kind, valid in (("models", "model preset", models.list_presets()),
                              ("families", "family", models.list_families())):
        bad = [n for n in getattr(args, flag) if n not in valid] if flag in given else []
        if bad:
            print(f"sweep.py: error: --{flag}: unknown {kind} {bad[0]!r}; valid: "
                  f"{', '.join(valid)}", file=sys.stderr)
            return 2
    names = list(args.models) if "models" in given else \
        list(args.families) if "families" in given else None
    try:
        print(models.describe(names, depths=list(arguments.study_default(args, "depths"))),
              flush=True)
    except BrokenPipeError:  # `--list-models | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def finish(outcome: orchestrate.Outcome, wandb_report: str | None) -> int:
    """After the trials: the report, the figures to W&B, the W&B report spec and the
    last line. The exit code follows the trials (0/1); the report's own failures are
    named in the last line instead."""
    from ablations import tracking
    spec, counts = outcome.spec, outcome.counts
    run_dir = spec.run_dir
    report_note = build_report(run_dir)
    figures = sorted(str(p) for p in Path(run_dir, "figures").glob("*.png"))
    tracking.log_figures(outcome.wandb_mode, run_dir, spec.name, figures, counts)
    write_wandb_report(run_dir, wandb_report)  # after log_figures: its run is synced too
    run_dir = publish(spec) or run_dir
    # online trials that fell back wrote offline runs too; the local folder has them all
    sync = tracking.sync_command(spec.run_dir)
    if sync:
        print(f"W&B offline runs in {spec.run_dir}/wandb; upload with: {sync}")
    print(f"done in {time.time() - outcome.started:.0f}s: {outcome.trials} trials: "
          f"{counts[Status.COMPLETED]} completed, {counts[Status.DIVERGED]} diverged, "
          f"{counts[Status.ERROR]} errored -> {run_dir}; {report_note}")
    return outcome.code


def publish(spec) -> str | None:
    """With an object-store ``--storage``: the results folder (report, figures, tables)
    copied to ``URI/NAME``; returns how the last line names it. A fault is a warning:
    the local results are complete, and ``--resume`` copies them again."""
    from ablations import results, storage
    if not storage.is_uri(spec.storage):
        return None
    try:
        storage.RunSync(spec).push()
    except Exception as e:  # noqa: BLE001
        results.warn(f"the results were not copied to {spec.storage}/{spec.name} "
                     f"({results.brief(e)}); they are complete in {spec.run_dir}")
        return None
    return f"{spec.run_dir} and {spec.storage}/{spec.name}"


def build_report(run_dir) -> str:
    """Figures, tables and the report, each item in isolation (``analysis.report.build``);
    never raises: the results are kept whatever happens here. Returns how the report
    went, for the last line."""
    try:
        from analysis.report import build
        built = build(run_dir)
    except Exception as e:  # noqa: BLE001  a report fault must not turn results into a crash
        print(f"warning: the report could not be built ({type(e).__name__}: {e}); rebuild it "
              f"with: python -m analysis {run_dir}", file=sys.stderr)
        return "report not built"
    print(f"wrote {len(built.written)} figure/table/report files; report: {run_dir}/report.html")
    if built.failures:
        return (f"report: {len(built.failures)} item(s) failed (see {run_dir}/report.html and "
                f"{built.log})")
    return "report: every item written"


def write_wandb_report(run_dir, target: str | None) -> None:
    """``RESULTS/wandb_report.json`` always, and the published report when ``target``
    (ENTITY/PROJECT) is given; neither can change the sweep's exit code."""
    try:
        from analysis.wandb_report import write_spec
        write_spec(run_dir)
    except Exception as e:  # noqa: BLE001  results and report are written: keep them
        from ablations import results
        results.warn(f"W&B report spec not written ({results.brief(e)})")
    if target:
        from analysis.wandb_publish import publish
        print(publish(run_dir, target)[1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
