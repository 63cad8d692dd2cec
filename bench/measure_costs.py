"""Wall time of every registered measurement per trial (issue 15: "lesion and shattering
on a ResNet-56 in seconds, a 41-point 1-D landscape in under a minute").

Each measurement runs through the registry, ``ablations.measurements.get(name).fn(model,
data, trial)``, exactly as a worker calls it, on a randomly initialized network in eval
mode (the cost does not depend on the weights) with random CIFAR-shaped data: the test
split of ../shared/data/cifar10-subset (1017 images) and a training split to draw the
landscape's evaluation subset from. A measurement module that is not written yet is
skipped with a note. Prints one Markdown table: seconds per network, the best of
``--repeats`` runs (this 2-core machine is shared; the minimum is the least disturbed),
and in brackets that time over one forward pass of the intact network over the test
split: a ratio that the machine's load changes much less than the time.

usage: python bench/measure_costs.py [--nets resnet-20,resnet-56,mlp-34] [--measure lesion,...]
                                     [--threads 2] [--test-images 1017] [--repeats 1]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ablations import measurements  # noqa: E402
from ablations.measurements import MeasureData  # noqa: E402
from ablations.plan import TrialConfig  # noqa: E402
from models import create_model, get_config  # noqa: E402

NETS = {"resnet-20": ("resnet", 20, dict(base_width=16)),
        "resnet-56": ("resnet", 56, dict(base_width=16)),
        "mlp-34": ("mlp", 34, dict(width=256, in_features=3 * 32 * 32))}


def available() -> list[str]:
    """The registered measurements, importing each built-in module that exists."""
    for mod in measurements.BUILTINS:
        try:
            importlib.import_module(f"{measurements.__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{measurements.__name__}.{mod}":
                raise
            print(f"skipped: ablations/measurements/{mod}.py is not there yet")
    try:
        return measurements.names()
    except ModuleNotFoundError:  # load_builtins stops at the first missing module, once
        return measurements.names()


def stand_in(net: str, seed: int = 0):
    family, depth, kw = NETS[net]
    torch.manual_seed(seed)
    model = create_model(family, depth=depth, **kw).eval()
    cfg = get_config(family, depth=depth, **kw)
    return model, TrialConfig(f"{net}-residual-s{seed}", family, family, depth, True, seed, cfg)


def fake_data(test_images: int, train_images: int) -> MeasureData:
    g = torch.Generator().manual_seed(0)
    x = lambda n: torch.randn(n, 3, 32, 32, generator=g)  # noqa: E731
    y = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return MeasureData(x(train_images), y(train_images), x(test_images), y(test_images))


def forward_seconds(model, x, repeats: int) -> float:
    """One inference pass of the intact network over ``x`` (chunks of 128, channels-last
    images, as the measurements run it): the unit the costs are also given in, since
    a ratio survives the load of a shared machine better than a time."""
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for a in range(0, len(x), 128):
                model(x[a:a + 128].contiguous(memory_format=torch.channels_last))
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--measure", default="", help="comma list (default: every registered one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-images", type=int, default=1017)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.measure.split(",") if n] or available()
    nets = args.nets.split(",")
    data = fake_data(args.test_images, args.train_images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.test_images} test images, best of {args.repeats}")
    print("| measurement | cost | " + " | ".join(f"{n}: s (x forward)" for n in nets)
          + " | rows |")
    print("| --- | --- | " + " | ".join("---:" for _ in nets) + " | ---: |")
    fwd = {net: forward_seconds(stand_in(net)[0], data.test_x, args.repeats) for net in nets}
    print("| forward of the test split | | " + " | ".join(f"{fwd[n]:.2f} (1)" for n in nets)
          + " | |", flush=True)
    for name in names:
        m = measurements.get(name)
        cells, rows = [], 0
        for net in nets:
            model, trial = stand_in(net)
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                rows = len(m.fn(model, data, trial))
                best = min(best, time.perf_counter() - t0)
            cells.append(f"{best:.1f} ({best / fwd[net]:.0f})")
        print(f"| {name} | {m.cost} | " + " | ".join(cells) + f" | {rows} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
