"""Imported by each Ray worker process of a local sweep as Ray starts it, before the
worker takes any work (Ray's ``preload_python_modules``; see ``cluster.connect``).

A trial's first seconds in a fresh worker would otherwise go to importing Ray Tune's
trainable wrapper, torch and the trainer (bench/README.md). Ray starts these
workers as the driver connects, so the imports overlap what the driver does before
the Tune run. ``runner.TuneReporter.where`` records for every trial whether its
worker was warmed this way (``worker_preloaded``).
"""
try:
    import ray.tune.trainable.function_trainable  # noqa: F401  what Tune's actor unpickles

    from . import runner, train, trial  # noqa: F401  torch, pandas, models, the trainer
    PRELOADED = True
except Exception:  # an optimization only: a worker must never fail to start because of it
    PRELOADED = False
