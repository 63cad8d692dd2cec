#!/usr/bin/env python
"""resablate: ablation sweeps of residual connections.

    python sweep.py --depths 5,18,34 --residual both            # train (default)
    python sweep.py --depths 5,18,34 --mode probe --seeds 20    # statistics at init
    python sweep.py --models small_resnet18 --residual on       # a registry preset
    python sweep.py --list-models

Results: <out>/<name>/ with spec.json, trials.parquet, layers.parquet,
epochs.parquet (train), figures/ and tables/ (see README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import models
from ablations import factors, recipes
from ablations.cli import OneLineParser
from ablations.plan import expand, format_plan, group_by_cell
from ablations.progress import duration
from ablations.spec import (DATASET_CHOICES, DECAY_CHOICES, DEFAULT_SEEDS, DEVICE_CHOICES,
                            KEEP_WEIGHTS_CHOICES, MODE_CHOICES, NORMALIZE_CHOICES, PAD_CHOICES,
                            PRECISION_CHOICES,
                            RESIDUAL_CHOICES, TUNE_SPACE, WANDB_CHOICES, AblationSpec, SpecError,
                            TrainSettings, resolve_measure, spec_from_dict, validate)

# May be given again with --resume/--retry-failed; every other flag comes from spec.json.
EXECUTION_FLAGS = {"out", "resume", "retry_failed", "address", "storage", "cpus_per_trial",
                   "gpus_per_trial", "max_failures", "wandb"}
# Training flags whose default is the recipe's (ablations.recipes): None when not typed.
RECIPE_FLAGS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "milestones",
                "warmup_epochs", "decay", "pad_mode", "normalize")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what the default is (the
    recipe's flags: their argparse default is None, resolved from --recipe)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _recipes_default(field: str) -> str:
    """``(default: the recipe's: seed 0.1, default 0.1, he2016 0.1)`` for --help."""
    return "(default: the recipe's: " + ", ".join(
        f"{r.name} {r.shown(field)}" for r in map(recipes.get, recipes.names())) + ")"


def _list(kind, name, example, allow_empty=False):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items and not allow_empty:
            raise argparse.ArgumentTypeError(f"{name} is empty; e.g. {example}")
        if kind is int:
            bad = [s for s in items if not s.lstrip("-").isdigit()]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"{bad[0]!r} is not an integer; give comma-separated integers, e.g. {example}")
            return tuple(int(s) for s in items)
        return tuple(items)
    return parse


def _measurement_names() -> str:
    """The registered measurements, for the help (the built-in module names if one of
    them fails to import: the help must not depend on it)."""
    from ablations import measurements
    try:
        return ", ".join(measurements.names())
    except Exception:  # noqa: BLE001  a broken measurement module is reported when used
        return ", ".join(measurements.BUILTINS)


def _measure(text: str):
    """``--measure``: a comma list of names, or ``none``."""
    names = _list(str, "--measure", "lesion,signal (or none)")(text)
    return () if names == ("none",) else names


