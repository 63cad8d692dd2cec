"""Run the plain-loop yardstick ``../shared/bench/plain_loop.py``, unmodified, on a CUDA GPU.

The loop is written for the CPU: it never moves anything to a device. This runner
sets ``torch.set_default_device(DEVICE)`` and then runs that very file with
``runpy.run_path`` (its own ``sys.argv``), so every tensor the loop makes with a
factory (the data via ``torch.tensor``, the model's parameters, ``torch.rand`` in its
augmentation, ...) is made on the GPU. Its own lines (per epoch, ``total``,
``train_images_per_s``, ``final_test_acc``) print as they always do. Afterwards this
runner checks where the loop's model and data really were and prints one line
saying so (exit 1 if they were not on DEVICE).

What differs from the loop on the CPU, and why:
- Shuffling. The DataLoader's ``RandomSampler`` draws its order with
  ``torch.randperm(n, generator=<a CPU generator>)``; under a CUDA default device
  ``randperm`` is made on CUDA and raises "Expected a 'cuda' device type for generator
  but found 'cpu'" (pytorch/pytorch#118084 and many repeats). Only a DataLoader asked
  to ``shuffle`` is changed: its sampler is the same ``RandomSampler`` run under
  ``torch.device("cpu")``, seeded from the CPU generator exactly as on the CPU, and
  its indices are Python ints either way. Batches are then gathered by the loop's
  own ``TensorDataset`` indexing and ``default_collate``, on the GPU.
- Random numbers. The model's initialization, the flips (``torch.rand``) and the
  loader's base seed draw from the CUDA generator (seeded by the loop's own
  ``torch.manual_seed(0)``) instead of the CPU one: same distributions, other draws,
  so the accuracies are not bit-comparable with a CPU run.
- Arithmetic. fp32 as on the CPU, with PyTorch's CUDA defaults: cuDNN may use TF32
  for convolutions (``torch.backends.cudnn.allow_tf32``, printed below), and cuDNN
  picks its own kernels (``benchmark`` off). The trainer runs under the same defaults.
- Overhead. A default device is a Python ``TorchFunctionMode``: every Python call
  into torch pays for it (the documented cost of ``set_default_device``). Measured on
  the 2-core CPU machine: 3.4 vs 1.7 us per ``torch.add`` call, and ~850 torch calls
  per training step of this loop (128 per-image dataset lookups, forward, optimizer,
  augmentation), i.e. roughly 1.5 ms per step there. On a GPU, where a step of this
  small network is bound by launches, that makes the loop somewhat slower than a hand
  port that passes ``device=`` everywhere would be: read it as a lower bound.
- ``THREADS`` only sets CPU threads, as in the loop.

With ``--device cpu`` nothing is moved and the shuffle is bit-identical to the
loop's own (the CPU self-test of bench/gpu_check.sh uses this).

usage: python bench/plain_loop_cuda.py [--device cuda|cpu] [--script PATH] DATA_DIR EPOCHS [THREADS]
  DATA_DIR holds data_batch_1..5 and test_batch (e.g. ../shared/data/cifar10-subset/cifar-10-batches-py)
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP = os.path.join(ROOT, "..", "shared", "bench", "plain_loop.py")
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def host_shuffled_loader(torch):
    """A ``DataLoader`` whose ``shuffle=True`` order is computed on the CPU (see above)."""
    base = torch.utils.data.DataLoader

    class HostRandomSampler(torch.utils.data.RandomSampler):
        def __iter__(self):
            # the whole epoch's order at once: a generator would hold the CPU device
            # context open across yields, i.e. over the loop's own training step
            with torch.device("cpu"):
                order = list(super().__iter__())
            return iter(order)

    class HostShuffleLoader(base):
        def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, *args, **kwargs):
            if shuffle and sampler is None:
                sampler, shuffle = HostRandomSampler(dataset), None
            super().__init__(dataset, batch_size, shuffle, sampler, *args, **kwargs)

    return HostShuffleLoader, HostRandomSampler


def placement(namespace: dict, device) -> tuple[bool, str]:
    """Whether the loop's model and training data were on ``device``, in words."""
    model, xtr = namespace.get("model"), namespace.get("xtr")
    if model is None or xtr is None:
        return False, "the loop defines no `model` or `xtr` (was plain_loop.py changed?)"
    params = {str(p.device) for p in model.parameters()}
    ok = all(p.device.type == device.type for p in model.parameters()) \
        and xtr.device.type == device.type
    return ok, f"model parameters on {','.join(sorted(params))}, training images on {xtr.device}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="plain_loop_cuda.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--script", default=LOOP, help="the loop to run (default: %(default)s)")
    ap.add_argument("data_dir")
    ap.add_argument("epochs", type=int)
    ap.add_argument("threads", type=int, nargs="?")
    a = ap.parse_args(argv)
    if not os.path.isfile(a.script):
        print(f"plain_loop_cuda.py: error: no loop script at {a.script} (--script PATH)",
              file=sys.stderr)
        return 2
    missing = [f for f in FILES if not os.path.isfile(os.path.join(a.data_dir, f))]
    if missing:
        print(f"plain_loop_cuda.py: error: {a.data_dir} lacks {', '.join(missing)} (give the "
              "folder holding data_batch_1..5 and test_batch)", file=sys.stderr)
        return 2
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("plain_loop_cuda.py: error: --device cuda but torch sees no CUDA device; valid "
              "here: --device cpu", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    loader, _ = host_shuffled_loader(torch)
    saved_loader, saved_argv = torch.utils.data.DataLoader, sys.argv
    torch.utils.data.DataLoader = loader
    sys.argv = [a.script, a.data_dir, str(a.epochs)] + ([str(a.threads)] if a.threads else [])
    torch.set_default_device(device)
    try:
        namespace = runpy.run_path(a.script, run_name="__main__")
    finally:
        torch.set_default_device(None)
        torch.utils.data.DataLoader, sys.argv = saved_loader, saved_argv
    ok, where = placement(namespace, device)
    if a.device == "cuda":
        try:  # facts about the run: none of them may cost its result line
            where += (f"; {torch.cuda.get_device_name()}; peak CUDA memory "
                      f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB; "
                      f"cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}")
        except Exception as e:  # noqa: BLE001
            where += f"; (device facts unavailable: {type(e).__name__})"
    print(f"plain_loop_device {a.device if ok else 'MISMATCH'}: {where}", flush=True)
    if namespace.get("ytr") is not None:
        print(f"plain_loop_train_images {len(namespace['ytr'])}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
