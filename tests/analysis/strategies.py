"""Hypothesis strategies for results folders, in the schemas the sweep writes.

``results_frames()`` draws ``{"trials": df, "layers": df, "epochs": df}``
(a key is missing when its file would be: a probe sweep has no epochs, a
sweep whose trials all errored has no layers, and any optional file may be
absent) with the columns of

* ``trials.parquet``: ``ablations.plan.TrialConfig.record`` (factors, lr,
  weight_decay, hp_source) then the worker's row: ``ablations.train.
  run_train_trial`` + ``summarize`` for train sweeps (final_*, best_*,
  diverged_epoch, precision, threads, wall_seconds, ...),
  ``ablations.trial.run_probe_group`` for probe sweeps (probe_loss, no final_*
  column), ``ablations.results.write_error`` for errors (the traceback in
  ``error``) and ``results.merge(final=False)`` for pending rows;
* ``layers.parquet``: ``ablations.results.layer_frame`` (``results.FACTORS`` +
  phase, step, epoch, layer, layer_index, stat, value): probe sweeps at
  phase "init", train sweeps at phase "train" every few steps; weight layers
  carry the grad statistics, tap points the activation statistics; a plain
  ResNet lacks the projection shortcut;
* ``epochs.parquet``: factors + epoch, train_loss, train_acc, val_loss,
  val_acc, test_loss, test_acc, lr, epoch_seconds, train_images_per_s; a
  diverged trial's last epoch has only train_loss (non-finite), lr and the
  timings.

Factor columns (``factors``): "old" frames have only ``residual``, like a folder
written before the factor registry; "defaults" frames carry every factor column at the
family's default level ("n/a" where it does not apply: plain rows' branch_scale and
shortcut, MLP shortcut), like a residual-only sweep today; "crossed" frames cross up to
two other factors at up to two levels each (``ablations.factors.variants``: one plain
cell shared by every residual level), with trial ids naming non-default levels like
``ablations.plan.trial_id``; "mixed" frames have some cells written the old way and
the others with columns (a folder resumed across the change: old rows read NaN there).
``factors=None`` draws one of the four.

What varies: families (mlp, resnet) and presets (seed_mlp5, small_resnet18),
depths, variants (plain, residual or both), seeds, 1 to ``max_layers``
layers, every status (completed, diverged, error, pending), metric scales
from 1e-30 to 1e30, constant columns, spreads narrower than 1e-6 relative,
NaN and +-inf values. Frames are rebuilt from row dicts with
``pd.DataFrame(rows)`` as ``results.merge`` does, so absent keys are NaN.

``write_results_folder(frames, folder, spec=...)`` writes such a dict as a
results folder (Parquet files, ``features/*.npz`` for completed ResNet
trials of a train sweep, and a minimal ``spec.json`` unless ``spec`` is
None). ``spec_records()`` draws a spec.json value (None: no file).

Used by the property tests of analysis.stats, analysis.tables and
analysis.report (tests/analysis/test_properties.py) and by the figure tests.
The stat names are those of ``ablations.hooks.STAT_NAMES`` (copied, not
imported: hooks imports torch; test_properties checks that they agree).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from ablations import factors as _factors

STATUSES = ("completed", "diverged", "error", "pending")
GRAD_STATS = ("grad_mean_abs", "grad_norm")
ACT_STATS = ("act_mean_abs", "act_std", "act_zero_frac")
FACTORS = ["trial_id", "family", "model", "depth", "residual", "seed"]  # before the registry
ALL_FACTORS = ["trial_id", "family", "model", "depth", *_factors.names(), "seed"]  # today
FACTOR_MODES = ("old", "defaults", "crossed", "mixed")
LAYER_COLUMNS = FACTORS + ["phase", "step", "epoch", "layer", "layer_index", "stat", "value"]
EPOCH_COLUMNS = FACTORS + ["epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                           "test_loss", "test_acc", "lr", "epoch_seconds", "train_images_per_s"]
FINAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")

# (family, model, depth): a family at a drawn depth, or a preset (model != family).
PRESETS = (("mlp", "seed_mlp5", 5), ("resnet", "small_resnet18", 18))
FAMILY_DEPTHS = {"mlp": (1, 2, 3, 5, 8, 20), "resnet": (10, 18, 34, 56)}
# Weight layers (grad stats) and tap points (act stats) in network order.
RESNET_WEIGHTS = ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight",
                  "layer2.0.conv1.weight", "layer2.0.shortcut.0.weight",
                  "layer2.0.conv2.weight", "fc.weight")
RESNET_TAPS = ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1")

EXPONENTS = (-30, -12, -7, -3, 0, 2, 6, 12, 30)
# Relative spread of a column: constant, narrower than 1e-6, ordinary, several-fold.
SPREADS = (0.0, 1e-9, 3e-7, 0.05, 3.0)
SPECIAL = (math.nan, math.inf, -math.inf)


def _trial_id(model, depth, residual, seed, preset, family=None, levels=None) -> str:
    """``ablations.plan.trial_id``: ``resnet-34-plain-s2``, ``seed_mlp5-residual-s0``,
    ``mlp-8-residual-scale=zero-s1`` (non-default levels named)."""
    label = model if preset else f"{model}-{depth}"
    if levels is None:
        return f"{label}-{'residual' if residual else 'plain'}-s{seed}"
    return "-".join([label, *_factors.id_parts(family, levels)]) + f"-s{seed}"


@st.composite
def _requested(draw) -> dict[str, tuple[str, ...]]:
    """Levels of up to two factors other than residual, one or two levels each."""
    others = [f for f in _factors.all_factors() if f.name != "residual"]
    names = draw(st.lists(st.sampled_from([f.name for f in others]), min_size=1,
                          max_size=2, unique=True))
    out = {}
    for n in names:
        levels = _factors.get(n).level_names
        out[n] = tuple(draw(st.lists(st.sampled_from(levels), min_size=1, max_size=2,
                                     unique=True)))
    return out


def _variants(family: str, residuals, requested) -> list[dict[str, str]]:
    """Level dicts of one cell, plain/residual as drawn (``ablations.factors.variants``)."""
    wanted = {"residual": tuple("residual" if r else "plain" for r in residuals), **requested}
    return _factors.variants(family, wanted)


@st.composite
def _profile(draw, low: float | None = None, high: float | None = None):
    """How one column's values are drawn: (scale, spread, chance of a NaN/inf)."""
    if low is not None:  # a fraction (accuracy): a centre inside [low, high]
        scale = draw(st.sampled_from((0.0, 1e-7, 0.1, 0.5, 0.9, 1.0)))
    else:
        scale = 10.0 ** draw(st.sampled_from(EXPONENTS))
    # chance of a NaN/inf: never (most columns), sometimes, always (a column of NaN)
    special = draw(st.sampled_from((0.0, 0.0, 0.0, 0.2, 0.2, 1.0)))
    return scale, draw(st.sampled_from(SPREADS)), special, low, high