def _ranges(text: str):
    out = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        name, eq, rng = item.partition("=")
        lo, colon, hi = rng.partition(":")
        try:
            if not (eq and colon):
                raise ValueError
            out.append((name.strip(), float(lo), float(hi)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not NAME=LOW:HIGH; e.g. lr=1e-3:0.5") from None
    return tuple(out)


def _wandb_target(text: str) -> str:
    from analysis.wandb_report import parse_target
    try:
        return "/".join(parse_target(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0],
                      formatter_class=HelpFormatter)
    g = p.add_argument_group("study")
    g.add_argument("--families", type=_list(str, "--families", "mlp,resnet"),
                   default=("mlp", "resnet"), help="model families: "
                   + ", ".join(models.list_families()))
    g.add_argument("--depths", type=_list(int, "--depths", "5,18,34"), default=(5, 18, 34),
                   help="depths (weighted layers); cells a family cannot build are skipped")
    g.add_argument("--residual", choices=RESIDUAL_CHOICES, default="both")
    g.add_argument("--models", type=_list(str, "--models", "small_resnet18"), default=(),
                   help="registry presets (replace families x depths): "
                   + ", ".join(models.list_presets()))
    for f in factors.all_factors():
        if f.name == "residual":
            continue  # --residual on|off|both above
        supplied = [f"{r.name} {dict(r.levels)[f.name]}" for r in
                    map(recipes.get, recipes.names()) if f.name in dict(r.levels)]
        g.add_argument(f.flag, dest=f.name, metavar="LEVELS", default=argparse.SUPPRESS,
                       type=_list(str, f.flag, ",".join(f.level_names)),
                       help=f"{f.help}; levels: {', '.join(f.level_names)} (comma list; "
                       f"applies to {', '.join(f.families)}" + (
                           f"; default: the recipe's: {', '.join(supplied)}, else each "
                           "family's)" if supplied else ")"))
    g.add_argument("--recipe", choices=recipes.names(), default=None,
                   help="training recipe: the default of every flag marked 'the recipe's' "
                   "(a typed flag overrides it): " + "; ".join(
                       f"{n}: {recipes.get(n).summary}" for n in recipes.names())
                   + " (default: seed for --models presets and --mode probe, else default)")
    g.add_argument("--mode", choices=MODE_CHOICES, default="train")
    g.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per cell (default: " + ", ".join(
                       f"{n} in {m} mode" for m, n in DEFAULT_SEEDS.items()) + "; --smoke: 1)")
    g.add_argument("--probe-batch", type=int, default=1,
                   help="probe mode: random examples per forward/backward (seed article: 1)")
    g.add_argument("--smoke", action="store_true",
                   help="smallest real sweep: depth 4, 1 seed; train: 2 epochs of synthetic data")
    g.add_argument("--list-models", action="store_true",
                   help="print every model's layout and parameter counts, then exit")
    o = p.add_argument_group("output and execution")
    o.add_argument("--out", default="results")
    o.add_argument("--name", default=None, help="results go to OUT/NAME (default: mode-timestamp)")
    o.add_argument("--wandb", choices=WANDB_CHOICES, default="auto",
                   help="W&B tracking, one run per trial: auto = online when credentials are "
                   "configured and the server answers within 3 s, else offline under "
                   "OUT/NAME/wandb")
    o.add_argument("--wandb-report", metavar="ENTITY/PROJECT", default=None, type=_wandb_target,
                   help="after the report, publish the sweep's W&B report to ENTITY/PROJECT (its "
                   "offline runs are synced there first); OUT/NAME/wandb_report.json is written "
                   "either way; without credentials or a server: one line saying what to run "
                   "later, the exit code is unchanged")
    o.add_argument("--resume", metavar="NAME", default=None,
                   help="continue the interrupted sweep OUT/NAME: finished trials are kept, "
                   "unfinished ones continue from their last checkpoint")
    o.add_argument("--retry-failed", metavar="NAME", default=None,
                   help="rerun only the trials of OUT/NAME that ended with status=error")
    o.add_argument("--max-failures", type=int, default=2,
                   help="retries of a trial that raises (from its checkpoint); diverged "
                   "trials are results and are not retried")
    c = p.add_argument_group("resources and clusters")
    c.add_argument("--address", default=None,
                   help="join a Ray cluster: 'auto' or host:port (default: start Ray on this "
                   "machine). Token auth: see README")
    c.add_argument("--storage", default=None,
                   help="Ray Tune state and trial checkpoints (default OUT/NAME/ray); on a "
                   "multi-node cluster it and --out must be on storage every node reaches")
    c.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per trial (default: the cluster's CPUs shared among the trials, "
                   "at least 1 each)")
    c.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; a fraction such as 0.25 packs 4 trials on a GPU "
                   "(default: a share of the GPUs when there are any, else 0)")
    u = p.add_argument_group("tuning (Optuna, per cell)")
    u.add_argument("--tune", type=_list(str, "--tune", "lr,weight_decay"), default=(),
                   help="hyperparameters to search per cell: " + ", ".join(TUNE_SPACE)
                   + " (log-uniform: " + ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi)
                                                   in TUNE_SPACE.items()) + ")")
    u.add_argument("--samples", type=int, default=8, help="Optuna samples per cell")
    u.add_argument("--tune-range", type=_ranges, default=(),
                   help="override search ranges, e.g. lr=1e-3:0.5,weight_decay=1e-5:1e-3")
    t = p.add_argument_group("training (--mode train)")
    t.add_argument("--dataset", choices=DATASET_CHOICES, default="cifar10")
    t.add_argument("--data-root", default="data",
                   help="holds cifar-10-batches-py/ (downloaded there when missing and online)")
    t.add_argument("--subset", type=int, default=5000,
                   help="class-stratified training subset, the same for every trial")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="held out of the subset for model selection")
    t.add_argument("--epochs", type=int, default=None,
                   help="training length; he2016's is 64k iterations at 45k images, scaled to "
                   "the training set and batch (about 180 epochs) " + _recipes_default("epochs"))
    t.add_argument("--lr", type=float, default=None, help=_recipes_default("lr"))
    t.add_argument("--momentum", type=float, default=None, help=_recipes_default("momentum"))
    t.add_argument("--weight-decay", type=float, default=None,
                   help=_recipes_default("weight_decay"))
    t.add_argument("--decay", choices=DECAY_CHOICES, default=None,
                   help="which parameters weight decay applies to: all, or weights (conv and "
                   "linear weight matrices only: not norm gains/biases, biases, branch "
                   "scalars) " + _recipes_default("decay"))
    t.add_argument("--batch-size", type=int, default=None, help=_recipes_default("batch_size"))
    t.add_argument("--milestones", type=_list(int, "--milestones", "15,25", allow_empty=True),
                   default=None, help="epochs after which the lr is multiplied by 0.1 ('' for "
                   "none; seed: 15,25 of 30) " + _recipes_default("milestones"))
    t.add_argument("--warmup-epochs", type=int, default=None,
                   help="linear learning-rate warmup from lr/steps to lr over the first N "
                   "epochs, per step (Goyal et al. 2017) " + _recipes_default("warmup_epochs"))
    t.add_argument("--pad-mode", choices=PAD_CHOICES, default=None,
                   help="padding of the 4-pixel random crops: reflect, or zero (He et al. "
                   "2016) " + _recipes_default("pad_mode"))
    t.add_argument("--normalize", choices=NORMALIZE_CHOICES, default=None,
                   help="input normalization: channel (per-channel mean and std of the "
                   "training set) or pixel-mean (the training set's mean image subtracted, "
                   "He et al. 2016) " + _recipes_default("normalize"))
    t.add_argument("--stats-every", type=int, default=50,
                   help="record per-layer statistics every k training steps (0: none)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch threads per trial (default: its CPU share)")
    t.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    t.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="training arithmetic: auto = bf16 autocast where the hardware computes "
                   "bf16 natively (CPU AVX512-BF16/AMX, CUDA compute capability >= 8), else fp32")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    m = p.add_argument_group("measurements and kept weights (--mode train)")
    m.add_argument("--measure", type=_measure, default=None, metavar="NAMES",
                   help="measurements run on each trial's networks as it ends, comma list: "
                   + _measurement_names() + "; 'none' for none (default: the cheap "
                   "default set, named in the plan); more later from the kept weights: "
                   "python -m ablations.measure OUT/NAME --measure NAMES")
    m.add_argument("--keep-weights", choices=KEEP_WEIGHTS_CHOICES, default="final",
                   help="kept networks in OUT/NAME/weights/<trial>/: final = final.pt of every "
                   "completed trial (+ init.pt where a measurement runs at init); all = "
                   "init.pt and final.pt; none = nothing (no measuring after the fact)")
    return p


