"""Run the requested measurements of one trial and write their fragments.

The one code path of both ways to measure (``ablations.measurements``): in the
worker at the end of a trial (``finish_trial``, called by ``train.run_train_trial``)
and after the fact from the kept weights (``measure_kept``, one Ray task per trial
of ``python -m ablations.measure``). Either way a measurement gets a network built
by ``weights.network`` from the same state dict, the same data, the same trial and
the same global seed (``seed_for(trial.seed, name, when)``), so its rows are the
same (on the same device and thread count).

A measurement's rows go to ``trials/<trial_id>/measure-<name>.parquet``: the
trial's key columns (``results.factor_columns()``), ``when`` ("init" | "final"),
then the measurement's own columns, every ``when`` it runs at in one file, written
atomically. A measurement that raises costs only itself: one warning line naming
the trial, the measurement and the error; the trial's row records it
(``measure_errors``), with the seconds each measurement took
(``measure_seconds_<name>``).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ablations.status import Status
from . import results, weights
from .data import load_dataset
from .device import pick_device


def fragment_path(run_dir, trial_id: str, name: str) -> Path:
    return results.trial_dir(run_dir, trial_id) / f"{results.MEASURE_PREFIX}{name}.parquet"


def requested(names) -> list:
    """The registered ``Measurement`` of each name, in order (KeyError naming the valid
    ones for an unknown name)."""
    from . import measurements
    return [measurements.get(n) for n in names or ()]


def needs_init(spec) -> bool:
    """Whether a trial must keep its initial weights until it ends: kept (``all``) or
    measured at init."""
    return spec.keep_weights == "all" or any(
        "init" in m.when for m in requested(spec.measure))


def measure_data(data, device: str):
    """``MeasureData`` of a trial's ``ablations.data.Dataset``: the training split as
    trained on but without augmentation, and the test split."""
    from .measurements import MeasureData
    return MeasureData(train_x=data.train_x, train_y=data.train_y, test_x=data.test_x,
                       test_y=data.test_y, device=device)


def keyed(trial, when: str, df) -> pd.DataFrame:
    """``df`` with the trial's key columns and ``when`` in front."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"returned {type(df).__name__}, not a pandas DataFrame")
    keys = [*results.factor_columns(), "when"]
    clash = [k for k in keys if k in df.columns]
    if clash:
        raise ValueError(f"returned key column(s) {', '.join(clash)}; the framework adds "
                         "them: return the measurement's own columns only")
    values = {**trial.factors(), "when": when}
    out = df.reset_index(drop=True)
    return pd.concat([pd.DataFrame({k: [values[k]] * len(out) for k in keys}), out], axis=1)


def measure_one(m, trial, networks: dict, data) -> pd.DataFrame:
    """Every ``when`` of ``m`` that ``networks`` has (``{when: () -> model}``), as one
    keyed frame. The global RNG is seeded per (trial, measurement, when) before each
    call, so even a draw without its own generator repeats after the fact."""
    import torch

    from .measurements import seed_for
    frames = []
    for when in m.when:
        if when in networks:
            model = networks[when]()
            torch.manual_seed(seed_for(trial.seed, m.name, when))
            frames.append(keyed(trial, when, m.fn(model, data, trial)))
    return pd.concat(frames, ignore_index=True)


def run_measurements(trial, run_dir, measured: list, networks: dict, data) -> dict:
    """Run each of ``measured`` that has a network at one of its ``when`` points and
    write its fragment; returns the row's additions (seconds per measurement,
    ``measure_errors``: "name: Type: message; ..." or None)."""
    out, errors = {}, []
    for m in measured:
        if not any(w in networks for w in m.when):
            continue  # e.g. a final-only measurement of a diverged trial
        t0 = time.perf_counter()
        try:
            results.write_parquet(fragment_path(run_dir, trial.trial_id, m.name),
                                  measure_one(m, trial, networks, data))
        except Exception as e:  # noqa: BLE001  one measurement's fault stays its own
            errors.append(f"{m.name}: {results.brief(e)}")
            results.warn(f"measurement {m.name} of trial {trial.trial_id} failed "
                         f"({results.brief(e)}); the trial and its other measurements "
                         "are kept")
        out[f"measure_seconds_{m.name}"] = time.perf_counter() - t0
    if measured:
        out["measure_errors"] = "; ".join(errors) or None
    return out


CALIBRATION_IMAGES = 2048  # the first training images, in order: BN statistics at init
CALIBRATION_BATCH = 256


