"""A sweep from its parsed command line to its merged results: the work of sweep.py.

``run`` is all of it, in two steps. ``start`` resolves the spec (a new sweep, or the
stored one with ``--resume``/``--retry-failed``: ``ablations.resume``), validates and
expands it, checks the data and, on this machine, the resources each trial asks for
(``ablations.checks``), locks the results folder (one writer: ``ablations.lock``, and
``ablations.store_lock`` in an object store), connects to Ray (``ablations.cluster``)
and then resolves and prints the W&B mode: every check that can fail, before anything
is written.
``execute`` prints the settings and the plan, writes spec.json, records the
invocation, tunes per cell (``--tune``), runs the trials not yet finished through
``ablations.runner`` with a live progress, and merges their fragments into the tables
(``ablations.results``). It returns an ``Outcome``; the report is the entry point's
(sweep.py builds it with ``analysis.report``). Ray lost under a running sweep ends the
process in ``ray_lost`` (a summary, the ``--resume`` command, exit 1).

Ray is reached only through the functions of ``ablations.cluster`` and
``ablations.runner``, looked up on those modules at each call: a test replaces them
(``monkeypatch.setattr(runner, "run_groups", ...)``) to run a sweep without Ray.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

from ablations.status import Status
from . import cluster, lock, results, resume, storage, store_lock
from .arguments import given_flags, spec_from_args, unused_flags
from .checks import groups_of, prepare
from .plan import format_plan, settings_line
from .progress import for_groups
from .spec import AblationSpec, SpecError, resolve_measure


@dataclass
class Sweep:
    """A sweep ready to run: what ``start`` resolved, and what ``execute`` runs."""
    spec: AblationSpec
    kind: str             # "start", "resume" or "retry-failed"
    trials: list          # the plan: ablations.plan.TrialConfig
    skipped: list         # [(cell, reason)]: the cells the plan cannot build
    sizes: dict | None    # images per split (train mode: ablations.data.check_data)
    wandb_mode: str       # online, offline or disabled (ablations.tracking.resolve_mode)
    argv: list
    clock: dict           # wall-clock stamps of this invocation (record_timing)
    lock: object = None   # ablations.lock.FolderLock of the results folder, held
    sync: object = None   # ablations.storage.RunSync: the object store's side (execute)


@dataclass(frozen=True)
class Outcome:
    """How ``run`` ended. ``code`` 2: bad input, ``error`` says what (nothing written);
    130: interrupted, resumable; 0 or 1 (``finished``): every trial has a result, 1 when
    some ended with status=error; the tables are merged and the report is due."""
    code: int
    error: str | None = None
    spec: AblationSpec | None = None
    wandb_mode: str = "disabled"
    counts: dict = field(default_factory=dict)  # completed, diverged, error
    trials: int = 0
    started: float = 0.0  # time.time() as the trials (or the tuning) began
    lock: object = field(default=None, repr=False, compare=False)  # held for the report

    @property
    def finished(self) -> bool:
        return self.code in (0, 1)

    def release(self) -> None:
        """Unlock the results folder (after the report); a no-op when not held."""
        if self.lock is not None:
            self.lock.release()


def run(parser, args, argv, clock: dict) -> Outcome:
    """The sweep ``args`` (parsed by ``parser`` from ``argv``) asks for; Ray is left
    whatever happens. The results folder is locked (``ablations.lock``) before anything
    is written to it; a finished outcome keeps the lock for the report (its caller ends
    with ``outcome.release()``; at the latest it goes at exit), any other ending
    releases it here."""
    sweep = outcome = None
    try:
        try:
            sweep = start(args, given_flags(parser, argv), argv, clock, parser)
        except SpecError as e:
            return Outcome(2, error=str(e))
        with storage.RunSync(sweep.spec).mirror():  # the driver's trial files to the store
            outcome = execute(sweep)
        return dataclasses.replace(outcome, lock=sweep.lock) if outcome.finished else outcome
    finally:
        cluster.disconnect()
        if sweep is not None and not (outcome is not None and outcome.finished):
            sweep.lock.release()


def start(args, given: set[str], argv, clock: dict, parser=None) -> Sweep:
    """Resolve, validate and expand the spec, lock the results folder, pick the W&B
    mode, connect to Ray and size the trials' resources; SpecError before anything is
    written (``lock.LockHeld`` when another writer holds the folder)."""
    if args.resume or args.retry_failed:
        spec, kind = resume.stored_spec(args, given)
    else:
        spec, kind = resolve_measure(spec_from_args(args)), "start"
    who = {"start": "this sweep", "resume": "--resume", "retry-failed": "--retry-failed"}[kind]
    lock.check(spec.run_dir, who)  # a live writer: refused before any work
    # this machine's resources too: before a download, the W&B line and Ray
    trials, skipped, sizes = prepare(spec, resuming=kind != "start", download=args.download)
    if parser is not None and kind == "start":  # typed flags this sweep will not read
        for line in unused_flags(parser, given, spec):
            print(line, file=sys.stderr, flush=True)
    held = store_lock.acquire_both(spec, "python sweep.py " + shlex.join(argv), who)
    try:
        if kind == "start" and os.path.exists(os.path.join(spec.run_dir, "spec.json")):
            # a sweep of the same name ran and ended between the checks and the lock
            raise SpecError(f"results already exist in {spec.run_dir}; choose another "
                            "--name (nothing was overwritten)")
        return _connect(spec, kind, trials, skipped, sizes, argv, clock, held)
    except BaseException:
        held.release()
        raise


def _connect(spec, kind, trials, skipped, sizes, argv, clock, held) -> Sweep:
    from . import tracking
    units = len(groups_of(trials, spec))
    prewarm = cluster.plan_local(spec, units)
    clock["ray_start_at"] = time.time()
    cluster.connect(None if finished_elsewhere(spec, kind, trials) else spec.address,
                    prewarm=prewarm)
    clock["connected_at"] = time.time()
    spec = cluster.resolve_resources(spec, units)
    # said once the sweep will run: a refused one names no W&B folder
    wandb_mode, why = tracking.resolve_mode(spec.wandb, spec.run_dir)
    print(f"W&B: {wandb_mode} ({why})", flush=True)
    return Sweep(spec, kind, trials, skipped, sizes, wandb_mode, list(argv), clock, held)


def finished_elsewhere(spec, kind: str, trials) -> bool:
    """Whether a ``--resume`` of a cluster sweep (``--address``) on an object store finds
    every trial's result in the store already: then its merge and report need no
    cluster, which may be gone, and a local Ray stands in (said in one line)."""
    if kind != "resume" or spec.address is None or not storage.is_uri(spec.storage) \
            or spec.tune:
        return False
    storage.RunSync(spec).pull()
    if any(results.read_fragment_row(spec.run_dir, t.trial_id) is None for t in trials):
        return False
    print(f"every trial has its result in {spec.storage}: merging here, without the "
          f"cluster at --address {spec.address}", flush=True)
    return True


def execute(sweep: Sweep) -> Outcome:
    """Write spec.json and the invocation, then tune (``--tune``) and run what is left
    to run; the tables merged, Ray left (before the report forks its workers)."""
    spec, run_dir, clock = sweep.spec, sweep.spec.run_dir, sweep.clock
    # workers run in Tune's trial folders: every path they get is absolute
    worker_spec = dataclasses.replace(spec, wandb=sweep.wandb_mode,
                                      out=os.path.abspath(spec.out),
                                      storage=spec.storage if storage.is_uri(spec.storage)
                                      else os.path.abspath(spec.storage_dir))
    sweep.sync = storage.RunSync(spec)
    sweep.sync.pull()  # an object store: what the workers wrote there so far
    print_plan(sweep)
    info = {"wandb_mode": sweep.wandb_mode, "cluster": cluster.cluster_info(),
            "cpus_per_trial": spec.cpus_per_trial, "gpus_per_trial": spec.gpus_per_trial}
    if sweep.kind == "start":
        results.write_json(f"{run_dir}/spec.json",
                           {**results.spec_record(spec),
                            "plan": [t.factors() for t in sweep.trials],
                            "skipped": [{"cell": l, "reason": r} for l, r in sweep.skipped]})
    record_invocation(run_dir, sweep.kind, sweep.argv, info)
    sweep.sync.push()
    cluster.watch(lambda why: ray_lost(sweep, why))  # Ray killed under us: ends the process
    res = info["cluster"]["resources"]
    print(f"resources: {spec.cpus_per_trial:g} CPU + {spec.gpus_per_trial:g} GPU per trial on "
          f"{info['cluster']['nodes']} node(s) with {res.get('CPU', 0):g} CPU, "
          f"{res.get('GPU', 0):g} GPU; W&B {sweep.wandb_mode}", flush=True)
    trials = sweep.trials
    line, per_epoch, slots = estimate_left(spec, sweep.kind, trials, sweep.sizes, info["cluster"])
    if line:
        print(line, flush=True)
    t0 = time.time()
    if spec.tune:
        clock["tuning_started_at"] = time.time()
        tuned = tune_cells(spec, trials, run_dir, worker_spec)
        clock["tuning_ended_at"] = time.time()
        if tuned is None:
            return interrupted(spec, trials, clock, "the per-cell search is not finished")
        trials = tuned
    todo = to_run(sweep.kind, trials, run_dir)
    run_trials(sweep, worker_spec, trials, todo, per_epoch, slots)
    sweep.sync.pull()
    unfinished = [t for t in todo if results.read_fragment_row(run_dir, t.trial_id) is None]
    if unfinished:  # interrupted (Ctrl-C): keep them pending, resumable
        return interrupted(spec, trials, clock, f"{len(unfinished)} trial(s) not finished")
    tables = results.merge(run_dir, trials)
    record_timing(run_dir, clock)
    sweep.sync.push()
    # Ray is done: leave it before the report forks its figure workers (a fork of a
    # process with Ray's threads running could inherit a held lock)
    cluster.disconnect()
    status = tables["trials"]["status"].value_counts()
    counts = {k: int(status.get(k, 0)) for k in (Status.COMPLETED, Status.DIVERGED, Status.ERROR)}
    return Outcome(1 if counts[Status.ERROR] else 0, spec=spec, wandb_mode=sweep.wandb_mode,
                   counts=counts, trials=len(trials), started=t0)


def run_trials(sweep: Sweep, worker_spec, trials, todo, per_epoch: dict, slots: int) -> None:
    """One Tune run over ``todo`` with a live progress, ``trials.parquet`` refreshed as
    they end; a group that failed after all its retries gets error rows (its trials
    without a result)."""
    from . import runner
    # the callback below gets sync, not the sweep: Tune pickles it, and the sweep holds a lock
    spec, run_dir, sync = sweep.spec, sweep.spec.run_dir, sweep.sync
    groups = groups_of(todo, spec)
    if not groups:
        return
    sweep.clock["run_started_at"] = time.time()
    progress = for_groups(groups, spec, run_dir, per_epoch, slots)
    progress.read_row = sync.reading(progress.read_row)
    try:
        errors = runner.run_groups(
            groups, worker_spec, run_dir, f"{sweep.kind}-{time.strftime('%Y%m%d-%H%M%S')}",
            on_trial_end=lambda: (sync.pull(), results.merge(run_dir, trials, final=False)),
            progress=progress)
    finally:
        progress.close()
    sweep.clock["run_ended_at"] = time.time()
    for gi, tb in errors.items():
        for t in groups[gi]:
            if results.read_fragment_row(run_dir, t.trial_id) is None:
                results.write_error(run_dir, t, tb)


def print_plan(sweep: Sweep) -> None:
    print("\n".join(plan_text(sweep)), flush=True)


def plan_text(sweep: Sweep) -> list[str]:
    """The settings line, the plan and (train mode) what weights are kept."""
    spec = sweep.spec
    out = [settings_line(spec), format_plan(sweep.trials, sweep.skipped, spec.mode)]
    if spec.mode == "train":
        from . import measure_run, weights
        out += weights.plan_lines(spec.keep_weights, measure_run.requested(spec.measure),
                                  sweep.trials, spec.run_dir)
    return out


def to_run(kind: str, trials, run_dir) -> list:
    """The trials this invocation runs: those without a result; with ``retry-failed``
    also those that ended with status=error (their error rows archived first)."""
    rows = {t.trial_id: results.read_fragment_row(run_dir, t.trial_id) for t in trials}
    if kind == "retry-failed":
        todo = [t for t in trials if rows[t.trial_id] and rows[t.trial_id]["status"] == Status.ERROR]
        for t in todo:
            results.archive_error(run_dir, t.trial_id)
        # a trial with no result (its fragment was damaged and moved aside, or never
        # written) is not finished either: it reruns too
        todo += [t for t in trials if rows[t.trial_id] is None]
        print(f"retrying {len(todo)} errored or unfinished trial(s): "
              + (", ".join(t.trial_id for t in todo) or "none"), flush=True)
        return todo
    todo = [t for t in trials if rows[t.trial_id] is None]
    if kind == "resume":
        print(f"resuming {run_dir}: {len(trials) - len(todo)} trial(s) already finished, "
              f"{len(todo)} to run", flush=True)
    return todo


def interrupted(spec, trials, clock: dict, what: str) -> Outcome:
    """Ctrl-C: the unfinished trials stay pending in trials.parquet; exit 130, resumable."""
    storage.RunSync(spec).pull()
    results.merge(spec.run_dir, trials, final=False)
    record_timing(spec.run_dir, clock)
    storage.RunSync(spec).push()
    print(f"interrupted: {what}; continue with python sweep.py --out {spec.out} --resume "
          f"{spec.name}", file=sys.stderr)
    return Outcome(130, spec=spec)


def ray_lost(sweep: Sweep, why: str) -> None:
    """Ray died under the sweep (``cluster.watch``, in its thread): one line saying so,
    what finished merged (``trials.parquet``, the rest pending) and counted, the
    ``--resume`` command, the lock released, exit 1. The process ends here with
    ``os._exit``: the main thread is stuck in Ray's calls, and Ray's own teardown would
    hang, then fill the terminal with its internals."""
    spec = sweep.spec
    print(f"sweep.py: Ray was lost under the sweep ({why}); the trials still running "
          "stopped", file=sys.stderr, flush=True)
    try:
        storage.RunSync(spec).pull()
        rows = [results.read_fragment_row(spec.run_dir, t.trial_id) for t in sweep.trials]
        done = [r["status"] for r in rows if r is not None]
        results.merge(spec.run_dir, sweep.trials, final=False)
        record_timing(spec.run_dir, sweep.clock)
        storage.RunSync(spec).push()
        print(f"{len(done)} of {len(sweep.trials)} trial(s) finished: {done.count(Status.COMPLETED)}"
              f" completed, {done.count(Status.DIVERGED)} diverged, {done.count(Status.ERROR)} "
              f"errored; {len(sweep.trials) - len(done)} pending in {spec.run_dir}", flush=True)
    except Exception as e:  # noqa: BLE001  the fragments are kept: --resume merges them
        print(f"warning: the finished trials could not be merged ({results.brief(e)})",
              file=sys.stderr, flush=True)
    print(f"continue with: python sweep.py --out {spec.out} --resume {spec.name}",
          file=sys.stderr, flush=True)
    sweep.lock.release()
    os._exit(1)


def tune_cells(spec, trials, run_dir, worker_spec) -> list | None:
    """Per-cell Optuna searches (resumed when interrupted); trials get the selection.

    None when the search was interrupted before every cell had its samples.
    """
    from . import runner, tuning
    chosen = tuning.load_selection(run_dir)
    cells = tuning.cells_of(trials)
    if chosen is None:
        space = spec.search_space()
        search = tuning.make_searcher(cells, space, spec.samples, run_dir,
                                      on_told=storage.RunSync(spec).push_tuning)
        left = search.remaining_total()
        print(f"tuning {','.join(spec.tune)} per cell: {len(cells)} cells x {spec.samples} "
              f"samples (Optuna TPE, median pruning on val_acc); {left} to run", flush=True)
        if left:
            runner.run_tuning(cells, search, worker_spec, run_dir,
                              f"tuning-{time.strftime('%Y%m%d-%H%M%S')}")
            # Tune returns normally on Ctrl-C: a search with samples still to run was
            # interrupted, and selecting from it would train every seed on a partial search.
            left = tuning.make_searcher(cells, space, spec.samples, run_dir).remaining_total()
            if left:
                return None
        chosen = tuning.selection(cells, space, spec.samples, run_dir)
        for label, c in chosen.items():
            hp = ", ".join(f"{k}={v:.3g}" for k, v in c["hp"].items())
            val = f"val_acc {c['val_acc']:.3f}" if c["val_acc"] is not None else c["source"]
            print(f"  {label:<24} {hp}  ({val}, {c['samples']} samples)", flush=True)
    return tuning.apply_selection(trials, chosen)


def _edit_invocations(run_dir, edit) -> None:
    """``edit(invocations)`` on spec.json's list of invocations, written atomically."""
    path = os.path.join(run_dir, "spec.json")
    with open(path) as f:
        rec = json.load(f)
    edit(rec.setdefault("invocations", []))
    results.write_json(path, rec)