def default_milestones(epochs: int) -> tuple[int, ...]:
    """The seed article's schedule (drops after epochs 15 and 25 of 30) scaled to
    ``epochs``: after 1/2 and 5/6 of training; 30 -> (15, 25), 10 -> (5, 8), 2 -> (1,)."""
    return recipes.get("seed").schedule(1, 1, epochs)[1]


def _families_of(args) -> tuple[str, ...]:
    """The families the sweep trains (a preset's family; unknown names are left to
    ``validate``, which names the valid ones)."""
    if not args.models:
        return tuple(args.families)
    known = set(models.list_presets())
    return tuple(models.get_config(m).family for m in args.models if m in known)


def spec_from_args(args) -> AblationSpec:
    """The spec ``args`` asks for: each recipe flag (RECIPE_FLAGS, factor levels) typed,
    or else the recipe's (``ablations.recipes``); the seeds typed or the mode's default."""
    recipe = recipes.get(args.recipe or recipes.default_name(bool(args.models), args.mode))
    base = TrainSettings(
        dataset=args.dataset, data_root=os.path.abspath(args.data_root), subset=args.subset,
        val_fraction=args.val_fraction, stats_every=args.stats_every, threads=args.threads,
        device=args.device, precision=args.precision, compile=args.compile)
    typed = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    train = recipe.settings(base, typed)
    supplied = recipe.factor_levels(_families_of(args))
    levels = []  # registry order, as if the recipe's levels had been typed
    for f in factors.all_factors():
        given = getattr(args, f.name, None) if f.name != "residual" else None
        if given is not None:
            levels.append((f.name, tuple(given)))
        elif f.name in supplied:
            levels.append((f.name, (supplied[f.name],)))
    typed_factors = {n for n, _ in levels if n not in supplied}
    family_levels = recipe.family_factor_levels(_families_of(args), typed_factors)
    family_factors = tuple((fam, tuple((n, (lv,)) for n, lv in lvs.items()))
                           for fam, lvs in family_levels.items() if lvs)
    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS.get(args.mode, 1)
    spec = AblationSpec(
        families=tuple(args.families), depths=tuple(args.depths), residual=args.residual,
        models=tuple(args.models), mode=args.mode, seeds=seeds, recipe=recipe.name,
        out=args.out,
        name=args.name or f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}", wandb=args.wandb,
        smoke=args.smoke, probe_batch=args.probe_batch, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, address=args.address,
        storage=os.path.abspath(args.storage) if args.storage else None,
        max_failures=args.max_failures, tune=tuple(args.tune), samples=args.samples,
        tune_ranges=tuple(args.tune_range), train=train, measure=args.measure,
        keep_weights=args.keep_weights, factors=tuple(levels), family_factors=family_factors)
    if spec.smoke:
        spec = dataclasses.replace(
            spec, depths=(4,), seeds=1,
            train=dataclasses.replace(train, dataset="synthetic", subset=512, epochs=2,
                                      milestones=(1,), val_fraction=0.1))
    return spec


