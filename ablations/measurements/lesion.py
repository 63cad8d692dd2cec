"""Lesion study (Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles
of relatively shallow networks", arXiv 1605.06431): the test error of a trained network
with units deleted at test time.

Deleting a unit replaces it by what is left without its branch (``models.units.lesioned``):
a residual block becomes its shortcut (``relu(shortcut(x))`` for a post-activation
ResNet block, ``x`` for an MLP block), a plain block the identity where its input and
output shapes match. A plain block that changes shape (a stage's first block, an MLP's
projection layer) cannot be deleted: it gets a row with ``deletable=False`` and NaN
error, so it is named rather than silently missing. Rows (``kind``):

* ``intact`` (k=0): the network as trained;
* ``single`` (k=1): each unit deleted on its own (Veit et al. Fig. 3 and 4);
* ``random``: k deletable units deleted at once, k = 1..n (n deletable units; 12 values
  of k evenly spread over 1..n, both ends included, when n > 12), ``DRAWS`` sets per k
  drawn from ``seed_for(trial.seed, "lesion")`` (Veit et al. Fig. 5).

Error = fraction of the test split misclassified, BN in eval mode (running statistics).
Batched and cached: one intact forward per chunk of ``CHUNK`` test images keeps the input
of every unit, and a lesion whose first deleted unit is i resumes from the cached input of
unit i (``units.forward_units(..., start=i, h=cache[i])``); identical sets (all draws at
k = n) are evaluated once. Conv inputs go channels-last (faster oneDNN kernels on CPU;
the model is not touched).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablations.measurements import Measurement, register, seed_for

CHUNK = 128     # test images per forward (the cache holds every unit's input for one chunk):
                # on CPU a small chunk stays in cache, 2-3x faster than 512 here (bench/)
DRAWS = 3       # random sets per k
MAX_K = 12      # most values of k in the random lesions
COLUMNS = ["kind", "k", "draw", "unit", "unit_index", "deletable", "error", "intact_error",
           "images"]


# --------------------------------------------------------------------------- measurement

def k_values(n: int) -> list[int]:
    """The numbers of units deleted at once: 1..n, or ``MAX_K`` values evenly spread over
    1..n (1 and n included) when n > ``MAX_K``."""
    if n <= MAX_K:
        return list(range(1, n + 1))
    return [int(round(v)) for v in np.linspace(1, n, MAX_K)]  # distinct: step > 1


def random_sets(candidates: list[int], seed: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(k, draw, unit indices)`` for every k of ``k_values`` and ``DRAWS`` draws: k of
    ``candidates`` (deletable unit indices) without replacement, sorted; deterministic
    given ``seed``."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in k_values(len(candidates)):
        for draw in range(DRAWS):
            pick = torch.randperm(len(candidates), generator=g)[:k].tolist()
            out.append((k, draw, tuple(sorted(candidates[j] for j in pick))))
    return out


def lesioned_logits(model, x, sets) -> dict:
    """The logits of ``x`` with each set of unit indices deleted (``frozenset()``: the
    intact network), keyed by frozenset. One intact forward caches the input of every
    unit; a lesion whose first deleted unit is i resumes at unit i from that cache, so no
    prefix is computed twice. Equals ``units.forward_units(model, x, deleted=s)``."""
    from models import units
    cache = [model.stem(x)]  # cache[i]: the input of unit i; cache[-1]: the last output
    for _, unit in model.units():
        cache.append(unit(cache[-1]))
    out = {}
    for s in map(frozenset, sets):
        if s in out:
            continue
        out[s] = (model.head(cache[-1]) if not s else
                  units.forward_units(model, x, deleted=s, start=min(s), h=cache[min(s)]))
    return out


def _fast_layout(x):
    import torch
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def measure(model, data, trial) -> pd.DataFrame:
    """Test error of ``model`` intact, with each unit deleted, and with k random deletable
    units deleted (see the module docstring); rows of ``COLUMNS``."""
    import torch
    from models import units
    named = model.units()
    ok = [units.deletable(u) for _, u in named]
    candidates = [i for i, d in enumerate(ok) if d]
    draws = random_sets(candidates, seed_for(trial.seed, "lesion"))
    wrong = dict.fromkeys([frozenset()] + [frozenset([i]) for i in candidates]
                          + [frozenset(s) for *_, s in draws], 0)
    n = len(data.test_y)
    with torch.inference_mode():
        for a in range(0, n, CHUNK):
            y = data.test_y[a:a + CHUNK]
            for s, logits in lesioned_logits(model, _fast_layout(data.test_x[a:a + CHUNK]),
                                             wrong).items():
                wrong[s] += int((logits.argmax(1) != y).sum())
    err = {s: w / n if n else math.nan for s, w in wrong.items()}
    intact = err[frozenset()]

    def row(kind, k, draw, unit, index, deletable, error):
        return dict(kind=kind, k=k, draw=draw, unit=unit, unit_index=index,
                    deletable=deletable, error=error, intact_error=intact, images=n)
    rows = [row("intact", 0, 0, "", -1, True, intact)]
    rows += [row("single", 1, 0, name, i, ok[i], err[frozenset([i])] if ok[i] else math.nan)
             for i, (name, _) in enumerate(named)]
    rows += [row("random", k, draw, ",".join(named[i][0] for i in s), -1, True, err[frozenset(s)])
             for k, draw, s in draws]
    return pd.DataFrame(rows, columns=COLUMNS)


register(Measurement(
    name="lesion", when=("final",), cost="moderate", fn=measure, default=True,
    summary="test error after deleting each unit and k random units (Veit et al. 2016)",
))
