"""Per-cell hyperparameter tuning with Optuna, scheduled by Ray Tune.

Fairness: every ablation cell (family x depth x residual) gets its *own* Optuna
study with the same budget (``--samples``) over the same log-uniform ranges
(``spec.TUNE_SPACE``, ``--tune-range``), so a plain network is not judged with
the learning rate that suits its residual twin. Ray Tune's ``OptunaSearch``
refuses grid-search parameters, so instead of one search per cell run one after
another, ``CellSearch`` is a Tune ``Searcher`` that holds one study per cell and
hands out samples of all cells round-robin: samples of different cells run side
by side on the cluster.

- Sampler: TPE (multivariate, constant liar for concurrent samples), seeded per
  cell; the first half of the budget (at most 10) is random start-up.
- Objective: validation accuracy after the last epoch (the test split never
  selects); a diverged sample scores 0.0 so TPE learns to avoid its region. A sample
  trains through ``ablations.train`` like any trial, so "diverged" is the one rule of
  ``train.diverged_reason``: a non-finite loss, or a finite one that exploded
  (``EXPLODE_FACTOR`` x its start); its reason is kept as the sample's
  ``diverged_reason``.
- Early stopping: Optuna's ``MedianPruner`` per cell (a sample is stopped after
  an epoch when its validation accuracy is below the median of the cell's
  earlier samples at that epoch; 2 start-up samples, 1 warm-up epoch).
  ``CellPruner`` is the Tune scheduler that applies the pruner's verdict.
- Tuning samples train with seeds ``TUNE_SEED + k``, disjoint from the sweep's
  seeds 0..N-1: the selected configuration is then trained fresh for every seed.
- Studies live in ``<run_dir>/tuning/optuna.journal`` (Optuna JournalStorage): an
  interrupted search resumes with its finished samples; samples that were
  running when the driver died are marked failed and replaced. With an object-store
  ``--storage`` the journal goes to ``URI/NAME/tuning/`` after every ended sample, and a
  ``--resume`` pulls it from there (``ablations.storage.RunSync``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path

import optuna
import pandas as pd

from ablations.status import Status
from . import results
from .plan import TrialConfig, cell_of

TUNE_SEED = 1000
METRIC = "val_acc"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def tuning_dir(run_dir) -> Path:
    return Path(run_dir) / "tuning"


def cells_of(trials: list[TrialConfig]) -> dict[str, TrialConfig]:
    """One representative trial per cell (its label -> the seed-0 trial)."""
    cells: dict[str, TrialConfig] = {}
    for t in trials:
        cells.setdefault(cell_of(t), t)
    return cells


def sample_trial(base: TrialConfig, number: int, hp: dict) -> TrialConfig:
    """The trial a tuning sample trains: the cell's model at seed TUNE_SEED + number."""
    return dataclasses.replace(base, trial_id=f"{cell_of(base)}-tune{number}",
                               seed=TUNE_SEED + number).with_hparams(hp, "tuning sample")


def _storage(run_dir):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    d = tuning_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(d / "optuna.journal")))