def settings_line(spec: AblationSpec) -> str:
    """What every trial trains with, printed before the plan: the recipe, its resolved
    settings, the share of the recipe's schedule run, and the seeds per cell."""
    seeds = f"{spec.seeds} seed(s) per cell" + (" (--smoke)" if spec.smoke else "")
    levels = ", ".join(f"{factors.get(n).flag} {','.join(lv)}" for n, lv in spec.factors)
    for fam, lvs in spec.family_factors:
        levels += ("; " if levels else "") + f"{fam}: " + ", ".join(
            f"{factors.get(n).flag} {','.join(lv)}" for n, lv in lvs)
    if spec.mode != "train":
        return f"recipe {spec.recipe}" + (f" ({levels})" if levels else "") + f"; {seeds}"
    t = spec.train
    n, steps_per_epoch = t.train_images, math.ceil(t.train_images / t.batch_size)
    full = recipes.get(spec.recipe).schedule_steps(n, t.batch_size)
    drops = f"x0.1 after epochs {','.join(map(str, t.milestones))}" if t.milestones \
        else "no lr drops"
    warm = f", linear warmup {t.warmup_epochs} epoch(s)" if t.warmup_epochs else ""
    depths = [models.get_config(m).depth for m in spec.models] or spec.depths
    if t.constant_warmup_steps and t.constant_warmup_depth and \
            max(depths) >= t.constant_warmup_depth:
        warm += (f", lr x{recipes.CONSTANT_WARMUP_FACTOR:g} for {t.constant_warmup_steps} "
                 f"steps at depth >= {t.constant_warmup_depth}")
    return (f"recipe {spec.recipe}: lr {t.lr:g}, momentum {t.momentum:g}, weight decay "
            f"{t.weight_decay:g} on {'every parameter' if t.decay == 'all' else 'weights only'}"
            f", batch {t.batch_size}, {t.epochs} epoch(s) = {t.epochs * steps_per_epoch} steps "
            f"({100 * t.epochs * steps_per_epoch / full:.0f}% of the recipe's {full}), "
            f"{drops}{warm}, {t.pad_mode}-padded crops, {t.normalize} "
            f"normalization" + (f"; {levels}" if levels else "") + f"; {seeds}")


