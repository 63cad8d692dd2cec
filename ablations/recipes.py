"""Named training recipes: what a sweep trains with where a flag is not typed.

A recipe is a value: ``TrainSettings`` overrides (learning rate, momentum, weight decay
and which parameters it decays, batch, schedule length and milestones, data
preprocessing) and factor levels for the study (``branch_scale="zero"``). ``sweep.py
--recipe NAME`` picks one. Every typed flag overrides the recipe's value for it. A factor
level that a recipe supplies acts exactly as if its flag had been typed: the same plan,
trial ids (``...-scale=zero-s0``) and results columns. A typed factor flag replaces it.

``sweep.py`` records the resolved settings and the recipe's name in spec.json. Each train
row records ``recipe``, ``steps`` (optimizer steps taken) and ``schedule_steps`` (the
recipe's full schedule in steps for that training set), so a report can say how much of
the recipe a sweep trained.

When ``--recipe`` is not given, ``default_name`` picks the recipe:
- ``--models`` presets: ``seed``, always. The replicated article's networks train exactly as
  they did before recipes existed (bit-identical weights, tested).
- ``--mode probe``: ``seed``. A probe measures networks at initialisation, and
  ``default``'s branch scalars start at 0. That makes every residual branch's weight
  gradient exactly 0 at init, so there would be nothing to probe.
- family studies (``--families/--depths``) in train mode: ``default``.

Adding a recipe = one ``register(Recipe(...))`` here; ``--recipe`` and its help list it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .spec import SpecError, TrainSettings

# He et al. 2016 (arXiv 1512.03385, sec. 4.2) trained on 45k CIFAR-10 images (5k held
# out), batch 128, for 64k iterations, with the lr divided by 10 at 32k and 48k. Their
# ResNet-110 starts at lr 0.01 "until the training error is below 80% (about 400
# iterations)", then returns to 0.1.
HE_TRAIN_IMAGES = 45_000
HE_BATCH = 128
HE_ITERATIONS = 64_000
HE_WARMUP_ITERATIONS = 400
HE_WARMUP_DEPTH = 110
# The trainer multiplies the lr by this during a recipe's constant warmup (0.01 / 0.1).
CONSTANT_WARMUP_FACTOR = 0.1


@dataclass(frozen=True)
class Recipe:
    """One named recipe. ``train``: TrainSettings fields it sets (the fields it leaves
    out keep TrainSettings' defaults, which are ``seed``'s). ``levels``: factor levels it
    supplies (only to sweeps with a family the factor applies to)."""
    name: str
    summary: str
    train: tuple[tuple[str, Any], ...] = ()
    levels: tuple[tuple[str, str], ...] = ()
    # levels for one family only: (("mlp", (("norm", "layer"), ("block", "pre"))),)
    family_levels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # Full length. With ``iterations`` set, the length is that many steps at
    # ``reference_images`` training images and batch ``reference_batch``, scaled to the
    # sweep's training set and batch (so the epochs stay the same). Otherwise it is
    # ``epochs`` epochs.
    epochs: int = 30
    iterations: int | None = None
    reference_images: int = HE_TRAIN_IMAGES
    reference_batch: int = HE_BATCH
    # lr x0.1 after these fractions (numerator, denominator) of the length. Integer
    # pairs keep the seed's round(epochs * 5 / 6) exact.
    drops: tuple[tuple[int, int], ...] = ((1, 2), (5, 6))
    # Steps at lr x CONSTANT_WARMUP_FACTOR at the start, for trials of depth >=
    # ``warmup_depth``, in reference iterations (scaled like ``iterations``). 0: none.
    warmup_iterations: int = 0
    warmup_depth: int = 0
    # Which cells the recipe can train: families (None: any), and whether depths must be
    # 6n+2 (three stages of n blocks each: the CIFAR ResNets of He et al.).
    families: tuple[str, ...] | None = None
    six_n_plus_2: bool = False

    def scale(self, n_train: int, batch_size: int) -> float:
        """Steps here per reference step: the same epochs on ``n_train`` images at
        ``batch_size``."""
        return n_train / self.reference_images * self.reference_batch / batch_size

    def schedule_steps(self, n_train: int, batch_size: int) -> int:
        """The recipe's full schedule, in optimizer steps, for this training set."""
        if self.iterations is not None:
            return max(1, round(self.iterations * self.scale(n_train, batch_size)))
        return self.epochs * math.ceil(n_train / batch_size)

    def full_epochs(self, n_train: int, batch_size: int) -> float:
        """The full schedule in epochs (a fraction where it is set in iterations)."""
        if self.iterations is None:
            return self.epochs
        return self.schedule_steps(n_train, batch_size) / math.ceil(n_train / batch_size)

    def schedule(self, n_train: int, batch_size: int, epochs: int | None = None
                 ) -> tuple[int, tuple[int, ...]]:
        """(epochs, milestones). ``epochs`` is a typed ``--epochs``; None means the
        recipe's full length. The trainer counts in epochs, so a length set in
        iterations rounds to whole epochs (within half an epoch of the iterations), with
        milestones at the drops' iterations rounded to epochs. A typed ``--epochs``
        scales the drops to its length instead."""
        full = self.full_epochs(n_train, batch_size)
        n = epochs if epochs is not None else max(1, round(full))
        basis = full if epochs is None and self.iterations is not None else n
        return n, tuple(sorted({m for m in (round(basis * a / b) for a, b in self.drops)
                                if 1 <= m < n}))

    def warmup_steps(self, n_train: int, batch_size: int) -> int:
        if not self.warmup_iterations:
            return 0
        return math.ceil(self.warmup_iterations * self.scale(n_train, batch_size))

    def settings(self, base: TrainSettings, typed: dict[str, Any]) -> TrainSettings:
        """``base`` (the flags that no recipe sets) with the recipe's values, where
        ``typed`` (flags given, by TrainSettings field) does not override them. The
        schedule is computed for the resulting training set and batch."""
        t = replace(base, **{**dict(self.train), **{k: v for k, v in typed.items()
                                                    if k not in ("epochs", "milestones")}})
        # at least 1: a bad --subset/--batch-size is reported by validate, not here
        n_train, batch = max(1, t.train_images), max(1, t.batch_size)
        epochs, milestones = self.schedule(n_train, batch, typed.get("epochs"))
        if typed.get("milestones") is not None:
            milestones = tuple(typed["milestones"])
        return replace(t, epochs=epochs, milestones=milestones,
                       constant_warmup_steps=self.warmup_steps(n_train, batch),
                       constant_warmup_depth=self.warmup_depth)

    def factor_levels(self, families) -> dict[str, str]:
        """The levels this recipe supplies to a sweep of ``families``. A factor that
        applies to none of them is left out: ``--shortcut`` means nothing to an MLP."""
        from . import factors
        return {name: lv for name, lv in self.levels
                if set(factors.get(name).families) & set(families)}

    def family_factor_levels(self, families, typed=()) -> dict[str, dict[str, str]]:
        """Per family of the sweep, the levels this recipe sets for it alone, without the
        factors in ``typed`` (a typed flag sets its factor for every family)."""
        return {fam: {n: lv for n, lv in levels if n not in typed}
                for fam, levels in self.family_levels if fam in families}

    def check_cells(self, cells) -> None:
        """SpecError for a (family, depth) this recipe cannot train."""
        for family, depth in cells:
            if self.families is not None and family not in self.families:
                raise SpecError(f"--recipe {self.name} trains the {', '.join(self.families)} "
                                f"family only; got {family} (use --families "
                                f"{','.join(self.families)})")
            if self.six_n_plus_2 and (depth < 8 or (depth - 2) % 6):
                raise SpecError(f"--recipe {self.name}: {family} depth {depth} is not 6n+2; "
                                f"valid depths: {', '.join(map(str, range(8, 62, 6)))}, ..., "
                                "110, ... (He et al. 2016: 20, 32, 44, 56, 110)")

    def shown(self, field: str) -> str:
        """This recipe's value of TrainSettings ``field`` or of the schedule, for --help."""
        if field == "epochs":
            return f"~{HE_ITERATIONS // 1000}k iterations" if self.iterations else str(self.epochs)
        if field == "milestones":
            frac = ",".join(f"{a}/{b}" for a, b in self.drops)
            return f"{frac} of the epochs"
        value = dict(self.train).get(field, TrainSettings.__dataclass_fields__[field].default)
        return f"{value:g}" if isinstance(value, float) else str(value)


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in _REGISTRY:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Recipe:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown recipe {name!r}; valid recipes: {', '.join(_REGISTRY)}") \
            from None


