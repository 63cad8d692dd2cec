"""A sweep as a value, and its validation.

``Study`` is what a sweep studies (cells, factor levels, seeds, the training recipe,
what is measured and kept); ``Execution`` is how and where it runs (the results
folder, W&B, Ray, resources, retries). ``AblationSpec`` is both in one frozen value:
what spec.json stores (``spec_to_dict``/``spec_from_dict``) and the workers read.
Scientific factors: family/model, depth, residual. Nuisance: lr, weight decay
(fixed, or tuned per cell with Optuna: ``tune``). Seeds: ``range(seeds)``.
``validate`` runs before any compute or write and raises ``SpecError`` with one
line naming the problem and the valid choices.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import models

from .factors import TUNE_SPACE

RESIDUAL_CHOICES = ("on", "off", "both")
MODE_CHOICES = ("probe", "train")
WANDB_CHOICES = ("auto", "online", "offline", "disabled")
DATASET_CHOICES = ("cifar10", "synthetic")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware has it natively
# weight decay on every parameter (the replicated article, He et al. 2016), or on weight
# matrices only (conv/linear weights: not norm gains/biases, biases, branch scalars)
DECAY_CHOICES = ("all", "weights")
# Seeds per cell when --seeds is not typed. Train: 3, the fewest that give a spread
# (a mean and a standard deviation over seeds) at the cost of 3 trainings per cell.
# Probe: 100, since a probe costs milliseconds per seed and the gradient statistics at
# init vary a lot from seed to seed.
DEFAULT_SEEDS = {"train": 3, "probe": 100}
PAD_CHOICES = ("reflect", "zero")          # how crops are padded (ablations.data)
NORMALIZE_CHOICES = ("channel", "pixel-mean")  # per-channel mean/std, or mean image only


# Tunable hyperparameters, TUNE_SPACE: log-uniform ranges searched per cell (override:
# --tune-range); defined in ablations.factors, where the torch-free report reads it too.


class SpecError(ValueError):
    """Invalid study specification; the message is one line for the user."""


@dataclass(frozen=True)
class TrainSettings:
    """Fixed training settings shared by every trial of a sweep. The defaults are the
    replicated article's recipe (``ablations.recipes``: ``seed``); ``ablations.arguments``
    resolves every field from ``--recipe`` and the typed flags."""
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
    precision: str = "auto"
    compile: bool = False
    warmup_epochs: int = 0  # linear lr warmup over the first N epochs (Goyal et al. 2017)
    decay: str = "all"      # DECAY_CHOICES: which parameters weight decay applies to
    pad_mode: str = "reflect"   # crop padding: reflect, or zero (He et al. 2016)
    normalize: str = "channel"  # channel: mean/std per channel; pixel-mean: - mean image
    # lr x recipes.CONSTANT_WARMUP_FACTOR for the first N steps of trials of depth >=
    # constant_warmup_depth (He et al. 2016's ResNet-110 warmup); 0: none
    constant_warmup_steps: int = 0
    constant_warmup_depth: int = 0

    @property
    def train_images(self) -> int:
        """Images trained on per epoch: the subset less its validation split, as
        ``ablations.data`` splits it."""
        return self.subset - self.val_images

    @property
    def val_images(self) -> int:
        return 0 if self.val_fraction <= 0 else max(1, round(self.val_fraction * self.subset))

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole run: epochs x batches per epoch (the last batch
        may be partial); defined for unvalidated settings too (a batch of 0 counts as 1)."""
        return self.epochs * -(-max(1, self.train_images) // max(1, self.batch_size))


@dataclass(frozen=True)
class Study:
    """What a sweep studies: the cells, their factor levels, the seeds, the training
    recipe and what is measured and kept. Fixed for the life of a sweep: ``--resume``
    and ``--retry-failed`` continue it only with an equal study (``ablations.resume``)."""
    families: tuple[str, ...] = ("mlp", "resnet")
    depths: tuple[int, ...] = (5, 18, 34)
    residual: str = "both"
    models: tuple[str, ...] = ()
    mode: str = "train"
    seeds: int = 1      # ablations.arguments resolves its default per mode (3 train, 100 probe)
    recipe: str = "seed"  # ablations.recipes; what train and factors were resolved from
    smoke: bool = False
    probe_batch: int = 1
    tune: tuple[str, ...] = ()           # hyperparameters searched per cell (Optuna TPE)
    samples: int = 8                     # Optuna samples per cell
    tune_ranges: tuple[tuple[str, float, float], ...] = ()  # overrides of TUNE_SPACE
    # levels of the factors other than residual (ablations.factors), e.g.
    # (("norm", ("batch", "none")),); a factor left out takes each family's default
    factors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # levels a recipe sets for one family only (the default recipe's pre-LN MLP), e.g.
    # (("mlp", (("norm", ("layer",)), ("block", ("pre",)))),); ``factors`` (typed, or
    # supplied sweep-wide) wins over them
    family_factors: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()
    # measurements run at the end of each trial (ablations.measurements); None: the
    # registry's default set in train mode (resolve_measure), () in probe mode
    measure: tuple[str, ...] | None = None
    keep_weights: str = "final"          # ablations.weights.KEEP_CHOICES
    train: TrainSettings = field(default_factory=TrainSettings)

    def search_space(self) -> dict[str, tuple[float, float]]:
        """The log-uniform range of every tuned hyperparameter (defaults + overrides)."""
        ranges = {**TUNE_SPACE, **{n: (lo, hi) for n, lo, hi in self.tune_ranges}}
        return {n: ranges[n] for n in self.tune}

    def residual_variants(self) -> tuple[bool, ...]:
        return {"on": (True,), "off": (False,), "both": (False, True)}[self.residual]

    def requested_levels(self, family: str | None = None) -> dict[str, tuple[str, ...]]:
        """Levels per factor name, residual included (``--residual both`` -> plain,
        residual); with ``family``, that family's recipe levels (``family_factors``) under
        the sweep-wide ones."""
        residual = tuple("residual" if r else "plain" for r in self.residual_variants())
        own = dict(dict(self.family_factors).get(family, ())) if family else {}
        return {"residual": residual, **own, **dict(self.factors)}


@dataclass(frozen=True)
class Execution:
    """How and where a sweep runs: its results folder ``out/name``, W&B, the Ray
    cluster and storage, the resources per trial and the retries. Every field but
    ``name`` may be given again with ``--resume``/``--retry-failed``."""
    out: str = "results"
    name: str = "sweep"
    wandb: str = "disabled"
    cpus_per_trial: float | None = None  # None: share all CPUs among the trials
    gpus_per_trial: float | None = None  # None: a share of the GPUs when there are any
    address: str | None = None           # None: a local Ray; "auto" or host:port: a cluster
    storage: str | None = None           # Ray Tune state + checkpoints; None: <run_dir>/ray
    max_failures: int = 2                # retries of a trial that raises (not of diverged)
    # minutes between mid-epoch checkpoints (besides every epoch's end; 0: those only):
    # what a node lost without notice costs at most. Results do not depend on it.
    checkpoint_every: float = 10.0

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out, self.name)

    @property
    def storage_dir(self) -> str:
        return self.storage or os.path.join(self.run_dir, "ray")


