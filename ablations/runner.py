"""Ray Tune runs of a sweep's trials, on the Ray that ``ablations.cluster`` connected.

``run_groups``: one Tune trial per *group* of planned trials (a probe cell with
all its seeds, or one training trial), on reused actors; a trial that raises is
retried up to ``--max-failures`` times by Tune and continues from its own
checkpoint (``<storage>/checkpoints``); after the last failure its traceback is
returned for the results. A trial whose worker got SIGTERM (``ablations.preempt``:
checkpointed mid-epoch) ends with a "preempted" result and runs again in a next
round, from its checkpoint, without using a retry; so does a trial whose node was lost
without notice (killed, crashed, reclaimed: ``node_lost``), which Tune retried
or gave up on: the retry is not counted either. ``run_tuning``: the per-cell
Optuna searches (``ablations.tuning``) in one Tuner, so samples of different cells
run side by side. With an object-store ``--storage`` a group, or a tuning sample, runs
in a folder staged on its node (``staged``) and its files go to the store.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import warnings

from ablations.status import Status
from . import storage
from . import cluster  # sets Ray's and Tune's environment before ray is imported
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
        with staged(spec, run_dir, []) as (spec, run_dir):  # its W&B run to the store
            run_train_trial(sample, spec, run_dir, TuneReporter(), tuning=True)
        return
    from ray import tune
    group = groups[config["group"]]
    try:
        with staged(spec, run_dir, [t.trial_id for t in group]) as (spec, run_dir):
            statuses = run_group(group, spec, run_dir, TuneReporter())
    except Preempted:  # checkpointed: run_groups runs it again, not as a failure
        tune.report({"preempted": 1})
        return
    tune.report({"completed": statuses.count(Status.COMPLETED),
                 "diverged": statuses.count(Status.DIVERGED), "group_done": 1})


# the SIGTERM handler, installed on the worker's main thread as Tune sets up the actor
_trainable.__mixins__ = (WorkerSetup,)


@contextlib.contextmanager
def staged(spec, run_dir, trial_ids):
    """``(spec, run_dir)`` that trials (or a tuning sample: no ``trial_ids``) run with:
    with an object-store ``--storage``, a local copy staged on this node whose every file
    written goes to the store (``storage.stage``); otherwise the arguments themselves."""
    if not storage.is_uri(spec.storage):
        yield spec, run_dir
        return
    spec, run_dir, mirror = storage.stage(spec, trial_ids)
    with mirror:
        yield spec, run_dir


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


class NodeLosses:
    """Trials whose actor died (its worker process or its node), until the head says
    which (``node_lost``; it needs a few seconds to declare a silent node dead).
    A lost node costs no retry: a trial Tune retries gets its failure un-counted; a
    trial Tune gave up on (``--max-failures`` used up) runs again in a next round."""

    def __init__(self, label):
        self.label, self.waiting, self.lost, self.checked = label, {}, set(), 0.0

    def died(self, trial, gave_up: bool) -> bool:
        """Note ``trial``'s failure; False when its worker did not die (it raised)."""
        error = _trial_error(trial)
        if error is None or actor_error(error) is None:
            return False
        self.waiting[trial.trial_id] = (trial, error, gave_up, time.monotonic())
        return True

    def settle(self, wait_s: float = 0.0, every_s: float = 1.0) -> list:
        """Ask the head about the waiting trials (at most every ``every_s`` seconds;
        ``wait_s``: keep asking that long for a verdict). Returns the trials Tune gave up
        on that turned out not to be node losses (failures after all)."""
        failed, end = [], time.monotonic() + wait_s
        while self.waiting and (time.monotonic() - self.checked >= every_s or wait_s):
            self.checked = time.monotonic()
            for tid, (trial, error, gave_up, since) in list(self.waiting.items()):
                verdict = node_lost(error)
                # a dying node's raylet may outlive its workers by a moment: a verdict
                # of "not the node" only stands after a few seconds
                young = time.monotonic() - since < (3 if verdict is False else 120)
                if not verdict and young:
                    continue
                del self.waiting[tid]
                if verdict:
                    if gave_up:  # to run again in a next round
                        self.lost.add(trial.config.get("group"))
                    meta = getattr(trial, "run_metadata", None)
                    if not gave_up and getattr(meta, "num_failures", 0) > 0:
                        meta.num_failures -= 1  # Tune counted it: a lost node is no failure
                    print(f"{self.label(trial.config)}: its node was lost; runs again from its "
                          "checkpoint" + (" after this round" if gave_up else "")
                          + " (not counted as a failure)", flush=True)
                elif gave_up:
                    failed.append(trial)
            if not self.waiting or time.monotonic() >= end:
                break
            time.sleep(0.5)
        if wait_s:  # no verdict in time: failures
            failed += [trial for trial, _, gave_up, _ in self.waiting.values() if gave_up]
            self.waiting.clear()
        return failed