def given_flags(argv) -> set[str]:
    """The destinations of the flags actually typed in ``argv`` (not their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _study_value(spec: AblationSpec, dest: str):
    """The resolved spec's value for study flag ``dest`` (``--tune-range`` -> tune_ranges)."""
    field = {"tune_range": "tune_ranges"}.get(dest, dest)
    if dest in factors.names():
        return dict(spec.factors).get(dest, ("(family default)",))
    if field in AblationSpec.__dataclass_fields__:
        return getattr(spec, field)
    return getattr(spec.train, field)


def check_repeated_study_flags(args, given: set[str], stored: AblationSpec, flag: str) -> None:
    """The up-arrow habit: the original command repeated with ``--resume NAME`` appended.
    A study flag typed again must resolve to the stored value; a changed one is an error
    naming both values (a resumed sweep never silently mixes two studies)."""
    typed = sorted(given - EXECUTION_FLAGS - {"list_models", "name"})
    if "name" in given and args.name != stored.name:
        raise SpecError(f"{flag} {stored.name}: --name {args.name} differs from the sweep's "
                        f"name; leave --name out")
    if not typed:
        return
    again = spec_from_args(args)  # the repeated command's spec, resolved as at its start
    for dest in typed:
        was, now = _study_value(stored, dest), _study_value(again, dest)
        if was != now:
            option = "--" + dest.replace("_", "-")
            raise SpecError(
                f"{flag} continues the stored spec: {option} was {_shown(was)}, now "
                f"{_shown(now)}; repeat it unchanged or leave it out (start a new sweep "
                "with --name); may change: " + ", ".join(
                    "--" + f.replace("_", "-") for f in sorted(EXECUTION_FLAGS)
                    if f not in ("resume", "retry_failed", "out")))


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_shown(v) for v in value) or "(none)"
    return str(value)


