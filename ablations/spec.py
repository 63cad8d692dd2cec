"""The ablation study as a value: ``AblationSpec`` (frozen) and its validation.

Scientific factors: family/model, depth, residual. Nuisance: lr, weight decay
(fixed here; tuned per cell by a later issue). Seeds: ``range(seeds)``.
``validate`` runs before any compute or write and raises ``SpecError`` with one
line naming the problem and the valid choices.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import models

RESIDUAL_CHOICES = ("on", "off", "both")
MODE_CHOICES = ("probe", "train")
WANDB_CHOICES = ("disabled",)  # auto/online/offline arrive with the tracking issue
DATASET_CHOICES = ("cifar10", "synthetic")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class SpecError(ValueError):
    """Invalid study specification; the message is one line for the user."""


@dataclass(frozen=True)
class TrainSettings:
    """Fixed training settings shared by every trial of a sweep (seed article defaults)."""
    dataset: str = "cifar10"
    data_root: str = "data"
    subset: int = 5000
    val_fraction: float = 0.1
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    milestones: tuple[int, ...] = (15, 25)
    stats_every: int = 50
    threads: int | None = None
    device: str = "auto"
    compile: bool = False


@dataclass(frozen=True)
class AblationSpec:
    families: tuple[str, ...] = ("mlp", "resnet")
    depths: tuple[int, ...] = (5, 18, 34)
    residual: str = "both"
    models: tuple[str, ...] = ()
    mode: str = "train"
    seeds: int = 1
    out: str = "results"
    name: str = "sweep"
    wandb: str = "disabled"
    smoke: bool = False
    probe_batch: int = 1
    cpus_per_trial: float | None = None  # None: share all CPUs among the trials
    train: TrainSettings = field(default_factory=TrainSettings)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out, self.name)

    def residual_variants(self) -> tuple[bool, ...]:
        return {"on": (True,), "off": (False,), "both": (False, True)}[self.residual]


def _choices(values, valid, what, plural=None):
    bad = [v for v in values if v not in valid]
    if bad:
        raise SpecError(f"unknown {what} {bad[0]!r}; valid {plural or what + 's'}: "
                        + ", ".join(valid))


def validate(spec: AblationSpec) -> None:
    """Raise ``SpecError`` for anything wrong with ``spec``; touches no file."""
    if spec.models:
        families = models.list_families()
        for m in spec.models:
            if m in families:
                raise SpecError(f"--models takes presets, {m!r} is a family: use --families "
                                f"{m} --depths ...; valid presets: {', '.join(models.list_presets())}")
        _choices(spec.models, models.list_presets(), "model preset")
    else:
        if not spec.families:
            raise SpecError("--families is empty; valid families: "
                            + ", ".join(models.list_families()))
        _choices(spec.families, models.list_families(), "family", "families")
        if not spec.depths:
            raise SpecError("--depths is empty; give integers >= 2, e.g. 5,18,34")
        for d in spec.depths:
            if d < 2:
                raise SpecError(f"depth {d} is too small; depths are integers >= 2 (e.g. 5,18,34)")
    _choices([spec.residual], RESIDUAL_CHOICES, "--residual value")
    _choices([spec.mode], MODE_CHOICES, "mode")
    _choices([spec.wandb], WANDB_CHOICES, "--wandb mode")
    if spec.seeds < 1:
        raise SpecError(f"--seeds must be >= 1 (got {spec.seeds})")
    if spec.probe_batch < 1:
        raise SpecError(f"--probe-batch must be >= 1 (got {spec.probe_batch})")
    if spec.cpus_per_trial is not None and spec.cpus_per_trial <= 0:
        raise SpecError(f"--cpus-per-trial must be > 0 (got {spec.cpus_per_trial})")
    if not spec.name or os.sep in spec.name or spec.name in (".", ".."):
        raise SpecError(f"--name must be a plain folder name (got {spec.name!r})")
    if os.path.exists(spec.out) and not os.path.isdir(spec.out):
        raise SpecError(f"--out {spec.out} is a file, not a directory; choose a directory path")
    if os.path.exists(os.path.join(spec.run_dir, "spec.json")):
        raise SpecError(f"results already exist in {spec.run_dir}; choose another --name "
                        "(nothing was overwritten)")
    if spec.mode == "train":
        validate_train(spec.train)


def validate_train(t: TrainSettings) -> None:
    _choices([t.dataset], DATASET_CHOICES, "dataset")
    _choices([t.device], DEVICE_CHOICES, "device")
    if t.epochs < 1:
        raise SpecError(f"--epochs must be >= 1 (got {t.epochs})")
    if not t.lr > 0:
        raise SpecError(f"--lr must be > 0 (got {t.lr})")
    if t.weight_decay < 0:
        raise SpecError(f"--weight-decay must be >= 0 (got {t.weight_decay})")
    if not 0 <= t.momentum < 1:
        raise SpecError(f"--momentum must be in [0, 1) (got {t.momentum})")
    if t.batch_size < 1:
        raise SpecError(f"--batch-size must be >= 1 (got {t.batch_size})")
    if t.subset < 10:
        raise SpecError(f"--subset must be >= 10, one image per class (got {t.subset})")
    if not 0 <= t.val_fraction < 1:
        raise SpecError(f"--val-fraction must be in [0, 1) (got {t.val_fraction})")
    if t.stats_every < 1:
        raise SpecError(f"--stats-every must be >= 1 (got {t.stats_every})")
    if t.threads is not None and t.threads < 1:
        raise SpecError(f"--threads must be >= 1 (got {t.threads})")
    ms = t.milestones
    if list(ms) != sorted(set(ms)) or any(m < 1 for m in ms):
        raise SpecError(f"--milestones must be increasing epochs >= 1 (got {','.join(map(str, ms))})")
    if ms and ms[-1] >= t.epochs:
        raise SpecError(f"--milestones {','.join(map(str, ms))} must be < --epochs {t.epochs}; "
                        f"valid milestones are 1..{t.epochs - 1}")
    if os.path.exists(t.data_root) and not os.path.isdir(t.data_root):
        raise SpecError(f"--data-root {t.data_root} is a file, not a directory")
