"""``expand``: a spec becomes the list of trials (pure; printed as the plan, after
``settings_line``)."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import models

from . import factors, recipes
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
    # every other factor's level (ablations.factors), e.g. (("norm", "batch"), ...);
    # () = the family's defaults
    levels: tuple[tuple[str, str], ...] = ()

    @property
    def hp(self) -> dict[str, float]:
        return dict(self.hparams)

    def with_hparams(self, hp: dict, source: str) -> "TrialConfig":
        return dataclasses.replace(self, hparams=tuple(sorted({**self.hp, **hp}.items())),
                                   hp_source=source)

    @property
    def cell(self) -> tuple:
        """(model, depth, residual, other factors' levels...): the trials that differ
        only in seed."""
        return (self.model, self.depth, self.residual) + tuple(
            lv for k, lv in self.all_levels().items() if k != "residual")

    def all_levels(self) -> dict[str, str]:
        """Every registered factor's level (NA where it does not apply)."""
        base = factors.default_levels(self.family)
        base["residual"] = "residual" if self.residual else "plain"
        if not self.residual:
            base.update({f.name: factors.NA for f in factors.all_factors()
                         if not f.applies_to(self.family, base)})
        return {**base, **dict(self.levels)}

    def factors(self) -> dict:
        """The keys of every results row: trial, family, model, depth, each factor's
        column (residual as a bool, the others as level strings), seed."""
        return {"trial_id": self.trial_id, "family": self.family, "model": self.model,
                "depth": self.depth, **factors.columns(self.all_levels()), "seed": self.seed}

    def record(self) -> dict:
        """Factors, hyperparameters and how they were chosen: what every row starts with."""
        return {**self.factors(), **self.hp, "hp_source": self.hp_source}

    @property
    def preset(self) -> bool:
        """A registry preset (``small_resnet18``), not a family at a depth."""
        return self.model != self.family


def network_id(model: str, depth: int, preset: bool) -> str:
    """A network in trial ids and file names: ``resnet-34``, ``seed_mlp5``."""
    return model if preset else f"{model}-{depth}"


def network_title(family, model) -> str:
    """A network in figure titles and findings: "mlp" for a family's own network,
    "resnet: small_resnet18" for a preset."""
    return str(model) if model == family else f"{family}: {model}"


def cell_label(model: str, depth: int, residual: bool, preset: bool,
               family: str | None = None, levels: dict | None = None) -> str:
    """``resnet-34-plain``, ``seed_mlp5-residual``; non-default factor levels are named:
    ``resnet-20-residual-norm=none-scale=zero``."""
    lv = {**(levels or {}), "residual": "residual" if residual else "plain"}
    parts = factors.id_parts(family or model, lv)
    return "-".join([network_id(model, depth, preset), *parts])


def trial_id(model: str, depth: int, residual: bool, seed: int, preset: bool,
             family: str | None = None, levels: dict | None = None) -> str:
    """Readable and unique: ``resnet-34-plain-s2``, ``seed_mlp5-residual-s0``,
    ``mlp-8-residual-scale=invsqrt-s1``."""
    return f"{cell_label(model, depth, residual, preset, family, levels)}-s{seed}"


def cell_of(trial: TrialConfig) -> str:
    """The cell label of a trial (its id without the seed suffix)."""
    return cell_label(trial.model, trial.depth, trial.residual, trial.preset, trial.family,
                      trial.all_levels())


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
        requested = spec.requested_levels(cfg.family)
        for levels in factors.variants(cfg.family, requested):
            label = cell_label(name, cfg.depth, levels["residual"] == "residual", preset,
                               cfg.family, levels)
            try:
                vcfg = factors.configure(cfg, cfg.family, levels)
            except ValueError as e:  # a level this model cannot build: skipped, with why
                skipped.append((label, str(e)))
                continue
            residual = levels["residual"] == "residual"
            others = tuple((k, v) for k, v in levels.items() if k != "residual")
            for seed in range(spec.seeds):
                trials.append(TrialConfig(
                    trial_id=f"{label}-s{seed}", model=name, family=cfg.family,
                    depth=cfg.depth, residual=residual, seed=seed, model_cfg=vcfg,
                    hparams=hparams, levels=others))
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
    groups = group_by_cell(trials)
    names = [" ".join(factors.id_parts(g[0].family, g[0].all_levels())) for g in groups]
    w = max([9, *map(len, names)]) + 1
    lines.append(f"  {'model':<16}{'depth':>6}  {'variant':<{w}}{'seeds':>6}{'params':>12}")
    for group, name in zip(groups, names):
        t = group[0]
        params = models.count_params(t.model_cfg.build())
        lines.append(f"  {t.model:<16}{t.depth:>6}  {name:<{w}}{len(group):>6}{params:>12,}")
    for label, reason in skipped:
        lines.append(f"  skipped {label}: {reason}")
    return "\n".join(lines)


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
    full = recipes.get(spec.recipe).schedule_steps(t.train_images, t.batch_size)
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
            f", batch {t.batch_size}, {t.epochs} epoch(s) = {t.steps} steps "
            f"({100 * t.steps / full:.0f}% of the recipe's {full}), "
            f"{drops}{warm}, {t.pad_mode}-padded crops, {t.normalize} "
            f"normalization" + (f"; {levels}" if levels else "") + f"; {seeds}")
