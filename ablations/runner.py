"""Ray Tune execution: the only module that imports ray.

Each Tune trial runs one *group* of planned trials (``ablations.trial.run_group``)
and writes their fragments to the results folder; the driver merges them
afterwards. Probe groups are whole cells (all seeds batched in one pass), so a
sweep of thousands of probes is a handful of Tune trials, not thousands.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings

from .trial import run_group


class TuneReporter:
    """Per-epoch metrics and checkpoints to Ray Tune; restore on a retried trial."""

    def restore(self):
        import torch
        from ray import tune
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(os.path.join(d, "state.pt"), weights_only=False)

    def report(self, metrics: dict, state: bytes) -> None:
        from ray import tune
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.pt"), "wb") as f:
                f.write(state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _trainable(config, *, groups, spec, run_dir):
    from ray import tune
    for name in ("ray.train", "ray.tune"):  # not one "checkpoint created" line per epoch
        logging.getLogger(name).setLevel(logging.WARNING)
    statuses = run_group(groups[config["group"]], spec, run_dir, TuneReporter())
    tune.report({"completed": statuses.count("completed"),
                 "diverged": statuses.count("diverged"), "error": statuses.count("error")})


def default_cpus_per_trial(cpus: float, n_groups: int) -> int:
    """Share the CPUs among the trials so none sit idle: 2 CPUs, 1 trial -> 2 threads."""
    return max(1, int(cpus // max(1, min(n_groups, cpus))))


def run(groups, spec, run_dir: str) -> None:
    """Run every group through Ray Tune on a local Ray started on this machine's CPUs."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Per-epoch checkpoints of short trials are intended; Tune would warn about the syncs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune

    run_dir = os.path.abspath(run_dir)
    started = False
    if not ray.is_initialized():
        # A local cluster bound to loopback only; the dashboard is not needed.
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=True)
        started = True
    try:
        if spec.cpus_per_trial is None:
            spec = dataclasses.replace(spec, cpus_per_trial=default_cpus_per_trial(
                ray.cluster_resources().get("CPU", 1), len(groups)))
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, groups=groups, spec=spec, run_dir=run_dir),
            {"cpu": spec.cpus_per_trial})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner = tune.Tuner(
                trainable,
                param_space={"group": tune.grid_search(list(range(len(groups))))},
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(name="tune", storage_path=os.path.join(run_dir, "ray"),
                                          verbose=0, log_to_file=True,
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            tuner.fit()
    finally:
        if started:
            ray.shutdown()
