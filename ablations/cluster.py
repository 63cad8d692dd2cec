"""Ray on this machine or a cluster: connecting, and the resources of each trial.

``connect`` starts a local Ray on this machine's CPUs/GPUs (bound to loopback)
or joins a cluster (``--address auto|host:port``; token authentication is
switched on for the driver when a token is available). ``plan_local`` checks a
request against this machine before a local Ray starts; ``resolve_resources``
turns ``--cpus-per-trial``/``--gpus-per-trial`` (or their defaults) into a
per-trial request every node of the connected cluster can satisfy, and fails
fast otherwise. ``watch`` calls back when the Ray under the driver is lost (its
processes killed, the head node gone); ``quiet_node_notices`` turns Ray's notices of a lost node (a raylet's state dump and
last log lines) into one line. Running trials on it: ``ablations.runner``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .exit_noise import ExitNoiseFilter, wrap_printer
from .spec import SpecError

# Ray/Tune settings that keep short trials cheap and the console readable (read when
# ray is imported: this module is imported before it).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV/JSON
os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
# forwarded to the workers of a cluster; an S3-compatible store's endpoint and region too
# (not its credentials: Ray Tune forwards AWS_ACCESS_KEY_ID and its kin itself, else the
# nodes' own environment, config files or instance roles give them)
PASS_ENV = ("RESABLATE_", "WANDB_", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


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
    token is available and the variable is unset. The project's code travels with the
    job (``shipped``): a node need not have it.
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
        quiet_node_notices()  # a raylet killed under us: its dying notice and state dump
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
    try:
        ray.init(address=address, runtime_env=shipped(root, env), **common)
    except Exception as e:  # ConnectionError, AuthenticationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    ExitNoiseFilter().install()
    quiet_node_notices()


def quiet_node_notices() -> bool:
    """Ray's notices of a lost node (a raylet's death with its last 20 log lines and
    state dump; "marked dead because the detector has missed too many heartbeats")
    become one line naming the node; False if Ray's internals moved (then they print
    as before). The trials that ran there run again (``ablations.runner.node_lost``)."""
    try:
        from ray._private import worker
        printer = worker.print_to_stdstream
    except (ImportError, AttributeError):
        return False
    if getattr(printer, "resablate", False):
        return True
    lost: list[str] = []  # ids of the nodes lost so far

    def quiet(data, ignore_prefix):
        text = "\n".join(data.get("lines") or [])
        if data.get("pid") == "raylet" and text.startswith("Raylet is terminated"):
            return  # its node's "marked dead" notice follows
        if data.get("pid") == "raylet" and "has been marked dead" in text:
            node = text.split("node id:", 1)[-1].split()[0] if "node id:" in text else "?"
            address = text.split("address:", 1)[-1].split()[0] if "address:" in text else "?"
            lost.append(node)
            print(f"Ray lost node {node[:12]} at {address} (it stopped answering); the "
                  "trials it ran run again from their checkpoints", flush=True)
            return
        printer(data, ignore_prefix)

    quiet.resablate = True
    worker.print_to_stdstream = quiet
    def wrap(shown):  # the head's complaints about the lost node ("Failed to remove ...")
        def without_lost(data):
            if data.get("pid") == "gcs_server" and lost:
                data = {**data, "lines": [line for line in data.get("lines") or []
                                          if not any(n in line for n in lost)]}
                if not data["lines"]:
                    return
            shown(data)
        return without_lost

    wrap_printer(wrap)  # where Ray's internals moved, those complaints print as before
    return True


def shipped(root: str, env: dict) -> dict:
    """The job's runtime env on a cluster: this checkout's ``models`` and ``ablations``
    shipped to every node by Ray (``py_modules``: uploaded once, cached per node), so a
    node needs only Python, Ray, torch and the dependencies, not the project; and the
    ``RESABLATE_*``/``WANDB_*`` variables."""
    return {"env_vars": env, "py_modules": [os.path.join(root, m) for m in ("models", "ablations")],
            "excludes": ["__pycache__", "*.pyc"]}


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


def local_resources() -> tuple[int, int]:
    """(CPUs, GPUs) a local Ray would get on this machine, without starting it."""
    import torch
    try:
        from ray._private.utils import get_num_cpus  # Ray's own count (cgroup quotas)
        cpus = int(get_num_cpus())
    except Exception:
        cpus = os.cpu_count() or 1
    return cpus, torch.cuda.device_count()


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
    cpus, gpus = local_resources()
    cpt, gpt = plan_resources(cpus, gpus, cpus, gpus, n_units, spec.cpus_per_trial,
                              spec.gpus_per_trial)
    if os.environ.get("RESABLATE_PREWARM") == "0":
        return False
    slots = min(n_units, int(cpus // cpt), int(gpus // gpt) if gpt else n_units)
    return slots >= cpus


class _Watch:
    """A daemon thread calling ``on_lost(why)`` once when Ray is lost (see ``watch``)."""

    def __init__(self, on_lost, every_s: float, grace_s: float):
        self.on_lost, self.every_s, self.grace_s = on_lost, every_s, grace_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="resablate-ray-watch",
                                       daemon=True)
        self.thread.start()

    def run(self) -> None:
        import ray
        node = getattr(ray._private.worker, "_global_node", None)
        procs = {kind: [i.process for i in getattr(node, "all_processes", {}).get(kind, [])]
                 for kind in ("gcs_server", "raylet")}
        gcs = getattr(node, "_gcs_address", None)
        unreachable_since = None
        while not self.stop.wait(self.every_s):
            dead = [kind for kind, ps in procs.items() if any(p.poll() is not None for p in ps)]
            if dead:  # a local Ray: the driver started these processes
                why = " and ".join(dead) + (" processes" if len(dead) > 1 else " process")
                return self.lost(f"its {why} ended")
            if gcs and not any(procs.values()):  # a joined cluster: its GCS must answer
                if reachable(gcs):
                    unreachable_since = None
                elif unreachable_since is None:
                    unreachable_since = time.monotonic()
                elif time.monotonic() - unreachable_since > self.grace_s:
                    return self.lost(f"its head node at {gcs} stopped answering")

    def lost(self, why: str) -> None:
        if not self.stop.is_set():
            ExitNoiseFilter.ray_lost = True  # Ray's last words stay out of the terminal
            self.on_lost(why)


def reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


_watch: _Watch | None = None


def watch(on_lost, every_s: float = 0.25, grace_s: float = 10.0) -> None:
    """Call ``on_lost(why)`` (in a daemon thread, once) when the connected Ray is lost
    while the driver uses it: a local Ray's gcs_server or raylet process ended, or a
    joined cluster's GCS refused connections for ``grace_s`` seconds. The driver's own
    Ray calls then hang (and Ray ends the process ~60 s later with its internals on the
    terminal), so ``on_lost`` is expected to end the process itself. ``disconnect``
    stops the watch first (its ``ray.shutdown`` ends those processes on purpose)."""
    global _watch
    unwatch()
    _watch = _Watch(on_lost, every_s, grace_s)


def unwatch() -> None:
    global _watch
    if _watch is not None:
        _watch.stop.set()
        if _watch.thread is not threading.current_thread():
            _watch.thread.join(timeout=5)
        _watch = None


def disconnect() -> None:
    """Shut down the local Ray, or leave the cluster (which keeps running)."""
    unwatch()
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


def check_device(device: str, gpus: float, gpt: float, where: str = "the Ray cluster") -> None:
    """``--device cuda`` needs a GPU for each trial: without one every trial would fail
    in its worker; said here, before anything is written, in one line (``where``: whose
    GPUs were counted)."""
    if device == "cuda" and not gpt:
        raise SpecError("--device cuda: " + (
            f"{where} has no GPU; valid: --device auto or cpu" if not gpus else
            "--gpus-per-trial 0 gives the trials no GPU; valid: --gpus-per-trial > 0, or "
            "--device auto or cpu"))


def plan_resources(cpus: float, gpus: float, node_cpu: float, node_gpu: float, n_units: int,
                   cpt: float | None, gpt: float | None,
                   where: str = "the Ray cluster") -> tuple[float, float]:
    """(CPUs, GPUs) per trial (``where``: whose resources these are, for the errors). Defaults: slots = min(units, CPUs); each trial gets
    floor(CPUs / slots) CPUs and, when there are GPUs, min(1, GPUs / slots) of a GPU
    (fractions pack several trials on one GPU). A request that no single node can
    satisfy would never be scheduled: it is an error here, not a hang later."""
    slots = max(1, min(n_units, int(cpus) or 1))
    if gpt is None:
        gpt = 0.0 if not gpus else min(1.0, _floor(gpus / slots))
    if gpt > node_gpu:
        have = "no GPU" if not gpus else f"at most {node_gpu:g} GPU(s) per node"
        raise SpecError(f"--gpus-per-trial {gpt:g}: {where} has {have}; valid: 0"
                        + (f" up to {node_gpu:g} (fractions such as 0.25 share a GPU)"
                           if node_gpu else " (or omit it)"))
    if gpt:
        slots = max(1, min(slots, int(gpus / gpt)))
    if cpt is None:
        cpt = min(max(1, int(cpus // slots)), max(1, int(node_cpu)))
    if cpt > node_cpu:
        raise SpecError(f"--cpus-per-trial {cpt:g}: no node of {where} has that many "
                        f"CPUs (largest: {node_cpu:g}); valid: up to {node_cpu:g}")
    return cpt, gpt


def cluster_info() -> dict:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "resources": {k: v for k, v in ray.cluster_resources().items()
                                               if k in ("CPU", "GPU", "memory")}}
