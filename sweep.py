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
import os
import sys
import time

import models
from ablations.plan import expand, format_plan, group_by_cell
from ablations.spec import (DATASET_CHOICES, DEVICE_CHOICES, MODE_CHOICES, RESIDUAL_CHOICES,
                            WANDB_CHOICES, AblationSpec, SpecError, TrainSettings, validate)


class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr naming the flag and the valid values, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    g.add_argument("--mode", choices=MODE_CHOICES, default="train")
    g.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell")
    g.add_argument("--probe-batch", type=int, default=1,
                   help="probe mode: random examples per forward/backward (seed article: 1)")
    g.add_argument("--smoke", action="store_true",
                   help="smallest real sweep: depth 4, 1 seed; train: 2 epochs of synthetic data")
    g.add_argument("--list-models", action="store_true",
                   help="print every model's layout and parameter counts, then exit")
    o = p.add_argument_group("output and execution")
    o.add_argument("--out", default="results")
    o.add_argument("--name", default=None, help="results go to OUT/NAME (default: mode-timestamp)")
    o.add_argument("--wandb", choices=WANDB_CHOICES, default="disabled",
                   help="W&B tracking; only 'disabled' so far (auto/online/offline: coming)")
    o.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs per trial (default: the cluster's CPUs shared among the trials, "
                   "at least 1 each)")
    t = p.add_argument_group("training (--mode train)")
    t.add_argument("--dataset", choices=DATASET_CHOICES, default="cifar10")
    t.add_argument("--data-root", default="data",
                   help="holds cifar-10-batches-py/ (downloaded there when missing and online)")
    t.add_argument("--subset", type=int, default=5000,
                   help="class-stratified training subset, the same for every trial")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="held out of the subset for model selection")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--milestones", type=_list(int, "--milestones", "15,25", allow_empty=True),
                   default=None, help="epochs after which the lr is multiplied by 0.1 ('' for "
                   "none; default: the seed article's 15,25 of 30, scaled to --epochs)")
    t.add_argument("--stats-every", type=int, default=50,
                   help="record per-layer statistics every k training steps")
    t.add_argument("--threads", type=int, default=None,
                   help="torch threads per trial (default: its CPU share)")
    t.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    return p


def default_milestones(epochs: int) -> tuple[int, ...]:
    """The seed article's schedule (drops after epochs 15 and 25 of 30) scaled to
    ``epochs``: after 1/2 and 5/6 of training; 30 -> (15, 25), 10 -> (5, 8), 2 -> (1,)."""
    return tuple(sorted({m for m in (round(epochs / 2), round(epochs * 5 / 6))
                         if 1 <= m < epochs}))


def spec_from_args(args) -> AblationSpec:
    train = TrainSettings(
        dataset=args.dataset, data_root=os.path.abspath(args.data_root), subset=args.subset,
        val_fraction=args.val_fraction, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, batch_size=args.batch_size,
        milestones=default_milestones(args.epochs) if args.milestones is None
        else tuple(args.milestones), stats_every=args.stats_every, threads=args.threads,
        device=args.device, compile=args.compile)
    spec = AblationSpec(
        families=tuple(args.families), depths=tuple(args.depths), residual=args.residual,
        models=tuple(args.models), mode=args.mode, seeds=args.seeds, out=args.out,
        name=args.name or f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}", wandb=args.wandb,
        smoke=args.smoke, probe_batch=args.probe_batch, cpus_per_trial=args.cpus_per_trial,
        train=train)
    if spec.smoke:
        spec = dataclasses.replace(
            spec, depths=(4,), seeds=1,
            train=dataclasses.replace(train, dataset="synthetic", subset=512, epochs=2,
                                      milestones=(1,), val_fraction=0.1))
    return spec


def prepare(spec: AblationSpec):
    """Validate and expand; every check that can fail happens here, before any write."""
    validate(spec)
    trials, skipped = expand(spec)
    if not trials:
        raise SpecError("no cell can be built: " + "; ".join(f"{l}: {r}" for l, r in skipped))
    if spec.mode == "train":
        from ablations.data import check_data
        check_data(spec.train)
    return trials, skipped


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(models.describe(depths=list(args.depths)))
        return 0
    try:
        spec = spec_from_args(args)
        trials, skipped = prepare(spec)
    except SpecError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    from ablations import results, runner
    print(format_plan(trials, skipped, spec.mode), flush=True)
    results.write_json(f"{spec.run_dir}/spec.json",
                       {**results.spec_record(spec),
                        "plan": [t.factors() for t in trials],
                        "skipped": [{"cell": l, "reason": r} for l, r in skipped]})
    groups = group_by_cell(trials, variants_together=True) if spec.mode == "probe" \
        else [[t] for t in trials]
    t0 = time.time()
    runner.run(groups, spec, spec.run_dir)
    tables = results.merge(spec.run_dir, trials)
    from analysis.report import build
    written = build(spec.run_dir)
    status = tables["trials"]["status"].value_counts()
    n_err = int(status.get("error", 0))
    print(f"wrote {len(written)} figure/table files to {spec.run_dir}/figures and /tables")
    print(f"done in {time.time() - t0:.0f}s: {len(trials)} trials: "
          f"{int(status.get('completed', 0))} completed, {int(status.get('diverged', 0))} "
          f"diverged, {n_err} errored -> {spec.run_dir}")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
