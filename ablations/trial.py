"""One unit of work on a worker: run a group of trials and write their fragments.

Plain values in (``TrialConfig``s, the spec), files out: no Ray here, so a test
can call ``run_group`` directly.
"""
from __future__ import annotations

import math
import traceback

import pandas as pd
import torch

import models
from models.mlp import MLPConfig

from . import results
from .probe import probe_mlp_variants, probe_one


def layer_frame(trial, stats, phase: str, step: int = 0, epoch: int = 0) -> pd.DataFrame:
    """A LayerStats snapshot as tidy ``layers.parquet`` rows keyed by the trial's factors."""
    df = stats.frame()
    for k, v in trial.factors().items():
        df[k] = v
    df["phase"], df["step"], df["epoch"] = phase, step, epoch
    return df[results.FACTORS + ["phase", "step", "epoch", "layer", "layer_index",
                                 "stat", "value"]]


def run_probe_group(trials, spec, run_dir) -> list[str]:
    """Probe every trial of a group; an MLP group runs all its seeds and variants batched."""
    cfg = trials[0].model_cfg
    if isinstance(cfg, MLPConfig):
        seeds = sorted({t.seed for t in trials})
        by_variant = probe_mlp_variants(cfg, seeds, spec.probe_batch,
                                        sorted({t.residual for t in trials}))
        outcomes = [by_variant[t.residual][seeds.index(t.seed)] for t in trials]
    else:
        outcomes = [probe_one(t.model_cfg, t.seed, spec.probe_batch) for t in trials]
    first_of_variant = {t.residual: t for t in reversed(trials)}
    params = {r: models.count_params(t.model_cfg.build())  # once per variant, not per seed
              for r, t in first_of_variant.items()}
    statuses = []
    for trial, (stats, loss) in zip(trials, outcomes):
        status = "completed" if math.isfinite(loss) else "diverged"
        row = {**trial.factors(), "params": params[trial.residual], "status": status,
               "probe_loss": loss}
        results.write_fragment(run_dir, trial.trial_id, row,
                               {"layers": layer_frame(trial, stats, "init")})
        statuses.append(status)
    return statuses


def run_group(trials, spec, run_dir, reporter=None) -> list[str]:
    """Run one group; an exception becomes ``status=error`` rows with the traceback.

    ``reporter`` (train mode) gets per-epoch metrics and checkpoints (see ablations.train).
    """
    torch.set_num_threads(max(1, int(spec.train.threads or spec.cpus_per_trial or 1)))
    try:
        if spec.mode == "probe":
            return run_probe_group(trials, spec, run_dir)
        from .train import run_train_trial
        return [run_train_trial(t, spec, run_dir, reporter) for t in trials]
    except Exception:
        tb = traceback.format_exc()
        for t in trials:
            if results.read_fragment_row(run_dir, t.trial_id) is None:
                results.write_fragment(run_dir, t.trial_id,
                                       {**t.factors(), "status": "error", "error": tb}, {})
        return ["error"] * len(trials)
