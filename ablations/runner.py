"""Ray Tune runs of a sweep's trials, on the Ray that ``ablations.cluster`` connected.

``run_groups``: one Tune trial per *group* of planned trials (a probe cell with
all its seeds, or one training trial), on reused actors; a trial that raises is
retried up to ``--max-failures`` times by Tune and continues from its own
checkpoint (``<storage>/checkpoints``); after the last failure its traceback is
returned for the results. A trial whose worker got SIGTERM (``ablations.preempt``:
checkpointed mid-epoch) ends with a "preempted" result and runs again in a next
round, from its checkpoint, without using a retry. ``run_tuning``: the per-cell
Optuna searches (``ablations.tuning``) in one Tuner, so samples of different cells
run side by side.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import warnings

from ablations.status import Status
from . import storage
from . import cluster  # noqa: F401  sets Ray's and Tune's environment before ray is imported
from .preempt import Preempted, WorkerSetup
from .trial import run_group


class TuneReporter:
    """Per-epoch metrics to Ray Tune (checkpoints are the trial's own files)."""

    def report(self, metrics: dict) -> None:
        from ray import tune
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})

    def where(self) -> dict:
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(),
                # whether this worker imported the trainer as Ray started it (prewarm)
                "worker_preloaded": bool(getattr(sys.modules.get("ablations.warmup"),
                                                 "PRELOADED", False))}


def _trainable(config, *, groups, cells, spec, run_dir):
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune tees the worker's output into the trial's log file and warns when it flushes
    # that file after the trial closed it (at every actor's end): noise.
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    if config.get("kind") == "tune":
        from .train import run_train_trial
        from .tuning import sample_trial
        sample = sample_trial(cells[config["cell"]], config["sample"], config["hp"])
        run_train_trial(sample, spec, run_dir, TuneReporter(), tuning=True)
        return
    from ray import tune
    group = groups[config["group"]]
    try:
        if storage.is_uri(spec.storage):  # staged here, every file written put to the store
            spec, run_dir, mirror = storage.stage(spec, [t.trial_id for t in group])
            with mirror:
                statuses = run_group(group, spec, run_dir, TuneReporter())
        else:
            statuses = run_group(group, spec, run_dir, TuneReporter())
    except Preempted:  # checkpointed: run_groups runs it again, not as a failure
        tune.report({"preempted": 1})
        return
    tune.report({"completed": statuses.count(Status.COMPLETED),
                 "diverged": statuses.count(Status.DIVERGED), "group_done": 1})


# the SIGTERM handler, installed on the worker's main thread as Tune sets up the actor
_trainable.__mixins__ = (WorkerSetup,)


def _tuner_common(spec, experiment: str, callbacks=()):
    from ray import tune
    path, filesystem = storage.tune_storage(spec)
    return tune.RunConfig(
        name=experiment, storage_path=path, storage_filesystem=filesystem, verbose=0,
        log_to_file=True, callbacks=list(callbacks),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None))


def _resources(spec) -> dict:
    res = {"cpu": spec.cpus_per_trial}
    if spec.gpus_per_trial:
        res["gpu"] = spec.gpus_per_trial
    return res