def actor_error(error):
    """The ``RayActorError`` behind a trial's ``error`` (its worker process or its node
    died under it), or None (the trial itself raised)."""
    from ray.exceptions import RayActorError, RayTaskError
    if isinstance(error, RayTaskError):
        error = error.as_instanceof_cause()
    return error if isinstance(error, RayActorError) else None


def node_lost(error) -> bool | None:
    """Whether a trial's ``error`` is the loss of the node its actor ran on (killed,
    crashed, reclaimed without notice): True once the head has marked that node dead or
    its raylet refuses connections (the head's health check takes a few to ~30 seconds
    to declare a silent node dead); False for anything else (the trial raised, or its
    worker process died on a node whose raylet still answers); None while the actor is
    not known to be dead (ask again)."""
    import ray
    import ray._private.state
    err = actor_error(error)
    if err is None:
        return False
    if err.preempted:  # drained by the autoscaler: a preempted node
        return True
    if not err.actor_id:
        return False
    try:
        info = ray._private.state.actors(err.actor_id) or {}
        node_id = (info.get("Address") or {}).get("NodeID")
        node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), None)
    except Exception:  # noqa: BLE001  the head did not answer: no verdict
        return None
    if node is not None and not node.get("Alive"):
        return True
    if node is not None and not cluster.reachable(
            f"{node.get('NodeManagerAddress')}:{node.get('NodeManagerPort')}"):
        return True
    return False if info.get("State") == "DEAD" else None


def _trial_error(trial):
    """The exception of ``trial``'s latest failure, as Tune pickled it beside the
    trial's local files (None: none there)."""
    path = getattr(trial, "pickled_error_file", None)
    if not path or not os.path.exists(path):
        return None
    try:
        from ray import cloudpickle
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001  unreadable: treated as the trial's own failure
        return None


class _Progress:
    """Tune callback: one line per failed attempt (Tune's own log is a full traceback per
    attempt), and ``on_end`` when a trial ends (throttled), e.g. to refresh
    ``trials.parquet`` so the results folder is readable during the sweep."""

    def __new__(cls, label, on_end=None, every_s: float = 2.0, progress=None, on_sample=None,
                losses=None):
        """``on_sample(trial) -> str``: a line printed when a tuning sample ends;
        ``losses``: the ``NodeLosses`` that tells a lost node from a failure."""
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
                died = losses is not None and losses.died(trial, gave_up=False)
                print(f"{label(trial.config)}: attempt failed"
                      + (" (its worker or its node died)" if died else "")
                      + ", retrying from its checkpoint", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                if losses is not None and losses.died(trial, gave_up=True):
                    return  # a lost node or a failure: on_step_end (or the round's end) tells
                self.failed(trial)

            def failed(self, trial):
                if unit(trial) is not None:
                    show("finished", unit(trial))
                else:
                    print(f"{label(trial.config)}: failed after all retries (status=error)",
                          flush=True)
                self._maybe()

            def on_step_end(self, iteration, trials, **info):
                if losses is not None and losses.waiting:
                    for trial in losses.settle():
                        self.failed(trial)

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
    label = lambda c: ", ".join(t.trial_id for t in groups[c["group"]])  # noqa: E731
    errors, todo, rounds = {}, list(range(len(groups))), 0
    while todo:  # a next round: the groups preempted (or their node lost) in this one
        losses = NodeLosses(label)
        callbacks = [_Progress(label, on_trial_end, progress=progress, losses=losses)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner = tune.Tuner(
                trainable, param_space={"group": tune.grid_search(todo)},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=_tuner_common(spec, experiment + (f"-{rounds}" if rounds else ""),
                                         callbacks))
            grid = tuner.fit()
        todo, rounds, ended = [], rounds + 1, True
        for trial in losses.settle(wait_s=90):  # failures after all: their progress line
            if progress is not None:
                progress.finished(trial.config["group"])
        for r in grid:
            if r.error is not None and r.config["group"] in losses.lost:
                todo.append(r.config["group"])
            elif r.error is not None:
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
