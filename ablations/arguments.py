"""sweep.py's command line: the parser, and the spec a parsed command asks for.

``build_parser`` makes the parser (its ``--help`` is sweep.py's, each default said in
words by ``ablations.helptext``); ``spec_from_args`` resolves a parsed command into an
``AblationSpec``: its ``Study`` (each flag typed, or else the recipe's value,
``ablations.recipes``; with ``--smoke`` the smoke's defaults, ``SMOKE``, under every
flag typed) and its ``Execution``. ``given_flags`` tells the flags typed from their
defaults (``--resume`` checks those).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import time

import models

from . import factors, helptext, recipes
from .cli import OneLineParser
from .factors import TUNE_SPACE
from .spec import (DATASET_CHOICES, DECAY_CHOICES, DEFAULT_SEEDS, DEVICE_CHOICES, MODE_CHOICES,
                   NORMALIZE_CHOICES, PAD_CHOICES, PRECISION_CHOICES, RESIDUAL_CHOICES,
                   WANDB_CHOICES, AblationSpec, Execution, Study, TrainSettings)
from .weights import KEEP_CHOICES

DESCRIPTION = ("resablate: ablation sweeps of residual connections. Each option below says "
               "its default; a switch (an option without a value) is off unless given.")
# Training flags whose default is the recipe's (ablations.recipes): None when not typed.
RECIPE_FLAGS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "milestones",
                "warmup_epochs", "decay", "pad_mode", "normalize")
# --smoke: the smallest real sweep. These are defaults: a flag typed with --smoke is kept
# (``--smoke --dataset cifar10`` smoke-tests the real data). Without --smoke a study
# flag left out gets NORMAL. --epochs and --milestones: SMOKE_SCHEDULE (the milestones
# only with the smoke's own epochs); --stats-every: SMOKE_SAMPLES samples over the run.
SMOKE = {"depths": (4,), "seeds": 1, "dataset": "synthetic", "subset": 512}
NORMAL = {"depths": (5, 18, 34), "dataset": "cifar10", "subset": 5000, "stats_every": 50}
# 16 epochs of 4 steps: the smoke's ResNet-4s learn the synthetic data (about 89% test
# accuracy; with 2 epochs they stayed at chance, which reads as a broken install)
SMOKE_SCHEDULE = {"epochs": 16, "milestones": (12,)}
SMOKE_SAMPLES = 10


def _list(kind, name, example, allow_empty=False):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if items and len(items) != len(text.split(",")):
            raise argparse.ArgumentTypeError(
                f"{text!r} has an empty item; give comma-separated values, e.g. {example}")
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


def build_parser(report_target=str) -> argparse.ArgumentParser:
    """sweep.py's parser. ``report_target``: the type of ``--wandb-report`` (sweep.py
    passes the ENTITY/PROJECT check of ``analysis.wandb_report``, which this package
    cannot import). Its sections: study, training, resources, tracking, output."""
    p = OneLineParser(prog="sweep.py", description=DESCRIPTION,
                      formatter_class=helptext.HelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="validate every flag and the data, print the plan, resources and "
                        "time estimate, then exit: nothing written, Ray not started")
    p.add_argument("--list-models", action="store_true",
                   help="print the layout and parameter counts of the models of --families "
                   "(or --models) at --depths, then exit; without those flags: every model")
    g = p.add_argument_group("study", "what is compared: models, factors, seeds")
    g.add_argument("--families", type=_list(str, "--families", "mlp,resnet"), metavar="NAMES",
                   default=("mlp", "resnet"), help="model families, comma list: "
                   + ", ".join(models.list_families()))
    g.add_argument("--depths", type=_list(int, "--depths", "5,18,34"), default=None,
                   metavar="N,N,...", help="depths (weighted layers); cells a family cannot "
                   "build are skipped (default: 5,18,34; --smoke: 4)")
    g.add_argument("--residual", choices=RESIDUAL_CHOICES, default="both",
                   help="identity shortcuts on, off, or both variants")
    g.add_argument("--models", type=_list(str, "--models", "small_resnet18"), default=(),
                   metavar="PRESETS", help="registry presets, comma list (replace families "
                   "x depths): " + ", ".join(models.list_presets()))
    for f in factors.all_factors():
        if f.name == "residual":
            continue  # --residual on|off|both above
        own = re.sub(r"\s*\(default:[^)]*\)", "", f.help)  # said once, below
        g.add_argument(f.flag, dest=f.name, metavar="LEVELS", default=argparse.SUPPRESS,
                       type=_list(str, f.flag, ",".join(f.level_names)),
                       help=f"{own}; comma list of {', '.join(f.level_names)}; applies to "
                       f"{', '.join(f.families)} " + helptext.factor_default(f))
    g.add_argument("--mode", choices=MODE_CHOICES, default="train",
                   help="train: train every network; probe: statistics at initialization")
    g.add_argument("--recipe", choices=recipes.names(), default=None,
                   help="training recipe: the default of every flag that says 'from --recipe' "
                   "(a typed flag overrides it): " + "; ".join(
                       f"{n}: {recipes.get(n).summary}" for n in recipes.names())
                   + " (default: seed for --models presets and --mode probe, else default)")
    g.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds 0..N-1 per cell (default: " + ", ".join(
                       f"{n} in {m} mode" for m, n in DEFAULT_SEEDS.items()) + "; --smoke: 1)")
    g.add_argument("--probe-batch", type=int, default=1, metavar="N",
                   help="probe mode: random examples per forward/backward (replicated "
                   "article: 1)")
    g.add_argument("--smoke", action="store_true",
                   help="the smallest real sweep: changes the defaults of --depths (4), "
                   "--seeds (1), --dataset (synthetic), --subset (512), --epochs (2, with "
                   "--milestones 1) and --stats-every (about 10 samples); a flag typed "
                   "with it is kept")
    g.add_argument("--tune", type=_list(str, "--tune", "lr,weight_decay"), default=(),
                   metavar="NAMES", help="hyperparameters to search per cell with Optuna, "
                   "comma list: " + ", ".join(TUNE_SPACE) + " (log-uniform: " + ", ".join(
                       f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in TUNE_SPACE.items()) + ")")
    g.add_argument("--samples", type=int, default=8, metavar="N",
                   help="Optuna samples per cell (with --tune)")
    g.add_argument("--tune-range", type=_ranges, default=(), metavar="NAME=LOW:HIGH,...",
                   help="override search ranges, e.g. lr=1e-3:0.5,weight_decay=1e-5:1e-3 "
                   "(default: the ranges of --tune)")
    g.add_argument("--measure", type=_measure, default=None, metavar="NAMES",
                   help="measurements run on each trial's networks as it ends, comma list: "
                   + helptext.measurement_names() + "; 'none' for none; more later from the kept "
                   "weights: python -m ablations.measure OUT/NAME --measure NAMES "
                   + helptext.measure_default())
    t = p.add_argument_group("training", "with --mode train: data, optimization, statistics")
    t.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="cifar10 (the official python batches under --data-root) or "
                   "synthetic (small, made in memory) (default: cifar10; --smoke: synthetic)")
    t.add_argument("--data-root", default="data", metavar="DIR",
                   help="the folder holding cifar-10-batches-py/, or s3://BUCKET/PREFIX "
                   "holding it: fetched once per node into $RESABLATE_CACHE (by default "
                   "~/.cache/resablate), checked by sha256")
    t.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (about 170 MB) into --data-root when it is missing, "
                   "without asking (on a terminal the sweep asks; elsewhere it stops)")
    t.add_argument("--subset", type=int, default=None, metavar="IMAGES",
                   help="class-stratified training subset, the same for every trial "
                   "(default: 5000; --smoke: 512)")
    t.add_argument("--val-fraction", type=float, default=0.1, metavar="FRACTION",
                   help="held out of the subset for model selection")
    t.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="training length; he2016's is 64k iterations at 45k images, scaled to "
                   "the training set and batch (about 180 epochs) "
                   + helptext.recipes_default("epochs", "--smoke: 16"))
    t.add_argument("--lr", type=float, default=None, metavar="RATE",
                   help="learning rate " + helptext.recipes_default("lr"))
    t.add_argument("--momentum", type=float, default=None, metavar="COEFF",
                   help="SGD momentum " + helptext.recipes_default("momentum"))
    t.add_argument("--weight-decay", type=float, default=None, metavar="COEFF",
                   help="L2 weight decay " + helptext.recipes_default("weight_decay"))
    t.add_argument("--decay", choices=DECAY_CHOICES, default=None,
                   help="which parameters weight decay applies to: all, or weights (conv and "
                   "linear weight matrices only: not norm gains/biases, biases, branch "
                   "scalars) " + helptext.recipes_default("decay"))
    t.add_argument("--batch-size", type=int, default=None, metavar="IMAGES",
                   help="images per step " + helptext.recipes_default("batch_size"))
    t.add_argument("--milestones", type=_list(int, "--milestones", "15,25", allow_empty=True),
                   default=None, metavar="EPOCHS", help="comma list of epochs after which the "
                   "lr is multiplied by 0.1 ('' for none; seed: 15,25 of 30) "
                   + helptext.recipes_default("milestones", "--smoke: 12"))
    t.add_argument("--warmup-epochs", type=int, default=None, metavar="N",
                   help="linear learning-rate warmup from lr/steps to lr over the first N "
                   "epochs, per step (Goyal et al. 2017) " + helptext.recipes_default("warmup_epochs"))
    t.add_argument("--pad-mode", choices=PAD_CHOICES, default=None,
                   help="padding of the 4-pixel random crops: reflect, or zero (He et al. "
                   "2016) " + helptext.recipes_default("pad_mode"))
    t.add_argument("--normalize", choices=NORMALIZE_CHOICES, default=None,
                   help="input normalization: channel (per-channel mean and std of the "
                   "training set) or pixel-mean (the training set's mean image subtracted, "
                   "He et al. 2016) " + helptext.recipes_default("normalize"))
    t.add_argument("--stats-every", type=int, default=None, metavar="STEPS",
                   help="record per-layer statistics every k training steps, 0: none "
                   f"(default: {NORMAL['stats_every']}; --smoke: about {SMOKE_SAMPLES} samples "
                   "over the run)")
    t.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="training arithmetic: auto = bf16 autocast where the hardware computes "
                   "bf16 natively (CPU AVX512-BF16/AMX, CUDA compute capability >= 8), else fp32")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    c = p.add_argument_group("resources", "where the trials run and what each one gets")
    c.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto: a GPU when the trial has one, else the CPU")
    c.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per trial (default: its CPU share)")
    c.add_argument("--cpus-per-trial", type=float, default=None, metavar="CPUS",
                   help="CPUs per trial (default: the cluster's CPUs shared among the trials, "
                   "at least 1 each)")
    c.add_argument("--gpus-per-trial", type=float, default=None, metavar="GPUS",
                   help="GPUs per trial; a fraction such as 0.25 packs 4 trials on a GPU "
                   "(default: a share of the GPUs when there are any, else 0)")
    c.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="join a Ray cluster: host:port, or 'auto' for the one running here; "
                   "token auth: docs/how-to/clusters.md (default: none: start Ray on this machine)")
    c.add_argument("--storage", default=None, metavar="DIR_OR_URI",
                   help="Ray Tune state and trial checkpoints; on a multi-node cluster it "
                   "and --out must be on storage every node reaches. Or an object store, "
                   "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX: then every trial's results, "
                   "weights and checkpoints go to URI/NAME/ and no node needs another's disk "
                   "(credentials and AWS_ENDPOINT_URL from the environment) (default: "
                   "OUT/NAME/ray)")
    c.add_argument("--checkpoint-every", metavar="MINUTES", type=float, default=10.0,
                   help="a trial also checkpoints mid-epoch when this long has passed since "
                   "its last checkpoint (besides each epoch's end; 0: epoch ends only): a "
                   "node lost without notice costs at most this much of a trial's progress; "
                   "results do not depend on it")
    c.add_argument("--max-failures", type=int, default=2, metavar="RETRIES",
                   help="retries of a trial that raises (from its checkpoint); diverged "
                   "trials are results and are not retried")
    w = p.add_argument_group("tracking", "Weights & Biases")
    w.add_argument("--wandb", choices=WANDB_CHOICES, default="auto",
                   help="W&B tracking, one run per trial: auto = online when credentials are "
                   "configured and the server answers within 3 s, else offline under "
                   "OUT/NAME/wandb")
    w.add_argument("--wandb-report", metavar="ENTITY/PROJECT", default=None, type=report_target,
                   help="after the report, publish the sweep's W&B report to ENTITY/PROJECT (its "
                   "offline runs are synced there first); OUT/NAME/wandb_report.json is written "
                   "either way; without credentials or a server: one line saying what to run "
                   "later, the exit code is unchanged (default: none: not published)")
    o = p.add_argument_group("output", "where results go, what is kept, continuing a sweep")
    o.add_argument("--out", default="results", metavar="DIR",
                   help="the folder of all sweeps' results")
    o.add_argument("--name", default=None, metavar="NAME",
                   help="results go to OUT/NAME (default: MODE-TIMESTAMP, e.g. "
                   "train-20250101-093000)")
    o.add_argument("--keep-weights", choices=KEEP_CHOICES, default="final",
                   help="kept networks in OUT/NAME/weights/<trial>/: final = final.pt of every "
                   "completed trial (+ init.pt where a measurement runs at init); all = "
                   "init.pt and final.pt; none = nothing (no measuring after the fact)")
    o.add_argument("--resume", metavar="NAME", default=None,
                   help="continue the interrupted sweep OUT/NAME: finished trials are kept, "
                   "unfinished ones continue from their last checkpoint (default: none: "
                   "a new sweep)")
    o.add_argument("--retry-failed", metavar="NAME", default=None,
                   help="rerun only the trials of OUT/NAME that ended with status=error "
                   "(default: none: a new sweep)")
    return p


def _families_of(args) -> tuple[str, ...]:
    """The families the sweep trains (a preset's family; unknown names are left to
    ``validate``, which names the valid ones)."""
    if not args.models:
        return tuple(args.families)
    known = set(models.list_presets())
    return tuple(models.get_config(m).family for m in args.models if m in known)


def study_default(args, flag: str):
    """A study flag's value: typed, or else --smoke's default (``SMOKE``) with
    ``--smoke``, else the usual one (``NORMAL``)."""
    typed = getattr(args, flag, None)
    if typed is not None:
        return typed
    return SMOKE[flag] if args.smoke and flag in SMOKE else NORMAL[flag]


def _smoke_samples(train: TrainSettings) -> int:
    """--smoke's --stats-every: about SMOKE_SAMPLES samples over the run's steps, so
    every figure through training has points (step 0 is always one)."""
    return max(1, train.steps // SMOKE_SAMPLES)


def study_from_args(args) -> Study:
    """The study ``args`` asks for: each recipe flag (RECIPE_FLAGS, factor levels) typed,
    or else the recipe's (``ablations.recipes``); the seeds typed or the mode's default;
    with ``--smoke`` the smallest real sweep, keeping every flag typed with it
    (``SMOKE``)."""
    recipe = recipes.get(args.recipe or recipes.default_name(bool(args.models), args.mode))
    base = TrainSettings(
        dataset=study_default(args, "dataset"), subset=study_default(args, "subset"),
        # data_root: a folder, or a store's URI
        data_root=args.data_root if "://" in args.data_root else os.path.abspath(args.data_root),
        val_fraction=args.val_fraction, stats_every=NORMAL["stats_every"], threads=args.threads,
        device=args.device, precision=args.precision, compile=args.compile)
    typed = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    if args.smoke and "epochs" not in typed:
        typed = {**SMOKE_SCHEDULE, **typed}
    train = recipe.settings(base, typed)
    if args.stats_every is not None or args.smoke:
        train = dataclasses.replace(train, stats_every=args.stats_every
                                    if args.stats_every is not None else _smoke_samples(train))
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
    seeds = args.seeds if args.seeds is not None else \
        SMOKE["seeds"] if args.smoke else DEFAULT_SEEDS.get(args.mode, 1)
    return Study(
        families=tuple(args.families), depths=tuple(study_default(args, "depths")),
        residual=args.residual, models=tuple(args.models), mode=args.mode, seeds=seeds,
        recipe=recipe.name, smoke=args.smoke, probe_batch=args.probe_batch,
        tune=tuple(args.tune), samples=args.samples, tune_ranges=tuple(args.tune_range),
        train=train, measure=args.measure, keep_weights=args.keep_weights,
        factors=tuple(levels), family_factors=family_factors)


def execution_from_args(args) -> Execution:
    """How ``args`` asks the sweep to run; the name defaults to ``<mode>-<timestamp>``."""
    return Execution(
        out=args.out, name=args.name or f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}",
        wandb=args.wandb, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, address=args.address,
        storage=_storage(args.storage),
        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every)


def _storage(value: str | None) -> str | None:
    """``--storage``: an object-store URI as given, a local folder made absolute."""
    if not value:
        return None
    return value.rstrip("/") if "://" in value else os.path.abspath(value)


def spec_from_args(args) -> AblationSpec:
    """The sweep a new command (not ``--resume``) asks for."""
    return AblationSpec.of(study_from_args(args), execution_from_args(args))


def given_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags actually typed in ``argv`` (not their defaults)."""
    typed_only = copy.deepcopy(parser)
    for action in typed_only._actions:
        action.default = argparse.SUPPRESS
    return set(vars(typed_only.parse_args(argv)))