def stored_spec(args, parser, argv) -> tuple[AblationSpec, str]:
    """The spec of an existing sweep (``--resume``/``--retry-failed``), with the
    execution flags given now; a changed study flag is an error, not a silent ignore."""
    if args.resume and args.retry_failed:
        raise SpecError("give --resume NAME or --retry-failed NAME, not both")
    name = args.resume or args.retry_failed
    flag = "--resume" if args.resume else "--retry-failed"
    path = os.path.join(args.out, name, "spec.json")
    if not name or os.sep in name or not os.path.isfile(path):
        existing = sorted(d for d in os.listdir(args.out)
                          if os.path.isfile(os.path.join(args.out, d, "spec.json"))) \
            if os.path.isdir(args.out) else []
        raise SpecError(f"{flag} {name}: no sweep {os.path.join(args.out, name)} (no spec.json); "
                        f"sweeps in {args.out}: " + (", ".join(existing) or "none"))
    try:
        spec = spec_from_dict(json.load(open(path))["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path} is not a readable sweep spec ({e})") from None
    check_repeated_study_flags(args, given_flags(argv), spec, flag)
    overrides = {k: getattr(args, k) for k in ("address", "cpus_per_trial", "gpus_per_trial")
                 if getattr(args, k) is not None}
    if args.storage:
        overrides["storage"] = os.path.abspath(args.storage)
    if args.max_failures != parser.get_default("max_failures"):
        overrides["max_failures"] = args.max_failures
    if args.wandb != parser.get_default("wandb"):
        overrides["wandb"] = args.wandb
    return dataclasses.replace(spec, out=args.out, **overrides), \
        "resume" if args.resume else "retry-failed"


def prepare(spec: AblationSpec, resuming: bool = False):
    """Validate and expand; every check that can fail happens here, before any write."""
    validate(spec, resuming)
    trials, skipped = expand(spec)
    if not trials:
        raise SpecError("no cell can be built: " + "; ".join(f"{l}: {r}" for l, r in skipped))
    sizes = None
    if spec.mode == "train":
        from ablations.data import check_data
        sizes = check_data(spec.train)
    return trials, skipped, sizes


def groups_of(trials, spec):
    return group_by_cell(trials, variants_together=True) if spec.mode == "probe" \
        else [[t] for t in trials]


def tune_cells(spec, trials, run_dir, worker_spec, runner) -> list:
    """Per-cell Optuna searches (resumed when interrupted); trials get the selection.

    None when the search was interrupted before every cell had its samples.
    """
    from ablations import tuning
    chosen = tuning.load_selection(run_dir)
    cells = tuning.cells_of(trials)
    if chosen is None:
        space = spec.search_space()
        search = tuning.make_searcher(cells, space, spec.samples, run_dir)
        left = search.remaining_total()
        print(f"tuning {','.join(spec.tune)} per cell: {len(cells)} cells x {spec.samples} "
              f"samples (Optuna TPE, median pruning on val_acc); {left} to run", flush=True)
        if left:
            runner.run_tuning(cells, search, worker_spec, run_dir,
                              f"tuning-{time.strftime('%Y%m%d-%H%M%S')}")
            # Tune returns normally on Ctrl-C: a search with samples still to run was
            # interrupted, and selecting from it would train every seed on a partial search.
            left = tuning.make_searcher(cells, space, spec.samples, run_dir).remaining_total()
            if left:
                return None
        chosen = tuning.selection(cells, space, spec.samples, run_dir)
        for label, c in chosen.items():
            hp = ", ".join(f"{k}={v:.3g}" for k, v in c["hp"].items())
            val = f"val_acc {c['val_acc']:.3f}" if c["val_acc"] is not None else c["source"]
            print(f"  {label:<24} {hp}  ({val}, {c['samples']} samples)", flush=True)
    return tuning.apply_selection(trials, chosen)


def _edit_invocations(run_dir, edit) -> None:
    """``edit(invocations)`` on spec.json's list of invocations, written atomically."""
    from ablations import results
    path = os.path.join(run_dir, "spec.json")
    rec = json.load(open(path))
    edit(rec.setdefault("invocations", []))
    results.write_json(path, rec)


def record_invocation(run_dir, kind: str, argv, extra: dict) -> None:
    _edit_invocations(run_dir, lambda invs: invs.append(
        {"kind": kind, "argv": list(argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         **extra}))


def record_timing(run_dir, clock: dict) -> None:
    """Wall-clock stamps of this invocation (process start, Ray start, connected, the
    Tune run of the trials, and the tuning run if any) into its spec.json record:
    where a sweep's time went, and what bench/sweep_bench.py reads."""
    _edit_invocations(run_dir, lambda invs: invs[-1].update(
        timing={k: round(v, 3) for k, v in clock.items()}))


def main(argv=None) -> int:
    clock = {"started_at": time.time()}  # stored with the invocation (see record_timing)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        print(models.describe(depths=list(args.depths)))
        return 0
    from ablations import runner, tracking
    try:
        try:
            if args.resume or args.retry_failed:
                spec, kind = stored_spec(args, parser, argv)
            else:
                spec, kind = resolve_measure(spec_from_args(args)), "start"
            trials, skipped, sizes = prepare(spec, resuming=kind != "start")
            wandb_mode, why = tracking.resolve_mode(spec.wandb, spec.run_dir)
            print(f"W&B: {wandb_mode} ({why})", flush=True)
            units = len(groups_of(trials, spec))
            prewarm = runner.plan_local(spec, units)
            clock["ray_start_at"] = time.time()
            runner.connect(spec.address, prewarm=prewarm)
            clock["connected_at"] = time.time()
            spec = runner.resolve_resources(spec, units)
        except SpecError as e:
            print(f"sweep.py: error: {e}", file=sys.stderr)
            return 2
        return execute(spec, kind, trials, skipped, wandb_mode, argv, runner, clock, sizes,
                       wandb_report=args.wandb_report)
    finally:
        runner.disconnect()


def estimate_line(spec, trials, sizes, slots: int, tuning_cells: int = 0) -> tuple[str, dict]:
    """The plan's time estimate (one training step of each model timed here, seconds at
    most) and the per-epoch seconds it used, for the progress ETA."""
    if spec.mode != "train" or not sizes:
        return "", {}
    from ablations import estimate
    from ablations.train import pick_device
    try:
        device = pick_device(spec.train.device)  # raises for cuda without CUDA in the driver
        per_epoch = estimate.estimate_epochs(trials, spec, sizes["train"],
                                             sizes["val"] + sizes["test"], 3 * 32 * 32, 10,
                                             device)
    except Exception as e:  # an estimate must never stop a sweep
        return f"estimate: not available ({type(e).__name__}: {e})", {}
    known = [per_epoch[t.cell] * spec.train.epochs for t in trials if t.cell in per_epoch]
    if not known:
        return "estimate: not available (no model could be timed)", {}
    total = estimate.sweep_seconds(known, slots)
    missing = len(trials) - len(known)
    text = (f"estimate: about {duration(total)} here for {len(known)} trial(s), {slots} at a "
            f"time (one training step of each model timed on this machine's {device}; "
            "assumes no trial diverges)")
    if missing:
        text += f"; {missing} trial(s) not timed (timing budget spent)"
    if tuning_cells and spec.tune:
        search = estimate.sweep_seconds([max(known)] * tuning_cells * spec.samples, slots)
        text += (f"; tuning first: up to {duration(search)} ({tuning_cells} cells x "
                 f"{spec.samples} samples, less when pruned)")
    return text, per_epoch


def make_progress(groups, spec, run_dir, per_epoch, slots):
    """The live progress of one Tune run over ``groups`` (see ablations.progress)."""
    from ablations import progress, results
    units = []
    for g in groups:
        first = g[0]
        label = first.trial_id if len(g) == 1 else f"{first.model}-{first.depth} probe"
        units.append(progress.Unit(
            label=label, trial_ids=[t.trial_id for t in g], key=(first.model, first.depth),
            epochs=spec.train.epochs if spec.mode == "train" else 1,
            estimate_s=per_epoch.get(first.cell)))
    return progress.SweepProgress(units, slots,
                                  lambda tid: results.read_fragment_row(run_dir, tid))


def concurrent_slots(spec, cluster: dict, units: int) -> int:
    """How many trials run at once on the cluster with the resolved per-trial request."""
    res = cluster["resources"]
    slots = int(res.get("CPU", 1) // max(spec.cpus_per_trial, 1e-9))
    if spec.gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // spec.gpus_per_trial))
    return max(1, min(units, slots))


def execute(spec, kind, trials, skipped, wandb_mode, argv, runner, clock, sizes=None,
            wandb_report: str | None = None) -> int:
    from ablations import results, tracking
    run_dir = spec.run_dir
    # workers run in Tune's trial folders: every path they get is absolute
    worker_spec = dataclasses.replace(spec, wandb=wandb_mode, out=os.path.abspath(spec.out),
                                      storage=os.path.abspath(spec.storage_dir))
    print(settings_line(spec), flush=True)
    print(format_plan(trials, skipped, spec.mode), flush=True)
    if spec.mode == "train":
        from ablations import measure_run, weights
        for line in weights.plan_lines(spec.keep_weights, measure_run.requested(spec.measure),
                                       trials, run_dir):
            print(line, flush=True)
    info = {"wandb_mode": wandb_mode, "cluster": runner.cluster_info(),
            "cpus_per_trial": spec.cpus_per_trial, "gpus_per_trial": spec.gpus_per_trial}
    if kind == "start":
        results.write_json(f"{run_dir}/spec.json",
                           {**results.spec_record(spec),
                            "plan": [t.factors() for t in trials],
                            "skipped": [{"cell": l, "reason": r} for l, r in skipped]})
    record_invocation(run_dir, kind, argv, info)
    res = info["cluster"]["resources"]
    print(f"resources: {spec.cpus_per_trial:g} CPU + {spec.gpus_per_trial:g} GPU per trial on "
          f"{info['cluster']['nodes']} node(s) with {res.get('CPU', 0):g} CPU, "
          f"{res.get('GPU', 0):g} GPU; W&B {wandb_mode}", flush=True)
    slots = concurrent_slots(spec, info["cluster"], len(groups_of(trials, spec)))
    todo_now = [t for t in trials if results.read_fragment_row(run_dir, t.trial_id) is None]
    line, per_epoch = estimate_line(spec, todo_now, sizes, slots,
                                    len({t.cell for t in trials}) if kind == "start" else 0)
    if line:
        print(line, flush=True)
    t0 = time.time()
    if spec.tune:
        clock["tuning_started_at"] = time.time()
        tuned = tune_cells(spec, trials, run_dir, worker_spec, runner)
        clock["tuning_ended_at"] = time.time()
        if tuned is None:
            results.merge(run_dir, trials, final=False)
            record_timing(run_dir, clock)
            print(f"interrupted: the per-cell search is not finished; continue with "
                  f"python sweep.py --out {spec.out} --resume {spec.name}", file=sys.stderr)
            return 130
        trials = tuned
    rows = {t.trial_id: results.read_fragment_row(run_dir, t.trial_id) for t in trials}
    if kind == "retry-failed":
        todo = [t for t in trials if rows[t.trial_id] and rows[t.trial_id]["status"] == "error"]
        for t in todo:
            results.archive_error(run_dir, t.trial_id)
        # a trial with no result (its fragment was damaged and moved aside, or never
        # written) is not finished either: it reruns too
        todo += [t for t in trials if rows[t.trial_id] is None]
        print(f"retrying {len(todo)} errored or unfinished trial(s): "
              + (", ".join(t.trial_id for t in todo) or "none"), flush=True)
    else:
        todo = [t for t in trials if rows[t.trial_id] is None]
        if kind == "resume":
            print(f"resuming {run_dir}: {len(trials) - len(todo)} trial(s) already finished, "
                  f"{len(todo)} to run", flush=True)
    groups = groups_of(todo, spec)
    errors = {}
    if groups:
        clock["run_started_at"] = time.time()
        progress = make_progress(groups, spec, run_dir, per_epoch, slots)
        try:
            errors = runner.run_groups(
                groups, worker_spec, run_dir, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}",
                on_trial_end=lambda: results.merge(run_dir, trials, final=False),
                progress=progress)
        finally:
            progress.close()
        clock["run_ended_at"] = time.time()
    for gi, tb in errors.items():
        for t in groups[gi]:
            if results.read_fragment_row(run_dir, t.trial_id) is None:
                results.write_error(run_dir, t, tb)
    unfinished = [t for t in todo if results.read_fragment_row(run_dir, t.trial_id) is None]
    if unfinished:  # interrupted (Ctrl-C): keep them pending, resumable
        results.merge(run_dir, trials, final=False)
        record_timing(run_dir, clock)
        print(f"interrupted: {len(unfinished)} trial(s) not finished; continue with "
              f"python sweep.py --out {spec.out} --resume {spec.name}", file=sys.stderr)
        return 130
    tables = results.merge(run_dir, trials)
    record_timing(run_dir, clock)
    # Ray is done: leave it before the report forks its figure workers (a fork of a
    # process with Ray's threads running could inherit a held lock)
    runner.disconnect()
    report_note = results.build_report(run_dir)
    figures = sorted(str(p) for p in Path(run_dir, "figures").glob("*.png"))
    status = tables["trials"]["status"].value_counts()
    counts = {k: int(status.get(k, 0)) for k in ("completed", "diverged", "error")}
    tracking.log_figures(wandb_mode, run_dir, spec.name, figures, counts)
    write_wandb_report(run_dir, wandb_report)  # after log_figures: its run is synced too
    sync = tracking.sync_command(run_dir)  # online trials that fell back wrote offline runs too
    if sync:
        print(f"W&B offline runs in {run_dir}/wandb; upload with: {sync}")
    # the exit code follows the trials (0/1/130); the report's own failures are named here
    print(f"done in {time.time() - t0:.0f}s: {len(trials)} trials: {counts['completed']} "
          f"completed, {counts['diverged']} diverged, {counts['error']} errored -> {run_dir}"
          f"; {report_note}")
    return 1 if counts["error"] else 0


def write_wandb_report(run_dir, target: str | None) -> None:
    """``RESULTS/wandb_report.json`` always, and the published report when ``target``
    (ENTITY/PROJECT) is given; neither can change the sweep's exit code."""
    try:
        from analysis.wandb_report import write_spec
        write_spec(run_dir)
    except Exception as e:  # noqa: BLE001  results and report are written: keep them
        from ablations import results
        results.warn(f"W&B report spec not written ({results.brief(e)})")
    if target:
        from analysis.wandb_publish import publish
        print(publish(run_dir, target)[1], flush=True)


if __name__ == "__main__":
    sys.exit(main())
