"""Ray Tune execution: the only module that imports ray.

``connect`` starts a local Ray on this machine's CPUs/GPUs (bound to loopback)
or joins a cluster (``--address auto|host:port``; token authentication is
switched on for the driver when a token is available). ``resolve_resources``
turns ``--cpus-per-trial``/``--gpus-per-trial`` (or their defaults) into a
per-trial request every node can satisfy, and fails fast otherwise.

``run_groups``: one Tune trial per *group* of planned trials (a probe cell with
all its seeds, or one training trial), on reused actors; a trial that raises is
retried up to ``--max-failures`` times by Tune and continues from its own
checkpoint (``<storage>/checkpoints``); after the last failure its traceback is
returned for the results. ``run_tuning``: the per-cell Optuna searches
(``ablations.tuning``) in one Tuner, so samples of different cells run side by
side.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from .spec import SpecError
from .trial import run_group

# Ray/Tune settings that keep short trials cheap and the console readable.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV/JSON
os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
PASS_ENV = ("RESABLATE_", "WANDB_")  # forwarded to the workers of a cluster


class TuneReporter:
    """Per-epoch metrics to Ray Tune (checkpoints are the trial's own files)."""

    def report(self, metrics: dict) -> None:
        from ray import tune
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})

    def where(self) -> dict:
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(),
                # whether this worker imported the trainer as Ray started it (connect(prewarm))
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
    statuses = run_group(groups[config["group"]], spec, run_dir, TuneReporter())
    from ray import tune
    tune.report({"completed": statuses.count("completed"),
                 "diverged": statuses.count("diverged"), "group_done": 1})


# ---------------------------------------------------------------- connecting

def token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def _check_listening(address: str, timeout: float = 3.0) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SpecError(f"--address {address!r} is not host:port or 'auto' "
                        "(e.g. --address 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise SpecError(f"--address {address}: nobody listens there ({e.strerror or e}); start "
                        "the head with `ray start --head --port "
                        f"{port}` or use --address auto") from None