class _Progress:
    """Tune callback: one line per failed attempt (Tune's own log is a full traceback per
    attempt), and ``on_end`` when a trial ends (throttled), e.g. to refresh
    ``trials.parquet`` so the results folder is readable during the sweep."""

    def __new__(cls, label, on_end=None, every_s: float = 2.0, progress=None, on_sample=None):
        """``on_sample(trial) -> str``: a line printed when a tuning sample ends."""
        from ray import tune

        def unit(trial):
            return trial.config.get("group") if progress is not None else None

        def show(event, *args):
            """Progress output is a nicety: a fault in it must never stop the sweep."""
            try:
                getattr(progress, event)(*args)
            except Exception as e:  # noqa: BLE001
                print(f"warning: progress display failed ({type(e).__name__}: {e})",
                      file=sys.stderr, flush=True)

        class Callback(tune.Callback):
            last = 0.0

            def _maybe(self):
                if on_end and time.monotonic() - self.last >= every_s:
                    self.last = time.monotonic()
                    on_end()

            def on_trial_start(self, iteration, trials, trial, **info):
                if unit(trial) is not None:
                    show("started", unit(trial))

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if unit(trial) is not None and "epoch" in result:
                    show("epoch", unit(trial), result.get("epoch"), result.get("epoch_seconds"))

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._maybe()  # merge first: the progress line reads the fresh fragment
                if (trial.last_result or {}).get("preempted"):
                    print(f"{label(trial.config)}: preempted (its worker got SIGTERM): "
                          "checkpointed, runs again (not counted as a failure)", flush=True)
                elif unit(trial) is not None:
                    show("finished", unit(trial))
                elif on_sample is not None:
                    try:
                        print(on_sample(trial), flush=True)
                    except Exception as e:  # noqa: BLE001  a nicety, never the sweep
                        print(f"warning: progress line failed ({type(e).__name__}: {e})",
                              file=sys.stderr, flush=True)

            def on_trial_recover(self, iteration, trials, trial, **info):
                print(f"{label(trial.config)}: attempt failed, retrying from its checkpoint",
                      flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                if unit(trial) is not None:
                    show("finished", unit(trial))
                else:
                    print(f"{label(trial.config)}: failed after all retries (status=error)",
                          flush=True)
                self._maybe()

        return Callback()


def run_groups(groups, spec, run_dir: str, experiment: str, on_trial_end=None,
               progress=None) -> dict:
    """Run every group; returns ``{group index: traceback}`` for groups that failed
    after all retries (their trials without a result become ``status=error``).
    ``progress``: an ``ablations.progress.SweepProgress`` over the groups (in order)."""
    from ray import tune
    run_dir = os.path.abspath(run_dir)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, groups=groups, cells={}, spec=spec, run_dir=run_dir),
        _resources(spec))
    callbacks = [_Progress(lambda c: ", ".join(t.trial_id for t in groups[c["group"]]),
                           on_trial_end, progress=progress)]
    errors, todo, rounds = {}, list(range(len(groups))), 0
    while todo:  # a next round: the groups preempted in this one, from their checkpoints
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner = tune.Tuner(
                trainable, param_space={"group": tune.grid_search(todo)},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=_tuner_common(spec, experiment + (f"-{rounds}" if rounds else ""),
                                         callbacks))
            grid = tuner.fit()
        todo, rounds, ended = [], rounds + 1, True
        for r in grid:
            if r.error is not None:
                errors[r.config["group"]] = _format_error(r.error)
            elif (r.metrics or {}).get("preempted"):
                todo.append(r.config["group"])
            else:
                ended = ended and bool((r.metrics or {}).get("group_done"))
        if not ended:  # interrupted (Ctrl-C): no next round; the driver says what is left
            todo = []
    return errors


def run_tuning(cells: dict, search, spec, run_dir: str, experiment: str) -> None:
    """Every cell's Optuna search in one Tuner (``search``: an ``ablations.tuning.CellSearch``)."""
    from ray import tune

    from .tuning import make_pruner
    run_dir = os.path.abspath(run_dir)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, groups=[], cells=cells, spec=spec, run_dir=run_dir),
        _resources(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = tune.Tuner(
            trainable, param_space={},
            tune_config=tune.TuneConfig(search_alg=search, scheduler=make_pruner(search),
                                        num_samples=max(1, search.remaining_total()),
                                        reuse_actors=True),
            run_config=_tuner_common(spec, experiment, [_Progress(
                lambda c: f"tuning {c.get('cell')} sample {c.get('sample')}",
                on_sample=lambda t: sample_line(t.config, t.last_result, spec.samples))]))
        tuner.fit()


def sample_line(config: dict, result: dict | None, samples: int) -> str:
    """``tuning mlp-8-plain sample 3/8 (lr=0.0123): val acc 41.2%``: one
    line per ended tuning sample (completed, pruned, diverged), from Tune's last result."""
    r = result or {}
    hp = ", ".join(f"{k}={v:.3g}" for k, v in (config.get("hp") or {}).items())
    head = f"tuning {config.get('cell')} sample {int(config.get('sample', -1)) + 1}/{samples}" \
        + (f" ({hp})" if hp else "")
    acc = r.get("val_acc")
    acc = f"val acc {100 * acc:.1f}%" if isinstance(acc, (int, float)) else "no val acc"
    if r.get("tune_final"):
        if r.get("status") == Status.DIVERGED:
            return f"{head}: diverged"
        return f"{head}: {acc}"
    if "epoch" in r:
        return f"{head}: pruned after epoch {r['epoch']} ({acc})"
    return f"{head}: ended without a result"


def _format_error(err) -> str:
    import traceback
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return str(err) if len(str(err)) > len(text) else text
