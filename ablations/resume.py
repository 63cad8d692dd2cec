"""Continuing a sweep (``--resume NAME``, ``--retry-failed NAME``): the study stored in
``OUT/NAME/spec.json`` with the execution given now.

The study never changes: a study flag typed again (the up-arrow habit: the original
command repeated with ``--resume NAME`` appended) must resolve to the stored value,
that is, the study the repeated command asks for equals the stored one on every flag
typed. A difference is an error naming both values, so a resumed sweep never silently
mixes two studies. The execution flags (``EXECUTION_FLAGS``: the fields of
``Execution`` but the name, and this invocation's own flags) may change; those typed
replace the stored ones.
"""
from __future__ import annotations

import dataclasses
import json
import os

from . import factors, storage
from .arguments import execution_from_args, study_from_args
from .spec import AblationSpec, Execution, SpecError, Study, spec_from_dict

# Flags of one invocation, stored in no spec.
INVOCATION_FLAGS = {"resume", "retry_failed", "wandb_report", "list_models", "dry_run",
                    "download"}
# Of those, the flags that act before or instead of the sweep, whatever it is: never
# compared with the stored spec, and not listed as what may change (--download fetches
# a missing CIFAR-10 for the resumed sweep too).
BESIDE_FLAGS = {"list_models", "download"}
# May be given again with --resume/--retry-failed; every other flag comes from spec.json
# (--name too, which must name the same sweep).
EXECUTION_FLAGS = ({f.name for f in dataclasses.fields(Execution)} - {"name"}) \
    | (INVOCATION_FLAGS - BESIDE_FLAGS)


def study_value(study: Study, dest: str):
    """The study's value for study flag ``dest`` (``--tune-range`` -> tune_ranges; a
    factor's levels; a training flag's setting)."""
    field = {"tune_range": "tune_ranges"}.get(dest, dest)
    if dest in factors.names():
        return dict(study.factors).get(dest, ("(family default)",))
    if field in Study.__dataclass_fields__:
        return getattr(study, field)
    return getattr(study.train, field)


def check_repeated_study_flags(args, given: set[str], stored: AblationSpec, flag: str) -> None:
    """SpecError unless the study ``args`` asks for equals the stored one on every study
    flag typed (``given``), and a typed ``--name`` is the sweep's."""
    typed = sorted(given - EXECUTION_FLAGS - BESIDE_FLAGS - {"name"})
    if "name" in given and args.name != stored.name:
        raise SpecError(f"{flag} {stored.name}: --name {args.name} differs from the sweep's "
                        f"name; leave --name out")
    if not typed:
        return
    again = study_from_args(args)  # the repeated command's study, resolved as at its start
    for dest in typed:
        was, now = study_value(stored.study, dest), study_value(again, dest)
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


def stored_spec(args, given: set[str]) -> tuple[AblationSpec, str]:
    """The spec of the sweep ``args`` continues, and how (``resume`` or
    ``retry-failed``): its stored study, its stored execution with ``--out`` and the
    execution flags typed now (``given``). SpecError for a missing or unreadable sweep
    and for a study flag typed with another value."""
    if args.resume and args.retry_failed:
        raise SpecError("give --resume NAME or --retry-failed NAME, not both")
    name = args.resume or args.retry_failed
    flag = "--resume" if args.resume else "--retry-failed"
    path = os.path.join(args.out, name, "spec.json")
    text = None
    if name and os.sep not in name and not os.path.isfile(path) and storage.is_uri(args.storage):
        text = storage.read_spec(args.storage, name)  # a fresh driver folder: the store's
        path = f"{args.storage}/{name}/spec.json"
    if not name or os.sep in name or (text is None and not os.path.isfile(path)):
        existing = sorted(d for d in os.listdir(args.out)
                          if os.path.isfile(os.path.join(args.out, d, "spec.json"))) \
            if os.path.isdir(args.out) else []
        store = f" nor {args.storage}/{name}" if storage.is_uri(args.storage) else ""
        raise SpecError(f"{flag} {name}: no sweep {os.path.join(args.out, name)}{store} (no "
                        f"spec.json); sweeps in {args.out}: " + (", ".join(existing) or "none"))
    try:
        if text is None:
            with open(path) as f:
                text = f.read()
        stored = spec_from_dict(json.loads(text)["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path} is not a readable sweep spec ({e})") from None
    check_repeated_study_flags(args, given, stored, flag)
    now = execution_from_args(args)
    typed = {k: getattr(now, k) for k in given & set(Execution.__dataclass_fields__)
             if k != "name"}
    execution = dataclasses.replace(stored.execution, **{**typed, "out": args.out})
    return AblationSpec.of(stored.study, execution), \
        "resume" if args.resume else "retry-failed"
