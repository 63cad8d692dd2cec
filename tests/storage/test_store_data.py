"""``--data-root s3://...``: real CIFAR-10 batches (../shared/data/cifar10-subset) uploaded
to moto's S3 server on loopback, fetched once per node into a local cache with sha256
checksums (``ablations.data_fetch``); a damaged, foreign or missing batch in the store
is one line naming the store object and the fault."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from ablations import data_fetch, storage
from ablations.data import CIFAR_DIR, DataError, check_data, load_arrays
from ablations.spec import TrainSettings
from ablations.storage import Store

from .conftest import S3_ENV, s3_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset", CIFAR_DIR)
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
needs_cifar = pytest.mark.skipif(not os.path.isdir(CIFAR), reason=f"no {CIFAR}")


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("RESABLATE_CACHE", str(d))
    return d


@pytest.fixture
def data_uri(s3):
    """The CIFAR-10 subset in ``s3://BUCKET/cifar``."""
    store = Store(f"s3://{s3}/cifar")
    for name in FILES:
        store.put_file(os.path.join(CIFAR, name), f"{CIFAR_DIR}/{name}")
    return store.uri


def settings(root: str) -> TrainSettings:
    return TrainSettings(dataset="cifar10", data_root=root, subset=1000)


@needs_cifar
def test_fetched_once_checked_and_a_cache_hit_fetches_nothing(data_uri, cache, monkeypatch):
    t0 = time.monotonic()
    sizes = check_data(settings(data_uri), download=False)  # the driver, before Ray
    assert sizes["test"] == 1017
    local = data_fetch.cache_dir(data_uri)
    assert str(local).startswith(str(cache))
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["uri"] == data_uri
    for name in FILES:
        assert manifest["files"][name]["sha256"] == sha(os.path.join(CIFAR, name))
        assert sha(local / CIFAR_DIR / name) == sha(os.path.join(CIFAR, name))
    monkeypatch.setattr(storage.Store, "fetch", lambda *a, **k: pytest.fail("fetched again"))
    xtr, ytr, xte, yte = load_arrays(settings(data_uri))  # a worker's first trial, cached
    assert xtr.shape == (5085, 3, 32, 32) and len(yte) == 1017
    assert time.monotonic() - t0 < 30


@needs_cifar
def test_a_damaged_cache_file_is_noticed_by_its_checksum_and_fetched_again(data_uri, cache):
    local = data_fetch.fetch(data_uri) / CIFAR_DIR / "data_batch_2"
    good = sha(local)
    data = bytearray(local.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped; the mtime changes
    local.write_bytes(bytes(data))
    data_fetch.fetch(data_uri)
    assert sha(local) == good


@needs_cifar
@pytest.mark.parametrize("fault, says", [
    ("truncated", "is truncated"),
    ("foreign", "has no 'data' key (its keys: 'rows')"),
    ("missing", "CIFAR-10 not found in the store (missing cifar-10-batches-py/data_batch_3)"),
])
def test_a_bad_batch_in_the_store_is_one_line_naming_it(data_uri, cache, fault, says):
    store = Store(data_uri)
    key = f"{CIFAR_DIR}/data_batch_3"
    if fault == "truncated":
        store.write(key, open(os.path.join(CIFAR, "data_batch_3"), "rb").read()[:5000])
    elif fault == "foreign":
        store.write(key, pickle.dumps({"rows": [1, 2, 3]}))
    else:
        store.delete(key)
    with pytest.raises(DataError) as e:
        check_data(settings(data_uri), download=False)
    msg = str(e.value)
    assert "\n" not in msg and says in msg, msg
    if fault != "missing":
        assert f"CIFAR-10 batch {data_uri}/{key} " in msg
    assert not (data_fetch.cache_dir(data_uri) / key).exists()  # never kept in the cache


@needs_cifar
def test_sweep_with_a_damaged_store_batch_exits_2_before_ray(s3_server, s3, data_uri, tmp_path):
    Store(data_uri).write(f"{CIFAR_DIR}/test_batch", b"\x80\x04garbage")
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT,
               RESABLATE_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sweep.py"), "--families", "mlp",
                        "--depths", "4", "--seeds", "1", "--epochs", "1", "--wandb", "disabled",
                        "--out", "res", "--name", "d", "--data-root", data_uri],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    err = p.stderr.strip()
    assert "\n" not in err and f"{data_uri}/{CIFAR_DIR}/test_batch" in err, err
    assert "Traceback" not in p.stdout + p.stderr and not (tmp_path / "res").exists()
