"""``expand``: a spec becomes the list of trials (pure; printed as the plan)."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import models

from .spec import AblationSpec


@dataclass(frozen=True)
class TrialConfig:
    """One trial: a model variant at one seed. Plain values only (safe to ship to Ray)."""
    trial_id: str
    model: str          # registry name: a family ("mlp") or a preset ("seed_mlp5")
    family: str
    depth: int
    residual: bool
    seed: int
    model_cfg: Any      # frozen model config (MLPConfig / ResNetConfig)
    hparams: tuple[tuple[str, float], ...] = ()  # (("lr", 0.1), ("weight_decay", 5e-4))
    hp_source: str = "fixed"                      # "fixed" | "tuned" | "default (...)"

    @property
    def hp(self) -> dict[str, float]:
        return dict(self.hparams)

    def with_hparams(self, hp: dict, source: str) -> "TrialConfig":
        return dataclasses.replace(self, hparams=tuple(sorted({**self.hp, **hp}.items())),
                                   hp_source=source)

    @property
    def cell(self) -> tuple[str, int, bool]:
        return (self.model, self.depth, self.residual)

    def factors(self) -> dict:
        return {"trial_id": self.trial_id, "family": self.family, "model": self.model,
                "depth": self.depth, "residual": self.residual, "seed": self.seed}

    def record(self) -> dict:
        """Factors, hyperparameters and how they were chosen: what every row starts with."""
        return {**self.factors(), **self.hp, "hp_source": self.hp_source}

    @property
    def preset(self) -> bool:
        """A registry preset (``small_resnet18``), not a family at a depth."""
        return self.model != self.family


def model_label(model: str, depth: int, preset: bool) -> str:
    """``resnet-34``, ``seed_mlp5``."""
    return model if preset else f"{model}-{depth}"


def cell_label(model: str, depth: int, residual: bool, preset: bool) -> str:
    """``resnet-34-plain``, ``seed_mlp5-residual``."""
    return f"{model_label(model, depth, preset)}-{'residual' if residual else 'plain'}"


def trial_id(model: str, depth: int, residual: bool, seed: int, preset: bool) -> str:
    """Readable and unique: ``resnet-34-plain-s2``, ``seed_mlp5-residual-s0``."""
    return f"{cell_label(model, depth, residual, preset)}-s{seed}"


def cell_of(trial: TrialConfig) -> str:
    """The cell label of a trial (its id without the seed suffix)."""
    return cell_label(trial.model, trial.depth, trial.residual, trial.preset)


def expand(spec: AblationSpec) -> tuple[list[TrialConfig], list[tuple[str, str]]]:
    """Trials (cell x seed) and skipped cells ``(label, reason)``."""
    cells: list[tuple[str, Any, bool]] = []
    skipped: list[tuple[str, str]] = []
    if spec.models:
        cells = [(m, models.get_config(m), True) for m in spec.models]
    else:
        for fam in spec.families:
            for d in spec.depths:
                try:
                    cells.append((fam, models.get_config(fam, depth=d), False))
                except ValueError as e:
                    skipped.append((f"{fam}-{d}", str(e)))
    trials = []
    hparams = (("lr", spec.train.lr), ("weight_decay", spec.train.weight_decay))
    for name, cfg, preset in cells:
        for residual in spec.residual_variants():
            rcfg = dataclasses.replace(cfg, residual=residual)
            for seed in range(spec.seeds):
                trials.append(TrialConfig(
                    trial_id=trial_id(name, cfg.depth, residual, seed, preset), model=name,
                    family=cfg.family, depth=cfg.depth, residual=residual, seed=seed,
                    model_cfg=rcfg, hparams=hparams))
    return trials, skipped


def group_by_cell(trials: list[TrialConfig], variants_together: bool = False
                  ) -> list[list[TrialConfig]]:
    """Trials of the same cell, in plan order. With ``variants_together`` a group is a
    (model, depth) pair with both variants: a probe draws each seed's weights once."""
    groups: dict[tuple, list[TrialConfig]] = defaultdict(list)
    for t in trials:
        groups[t.cell[:2] if variants_together else t.cell].append(t)
    return list(groups.values())


def format_plan(trials: list[TrialConfig], skipped: list[tuple[str, str]], mode: str) -> str:
    lines = [f"plan: {len(trials)} trials ({mode})"]
    lines.append(f"  {'model':<16}{'depth':>6}  {'variant':<9}{'seeds':>6}{'params':>12}")
    for group in group_by_cell(trials):
        t = group[0]
        params = models.count_params(t.model_cfg.build())
        lines.append(f"  {t.model:<16}{t.depth:>6}  {'residual' if t.residual else 'plain':<9}"
                     f"{len(group):>6}{params:>12,}")
    for label, reason in skipped:
        lines.append(f"  skipped {label}: {reason}")
    return "\n".join(lines)