def record_invocation(run_dir, kind: str, argv, extra: dict) -> None:
    _edit_invocations(run_dir, lambda invs: invs.append(
        {"kind": kind, "argv": list(argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         **extra}))


def record_timing(run_dir, clock: dict) -> None:
    """Wall-clock stamps of this invocation (process start, Ray start, connected, the
    Tune run of the trials, and the tuning run if any) into its spec.json record:
    where a sweep's time went, and what bench/sweep_bench.py reads."""
    _edit_invocations(run_dir, lambda invs: invs[-1].update(
        timing={k: round(v, 3) for k, v in clock.items()}))


def estimate_left(spec, kind: str, trials, sizes, cluster_info: dict,
                  started: bool = True) -> tuple[str, dict, int]:
    """``(estimate line, per-epoch seconds, trials at once)`` for the trials of the plan
    without a result yet, on a cluster with ``cluster_info["resources"]`` (the sweep's,
    or this machine's in a dry run, ``started`` False: the start-up is still to come)."""
    slots = concurrent_slots(spec, cluster_info, len(groups_of(trials, spec)))
    todo = [t for t in trials if results.read_fragment_row(spec.run_dir, t.trial_id) is None]
    from . import estimate
    line, per_epoch = estimate.line(spec, todo, sizes, slots,
                                    len({t.cell for t in trials}) if kind == "start" else 0,
                                    started=started)
    return line, per_epoch, slots


def concurrent_slots(spec, cluster_info: dict, units: int) -> int:
    """How many trials run at once on the cluster with the resolved per-trial request."""
    res = cluster_info["resources"]
    slots = int(res.get("CPU", 1) // max(spec.cpus_per_trial, 1e-9))
    if spec.gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // spec.gpus_per_trial))
    return max(1, min(units, slots))