def _study(storage, label: str, samples: int):
    seed = zlib.crc32(label.encode())  # reproducible, different per cell
    return optuna.create_study(
        study_name=label, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                           n_startup_trials=min(10, max(1, samples // 2))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


def _finished(study) -> list:
    return [t for t in study.trials if t.state != optuna.trial.TrialState.RUNNING]


def make_searcher(cells: dict[str, TrialConfig], space: dict, samples: int, run_dir,
                  on_told=None):
    """The ``CellSearch`` over ``cells``; ``on_told()`` runs after each ended sample is
    in the journal (``storage.RunSync.push_tuning``: the journal to an object store); a
    fault in it is one warning, never the search's end."""
    from ray.tune.search import Searcher

    class CellSearch(Searcher):
        """One Optuna study per cell; samples are handed out round-robin over cells."""

        def __init__(self):
            super().__init__(metric=METRIC, mode="max")
            self.storage = _storage(run_dir)
            self.studies = {label: _study(self.storage, label, samples) for label in cells}
            for study in self.studies.values():  # left RUNNING by a killed driver
                for t in study.trials:
                    if t.state == optuna.trial.TrialState.RUNNING:
                        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            self.live: dict[str, tuple[str, object]] = {}
            self.last: dict[str, float] = {}
            self.pruned: set[str] = set()
            self.dists = {n: optuna.distributions.FloatDistribution(lo, hi, log=True)
                          for n, (lo, hi) in space.items()}

        def _remaining(self, label: str) -> int:
            live = sum(1 for lab, _ in self.live.values() if lab == label)
            done = [t for t in _finished(self.studies[label])
                    if t.state != optuna.trial.TrialState.FAIL or t.user_attrs.get("status")]
            return samples - len(done) - live

        def remaining_total(self) -> int:
            return sum(max(0, self._remaining(label)) for label in cells)

        def suggest(self, trial_id):
            label = max(cells, key=self._remaining)
            if self._remaining(label) <= 0:
                return Searcher.FINISHED
            ot = self.studies[label].ask(self.dists)
            self.live[trial_id] = (label, ot)
            return {"kind": "tune", "cell": label, "sample": ot.number, "hp": dict(ot.params)}

        def report(self, trial_id, result) -> bool:
            """Record an epoch's validation accuracy; True when the sample should stop."""
            if trial_id not in self.live or "epoch" not in result or METRIC not in result:
                return False
            _, ot = self.live[trial_id]
            self.last[trial_id] = float(result[METRIC])
            ot.report(float(result[METRIC]), int(result["epoch"]))
            if ot.should_prune():
                self.pruned.add(trial_id)
                return True
            return False

        def on_trial_result(self, trial_id, result):
            pass  # CellPruner.on_trial_result reports (it runs first and must decide)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id not in self.live:
                return
            label, ot = self.live.pop(trial_id)
            study = self.studies[label]
            state = optuna.trial.TrialState
            status = (result or {}).get("status")
            if trial_id in self.pruned:
                ot.set_user_attr("status", "pruned")
                study.tell(ot, state=state.PRUNED)
            elif error:
                ot.set_user_attr("status", Status.ERROR)
                study.tell(ot, state=state.FAIL)
            elif status == Status.DIVERGED:
                ot.set_user_attr("status", Status.DIVERGED)
                ot.set_user_attr("diverged_reason", (result or {}).get("diverged_reason"))
                study.tell(ot, 0.0)
            elif trial_id in self.last:
                ot.set_user_attr("status", Status.COMPLETED)
                study.tell(ot, self.last.pop(trial_id))
            else:
                ot.set_user_attr("status", "no result")
                study.tell(ot, state=state.FAIL)
            if on_told is not None:
                try:
                    on_told()
                except Exception as e:  # noqa: BLE001  kept here; the sweep's end pushes it
                    results.warn(f"the tuning journal was not copied to the store "
                                 f"({results.brief(e)}); it is in {tuning_dir(run_dir)}")

    return CellSearch()


def make_pruner(search):
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class CellPruner(FIFOScheduler):
        """Stops a sample when its cell's Optuna pruner says so (per cell, never across)."""

        def on_trial_result(self, tune_controller, trial, result):
            return TrialScheduler.STOP if search.report(trial.trial_id, result) \
                else TrialScheduler.CONTINUE

    return CellPruner()


def selection(cells: dict[str, TrialConfig], space: dict, samples: int, run_dir
              ) -> dict[str, dict]:
    """Per cell: the best completed sample's hyperparameters (by validation accuracy),
    or the fixed defaults when no sample completed; written to tuning/selected.json
    and the whole search history to tuning.parquet."""
    storage = _storage(run_dir)
    chosen, frames = {}, []
    for label, base in cells.items():
        study = _study(storage, label, samples)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                    and t.user_attrs.get("status") == Status.COMPLETED]
        if complete:
            best = max(complete, key=lambda t: (t.value, -t.number))
            chosen[label] = {"hp": dict(best.params), "source": "tuned",
                             "sample": best.number, "val_acc": best.value,
                             "samples": len(_finished(study))}
        else:
            chosen[label] = {"hp": {k: base.hp[k] for k in space}, "val_acc": None,
                             "source": "default (no tuning sample completed)", "sample": None,
                             "samples": len(_finished(study))}
        df = study.trials_dataframe(attrs=("number", "value", "state", "params",
                                           "user_attrs", "intermediate_values"))
        if len(df):
            df = df.rename(columns=lambda c: c.replace("params_", "").replace(
                "user_attrs_", "").replace("intermediate_values_", "val_acc_epoch_"))
            df["state"] = df["state"].astype(str)
            df.insert(0, "cell", label)
            for k, v in reversed(list(base.factors().items())):
                if k not in ("trial_id", "seed"):
                    df.insert(1, k, v)
            df["selected"] = df["number"] == chosen[label]["sample"]
            frames.append(df)
    results.write_json(tuning_dir(run_dir) / "selected.json", chosen)
    if frames:
        results.write_parquet(Path(run_dir) / "tuning.parquet",
                              pd.concat(frames, ignore_index=True))
    return chosen


def load_selection(run_dir) -> dict | None:
    p = tuning_dir(run_dir) / "selected.json"
    return json.loads(p.read_text()) if p.exists() else None


def apply_selection(trials: list[TrialConfig], chosen: dict) -> list[TrialConfig]:
    return [t.with_hparams(chosen[cell_of(t)]["hp"], chosen[cell_of(t)]["source"])
            if cell_of(t) in chosen else t for t in trials]


def has_journal(run_dir) -> bool:
    return os.path.exists(tuning_dir(run_dir) / "optuna.journal")
