"""One unit of work on a worker: run a group of trials and write their fragments.

Plain values in (``TrialConfig``s, the spec), files out: no Ray here, so a test
can call ``run_group`` directly.
"""
from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
import torch

from ablations.status import Status
import models

from . import results, tracking
from .plan import network_id
from .probe import can_batch, probe_mlp_variants, probe_one
from .train import run_train_trial


def run_probe_group(trials, spec, run_dir, reporter=None) -> list[str]:
    """Probe every trial of a group; an MLP group runs all its seeds and variants batched.

    W&B: one run per group (a cell with its seeds), not per seed: a probe takes
    milliseconds and thousands of runs would swamp the tracker.
    """
    outcomes = {}
    # Trials whose networks differ only in the shortcut share each seed's draws (one
    # batched pass for plain and residual); other factor levels are their own pass.
    by_net: dict = {}
    for t in trials:
        by_net.setdefault(dataclasses.replace(t.model_cfg, residual=True), []).append(t)
    for ts in by_net.values():
        if can_batch(ts[0].model_cfg):
            seeds = sorted({t.seed for t in ts})
            got = probe_mlp_variants(ts[0].model_cfg, seeds, spec.probe_batch,
                                     sorted({t.residual for t in ts}))
            outcomes.update({t.trial_id: got[t.residual][seeds.index(t.seed)] for t in ts})
        else:
            outcomes.update({t.trial_id: probe_one(t.model_cfg, t.seed, spec.probe_batch)
                             for t in ts})
    outcomes = [outcomes[t.trial_id] for t in trials]
    first_of_variant = {t.model_cfg: t for t in reversed(trials)}
    params = {c: models.count_params(t.model_cfg.build())  # once per variant, not per seed
              for c, t in first_of_variant.items()}
    statuses, frames = [], []
    where = reporter.where() if reporter else {}
    first = trials[0]
    name = f"{network_id(first.model, first.depth, first.preset)}-probe"
    tracker = tracking.TrialTracker(
        spec.wandb, run_dir, spec.name, name,
        {"family": first.family, "model": first.model, "depth": first.depth,
         # every factor's levels in this cell (residual: [False, True], norm: [...])
         **{k: sorted({t.factors()[k] for t in trials}, key=str)
            for k in results.factor_columns()[4:-1]},
         "seeds": len({t.seed for t in trials}),
         "probe_batch": spec.probe_batch, "mode": "probe", "sweep": spec.name},
        job_type="probe")
    for trial, (stats, loss) in zip(trials, outcomes):
        status = Status.COMPLETED if math.isfinite(loss) else Status.DIVERGED
        row = {**trial.factors(), "params": params[trial.model_cfg], "status": status,
               "probe_loss": loss, "attempts": 1, **where, "finished_at": time.time()}
        frame = results.layer_frame(trial, stats, "init")
        results.write_fragment(run_dir, trial.trial_id, row, {"layers": frame})
        statuses.append(status)
        frames.append(frame)
    tracker.log_layers(pd.concat(frames, ignore_index=True))
    tracker.finish({"completed": statuses.count(Status.COMPLETED),
                    "diverged": statuses.count(Status.DIVERGED), "status": Status.COMPLETED})
    return statuses


def run_group(trials, spec, run_dir, reporter=None) -> list[str]:
    """Run one group, skipping trials that already have a result (a retried or resumed
    group does not redo them). An exception propagates: Ray Tune retries the group
    (``--max-failures``), and the driver records ``status=error`` after the last try;
    but ``ablations.preempt.Preempted`` (the worker got SIGTERM; the trial is
    checkpointed) is no failure: ``ablations.runner`` runs the group again in a next
    round, without using a retry.

    ``reporter`` (train mode) gets per-epoch metrics (see ablations.train).
    """
    torch.set_num_threads(max(1, int(spec.train.threads or spec.cpus_per_trial or 1)))
    done = {t.trial_id: results.read_fragment_row(run_dir, t.trial_id) for t in trials}
    todo = [t for t in trials if done[t.trial_id] is None]
    statuses = [r["status"] for r in done.values() if r is not None]
    if not todo:
        return statuses
    if spec.mode == "probe":
        return statuses + run_probe_group(todo, spec, run_dir, reporter)
    return statuses + [run_train_trial(t, spec, run_dir, reporter) for t in todo]
