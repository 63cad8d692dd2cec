"""A trial's status: the one type every module reads and writes.

``Status`` is a ``StrEnum``, so a status compares equal to its string and is stored as
that string (results columns, spec and row JSON, W&B), as it always was:

* ``completed``: trained to the end with a finite loss;
* ``diverged``: stopped when the loss became non-finite or exploded
  (``ablations.evaluation.diverged_reason``);
* ``error``: raised, or left no result;
* ``pending``: planned and not finished yet (a sweep still running, or interrupted).
"""
from __future__ import annotations

import enum


class Status(enum.StrEnum):
    COMPLETED = "completed"
    DIVERGED = "diverged"
    ERROR = "error"
    PENDING = "pending"


STATUSES = tuple(Status)
FINISHED = (Status.COMPLETED, Status.DIVERGED)  # ran to its end: measurable, kept
