"""``python -m ablations.measure RESULTS``: measure a finished sweep's kept networks.

    python -m ablations.measure results/train-x --measure landscape
    python -m ablations.measure results/train-x               # the sweep's own --measure set
    python -m ablations.measure results/train-x --measure lesion --redo
    python -m ablations.measure results/train-x --address auto --cpus-per-trial 4
    python -m ablations.measure s3://bucket/prefix/train-x --out train-x  # from a store

Reads ``spec.json`` and ``trials.parquet``, finds the networks kept in
``weights/`` (``ablations.weights``) and runs every missing (trial, measurement)
fragment, one Ray task per trial with the sweep's resources (a local Ray bound to
127.0.0.1, or ``--address`` to join a cluster), through the same code the worker
runs at the end of a trial (``ablations.measure_run``): the rows are the same
either way. Resumable: a fragment already there is skipped (``--redo`` computes
it again), so an interrupted run continues where it stopped. A completed trial is
measured at init and final, a diverged one at init only (as in the worker); a
missing ``init.pt`` is rebuilt from the trial's seed (the same bits). Then the
fragments are merged into ``measurements/<name>.parquet`` and the report is
rebuilt by ``python -m analysis`` in a child process (a report failure is a
warning, as after a sweep).

A sweep in an object store (``s3://BUCKET/PREFIX/NAME``, ``gs://...``) is read from
the store only (``ablations.store_sweep``): copied into ``--out`` (default ``./NAME``),
each Ray task measures from the trial's weights pulled onto its own node and puts its
fragments back to the store, and the merged measurements and the report go back
to the store too; the store's lock (``ablations.store_lock``) is held meanwhile.

Bad input (not a sweep folder, a bad URI, a missing bucket or sweep, an unknown measurement, a sweep that kept no
weights, unreadable data): one line on stderr naming the problem and the valid
choices, exit 2, before anything is written or Ray starts. The folder is locked
(``ablations.lock``) while this writes to it: a sweep still writing it is refused the
same way (one line naming it, exit 2). Exit codes: 0 every measurement written, 1 some failed (each named in one warning line), 2 bad
input, 130 interrupted. Importing this module starts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ablations.status import Status
from ablations.cli import OneLineParser

from . import helptext, lock, measure_run, results, storage, store_lock, store_sweep, weights
from .spec import SpecError, check_measurements, spec_from_dict

PROG = "python -m ablations.measure"


@dataclasses.dataclass
class Job:
    run_dir: Path
    spec: object                      # AblationSpec of the sweep
    names: tuple[str, ...]
    todo: list                        # [(TrialConfig, status)] with something to measure
    measured: list                    # trial ids (completed or diverged) whose fragments merge
    redo: bool = False
    store: object = None              # storage.Store of a sweep read from a store, or None
    name: str = ""                    # the sweep's name in the store


def build_parser() -> argparse.ArgumentParser:
    """The parser; its ``--help`` says each default once, in words
    (``ablations.helptext``). Sections: measurements, resources, output."""
    p = OneLineParser(prog=PROG, formatter_class=helptext.HelpFormatter,
                      description="Measure a finished sweep's kept networks (through Ray), "
                      "merge into RESULTS/measurements/ and rebuild the report. "
                      + helptext.defaults_said())
    p.add_argument("results", metavar="RESULTS",
                   help="a sweep's results folder (OUT/NAME: spec.json, trials.parquet, "
                   "weights/), or its URI in an object store (s3://BUCKET/PREFIX/NAME)")
    m = p.add_argument_group("measurements", "what is measured, on which trials")
    m.add_argument("--measure", default=None, metavar="NAMES",
                   help="measurements, comma list: " + helptext.measurement_names()
                   + " (default: the sweep's own --measure set, or the default set when it "
                   "had none)")
    m.add_argument("--where", action="append", default=[], metavar="FACTOR=V[,V]",
                   help="measure only these trials, as python -m analysis --where: family, "
                   "model, depth, seed or a factor (" + helptext.where_levels() + "); "
                   "repeatable, e.g. --where seed=0 --where depth=8,32; the merged files "
                   "and the report keep every trial measured so far (default: every trial)")
    m.add_argument("--redo", action="store_true",
                   help="measure again where a fragment is already there")
    r = p.add_argument_group("resources", "where the measuring runs and what each trial gets")
    r.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="join a Ray cluster: host:port, or 'auto' for the one running here "
                   "(default: none: start Ray on this machine)")
    r.add_argument("--cpus-per-trial", type=float, default=None, metavar="CPUS",
                   help="CPUs per trial (default: the cluster's CPUs shared among the trials)")
    r.add_argument("--gpus-per-trial", type=float, default=None, metavar="GPUS",
                   help="GPUs per trial (default: a share of the GPUs when there are any)")
    r.add_argument("--data-root", default=None, metavar="DIR_OR_URI",
                   help="where the sweep's CIFAR-10 is on this machine: a folder, or "
                   "s3://BUCKET/PREFIX (default: the one the sweep used, from spec.json)")
    o = p.add_argument_group("output", "where the merged files and the report go")
    o.add_argument("--out", default=None, metavar="DIR",
                   help="with a URI: the local copy of the sweep, where the merged files "
                   "and the report are written before they go back to the store; unused "
                   "without a URI (default: ./NAME)")
    return p


def _names(text: str | None, spec) -> tuple[str, ...]:
    if text is None:
        from . import measurements
        names = tuple(spec.measure or ()) or tuple(measurements.defaults())
    else:
        names = tuple(s.strip() for s in text.split(",") if s.strip())
        if names in ((), ("none",)):
            from . import measurements
            raise SpecError(f"--measure {text!r}: nothing to measure; valid measurements: "
                            + ", ".join(measurements.names()))
    check_measurements(names)
    return names


def _not_a_sweep(run_dir: Path) -> SpecError:
    inside = sorted(d.name for d in run_dir.iterdir() if (d / "spec.json").is_file()) \
        if run_dir.is_dir() else []
    hint = (f"; sweeps in it: {', '.join(inside)}" if inside else
            "; give the folder sweep.py wrote (OUT/NAME)")
    return SpecError(f"{run_dir} is not a sweep's results folder (no spec.json and "
                     f"trials.parquet){hint}")


def prepare(args) -> Job:
    """Every check that can fail, before anything is written and before Ray starts."""
    import pandas as pd
    run_dir = Path(args.results)
    if not (run_dir / "spec.json").is_file() or not (run_dir / "trials.parquet").is_file():
        raise _not_a_sweep(run_dir)
    try:
        spec = spec_from_dict(json.loads((run_dir / "spec.json").read_text())["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{run_dir / 'spec.json'} is not a readable sweep spec ({e})") from None
    if spec.mode != "train":
        raise SpecError(f"{run_dir} is a {spec.mode} sweep: it trained no networks to measure; "
                        "measure a --mode train sweep")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise SpecError(f"--cpus-per-trial must be > 0 (got {args.cpus_per_trial:g})")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise SpecError(f"--gpus-per-trial must be >= 0 (got {args.gpus_per_trial:g})")
    if not weights.kept_any(run_dir):
        raise SpecError(
            f"no kept weights in {run_dir / 'weights'}: the sweep ran with --keep-weights none; "
            "rerun it with --keep-weights final" if spec.keep_weights == "none" else
            f"no kept weights in {run_dir / 'weights'} (the sweep kept {spec.keep_weights}: "
            "was the folder copied without weights/?)")
    names = _names(args.measure, spec)
    try:
        rows = pd.read_parquet(run_dir / "trials.parquet")
    except Exception as e:  # pyarrow's errors
        raise SpecError(f"cannot read {run_dir / 'trials.parquet'}: {results.brief(e)}") from None
    selected = _where(rows, args.where)
    rows = rows[["trial_id", "status"]]
    if args.data_root:
        spec = dataclasses.replace(spec, train=dataclasses.replace(
            spec.train, data_root=args.data_root if storage.is_uri(args.data_root)
            else os.path.abspath(args.data_root)))
    if spec.train.dataset == "cifar10":  # SpecError when the data is missing or damaged
        from .data import load_arrays
        load_arrays(spec.train, download=False)  # reads and checks every batch file
    from .plan import expand
    plan = {t.trial_id: t for t in expand(spec)[0]}
    finished = rows[rows["status"].isin([Status.COMPLETED, Status.DIVERGED])]
    unknown = [tid for tid in finished["trial_id"] if tid not in plan]
    if unknown:
        results.warn(f"{len(unknown)} trial(s) of trials.parquet are not in the sweep's plan "
                     f"as this code expands it (e.g. {unknown[0]}); they are not measured")
    todo = [(plan[tid], status) for tid, status in finished.itertuples(index=False)
            if tid in plan and tid in selected]
    if not args.redo:
        todo = [(t, s) for t, s in todo if _missing(run_dir, t, s, names)]
    return Job(run_dir, spec, names, todo, list(finished["trial_id"]), args.redo)


def _where(trials, items) -> set:
    """The trial ids ``--where`` keeps (all without it); SpecError for a bad filter."""
    from ablations.where import ResultsError, apply_where, parse_where
    try:
        kept = apply_where({"trials": trials}, parse_where(items))["trials"]
    except ResultsError as e:
        raise SpecError(str(e)) from None
    return set(kept["trial_id"])


def _missing(run_dir, trial, status, names) -> bool:
    """Whether ``trial`` lacks a fragment of one of ``names`` it can have (a diverged
    trial has none of a final-only measurement)."""
    points = {"init", "final"} if status == Status.COMPLETED else {"init"}
    return any(set(m.when) & points and not measure_run.fragment_done(run_dir, trial.trial_id,
                                                                       m.name)
               for m in measure_run.requested(names))


def sweep_threads(spec) -> int:
    """The torch threads of the sweep's trials (``trial.run_group``); measuring with the
    same count keeps CPU reductions, and so the rows, the same as in the worker."""
    return max(1, int(spec.train.threads or spec.cpus_per_trial or 1))


def _task(trial, status, spec, run_dir, names, redo, threads, store=None) -> dict:
    """One trial on a Ray worker; ``store``: (URI, NAME) of a sweep in an object store,
    whose trial is staged on this node and whose fragments go back to the store."""
    import torch
    torch.set_num_threads(threads)
    if store is None:
        return measure_run.measure_kept(trial, status, spec, run_dir, names, redo)
    run_dir, mirror = store_sweep.stage_trial(*store, trial.trial_id)
    with mirror:
        return measure_run.measure_kept(trial, status, spec, run_dir, names, redo)


def run_tasks(job: Job, spec) -> dict:
    """One Ray task per trial of ``job.todo`` (connected already); ``{trial_id: outcome}``,
    one line per finished trial. A task that fails outright (its worker died) is an
    outcome with ``measure_errors`` too."""
    import ray
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial or 0)(_task)
    run_dir = str(job.run_dir.resolve())
    threads = sweep_threads(job.spec)
    store = (job.store.uri, job.name) if job.store is not None else None
    pending = {task.remote(t, s, spec, run_dir, job.names, job.redo, threads, store): t
               for t, s in job.todo}
    outcomes = {}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        trial = pending.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as e:  # noqa: BLE001  the worker died, or the task raised
            out = {"measure_errors": f"task: {results.brief(e)}"}
            results.warn(f"measuring trial {trial.trial_id} failed ({results.brief(e)})")
        outcomes[trial.trial_id] = out
        print(f"[{len(outcomes)}/{len(job.todo)}] {trial.trial_id}: {_summary(out)}", flush=True)
    return outcomes


def _summary(out: dict) -> str:
    done = [f"{k.removeprefix('measure_seconds_')} {v:.1f}s" for k, v in out.items()
            if k.startswith("measure_seconds_")]
    parts = [", ".join(done) or "nothing measured"]
    parts += [f"{n} skipped ({why})" for n, why in (out.get("skipped") or {}).items()]
    if out.get("measure_errors"):
        parts.append(f"failed: {out['measure_errors']}")
    return "; ".join(parts)


def record(job: Job, argv, outcomes: dict, started: float) -> None:
    """``measurements/runs.json``: what each run measured, with the code's commit."""
    path = job.run_dir / "measurements" / "runs.json"
    try:
        runs = json.loads(path.read_text()) if path.exists() else []
        runs = runs if isinstance(runs, list) else []
    except (OSError, ValueError):
        runs = []
    runs.append({"argv": list(argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "git_commit": results.git_commit(), "measure": list(job.names),
                 "redo": job.redo, "seconds": round(time.time() - started, 3),
                 "trials": outcomes})
    results.write_json(path, runs)


def rebuild_report(run_dir) -> str:
    """The report rebuilt by ``python -m analysis RUN_DIR`` in a child process (this
    interpreter, this environment, the project on its path): this package never imports
    ``analysis``. Its warnings reach stderr as they happen; its paths are counted into
    one line. A failure is one warning line, never a crash: the measurements are written.
    Returns how the report went, for the last line."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        d for d in (root, os.environ.get("PYTHONPATH")) if d)}
    try:
        p = subprocess.run([sys.executable, "-m", "analysis", str(run_dir)], env=env,
                           stdout=subprocess.PIPE, text=True)
        why = None if p.returncode in (0, 1) else f"python -m analysis exited with {p.returncode}"
    except OSError as e:  # the interpreter could not be started again
        why = results.brief(e)
    if why:
        print(f"warning: the report could not be built ({why}); rebuild it with: "
              f"python -m analysis {run_dir}", file=sys.stderr)
        return "report not built"
    written = [line for line in p.stdout.splitlines() if line.strip()]
    print(f"wrote {len(written)} figure/table/report files; report: {run_dir}/report.html")
    if p.returncode:
        return (f"report: item(s) failed (see {run_dir}/report.html and "
                f"{Path(run_dir) / 'report_errors.log'})")
    return "report: every item written"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    started = time.time()
    store, name, copied = None, "", None
    try:
        if storage.is_uri(args.results):  # a first look at the store's lock, then a copy
            store, name = store_sweep.open_sweep(args.results)
            store_lock.check(store, name, "measuring")
            local = store_sweep.local_copy(args.out, name)
            lock.check(local, "measuring")
            copied = None if os.path.exists(local) else local
            store_sweep.fetch(store, name, local)
            args = argparse.Namespace(**{**vars(args), "results": local})
        lock.check(args.results, "measuring")  # a sweep still writing it: refused first
        job = dataclasses.replace(prepare(args), store=store, name=name)
        held = store_lock.acquire_pair(job.run_dir, store, name,
                                       f"{PROG} {shlex.join(argv)}", "measuring")
    except SpecError as e:
        if copied:  # bad input: the copy made for it goes again
            shutil.rmtree(copied, ignore_errors=True)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        return measure(job, args, argv, started)
    finally:
        held.release()


def _push(job: Job) -> str:
    """The merged files and the report back to the store; how it went, for the last line."""
    where = f"{job.store.uri}/{job.name}"
    try:
        store_sweep.push(job.store, job.name, job.run_dir)
    except Exception as e:  # noqa: BLE001  the store unreachable: the local copy is complete
        results.warn(f"the results were not copied back to {where} ({results.brief(e)}); "
                     f"they are complete in {job.run_dir}")
        return "not copied back to the store"
    return f"copied back to {where}"


def measure(job: Job, args, argv, started: float) -> int:
    """Measure, merge, record and rebuild the report, with the folder locked."""
    outcomes: dict = {}
    if job.todo:
        ms = measure_run.requested(job.names)
        print(f"measuring {len(job.todo)} trial(s) of {job.run_dir}: " + "; ".join(
            f"{m.name} ({', '.join(m.when)})" for m in ms), flush=True)
        from . import cluster
        try:
            cluster.connect(args.address)
            spec = cluster.resolve_resources(dataclasses.replace(
                job.spec, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial), len(job.todo))
            outcomes = run_tasks(job, spec)
        except SpecError as e:  # --address: nobody there, or a request no node can meet
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: the fragments written are kept; run {PROG} {job.run_dir} "
                  "again to continue", file=sys.stderr)
            return 130
        finally:
            cluster.disconnect()
        rebuilt = [tid for tid, o in outcomes.items() if o.get("init_rebuilt")]
        if rebuilt:
            print(f"init.pt not kept for {len(rebuilt)} trial(s): their initial networks "
                  "were rebuilt from their seeds (the same bits)", flush=True)
    else:
        print(f"nothing to measure in {job.run_dir}: every trial has "
              f"{', '.join(job.names)} (--redo measures again)", flush=True)
    if job.store is not None:  # the fragments the tasks put to the store
        job.store.download(f"{job.name}/trials", job.run_dir / "trials")
    merged = results.merge_measurements(job.run_dir, job.measured)
    if job.todo:
        record(job, argv, outcomes, started)
    failed = [tid for tid, o in outcomes.items() if o.get("measure_errors")]
    note = rebuild_report(job.run_dir)
    if job.store is not None:
        note += "; " + _push(job)
    print(f"done: {len(outcomes)} trial(s) measured, {len(failed)} with failures; "
          f"{', '.join(f'{n} ({len(df)} rows)' for n, df in merged.items()) or 'no rows'} "
          f"in {job.run_dir / 'measurements'}; {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