def _value(draw, profile) -> float:
    scale, spread, special, low, high = profile
    # sampled_from, not floats(0, 1) < p: hypothesis favours 0.0, which would make
    # "sometimes" nearly "always".
    if special and (special >= 1 or draw(st.sampled_from((False,) * 4 + (True,)))):
        return draw(st.sampled_from(SPECIAL))
    v = scale * (1.0 + spread * draw(st.floats(0, 1)))
    if low is not None:
        v = min(max(v, low), high)
    return float(v)


def _layer_names(family: str, n: int, residual: bool) -> tuple[list[str], list[str]]:
    """(weight layers, tap points) of an ``n``-layer network in network order."""
    if family == "mlp":
        return [f"layers.{i}.weight" for i in range(n)], [f"layers.{i}" for i in range(n)]
    weights = [w for w in RESNET_WEIGHTS[:n + 1] if residual or "shortcut" not in w][:n]
    return weights, list(RESNET_TAPS[:n])


def _size(most: int):
    """1..most, uniformly: hypothesis' integers favour the small end, and with a budget
    of 25 examples the larger sweeps (several seeds to pair) would hardly ever come up."""
    return st.sampled_from(range(1, most + 1))


@st.composite
def _cells(draw, max_cells: int):
    """Distinct (family, model, depth) cells: families at depths and presets."""
    choices = [(f, f, d) for f, ds in FAMILY_DEPTHS.items() for d in ds] + list(PRESETS)
    n = draw(_size(max_cells))
    return draw(st.lists(st.sampled_from(choices), min_size=n, max_size=n, unique=True))