def connect(address: str | None, prewarm: bool = False) -> None:
    """Start a local Ray (``address`` None) or join a cluster (no-op when connected).

    Local: Ray is bound to loopback and its workers inherit this process's environment
    (this checkout on ``PYTHONPATH``, ``RESABLATE_*``, ``WANDB_*``). ``prewarm`` (see
    ``plan_local``): Ray starts one worker per CPU as the driver connects and each
    imports the trainer right away (``ablations.warmup``), and Tune's trial actors are
    placed in those workers, so their seconds of imports overlap the driver's work
    after connecting and Tune's set-up. On 2 saturated cores that moves CPU time more
    than it saves it (the first trial starts ~1 s earlier, Ray's start ~0.6 s later;
    bench/README.md).

    Joining: the address is probed first (a clear error in seconds, never a hang);
    when the cluster uses token authentication (``ray start`` does by default) the
    driver needs ``RAY_AUTH_MODE=token`` and the token (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``): the mode is set here when a
    token is available and the variable is unset.
    """
    import ray
    # Tune logs every failed attempt as a traceback (the results keep the last one) and
    # warns about missing metric files (its file loggers are off on purpose): quiet.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    # Workers import this project from the same checkout (an editable install or not).
    root = str(Path(__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    common = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
    if address is None:
        # Ray's default for a new local cluster is token auth; its notice at every start
        # is noise here (the cluster is bound to loopback).
        logging.getLogger("ray._private.authentication.authentication_token_setup"
                          ).setLevel(logging.ERROR)
        prewarm = prewarm and _tune_actors_in_prestarted_workers()
        system = {"prestart_worker_first_driver": prewarm}
        if prewarm:
            system["preload_python_modules"] = ["ablations.warmup"]
        # No job runtime env: Ray hands a prestarted worker only to an actor whose
        # runtime env is empty. The workers get the environment from the raylet, which
        # inherits it from this process as ray.init starts it.
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = pythonpath
        try:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                     _system_config=system, **common)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved
        ExitNoiseFilter().install()
        import ray.tune  # noqa: F401  the driver needs it next; meanwhile the workers warm up
        return
    if address != "auto":
        _check_listening(address)
    elif not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
        raise SpecError("--address auto: no running Ray cluster found on this machine "
                        "(start one with `ray start --head`, or give --address host:port)")
    if "RAY_AUTH_MODE" not in os.environ and token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    env = {k: v for k, v in os.environ.items() if k.startswith(PASS_ENV)}
    env["PYTHONPATH"] = pythonpath
    try:
        ray.init(address=address, runtime_env={"env_vars": env}, **common)
    except Exception as e:  # ConnectionError, AuthenticationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    ExitNoiseFilter().install()


class ExitNoiseFilter:
    """Drops interpreter-exit noise from the worker output Ray forwards to this terminal.

    When Ray stops a worker process (``ray.shutdown``, the end of a Tune run), its
    SIGTERM handler raises ``SystemExit`` wherever the worker's main thread is; when that
    is a garbage-collection callback (``WeakSet._remove``) during the worker's own exit,
    Python cannot propagate it and prints ``Exception ignored in: ...`` with a traceback
    through ``sigterm_handler``, ending in ``SystemExit: 1``. Nothing failed: the worker
    was exiting anyway. Only such whole blocks are dropped (a block that does not end in
    ``SystemExit`` or that never passes through a signal handler is kept), so a real
    error of a worker still reaches the user. A block cut across two batches of one
    worker's lines is held until its end arrives.
    """

    START = "Exception ignored in"

    def __init__(self):
        self._held: dict = {}

    @classmethod
    def _is_noise(cls, block: list[str]) -> bool:
        return (block[-1].strip().startswith("SystemExit")
                and any("sigterm_handler" in line or "signal" in line for line in block))

    def lines(self, key, lines: list[str]) -> list[str]:
        lines = self._held.pop(key, []) + list(lines)
        out, i = [], 0
        while i < len(lines):
            if not lines[i].startswith(self.START):
                out.append(lines[i])
                i += 1
                continue
            j = i + 1  # the block: its traceback lines, up to the exception's own line
            while j < len(lines) and (lines[j].startswith((" ", "\t", "Traceback"))
                                      or not lines[j].strip()):
                j += 1
            if j == len(lines):  # the block's end is in the next batch
                self._held[key] = lines[i:]
                break
            block = lines[i:j + 1]
            if not self._is_noise(block):
                out.extend(block)
            i = j + 1
        return out

    def install(self) -> bool:
        """Wrap Ray's driver-side printer of worker output; False if Ray's internals moved
        (then the output is printed unfiltered, as before)."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp
            name, printer = next((n, h) for n, h in disp.handlers if n == "ray_print_logs")
        except (ImportError, AttributeError, StopIteration):
            return False

        def filtered(data):
            if data.get("is_err") and data.get("lines"):
                data = {**data, "lines": self.lines((data.get("ip"), data.get("pid")),
                                                    data["lines"])}
                if not data["lines"]:
                    return
            printer(data)

        disp.remove_handler(name)
        disp.add_handler(name, filtered)
        return True


def _tune_actors_in_prestarted_workers() -> bool:
    """Make Tune's trial actors fit Ray's prestarted workers; False where they cannot.

    Tune gives its trial actors the runtime env ``{"env_vars": {"PL_DISABLE_FORK":
    "1"}}`` (a PyTorch Lightning setting), and Ray never places an actor with a runtime
    env in a prestarted worker. The variable moves to this process's environment, which
    the local workers inherit, so the actors' runtime env is empty. Tune also forwards
    some variables when they are set (``ENV_VARS_TO_PROPAGATE``, e.g. AWS credentials);
    then the actors would start in new workers beside the prestarted ones, so no
    worker is prestarted at all (False).
    """
    try:
        from ray.tune.execution import class_cache
        defaults, forwarded = class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE
    except (ImportError, AttributeError):
        return False
    if any(k in os.environ for k in forwarded):
        return False
    for k, v in list(defaults.items()):
        os.environ.setdefault(k, v)
        del defaults[k]
    return True


def plan_local(spec, n_units: int) -> bool:
    """Before starting a local Ray: check the request against this machine, so a request
    it cannot meet (e.g. ``--gpus-per-trial 2`` without a GPU) fails now, with the same
    message ``resolve_resources`` gives, and return whether to ``prewarm``.

    Prewarm: Ray prestarts one worker per CPU, so only when every CPU runs a trial at
    once (e.g. ``--cpus-per-trial 1`` with at least as many trials as CPUs); otherwise
    the extra workers would only take CPU time from the ones that run trials.
    ``RESABLATE_PREWARM=0`` switches it off. Joining a cluster: no check, no prewarm.
    """
    if spec.address is not None:
        return False
    import torch
    try:
        from ray._private.utils import get_num_cpus  # Ray's own count (cgroup quotas)
        cpus = int(get_num_cpus())
    except Exception:
        cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    cpt, gpt = plan_resources(cpus, gpus, cpus, gpus, n_units, spec.cpus_per_trial,
                              spec.gpus_per_trial)
    if os.environ.get("RESABLATE_PREWARM") == "0":
        return False
    slots = min(n_units, int(cpus // cpt), int(gpus // gpt) if gpt else n_units)
    return slots >= cpus


def disconnect() -> None:
    """Shut down the local Ray, or leave the cluster (which keeps running)."""
    if "ray" not in sys.modules:  # never connected: do not pay for importing ray
        return
    import ray
    if ray.is_initialized():
        ray.shutdown()


def _floor(x: float, digits: int = 4) -> float:
    return math.floor(x * 10 ** digits) / 10 ** digits


def resolve_resources(spec, n_units: int):
    """``spec`` with ``cpus_per_trial``/``gpus_per_trial`` set for the connected cluster."""
    import ray
    total = ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpt, gpt = plan_resources(
        total.get("CPU", 0.0), total.get("GPU", 0.0),
        max((n.get("CPU", 0.0) for n in nodes), default=0.0),
        max((n.get("GPU", 0.0) for n in nodes), default=0.0),
        n_units, spec.cpus_per_trial, spec.gpus_per_trial)
    if spec.mode == "train":
        check_device(spec.train.device, total.get("GPU", 0.0), gpt)
    return dataclasses.replace(spec, cpus_per_trial=cpt, gpus_per_trial=gpt)


def check_device(device: str, gpus: float, gpt: float) -> None:
    """``--device cuda`` needs a GPU for each trial: without one every trial would fail
    in its worker; said here, before anything is written, in one line."""
    if device == "cuda" and not gpt:
        raise SpecError("--device cuda: " + (
            "the Ray cluster has no GPU; valid: --device auto or cpu" if not gpus else
            "--gpus-per-trial 0 gives the trials no GPU; valid: --gpus-per-trial > 0, or "
            "--device auto or cpu"))


def plan_resources(cpus: float, gpus: float, node_cpu: float, node_gpu: float, n_units: int,
                   cpt: float | None, gpt: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) per trial. Defaults: slots = min(units, CPUs); each trial gets
    floor(CPUs / slots) CPUs and, when there are GPUs, min(1, GPUs / slots) of a GPU
    (fractions pack several trials on one GPU). A request that no single node can
    satisfy would never be scheduled: it is an error here, not a hang later."""
    slots = max(1, min(n_units, int(cpus) or 1))
    if gpt is None:
        gpt = 0.0 if not gpus else min(1.0, _floor(gpus / slots))
    if gpt > node_gpu:
        have = "no GPU" if not gpus else f"at most {node_gpu:g} GPU(s) per node"
        raise SpecError(f"--gpus-per-trial {gpt:g}: the Ray cluster has {have}; valid: 0"
                        + (f" up to {node_gpu:g} (fractions such as 0.25 share a GPU)"
                           if node_gpu else " (or omit it)"))
    if gpt:
        slots = max(1, min(slots, int(gpus / gpt)))
    if cpt is None:
        cpt = min(max(1, int(cpus // slots)), max(1, int(node_cpu)))
    if cpt > node_cpu:
        raise SpecError(f"--cpus-per-trial {cpt:g}: no node of the Ray cluster has that many "
                        f"CPUs (largest: {node_cpu:g}); valid: up to {node_cpu:g}")
    return cpt, gpt


def cluster_info() -> dict:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "resources": {k: v for k, v in ray.cluster_resources().items()
                                               if k in ("CPU", "GPU", "memory")}}


# ---------------------------------------------------------------- running

def _tuner_common(spec, experiment: str, callbacks=()):
    from ray import tune
    return tune.RunConfig(
        name=experiment, storage_path=os.path.abspath(spec.storage_dir), verbose=0,
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
                if unit(trial) is not None:
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = tune.Tuner(
            trainable, param_space={"group": tune.grid_search(list(range(len(groups))))},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=_tuner_common(spec, experiment, callbacks))
        grid = tuner.fit()
    errors = {}
    for r in grid:
        if r.error is not None:
            errors[r.config["group"]] = _format_error(r.error)
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
        if r.get("status") == "diverged":
            return f"{head}: diverged"
        return f"{head}: {acc}"
    if "epoch" in r:
        return f"{head}: pruned after epoch {r['epoch']} ({acc})"
    return f"{head}: ended without a result"


def _format_error(err) -> str:
    import traceback
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return str(err) if len(str(err)) > len(text) else text
