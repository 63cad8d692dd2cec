"""Datasets as tensors on the training device, and batched augmentation.

CIFAR-10 is read straight from the official python batches in
``<data_root>/cifar-10-batches-py/`` (no md5 check, so a partial or re-packed
copy such as a 5,000-image subset works); when that folder is missing,
torchvision downloads it there when asked (``--download``), else one line says how to
get it. ``synthetic`` is a small learnable dataset made in memory (tests, offline
smoke runs). The training subset is class-stratified
and deterministic (the same for every trial of a sweep); the validation split
is held out of it, stratified too; the test split is never used for selection.

Every batch file is checked as it is read (``read_batch``): a file that is unreadable,
truncated, not a pickle of CIFAR-10 data (only numpy's array classes may be unpickled:
a foreign pickle is refused, never executed), without ``data``/``labels``, with data
that is not N x 3072 uint8, or with labels outside 0..9 or not one per row, is a
``DataError``: one line naming the file and the fault. The driver reads every file
once before Ray starts (``check_data``: exit 2); a worker whose copy is damaged gets
the same line as its trial's error row (``ablations.train``). A ``data_root`` that is an
object-store URI is fetched into this node's cache first (``ablations.data_fetch``).
"""
from __future__ import annotations

import functools
import os
import pickle
import shutil
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .spec import SpecError, TrainSettings

CIFAR_DIR = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
SUBSET_SEED = 0  # fixed: the subset must not depend on the trial's seed
SYNTHETIC_TRAIN = 2000  # synthetic training images unless --subset asks for more


@dataclass
class Dataset:
    train_x: torch.Tensor  # (N, 3, 32, 32) float, normalized, on device
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_images: torch.Tensor  # (M, 3, 32, 32) in [0, 1], unnormalized (for figures)
    num_classes: int = 10

    @property
    def in_features(self) -> int:
        return int(np.prod(self.train_x.shape[1:]))


class DataError(SpecError):
    """A dataset that cannot be used (a missing, damaged or foreign batch file, or too few
    images): one line naming the file and the fault. A SpecError: bad input, exit 2 on
    the driver before anything is written."""


EXPECTED = ("expected an official CIFAR-10 python batch (a dict of 'data', N x 3072 uint8, "
            "and 'labels', N ints in 0..9): replace the file or pass another --data-root")
# what an official batch may unpickle (Python 2's and numpy 1/2's names of numpy's
# array reconstruction); anything else is a foreign pickle and is never called
_ARRAY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("_reconstruct", "scalar")} | \
    {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")} | \
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Foreign(pickle.UnpicklingError):
    """A pickle that refers to something other than numpy arrays."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise _Foreign(f"{module}.{name}")
        return super().find_class(module, name)


def _field(d: dict, key: str):
    """``d[key]`` under its Python 2 (str) or Python 3 (bytes) name; None when absent."""
    return d[key] if key in d else d.get(key.encode())


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch, checked as it is read: images (N, 3, 32, 32) uint8 and labels
    (N,) int64; DataError (one line: the file and the fault) for anything else."""
    def fault(what: str) -> DataError:
        return DataError(f"CIFAR-10 batch {path} {what}; {EXPECTED}")
    try:
        with open(path, "rb") as f:
            if not os.fstat(f.fileno()).st_size:
                raise fault("is empty")
            d = _BatchUnpickler(f, encoding="latin1").load()  # straight into the arrays
    except DataError:
        raise
    except OSError as e:
        raise fault(f"cannot be read ({e.strerror or type(e).__name__})") from None
    except _Foreign as e:
        raise fault(f"is a pickle of other objects (it refers to {e}), not CIFAR-10 data"
                    ) from None
    except Exception as e:  # noqa: BLE001  arbitrary bytes raise anything while unpickled
        why = " ".join(str(e).split())[:120] or type(e).__name__
        if isinstance(e, EOFError) or "truncated" in why:
            raise fault(f"is truncated ({why})") from None
        raise fault(f"is not a readable pickle ({why})") from None
    if not isinstance(d, dict):
        raise fault(f"holds a {type(d).__name__}, not a dict")
    data, labels = _field(d, "data"), _field(d, "labels")
    for key, value in (("data", data), ("labels", labels)):
        if value is None:
            keys = ", ".join(repr(k) for k in list(d)[:6])
            raise fault(f"has no '{key}' key (its keys: {keys or 'none'})")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise fault(f"has 'data' of {kind}, not a uint8 array")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data):
        raise fault(f"has 'data' of shape {data.shape}, not (N, 3072) with N > 0")
    try:
        y = np.asarray(labels)
    except Exception:  # noqa: BLE001  ragged or odd objects: not a list of ints
        y = np.asarray([None])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise fault(f"has 'labels' that are not a list of ints ({type(labels).__name__} of "
                    f"{y.dtype}, shape {y.shape})")
    if len(y) != len(data):
        raise fault(f"has {len(y)} labels for {len(data)} images")
    bad = np.flatnonzero((y < 0) | (y > 9))
    if len(bad):
        raise fault(f"has label {y[bad[0]]} at index {bad[0]} ({len(bad)} outside 0..9)")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)  # R, G, B planes