@st.composite
def results_frames(draw, mode: str | None = None, max_cells: int = 3, max_seeds: int = 3,
                   max_layers: int = 4, max_epochs: int = 3, max_samples: int = 2,
                   optional_trials: bool = False,
                   factors: str | None = None) -> dict[str, pd.DataFrame]:
    """A results dict ``{"trials", "layers", "epochs"}`` of DataFrames (see the module doc).

    ``mode``: "train", "probe" or None (either). ``max_*`` bound the size
    (cells, seeds per cell, layers per network, epochs, statistics samples
    per train trial). ``optional_trials``: trials.parquet may be missing too
    (a folder holding only layers or epochs); never all three. ``factors``: one of
    ``FACTOR_MODES`` or None (drawn).
    """
    mode = mode or draw(st.sampled_from(("train", "probe")))
    factors = factors or draw(st.sampled_from(FACTOR_MODES))
    requested = draw(_requested()) if factors in ("crossed", "mixed") else {}
    train = mode == "train"
    cells = draw(_cells(max_cells))
    variants = draw(st.sampled_from(((False, True), (False, True), (False,), (True,))))
    n_seeds = draw(_size(max_seeds))
    n_epochs = draw(_size(max_epochs))
    stats_every = draw(st.sampled_from((1, 3)))
    steps_per_epoch = 3
    # Mostly completed trials with some failures, as real sweeps have; sometimes all
    # completed, sometimes none (a depth where every run diverged must still report).
    statuses = draw(st.sampled_from(("mixed", "mixed", "completed", "failed")))
    status_of = (st.sampled_from(("completed",) * 3 + STATUSES[1:]) if statuses == "mixed"
                 else st.just("completed") if statuses == "completed"
                 else st.sampled_from(STATUSES[1:]))
    metric = {k: draw(_profile()) for k in ("loss", "probe_loss", "seconds")}
    metric["acc"] = draw(_profile(0.0, 1.0))
    stat = {s: draw(_profile(0.0, 1.0) if s == "act_zero_frac" else _profile())
            for s in GRAD_STATS + ACT_STATS}
    val_split = draw(st.booleans())  # False: an empty validation split (val_* NaN)
    hp_source = draw(st.sampled_from(("fixed", "tuned")))
    trials, layers, epochs = [], [], []
    with_columns = False
    for family, model, depth in cells:
        preset = model != family
        n_layers = draw(_size(max_layers))
        params = draw(st.integers(1, 10 ** 8))  # a count: never NaN, same for every seed
        old = factors == "old" or (factors == "mixed" and draw(st.booleans()))
        with_columns = with_columns or not old
        cell_levels = _variants(family, variants, {} if old else requested)
        for levels in cell_levels:
            residual = levels["residual"] == "residual"
            columns = {} if old else _factors.columns(levels)
            for seed in range(n_seeds):
                status = draw(status_of)
                factors_ = {"trial_id": _trial_id(model, depth, residual, seed, preset,
                                                  None if old else family,
                                                  None if old else levels),
                            "family": family, "model": model, "depth": depth,
                            **columns, "residual": residual, "seed": seed}
                record = {**factors_, "lr": 0.1, "weight_decay": 5e-4, "hp_source": hp_source}
                if status == "pending":
                    trials.append({**record, "status": "pending"})
                    continue
                if status == "error":
                    trials.append({**record, "status": "error", "attempts": 3,
                                   "error": "Traceback (most recent call last):\n  ...\n"
                                            "RuntimeError: injected fault",
                                   "finished_at": 1.7e9})
                    continue
                diverged = status == "diverged"
                if train:
                    row, ep = _train_trial(draw, factors_, record, metric, n_epochs, diverged,
                                           val_split)
                    epochs += ep
                    steps = [s for s in range(0, steps_per_epoch * max(1, len(ep)), stats_every)]
                    steps = steps[:max_samples] if not diverged else steps[:1]
                    samples = [("train", s, s // steps_per_epoch + 1) for s in steps]
                else:
                    loss = _value(draw, metric["probe_loss"])
                    if diverged:
                        loss = draw(st.sampled_from(SPECIAL))
                    row = {**factors_, "status": status, "probe_loss": loss, "attempts": 1,
                           "node_id": "n0", "hostname": "host", "worker_preloaded": False,
                           "finished_at": 1.7e9}
                    samples = [("init", 0, 0)]
                row["params"] = params + int(residual)
                trials.append(row)
                weights, taps = _layer_names(family, n_layers,
                                             residual and levels.get("shortcut") != "pad")
                for phase, step, epoch in samples:
                    last = diverged and (phase, step, epoch) == samples[-1]
                    for names, stat_names in ((weights, GRAD_STATS), (taps, ACT_STATS)):
                        for i, name in enumerate(names):
                            for s in stat_names:
                                v = _value(draw, stat[s])
                                if last and draw(st.booleans()):
                                    v = draw(st.sampled_from(SPECIAL))
                                layers.append({**factors_, "phase": phase, "step": step,
                                               "epoch": epoch, "layer": name, "layer_index": i,
                                               "stat": s, "value": v})
    frames = {"trials": pd.DataFrame(trials)}
    if layers:
        keys = ALL_FACTORS if with_columns else FACTORS
        frames["layers"] = pd.DataFrame(layers, columns=keys + LAYER_COLUMNS[len(FACTORS):])
    if epochs:
        frames["epochs"] = pd.DataFrame(epochs)
    # An optional file may be missing whatever the data (deleted, or an older sweep).
    for name in ("layers", "epochs") + (("trials",) if optional_trials else ()):
        if name in frames and len(frames) > 1 and draw(st.sampled_from((False,) * 5 + (True,))):
            del frames[name]
    return frames


def _train_trial(draw, factors, record, metric, n_epochs, diverged, val_split):
    """The trial row and epoch rows of one trained trial (``ablations.train``)."""
    diverged_epoch = draw(st.integers(1, n_epochs)) if diverged else None
    rows = []
    for e in range(1, (diverged_epoch or n_epochs) + 1):
        timing = {"lr": 0.1 if e <= max(1, n_epochs // 2) else 0.01,
                  "epoch_seconds": abs(_value(draw, metric["seconds"])) or 1.0}
        timing["train_images_per_s"] = 1000.0 / timing["epoch_seconds"]
        if e == diverged_epoch:
            rows.append({**factors, "epoch": e, "train_loss": draw(st.sampled_from(SPECIAL)),
                         **timing})
            break
        acc = {k: _value(draw, metric["acc"]) for k in ("train_acc", "val_acc", "test_acc")}
        loss = {k: _value(draw, metric["loss"]) for k in ("train_loss", "val_loss", "test_loss")}
        if not val_split:
            acc["val_acc"] = loss["val_loss"] = math.nan
        rows.append({**factors, "epoch": e, **loss, **acc, **timing})
    row = {**record, "params": 0, "status": "diverged" if diverged else "completed",
           "diverged_epoch": diverged_epoch, "device": "cpu", "precision": "fp32",
           "train_seconds": float(sum(r["epoch_seconds"] for r in rows)),
           "wall_seconds": 1.0, "threads": 1, "attempts": 1, "resumed_from_epoch": None,
           "node_id": "n0", "hostname": "host", "worker_preloaded": False,
           "started_at": 1.7e9, "finished_at": 1.7e9 + 1, "pid": 1, **_summarize(rows),
           "wandb": ""}
    return row, rows


def _summarize(rows: list[dict]) -> dict:
    """``ablations.evaluation.summarize``: final_* from the last epoch with a test accuracy
    (a diverged trial keeps the epoch before it diverged), best_* on validation."""
    done = [r for r in rows if "test_acc" in r and not (isinstance(r["test_acc"], float)
                                                         and math.isnan(r["test_acc"]))]
    if not done:
        return {}
    last = done[-1]
    out = {f"final_{k}": float(last[k]) for k in FINAL_KEYS}
    out["epochs_run"] = int(rows[-1]["epoch"])
    best = max(done, key=lambda r: (r["test_acc"] if r["test_acc"] == r["test_acc"] else -1))
    out["best_test_acc"], out["best_test_epoch"] = float(best["test_acc"]), int(best["epoch"])
    vals = [r for r in done if r["val_acc"] == r["val_acc"]]
    if vals:
        bv = max(vals, key=lambda r: r["val_acc"])
        out.update(best_val_acc=float(bv["val_acc"]), best_val_epoch=int(bv["epoch"]),
                   test_acc_at_best_val=float(bv["test_acc"]))
    out["mean_train_images_per_s"] = float(np.mean([r["train_images_per_s"] for r in rows]))
    return out


DAMAGED_SPEC = '{"spec": {"name": "cut short'  # a copy that stopped mid-file


def spec_records(mode: str | None = None):
    """A spec.json value: None (no file), ``{}``, a minimal record like
    ``ablations.results.spec_record`` with ``invocations``, or ``DAMAGED_SPEC``
    (a string: written as it is, not valid JSON)."""
    def record(m):
        return {"spec": {"name": "prop", "mode": m or "train", "families": ["mlp", "resnet"],
                         "models": [], "depths": [5, 18], "residual": "both", "seeds": 2,
                         "train": {"dataset": "synthetic", "data_root": None, "subset": 64,
                                   "val_fraction": 0.1, "epochs": 2, "lr": 0.1,
                                   "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32,
                                   "milestones": [1]}},
                "environment": {"git_commit": "abc123", "python": "3.12",
                                "platform": "linux", "packages": {"torch": "2.5"},
                                "cpu_count": 2, "cuda_devices": []},
                "invocations": [{"kind": "run", "time": "2025-01-01T00:00:00",
                                 "argv": ["--mode", m or "train"]}],
                "skipped": [{"cell": "resnet-5", "reason": "not a ResNet depth"}]}
    return st.sampled_from((None, {}, record(mode), record(mode), DAMAGED_SPEC))


def write_results_folder(frames: dict[str, pd.DataFrame], folder, spec: dict | str | None = None,
                         features: bool = True) -> Path:
    """Write ``frames`` as a results folder: ``<name>.parquet`` per frame, ``spec.json``
    (unless ``spec`` is None) and, with ``features``, a small ``features/<id>.npz`` for
    each completed ResNet trial of a train sweep (as ``ablations.train`` does)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    if spec is not None:
        (folder / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    trials = frames.get("trials")
    if features and trials is not None and "final_test_acc" in trials:
        done = trials[(trials["status"] == "completed") & (trials["family"] == "resnet")]
        rng = np.random.default_rng(0)
        for tid in done["trial_id"]:
            (folder / "features").mkdir(exist_ok=True)
            np.savez(folder / "features" / f"{tid}.npz",
                     maps=rng.normal(size=(8, 4, 4)).astype("float32"),
                     image=rng.random((3, 32, 32)).astype("float32"))
    return folder
