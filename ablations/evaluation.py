"""How a trial's training is judged: loss and accuracy on a split (``evaluate``),
whether an epoch diverged (``diverged_reason``), and the final and best values of
its epochs (``summarize``). Used by ``ablations.train``; ``diverged_reason`` is the
one rule for trials and tuning samples alike.
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from .device import autocast

# Evaluation batch: on a CPU, 256 images keep a SmallResNet's activations in cache and
# in the kept heap (faster than 1000: bench/README.md); a GPU wants large batches.
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 1000


# A trial has diverged when an epoch's mean training loss exceeds this many times its
# reference loss (see diverged_reason).
EXPLODE_FACTOR = 10.0


def diverged_reason(train_loss: float, init_loss: float | None, num_classes: int
                    ) -> str | None:
    """Why a trial whose epoch ended with mean training loss ``train_loss`` has diverged,
    or None. This is the one rule for every trial and every tuning sample (a diverged
    sample scores like any diverged one: ``ablations.tuning``).

    - ``"non-finite"``: the loss is NaN or inf.
    - ``"exploded"``: the loss exceeds ``EXPLODE_FACTOR`` x max(``init_loss``,
      ln(``num_classes``)). ``init_loss`` is the loss on the first training batch before
      the first step; ln(``num_classes``) is the loss of a uniform guess (chance) and
      stands in when ``init_loss`` is unknown or non-finite. A network that learns stays
      near or below both, and a deep network that starts far above chance is judged
      against its own start. A finite explosion is still divergence: a residual MLP-20
      on synthetic data ended its first epoch at loss 6e4..8e5 (chance: ln 10 = 2.30),
      and it was counted as completed before this rule.
    """
    if not math.isfinite(train_loss):
        return "non-finite"
    reference = math.log(num_classes)
    if init_loss is not None and math.isfinite(init_loss):
        reference = max(reference, init_loss)
    return "exploded" if train_loss > EXPLODE_FACTOR * reference else None


@torch.inference_mode()
def evaluate(model, x, y, device, precision) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y); NaN for an empty split."""
    if len(y) == 0:
        return math.nan, math.nan
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batch = EVAL_BATCH.get(torch.device(device).type, EVAL_BATCH_DEFAULT)
    for k in range(0, len(y), batch):
        xb, yb = x[k:k + batch], y[k:k + batch]
        with autocast(device, precision):
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return loss.item() / len(y), correct.item() / len(y)


def summarize(epochs: pd.DataFrame) -> dict:
    """Final and best values; "best" epoch is chosen on validation accuracy only."""
    if epochs.empty or "test_acc" not in epochs:
        return {}
    done = epochs.dropna(subset=["test_acc"])
    if done.empty:
        return {}
    last = done.iloc[-1]
    out = {f"final_{k}": float(last[k]) for k in
           ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")}
    out["epochs_run"] = int(epochs["epoch"].max())
    out["best_test_acc"] = float(done["test_acc"].max())  # reported, never used to select
    out["best_test_epoch"] = int(done.loc[done["test_acc"].idxmax(), "epoch"])
    if done["val_acc"].notna().any():
        best = done.loc[done["val_acc"].idxmax()]
        out.update(best_val_acc=float(best["val_acc"]), best_val_epoch=int(best["epoch"]),
                   test_acc_at_best_val=float(best["test_acc"]))
    out["mean_train_images_per_s"] = float(epochs["train_images_per_s"].mean())
    return out