def default_name(presets: bool, mode: str) -> str:
    """The recipe used when ``--recipe`` is not given (see the module docstring)."""
    return "seed" if presets or mode == "probe" else "default"


# --------------------------------------------------------------------------- the recipes

# seed: the replicated article's recipe, exactly what sweep.py trained before recipes existed:
# SGD lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter, batch 128, 30 epochs,
# lr x0.1 after epochs 15 and 25 (1/2 and 5/6 of any --epochs), reflect-padded crops,
# per-channel standardisation, every factor at its family default. These are
# TrainSettings' defaults, so it overrides nothing.
register(Recipe(
    name="seed",
    summary="the replicated article's: lr 0.1, momentum 0.9, wd 5e-4 on all parameters, "
            "batch 128, 30 epochs, x0.1 after 1/2 and 5/6"))

# default: the recipe for family studies, chosen by measurement (docs/studies/default-recipe.md: 3 seeds,
# 10 epochs on the CIFAR-10 subset). Under seed's recipe every residual MLP diverged in
# epoch 1 and residual ResNet-56 degraded more with depth than plain. Changes from seed:
# - Residual cells use SkipInit: each branch times a learnable scalar that starts at 0
#   (De & Smith 2020, arXiv 2002.10444), so every residual network starts as its
#   shortcut path and cannot start above chance.
# - MLPs are pre-activation with LayerNorm (x + W relu(LN(x))): without a norm, or with
#   a post-activation LayerNorm, residual MLPs diverged at lr 0.1 (measured), whatever
#   the branch scale or a 1-epoch warmup.
# - Weight decay applies to weight matrices only. Decaying the norm gains/biases and the
#   branch scalars would pull them toward 0, and a SkipInit scalar at 0 removes its
#   branch (the common practice, e.g. Goyal et al. 2017, arXiv 1706.02677, sec. 5.1).
register(Recipe(
    name="default",
    summary="seed's, with SkipInit residual branches (--branch-scale zero), pre-activation "
            "LayerNorm MLPs (mlp: --norm layer --block pre) and weight decay on weight "
            "matrices only (--decay weights)",
    train=(("decay", "weights"),),
    levels=(("branch_scale", "zero"),),
    family_levels=(("mlp", (("norm", "layer"), ("block", "pre"))),)))

