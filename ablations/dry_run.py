"""``python sweep.py ... --dry-run``: everything a sweep would say before it trains, and
nothing else.

Every flag is validated, the data read and checked (``checks.prepare``: a missing
CIFAR-10 is never downloaded here; with ``--download`` a note says the sweep would),
the results folder's lock checked (a folder in use is said, not an error), and then
the settings line, the plan, the weights kept, the resources each trial would get and
the time estimate are printed, exactly as the sweep prints them. Nothing is written,
Ray is not started, W&B is not contacted; exit 0 (bad input: one line, exit 2, as for
a sweep). On this machine the resources are those a local Ray would get; with
``--address`` the cluster decides them when the sweep connects (not contacted here).
"""
from __future__ import annotations

import dataclasses

from . import checks, lock, orchestrate, resume
from .arguments import given_flags, spec_from_args, unused_flags
from .spec import SpecError, resolve_measure


def main(parser, args, argv) -> int:
    """Print the sweep ``args`` would run; 0, or 2 with one line on bad input."""
    import sys
    try:
        lines = plan_lines(args, given_flags(parser, argv), parser)
    except SpecError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines), flush=True)
    return 0


def plan_lines(args, given: set[str], parser=None) -> list[str]:
    """What the sweep would print before its first trial (SpecError on bad input);
    ``parser``: warn of typed flags the sweep would not read."""
    if args.resume or args.retry_failed:
        spec, kind = resume.stored_spec(args, given)
    else:
        spec, kind = resolve_measure(spec_from_args(args)), "start"
    trials, skipped, sizes = checks.prepare(spec, resuming=kind != "start",
                                            download=args.download, dry_run=True)
    out = [f"dry run: nothing written, Ray not started; results would go to {spec.run_dir}"]
    if parser is not None and kind == "start":
        out += unused_flags(parser, given, spec)
    fetch = checks.to_download(spec) if args.download else None
    if fetch:
        from .data import CIFAR_MB
        out.append(f"note: CIFAR-10 is not in {fetch}; the sweep would download it there "
                   f"first (about {CIFAR_MB} MB)")
    held = lock.read(spec.run_dir)
    if held is not None and not lock.gone(held, lock.path_of(spec.run_dir)):
        out.append(f"note: {spec.run_dir} is in use now ({lock.describe(held)}); the sweep "
                   "would be refused until that writer ends")
    sweep = orchestrate.Sweep(spec, kind, trials, skipped, sizes, "n/a", [], {})
    out += orchestrate.plan_text(sweep)
    units = len(checks.groups_of(trials, spec))
    if spec.address is not None:
        out.append(f"resources: decided by the cluster at --address {spec.address} when the "
                   "sweep connects (not contacted in a dry run)")
        return out
    cpus, gpus, cpt, gpt = checks.local_resources(spec, units)
    spec = dataclasses.replace(spec, cpus_per_trial=cpt, gpus_per_trial=gpt)
    out.append(f"resources: {cpt:g} CPU + {gpt:g} GPU per trial on this machine with "
               f"{cpus:g} CPU, {gpus:g} GPU (a local Ray)")
    line, _, _ = orchestrate.estimate_left(spec, kind, trials, sizes,
                                           {"resources": {"CPU": cpus, "GPU": gpus}},
                                           started=False)
    if line:
        out.append(line)
    return out