def read_cifar_batches(folder: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from official pickle batches,
    each read once and checked (``read_batch``)."""
    xs, ys = zip(*(read_batch(os.path.join(folder, n)) for n in names))
    return np.concatenate(xs), np.concatenate(ys)


CIFAR_MB = 170  # the download's size (cifar-10-python.tar.gz: 163 MiB, 170 MB)
CIFAR_TEST_IMAGES = 10_000  # images in the official test_batch


def cifar_folder(root: str, download: bool = True) -> str:
    """``<root>/cifar-10-batches-py`` when it holds every batch file. When that folder is
    missing: downloaded there with ``download`` (sweep.py passes ``--download``),
    otherwise DataError, one line naming the folder and how to get the data. A folder
    that is there but incomplete is never downloaded over: DataError naming the files."""
    folder = os.path.join(root, CIFAR_DIR)
    missing = [n for n in TRAIN_FILES + [TEST_FILE] if not os.path.isfile(os.path.join(folder, n))]
    if not missing:
        return folder
    others = ("pass --data-root DIR holding the official python batches (data_batch_1..5, "
              "test_batch; a partial copy works), or use --dataset synthetic")
    if os.path.exists(folder):
        raise DataError(f"CIFAR-10 in {folder} is incomplete (missing {', '.join(missing)}); "
                        f"put the official python batches there, or {others}")
    if not download:
        raise DataError(f"CIFAR-10 not found in {folder}; download it there with --download "
                        f"(about {CIFAR_MB} MB), or {others}")
    created = not os.path.exists(root)
    try:
        import torchvision
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            torchvision.datasets.CIFAR10(root, train=True, download=True)
        finally:
            socket.setdefaulttimeout(old)
        return folder
    except Exception as e:  # offline, DNS failure, disk full...
        if created:  # leave nothing behind: the folder was torchvision's doing
            shutil.rmtree(root, ignore_errors=True)
        raise DataError(f"CIFAR-10 not found in {folder} and its download (about {CIFAR_MB} "
                        f"MB) failed ({type(e).__name__}); {others}") from None


def stratified_subset(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """``n`` indices with class proportions of ``labels`` (largest remainder), deterministic."""
    if n > len(labels):
        raise DataError(f"--subset {n} is larger than the training set ({len(labels)} images); "
                        f"valid: 10..{len(labels)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def split_val(indices: np.ndarray, labels: np.ndarray, fraction: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) parts of ``indices``; val is a stratified ``fraction`` of them."""
    if fraction <= 0:
        return indices, indices[:0]
    val_pos = stratified_subset(labels[indices], max(1, round(fraction * len(indices))),
                                seed=SUBSET_SEED + 1)
    mask = np.zeros(len(indices), bool)
    mask[val_pos] = True
    return indices[~mask], indices[mask]


def synthetic_arrays(n_train: int = SYNTHETIC_TRAIN, n_test: int = 500, seed: int = 1234):
    """Learnable 10-class images: a smooth random prototype per class plus noise (uint8)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(10, 3, 4, 4))
    protos = np.kron(protos, np.ones((1, 1, 8, 8)))  # (10, 3, 32, 32), 8x8 blobs

    def make(n):
        y = np.arange(n) % 10
        x = protos[y] + 1.5 * rng.normal(size=(n, 3, 32, 32))
        x = np.clip(128 + 40 * x, 0, 255).astype(np.uint8)
        return x, y.astype(np.int64)
    return make(n_train) + make(n_test)


def synthetic_train_size(subset: int) -> int:
    """Images in the synthetic training set: 2000, or ``subset`` when that is larger, so
    ``--dataset synthetic`` works with the default ``--subset 5000``. Up to 2000 the data
    (training and test images) is exactly what it always was; a larger training set
    keeps the first 2000 training images and draws a different 500-image test set."""
    return max(SYNTHETIC_TRAIN, subset)


def load_arrays(t: TrainSettings, download: bool = False):
    """Train and test arrays; only the driver (``check_data``) may download."""
    if t.dataset == "synthetic":
        return synthetic_arrays(n_train=synthetic_train_size(t.subset))
    from .data_fetch import localize  # a store URI: this node's cached copy, checked
    folder = cifar_folder(localize(t).data_root, download=download)
    return read_cifar_batches(folder, TRAIN_FILES) + read_cifar_batches(folder, [TEST_FILE])


def check_data(t: TrainSettings, download: bool = True) -> dict:
    """Everything about the data that can fail, before anything is written; returns the
    split sizes ``{"train", "val", "test"}`` (images) for the plan's time estimate."""
    xtr, ytr, _, yte = load_arrays(t, download=download)
    stratified_subset(ytr, t.subset)
    if t.val_fraction > 0 and round(t.val_fraction * t.subset) >= t.subset:
        raise SpecError(f"--val-fraction {t.val_fraction} leaves no training images")
    return {"train": t.train_images, "val": t.val_images, "test": len(yte)}


@functools.lru_cache(maxsize=2)
def load_dataset(t: TrainSettings, device: str) -> Dataset:
    """The sweep's dataset on ``device`` (cached per worker process: actors are reused)."""
    xtr, ytr, xte, yte = load_arrays(t)
    train_idx, val_idx = split_val(stratified_subset(ytr, t.subset), ytr, t.val_fraction)
    to = functools.partial(torch.as_tensor, device=device)
    x = to(xtr[train_idx]).float().div_(255)
    if t.normalize == "pixel-mean":
        # He et al. 2016 (sec. 4.2): "the per-pixel mean subtracted", and no std division
        mean, std = x.mean(0, keepdim=True), torch.ones((), device=x.device)
    else:
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    norm = lambda a: (to(a).float().div_(255) - mean) / std  # noqa: E731
    test_images = to(xte).float().div_(255)
    return Dataset(train_x=(x - mean) / std, train_y=to(ytr[train_idx]),
                   val_x=norm(xtr[val_idx]), val_y=to(ytr[val_idx]),
                   test_x=(test_images - mean) / std, test_y=to(yte), test_images=test_images)


def pad_images(x: torch.Tensor, pad: int = 4, mode: str = "reflect") -> torch.Tensor:
    """Pad (B, C, H, W) -> (B, C, H+2p, W+2p): ``reflect``, or ``zero`` (He et al. 2016;
    0 of the normalized input, i.e. the mean). Done once per trial, not per batch:
    reflect padding is the slow part of augmentation on a CPU."""
    if mode == "zero":
        return F.pad(x, (pad, pad, pad, pad), mode="constant", value=0.0)
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


def random_crop_flip(padded: torch.Tensor, generator: torch.Generator, size: int = 32
                     ) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of each padded image, flipped horizontally with
    probability 1/2, as one gather: (B, C, Hp, Wp) -> (B, C, size, size)."""
    B, C, Hp, Wp = padded.shape
    dev = padded.device
    off = torch.randint(0, Hp - size + 1, (2, B), generator=generator,
                        device=generator.device).to(dev)
    flip = torch.rand(B, generator=generator, device=generator.device).to(dev) < 0.5
    k = torch.arange(size, device=dev)
    rows = off[0, :, None] + k  # (B, size)
    cols = off[1, :, None] + torch.where(flip[:, None], size - 1 - k, k)  # flipped: right to left
    idx = (rows[:, :, None] * Wp + cols[:, None, :]).view(B, 1, size * size)
    out = padded.flatten(2).gather(2, idx.expand(B, C, size * size))  # (B, C, size*size)
    return out.view(B, C, size, size)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after ``pad``-pixel reflect padding, and horizontal flip, per image,
    as batched tensor ops. ``x``: (B, C, H, W) -> (B, C, H, W)."""
    return random_crop_flip(pad_images(x, pad), generator, x.shape[-1])