def unused_flags(parser: argparse.ArgumentParser, given: set[str], spec: AblationSpec
                 ) -> list[str]:
    """One ``warning:`` line per kind of typed flag a new sweep ``spec`` will not read
    (``given``: the typed flags' destinations): the training flags in a probe sweep,
    ``--data-root``/``--download`` on synthetic data, and a ``--stats-every`` beyond the
    run's last step."""
    def named(dests):
        return ", ".join("--" + d.replace("_", "-") for d in sorted(dests))
    out = []
    if spec.mode != "train":
        training = {a.dest for g in parser._action_groups if g.title == "training"
                    for a in g._group_actions}
        if given & training:
            out.append(f"warning: {named(given & training)} not used: --mode {spec.mode} "
                       "measures networks at init with a random probe batch and trains none")
        return out
    t = spec.train
    if t.dataset != "cifar10" and given & {"data_root", "download"}:
        why = " (--smoke's default)" if spec.smoke and "dataset" not in given else ""
        out.append(f"warning: {named(given & {'data_root', 'download'})} not used: the "
                   f"dataset is {t.dataset}{why}; add --dataset cifar10 to train on CIFAR-10")
    if "stats_every" in given and t.stats_every > t.steps:
        out.append(f"warning: --stats-every {t.stats_every} is beyond this run's {t.steps} "
                   "training steps: the figures through training get step 0 only; "
                   f"--stats-every {max(1, t.steps // 8)} samples about 8 times")
    return out