# he2016: He et al. 2016 (arXiv 1512.03385) sec. 4.2, the CIFAR-10 ResNets (6n+2 layers).
# - Network: option A shortcuts (zero-padded identity) and branches times 1.
# - Optimizer: SGD with momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 /10 at 32k and
#   48k iterations, stopped at 64k, scaled to this training set and batch. Decay is on
#   every parameter: the paper does not single any parameter out. (Their Torch
#   reproduction, fb.resnet.torch, also decays all parameters.)
# - Warmup: at depth >= 110, lr 0.01 for the first 400 iterations (scaled), the paper's
#   "about 400 iterations" until the training error falls below 80%. A fixed step count
#   is used, not the error test, so a trial does not depend on when an epoch ends.
# - Data: 4-pixel zero padding, a random 32x32 crop and a horizontal flip. Inputs are the
#   [0, 1] pixels minus the training set's mean image, with no division by a std. The
#   padding is zero in the mean-subtracted input; the paper does not say which.
register(Recipe(
    name="he2016",
    summary="He et al. 2016 CIFAR: resnet 6n+2 only, option A shortcuts, lr 0.1 /10 at "
            "32k, 48k of 64k iterations (scaled to the training set), wd 1e-4, zero-pad crops, "
            "mean image subtracted",
    train=(("lr", 0.1), ("momentum", 0.9), ("weight_decay", 1e-4), ("batch_size", HE_BATCH),
           ("decay", "all"), ("warmup_epochs", 0), ("pad_mode", "zero"),
           ("normalize", "pixel-mean")),
    levels=(("shortcut", "pad"), ("branch_scale", "one")),
    iterations=HE_ITERATIONS, drops=((1, 2), (3, 4)),
    warmup_iterations=HE_WARMUP_ITERATIONS, warmup_depth=HE_WARMUP_DEPTH,
    families=("resnet",), six_n_plus_2=True))
