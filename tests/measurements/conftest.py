"""Shared pieces of the measurement tests. For generated frames: the key columns a
measurement's rows get when they are merged (``ablations.results.factor_columns()`` +
``when``), and the cells of a sweep that crosses facets and hues. For tiny networks: a
model whose batch norms have left their initial statistics, and the ``MeasureData`` of a
batch. Torch is imported inside the helpers that need it."""
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


def settle(model, x):
    """``model`` in eval mode with non-trivial BN running statistics (three train-mode
    forwards of ``x * 2 + 0.5``, seeded): at their defaults (mean 0, variance 1) eval-mode
    BN is nearly the identity, and a test could pass that reads the wrong statistics."""
    import torch
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 2 + 0.5)
    return model.eval()


def batch_data(x):
    """``MeasureData`` with the batch ``x`` as both the training and the test split, no
    labels (for measurements that read only the test images)."""
    from ablations.measurements import MeasureData
    return MeasureData(x, None, x, None)


@pytest.fixture(scope="session")
def settled():
    """``settle`` (a session fixture, so hypothesis tests may use it)."""
    return settle


@pytest.fixture(scope="session")
def measure_data():
    """``batch_data`` (a session fixture, so hypothesis tests may use it)."""
    return batch_data


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
