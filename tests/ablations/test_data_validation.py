"""Every CIFAR-10 batch file is checked as it is read (ablations.data.read_batch): a
damaged or foreign file is one DataError line naming the file and the fault, on the
driver (check_data) and on a worker (its trial's error row). In-process, on tiny files
in the official format; tests/e2e/test_damaged_files.py runs sweep.py on real ones."""
import pickle

import numpy as np
import pytest

from ablations import results
from ablations.data import DataError, check_data, load_dataset, read_batch, read_cifar_batches
from ablations.plan import expand
from ablations.spec import AblationSpec, SpecError, TrainSettings
from ablations.status import Status
from ablations.trial import run_group
from tests.ablations.test_data import write_cifar


def official(n=20, **change):
    d = {"batch_label": "b", "labels": [i % 10 for i in range(n)],
         "data": np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)}
    d.update(change)
    return {k: v for k, v in d.items() if v is not None}


def dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return str(path)


class OpensAFile:
    """A pickle that, if loaded by pickle.load, creates ``path`` (code run on load)."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_official_format_is_read_whatever_the_pickle_protocol_or_key_type(tmp_path, protocol,
                                                                          keys):
    d = official(labels=np.arange(20) % 10)  # labels as an array is fine too
    if keys == "bytes":  # a batch re-pickled under Python 3 with encoding="bytes" keys
        d = {k.encode(): v for k, v in d.items()}
    x, y = read_batch(dump(tmp_path / "b", d, protocol))
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and list(y[:11]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    np.testing.assert_array_equal(x.reshape(20, -1), official()["data"])


CASES = {  # name: (what the file holds, the fault the message names)
    "list": ([1, 2, 3], "holds a list, not a dict"),
    "no data key": (official(data=None), "has no 'data' key (its keys: 'batch_label', "
                                         "'labels')"),
    "no labels key": (official(labels=None), "has no 'labels' key"),
    "data as a list": (official(data=[[0] * 3072] * 20), "has 'data' of list, not a uint8 "
                                                        "array"),
    "float data": (official(data=np.zeros((20, 3072), np.float32)),
                   "has 'data' of float32, not a uint8 array"),
    "wrong shape": (official(data=np.zeros((20, 1024), np.uint8)),
                    "has 'data' of shape (20, 1024), not (N, 3072)"),
    "image-shaped data": (official(data=np.zeros((20, 3, 32, 32), np.uint8)),
                          "has 'data' of shape (20, 3, 32, 32)"),
    "no images": (official(n=0), "has 'data' of shape (0, 3072)"),
    "label 10": (official(labels=[i % 11 for i in range(20)]),
                 "has label 10 at index 10 (1 outside 0..9)"),
    "label -1": (official(labels=[-1] + [0] * 19), "has label -1 at index 0"),
    "string labels": (official(labels=["cat"] * 20), "has 'labels' that are not a list of ints"),
    "float labels": (official(labels=[0.5] * 20), "has 'labels' that are not a list of ints"),
    "one label short": (official(labels=[0] * 19), "has 19 labels for 20 images"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_fault_is_one_line_naming_the_file_and_the_fault(tmp_path, case):
    obj, fault = CASES[case]
    path = dump(tmp_path / "data_batch_1", obj)
    with pytest.raises(DataError) as e:
        read_batch(path)
    msg = str(e.value)
    assert msg.startswith(f"CIFAR-10 batch {path} {fault}"), msg
    assert "\n" not in msg and "N x 3072 uint8" in msg  # what a valid file holds
    assert isinstance(e.value, SpecError)  # the driver's bad-input path: exit 2


@pytest.mark.parametrize("keep, fault", [(0.5, "is truncated (pickle data was truncated)"),
                                         (0.0, "is empty"), (2, "is not a readable pickle")])
def test_truncated_empty_and_garbage_files(tmp_path, keep, fault):
    path = tmp_path / "test_batch"
    raw = pickle.dumps(official(n=200))
    path.write_bytes(raw[:int(len(raw) * keep)] if keep < 1 else b"\x89PNG\r\n" + raw[:64])
    with pytest.raises(DataError) as e:
        read_batch(str(path))
    assert str(e.value).startswith(f"CIFAR-10 batch {path} {fault}"), str(e.value)


def test_a_foreign_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = dump(tmp_path / "data_batch_2", {"data": OpensAFile(str(marker)), "labels": [0]})
    with pytest.raises(DataError) as e:
        read_batch(path)
    assert "is a pickle of other objects (it refers to io.open), not CIFAR-10 data" in str(e.value)
    assert not marker.exists()  # pickle.load would have created it
    pickle.loads((tmp_path / "data_batch_2").read_bytes())
    assert marker.exists()  # (the file does run code when loaded by plain pickle)


def test_an_unreadable_file_is_named(tmp_path):
    (tmp_path / "data_batch_1").mkdir()  # a folder where the file should be
    with pytest.raises(DataError, match="data_batch_1 cannot be read"):
        read_batch(str(tmp_path / "data_batch_1"))


def test_the_driver_check_names_the_damaged_file_among_the_six(tmp_path):
    folder = write_cifar(tmp_path)
    dump(folder / "data_batch_4", official(labels=[3] * 19))
    with pytest.raises(DataError, match=r"data_batch_4 has 19 labels for 20 images"):
        check_data(TrainSettings(data_root=str(tmp_path), subset=100))
    with pytest.raises(DataError, match=r"data_batch_4 has 19"):  # the worker's loader too
        load_dataset(TrainSettings(data_root=str(tmp_path), subset=100, lr=0.123), "cpu")
    x, y = read_cifar_batches(str(folder), ["data_batch_1", "test_batch"])  # the others: fine
    assert len(x) == len(y) == 50


def test_too_few_images_for_the_subset_is_a_data_error(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(DataError, match=r"--subset 151 is larger than the training set"):
        check_data(TrainSettings(data_root=str(tmp_path), subset=151))


def test_a_worker_whose_copy_is_damaged_writes_the_error_row_in_one_line(tmp_path, capfd):
    """The driver's check passed; the worker's copy is damaged afterwards (another node's
    disk): run_group, what a Ray worker calls, ends the trial with status=error and the
    one-line message as its error, without raising (no retries of a damaged file)."""
    folder = write_cifar(tmp_path / "data")
    spec = AblationSpec(families=("mlp",), depths=(4,), seeds=2, residual="on",
                        out=str(tmp_path / "res"), name="w",
                        train=TrainSettings(data_root=str(tmp_path / "data"), subset=100,
                                            epochs=1, milestones=(), batch_size=50))
    check_data(spec.train)  # the driver's check: fine
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(raw[:len(raw) // 3])
    trials, _ = expand(spec)
    assert len(trials) == 2
    statuses = [run_group([t], spec, spec.run_dir) for t in trials]
    assert statuses == [[Status.ERROR], [Status.ERROR]]
    expected = (f"CIFAR-10 batch {folder}/data_batch_1 is truncated (pickle data was "
                "truncated); expected an official CIFAR-10 python batch")
    for t in trials:
        row = results.read_fragment_row(spec.run_dir, t.trial_id)
        assert row["status"] == "error" and row["error"].startswith(expected)
        assert row["attempts"] == 1
        assert "\n" not in row["error"] and "Traceback" not in row["error"]
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "data_batch_1" in line]
    assert len(lines) == 2 and all(line.startswith("warning: mlp-4-") for line in lines)
    assert "Traceback" not in err
    # a repaired copy: the trial trains (nothing of the failure is cached on the worker)
    (folder / "data_batch_1").write_bytes(raw)
    results.archive_error(spec.run_dir, trials[0].trial_id)
    assert run_group([trials[0]], spec, spec.run_dir) == [Status.COMPLETED]
