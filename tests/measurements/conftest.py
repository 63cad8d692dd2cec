"""Shared pieces of the measurement tests, for generated frames: the key columns a
measurement's rows get when they are merged (``ablations.results.factor_columns()`` +
``when``), and the cells of a sweep that crosses facets and hues."""
from __future__ import annotations

import pytest
from hypothesis import strategies as st

from ablations import factors


def trial_keys(family: str, depth: int, residual: bool, seed: int, when: str = "final",
               **levels: str) -> dict:
    """The merged key columns of one trial: trial_id, family, model, depth, every factor
    column (residual as its bool; n/a where a factor does not apply), seed, when.
    ``levels``: non-default factor levels, e.g. ``norm="none"``."""
    requested = {"residual": ("residual" if residual else "plain",),
                 **{k: (v,) for k, v in levels.items()}}
    lv = factors.variants(family, requested)[0]
    tid = "-".join([f"{family}-{depth}", *factors.id_parts(family, lv), f"s{seed}"])
    return {"trial_id": tid, "family": family, "model": family, "depth": depth,
            **factors.columns(lv), "seed": seed, "when": when}


@pytest.fixture(scope="session")
def keys():
    """``trial_keys`` (a session fixture, so hypothesis tests may use it)."""
    return trial_keys


@st.composite
def crossed(draw, family):
    """(residual, factor levels) of the cells of a sweep: plain and/or residual, each at
    one or two norm levels (facets), residual at one or two branch scales (hues)."""
    norms = draw(st.lists(st.sampled_from(["batch", "none"] if family == "resnet"
                                          else ["none", "layer"]), min_size=1, max_size=2,
                          unique=True))
    scales = draw(st.lists(st.sampled_from(["one", "zero"]), min_size=1, max_size=2,
                           unique=True))
    residual = draw(st.sampled_from([[True], [False], [True, False]]))
    return [(r, dict(norm=n, **({"branch_scale": b} if r else {})))
            for r in residual for n in norms for b in (scales if r else scales[:1])]


@pytest.fixture(scope="session")
def crossed_cells():
    """The ``crossed`` strategy (a session fixture, so hypothesis tests may use it)."""
    return crossed