def calibrate_norm(model, x) -> None:
    """Set every batch norm's running statistics to those of the network's own
    activations on ``x`` (the first ``CALIBRATION_IMAGES`` training images, in batches
    of ``CALIBRATION_BATCH``, cumulative average), weights untouched; back in eval mode.

    At init the running statistics are still their defaults (mean 0, variance 1), so
    an untrained network in eval mode would compute as if it had no batch norm at all;
    in training it normalizes with batch statistics from its first step. The init
    measurements are of the network that trains, so its batch norms get the
    statistics of its own activations first. Deterministic (fixed images, fixed
    order), so the worker and a later run from ``init.pt`` agree."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    with torch.no_grad():
        x = x[:CALIBRATION_IMAGES]
        for k in range(0, len(x), CALIBRATION_BATCH):
            model(x[k:k + CALIBRATION_BATCH])
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.eval()


def _networks(cfg, states: dict, device: str, data=None) -> dict:
    """``{when: () -> a fresh network holding that state}``: each measurement gets its
    own copy, so one that changed its network could not change another's. The init
    network's batch norms are calibrated on the training images (``calibrate_norm``)."""
    def build(when, state):
        model = weights.network(cfg, state, device)
        if when == "init" and data is not None:
            calibrate_norm(model, data.train_x)
        return model
    return {w: (lambda w=w, s=s: build(w, s)) for w, s in states.items() if s is not None}


# --------------------------------------------------------------------------- in the worker

def finish_trial(trial, spec, run_dir, cfg, model, init_state, data, device: str,
                 status: str, epoch: int, test_acc) -> dict:
    """At the end of a trial, before its row is written: keep its weights
    (``--keep-weights``), then run the requested measurements (a diverged trial: the
    init points only). Returns the row's additions."""
    measured = requested(spec.measure)
    completed = status == Status.COMPLETED
    states = {"init": init_state, "final": model.state_dict() if completed else None}
    init_measured = any("init" in m.when for m in measured)
    for when in weights.files_to_keep(spec.keep_weights, init_measured, completed):
        weights.save(run_dir, trial, when, states[when], cfg,
                     epoch if when == "final" else 0, test_acc if when == "final" else None)
    data = measure_data(data, device)
    return run_measurements(trial, run_dir, measured, _networks(cfg, states, device, data),
                            data)


# --------------------------------------------------------------------------- after the fact

def fragment_done(run_dir, trial_id: str, name: str) -> bool:
    """Whether the trial's fragment of ``name`` is there and readable (its Parquet
    footer); a damaged one is moved aside with one warning line and is not done."""
    import pyarrow.parquet as pq
    p = fragment_path(run_dir, trial_id, name)
    if not p.exists():
        return False
    try:
        pq.read_metadata(p)
        return True
    except Exception as e:  # pyarrow's errors: ArrowInvalid, OSError, ...
        moved = results.move_aside(p)
        if moved is not None:
            results.warn(f"{p} is unreadable ({results.brief(e)}); moved aside to "
                         f"{moved.name}; measuring again")
        return False


def measure_kept(trial, status: str, spec, run_dir, names, redo: bool = False) -> dict:
    """Measure one finished trial from its kept weights and write the missing fragments
    (all of them with ``redo``). ``status``: the trial's, from trials.parquet (a
    diverged trial is measured at init only, as in the worker). ``init`` without
    ``init.pt``: rebuilt from the seed (``weights.initial``, the same bits).

    Returns ``{"measure_seconds_<name>": s, ..., "measure_errors": ...,
    "init_rebuilt": bool, "skipped": {name: why}}``.
    """
    device = pick_device(spec.train.device)
    points = {"init", "final"} if status == Status.COMPLETED else {"init"}
    todo = [m for m in requested(names) if set(m.when) & points and
            (redo or not fragment_done(run_dir, trial.trial_id, m.name))]
    out: dict = {"init_rebuilt": False, "skipped": {}}
    if not todo:
        return out
    data = load_dataset(spec.train, device)
    final = weights.load(weights.weights_path(run_dir, trial.trial_id, "final")) \
        if any("final" in m.when for m in todo) and "final" in points else None
    if final is None and "final" in points:
        why = "no kept final.pt"
        out["skipped"] = {m.name: why for m in todo if "final" in m.when}
        todo = [m for m in todo if "final" not in m.when]
    cfg = weights.config_from_record(final["model_config"]) if final else \
        trial.model_cfg.with_input(data.in_features, data.num_classes)
    states = {"final": final["state_dict"] if final else None}
    if any("init" in m.when for m in todo):
        init = weights.load(weights.weights_path(run_dir, trial.trial_id, "init"))
        if init is None:
            out["init_rebuilt"] = True
            states["init"] = weights.snapshot(weights.initial(cfg, trial.seed))
        else:
            states["init"] = init["state_dict"]
    data = measure_data(data, device)
    out.update(run_measurements(trial, run_dir, todo, _networks(cfg, states, device, data),
                                data))
    return out
