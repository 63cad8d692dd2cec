import os
import pickle

import numpy as np
import pytest
import torch

from ablations.data import (augment, check_data, cifar_folder, load_dataset, read_cifar_batches,
                            split_val, stratified_subset)
from ablations.spec import SpecError, TrainSettings


def write_cifar(root, n_train_per_batch=30, n_test=20):
    """Tiny CIFAR-10 in the official python format (dict with data N x 3072 uint8, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)] + \
            [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(n) % 10]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    return folder


def test_reader_reads_the_official_format(tmp_path):
    folder = write_cifar(tmp_path)
    x, y = read_cifar_batches(str(folder), ["data_batch_1", "data_batch_2"])
    assert x.shape == (60, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (60,)
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    # rows are the R plane, then G, then B, each 32x32 row-major
    np.testing.assert_array_equal(x[30, 1, 2, 3], raw["data"][0][1024 + 2 * 32 + 3])
    assert list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_partial_copy_is_read_without_md5_check(tmp_path):
    write_cifar(tmp_path)
    t = TrainSettings(data_root=str(tmp_path), subset=100, val_fraction=0.2)
    d = load_dataset(t, "cpu")
    assert len(d.train_y) == 80 and len(d.val_y) == 20 and len(d.test_y) == 20
    assert d.train_x.shape[1:] == (3, 32, 32)
    # normalized with the training subset's statistics
    assert abs(d.train_x.mean().item()) < 1e-3


def test_stratified_subset_is_proportional_and_deterministic():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 300])
    a = stratified_subset(labels, 120)
    assert len(a) == 120 and len(set(a)) == 120
    counts = np.bincount(labels[a], minlength=10)
    assert list(counts) == [10] * 9 + [30]
    np.testing.assert_array_equal(a, stratified_subset(labels, 120))
    with pytest.raises(SpecError, match="larger than the training set"):
        stratified_subset(labels, 5000)


def test_validation_split_is_held_out_of_the_subset():
    labels = np.arange(1000) % 10
    idx = stratified_subset(labels, 500)
    tr, va = split_val(idx, labels, 0.2)
    assert len(va) == 100 and len(tr) == 400 and not set(tr) & set(va)
    assert set(tr) | set(va) == set(idx)
    assert list(np.bincount(labels[va])) == [10] * 10


def test_augment_shapes_and_determinism():
    x = torch.randn(16, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_augment_outputs_are_crops_or_flipped_crops():
    x = torch.arange(4 * 2 * 8 * 8, dtype=torch.float).view(4, 2, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), pad=4)
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    for i in range(4):
        crops = [padded[i, :, r:r + 8, c:c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], cr) or torch.equal(out[i], cr.flip(-1)) for cr in crops)


def test_missing_data_offline_names_where_it_looked(tmp_path, monkeypatch):
    import torchvision

    def offline(root, *a, **k):  # torchvision makes the folder, then fails to download
        os.makedirs(root, exist_ok=True)
        raise OSError("network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(SpecError) as e:
        cifar_folder(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg and "--data-root" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing left behind


def test_check_data_rejects_too_large_subset(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(SpecError, match="--subset 151 is larger than the training set \\(150"):
        check_data(TrainSettings(data_root=str(tmp_path), subset=151))


def test_synthetic_is_learnable_shape():
    d = load_dataset(TrainSettings(dataset="synthetic", subset=500, val_fraction=0.1), "cpu")
    assert d.train_x.shape == (450, 3, 32, 32) and d.num_classes == 10
    assert set(d.train_y.tolist()) == set(range(10))