@dataclass(frozen=True)
class AblationSpec(Study, Execution):
    """A sweep: its ``Study`` and its ``Execution`` as one flat value (every field of
    both, by name), which the plan, the workers and spec.json read. ``study`` and
    ``execution`` are the two parts; ``AblationSpec.of`` joins two parts again."""

    @property
    def study(self) -> Study:
        return Study(**_values(self, Study))

    @property
    def execution(self) -> Execution:
        return Execution(**_values(self, Execution))

    @classmethod
    def of(cls, study: Study, execution: Execution) -> AblationSpec:
        return cls(**_values(study, Study), **_values(execution, Execution))


def _values(obj, part) -> dict:
    """The fields of dataclass ``part`` read from ``obj`` (shallow: nested values kept)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(part)}


# spec.json's keys in the order sweeps have always written them (a reader does not care;
# a person comparing two spec.json files does)
RECORD_ORDER = ("families", "depths", "residual", "models", "mode", "seeds", "recipe", "out",
                "name", "wandb", "smoke", "probe_batch", "cpus_per_trial", "gpus_per_trial",
                "address", "storage", "max_failures", "checkpoint_every", "tune", "samples", "tune_ranges",
                "factors", "family_factors", "measure", "keep_weights", "train")


def _choices(values, valid, what, plural=None):
    bad = [v for v in values if v not in valid]
    if bad:
        raise SpecError(f"unknown {what} {bad[0]!r}; valid {plural or what + 's'}: "
                        + ", ".join(valid))


def validate(spec: AblationSpec, resuming: bool = False) -> None:
    """Raise ``SpecError`` for anything wrong with ``spec``; touches no file.

    ``resuming``: the run folder is expected to exist (``--resume``/``--retry-failed``)."""
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
    from . import factors, recipes
    _choices([spec.recipe], recipes.names(), "--recipe", "recipes")
    recipes.get(spec.recipe).check_cells(
        [(models.get_config(m).family, models.get_config(m).depth) for m in spec.models]
        if spec.models else [(f, d) for f in spec.families for d in spec.depths])
    try:
        families = tuple(models.get_config(m).family for m in spec.models) if spec.models \
            else spec.families
        factors.validate_requested(dict(spec.factors), families)
        for fam, levels in spec.family_factors:
            factors.validate_requested(dict(levels), (fam,))
    except (ValueError, KeyError) as e:
        raise SpecError(str(e).strip("'\"")) from None
    if spec.mode == "probe" and "batch" in dict(spec.factors).get("norm", ()) and \
            spec.probe_batch < 2 and "mlp" in families:
        raise SpecError(f"--norm batch with --probe-batch {spec.probe_batch}: an MLP's batch "
                        "norm has no statistics over one example; use --probe-batch 2 or more")
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
    if spec.gpus_per_trial is not None and spec.gpus_per_trial < 0:
        raise SpecError(f"--gpus-per-trial must be >= 0 (got {spec.gpus_per_trial})")
    if spec.gpus_per_trial and spec.gpus_per_trial > 1 and spec.gpus_per_trial % 1:
        raise SpecError(f"--gpus-per-trial above 1 must be a whole number (got "
                        f"{spec.gpus_per_trial}); fractions (e.g. 0.25) pack trials on one GPU")
    if spec.max_failures < 0:
        raise SpecError(f"--max-failures must be >= 0 (got {spec.max_failures})")
    if not 0 <= spec.checkpoint_every < float("inf"):  # NaN too
        raise SpecError(f"--checkpoint-every must be a number of minutes >= 0 (0: at epoch "
                        f"ends only; got {spec.checkpoint_every})")
    validate_tune(spec)
    validate_measure(spec)
    if os.path.exists(spec.out) and not os.path.isdir(spec.out):
        raise SpecError(f"--out {spec.out} is a file, not a directory; choose a directory path")
    if not resuming and os.path.exists(os.path.join(spec.run_dir, "spec.json")):
        raise SpecError(f"results already exist in {spec.run_dir}; choose another --name "
                        "(nothing was overwritten)")
    if spec.mode == "train":
        validate_train(spec.train)


def validate_tune(spec: AblationSpec) -> None:
    if spec.samples < 1:
        raise SpecError(f"--samples must be >= 1 (got {spec.samples})")
    _choices(spec.tune, tuple(TUNE_SPACE), "--tune hyperparameter")
    if len(set(spec.tune)) != len(spec.tune):
        raise SpecError(f"--tune names a hyperparameter twice: {','.join(spec.tune)}")
    for name, lo, hi in spec.tune_ranges:
        _choices([name], tuple(TUNE_SPACE), "--tune-range hyperparameter")
        if not 0 < lo < hi:
            raise SpecError(f"--tune-range {name}={lo}:{hi} must satisfy 0 < low < high "
                            "(the search is log-uniform)")
    if spec.tune and spec.mode != "train":
        raise SpecError("--tune needs --mode train (probes at init have no learning rate)")
    if spec.tune and spec.train.val_fraction <= 0:
        raise SpecError("--tune selects on the validation split: --val-fraction must be > 0 "
                        f"(got {spec.train.val_fraction})")


def resolve_measure(spec: AblationSpec) -> AblationSpec:
    """``spec`` with ``measure`` resolved: None becomes the registry's default set
    (train mode) or none (probe mode), so spec.json records the names that ran."""
    if spec.measure is not None:
        return spec
    from . import measurements
    names = tuple(measurements.defaults()) if spec.mode == "train" else ()
    return dataclasses.replace(spec, measure=names)


def validate_measure(spec: AblationSpec) -> None:
    from .weights import KEEP_CHOICES
    _choices([spec.keep_weights], KEEP_CHOICES, "--keep-weights value")
    if not spec.measure:
        return
    if spec.mode != "train":
        raise SpecError(f"--measure {','.join(spec.measure)} needs --mode train (a probe "
                        "keeps no networks to measure); leave --measure out or use --measure none")
    check_measurements(spec.measure)


def check_measurements(names) -> None:
    """SpecError for an unknown or repeated measurement name (``--measure``)."""
    if len(set(names)) != len(names):
        raise SpecError(f"--measure names a measurement twice: {','.join(names)}")
    from . import measurements
    _choices(names, tuple(measurements.names()), "measurement")


def validate_train(t: TrainSettings) -> None:
    _choices([t.dataset], DATASET_CHOICES, "dataset")
    _choices([t.device], DEVICE_CHOICES, "device")
    _choices([t.precision], PRECISION_CHOICES, "precision")
    _choices([t.decay], DECAY_CHOICES, "--decay value")
    _choices([t.pad_mode], PAD_CHOICES, "--pad-mode value")
    _choices([t.normalize], NORMALIZE_CHOICES, "--normalize value")
    if t.constant_warmup_steps < 0 or t.constant_warmup_depth < 0:
        raise SpecError(f"constant warmup steps and depth must be >= 0 (got "
                        f"{t.constant_warmup_steps}, {t.constant_warmup_depth})")
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
    if not 0 <= t.warmup_epochs < t.epochs:
        raise SpecError(f"--warmup-epochs must be in 0..{t.epochs - 1} (less than --epochs "
                        f"{t.epochs}; got {t.warmup_epochs})")
    if t.stats_every < 0:
        raise SpecError(f"--stats-every must be >= 1, or 0 for no statistics (got "
                        f"{t.stats_every})")
    if t.threads is not None and t.threads < 1:
        raise SpecError(f"--threads must be >= 1 (got {t.threads})")
    ms = t.milestones
    if list(ms) != sorted(set(ms)) or any(m < 1 for m in ms):
        raise SpecError(f"--milestones must be increasing epochs >= 1 (got {','.join(map(str, ms))})")
    if ms and ms[-1] >= t.epochs:
        raise SpecError(f"--milestones {','.join(map(str, ms))} must be < --epochs {t.epochs}; "
                        f"valid milestones are 1..{t.epochs - 1}")
    if "://" in t.data_root:  # checked even where unused: a typo is named, not ignored
        from .storage import check_scheme
        check_scheme(t.data_root, "--data-root")
    elif os.path.exists(t.data_root) and not os.path.isdir(t.data_root):
        raise SpecError(f"--data-root {t.data_root} is a file, not a directory")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def spec_from_dict(d: dict) -> AblationSpec:
    """Inverse of ``dataclasses.asdict`` (spec.json stores lists where the spec has tuples)."""
    fields = {k: _tuples(v) for k, v in d.items() if k != "train"}
    known = set(AblationSpec.__dataclass_fields__)
    # a sweep recorded before measurements existed measured and kept nothing
    fields.setdefault("measure", ())
    fields.setdefault("keep_weights", "none")
    # a sweep recorded before recipes existed trained with today's seed recipe (the
    # TrainSettings defaults fill its missing fields: decay all, reflect, channel)
    fields.setdefault("recipe", "seed")
    train = TrainSettings(**{k: _tuples(v) for k, v in d.get("train", {}).items()
                             if k in TrainSettings.__dataclass_fields__})
    return AblationSpec(**{k: v for k, v in fields.items() if k in known}, train=train)


def spec_to_dict(spec: AblationSpec) -> dict:
    """``dataclasses.asdict(spec)`` with the keys in ``RECORD_ORDER``: spec.json's "spec"."""
    d = dataclasses.asdict(spec)
    return {k: d[k] for k in sorted(d, key=RECORD_ORDER.index)}
