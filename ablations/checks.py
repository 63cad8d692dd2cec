"""The checks of a new or continued sweep that need no Ray and write nothing: the sweep
(``orchestrate.start``) and its dry run (``ablations.dry_run``) both make them first, so
bad input is one line and exit 2 before the results folder, the W&B line or Ray.

``prepare`` validates and expands the spec and checks the storage, the resources and
the data; ``local_resources`` checks the per-trial request (``--gpus-per-trial``,
``--device cuda``) against what a local Ray would get on this machine, without
starting it.
"""
from __future__ import annotations

import os
import sys

from . import cluster, storage
from .plan import expand, group_by_cell
from .spec import AblationSpec, SpecError, validate


def prepare(spec: AblationSpec, resuming: bool = False, download: bool = False,
            dry_run: bool = False):
    """``(trials, skipped, sizes)``: validate and expand, check this machine's resources
    (``local_resources``), then the data; every check that can fail happens here,
    before any write. ``download``: a missing CIFAR-10 is downloaded
    (``--download``); otherwise asked for on a terminal (``ask_download``), and on no
    it is one line saying how to get it. A ``dry_run``
    downloads nothing: with ``download`` a missing CIFAR-10 counts as there
    (``to_download`` names it) and the sizes are the settings' own."""
    validate(spec, resuming)
    if storage.is_uri(spec.storage):
        store = storage.check(spec.storage)
        if not resuming and store.exists(f"{spec.name}/spec.json"):
            raise SpecError(f"results already exist in {spec.storage}/{spec.name}; choose "
                            "another --name (nothing was overwritten)")
    trials, skipped = expand(spec)
    if not trials:
        raise SpecError("no cell can be built: " + "; ".join(f"{l}: {r}" for l, r in skipped))
    local_resources(spec, len(groups_of(trials, spec)))  # before any download
    sizes = None
    if spec.mode == "train":
        from .data import CIFAR_TEST_IMAGES, check_data
        missing = to_download(spec)
        if missing and not (dry_run or download):
            download = ask_download(missing)  # on a terminal only
        if dry_run and download and missing:
            t = spec.train
            sizes = {"train": t.train_images, "val": t.val_images, "test": CIFAR_TEST_IMAGES}
        else:
            sizes = check_data(spec.train, download=download and not dry_run)
    return trials, skipped, sizes


def to_download(spec: AblationSpec) -> str | None:
    """The CIFAR-10 folder a train sweep would download with ``--download`` (None when it
    is there, or not needed)."""
    from .data import CIFAR_DIR
    if storage.is_uri(spec.train.data_root):  # fetched from the store, never downloaded
        return None
    folder = os.path.join(spec.train.data_root, CIFAR_DIR)
    needed = spec.mode == "train" and spec.train.dataset == "cifar10"
    return folder if needed and not os.path.exists(folder) else None


def ask_download(folder: str) -> bool:
    """Whether to download the missing CIFAR-10 into ``folder``: asked (y/N) when both
    stdin and stderr are a terminal, else no (the sweep then says how to get it)."""
    from .data import CIFAR_MB
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"CIFAR-10 is not in {folder}. Download it there (about {CIFAR_MB} MB)? [y/N] ",
          end="", file=sys.stderr, flush=True)
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (EOFError, OSError):
        return False


def groups_of(trials, spec):
    """The Tune trials: a probe cell with all its seeds together, or one training trial."""
    return group_by_cell(trials, variants_together=True) if spec.mode == "probe" \
        else [[t] for t in trials]


def local_resources(spec: AblationSpec, units: int) -> tuple[int, int, float, float] | None:
    """``(CPUs, GPUs, CPUs per trial, GPUs per trial)`` a local Ray would give ``units``
    trials on this machine; SpecError, with the message the connected sweep would give,
    for a request it cannot meet (``--gpus-per-trial 2`` with one GPU, ``--device cuda``
    without a GPU). None with ``--address``: the cluster decides when joined."""
    if spec.address is not None:
        return None
    cpus, gpus = cluster.local_resources()
    cpt, gpt = cluster.plan_resources(cpus, gpus, cpus, gpus, units, spec.cpus_per_trial,
                                      spec.gpus_per_trial, where="this machine")
    if spec.mode == "train":
        cluster.check_device(spec.train.device, gpus, gpt, where="this machine")
    return cpus, gpus, cpt, gpt
