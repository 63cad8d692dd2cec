"""bench/gpu_check_table.py (overlap, parsing, the table) and bench/plain_loop_cuda.py
(the GPU runner of the plain loop), on generated data: no GPU, no Ray."""
import importlib.util
import json
import os
import pickle
import random
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOP = os.path.join(ROOT, "..", "shared", "bench", "plain_loop.py")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


table = _load("gpu_check_table")
runner = _load("plain_loop_cuda")


# ---------------------------------------------------------------- overlap

def brute_overlap(intervals):
    """Most intervals open at one instant: the count just after some start (half-open)."""
    return max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)


@pytest.mark.parametrize("intervals, most, span", [
    ([(0, 10), (1, 9), (2, 8), (3, 7)], 4, (3, 7)),     # four on one device at once
    ([(0, 1), (1, 2), (2, 3), (3, 4)], 1, (0, 1)),      # one after another, touching
    ([(0, 2), (1, 3), (4, 6), (5, 7)], 2, (1, 2)),      # two pairs
    ([(0, 5), (0, 5), (5, 9)], 2, (0, 5)),              # same start; the third only touches
    ([(3, 3)], 0, None),                                # an empty interval is never open
])
def test_max_overlap_cases(intervals, most, span):
    assert table.max_overlap(intervals) == (most, span)


def test_max_overlap_matches_brute_force_on_random_trials():
    rng = random.Random(17)
    for _ in range(300):
        n = rng.randint(1, 8)
        starts = [rng.uniform(0, 20) for _ in range(n)]
        intervals = [(s, s + rng.uniform(0.1, 10)) for s in starts]
        most, (lo, hi) = table.max_overlap(intervals)
        assert most == brute_overlap(intervals)
        assert sum(s <= lo and hi <= e for s, e in intervals) == most  # the span really has them


def test_max_overlap_rejects_an_end_before_its_start():
    with pytest.raises(ValueError, match="not an interval"):
        table.max_overlap([(0, 1), (5, 4)])


# ---------------------------------------------------------------- rows from files

def write_run(out, name, trials, epochs=None, spec=None, timing=None):
    d = os.path.join(out, "runs", name)
    os.makedirs(d)
    pd.DataFrame(trials).to_parquet(os.path.join(d, "trials.parquet"))
    if epochs is not None:
        pd.DataFrame(epochs).to_parquet(os.path.join(d, "epochs.parquet"))
    with open(os.path.join(d, "spec.json"), "w") as f:
        json.dump({"spec": spec or {}, "environment": {"cuda_devices": ["NVIDIA H200"]},
                   "invocations": [{"timing": timing or {}}]}, f)


def write_steps(out, steps):
    with open(os.path.join(out, "steps.tsv"), "w") as f:
        for name, rc, t0, t1 in steps:
            f.write(f"{name}\t{rc}\t{t0}\t{t1}\n")


def test_concurrent_row_counts_trials_running_together(tmp_path):
    t0 = 1_800_000_000.0
    starts, ends = [0.0, 0.4, 0.9, 1.2, 20.0], [9.1, 9.5, 8.7, 9.9, 25.0]  # 5th: after the rest
    write_run(str(tmp_path), "concurrent",
              {"started_at": [t0 + s for s in starts], "finished_at": [t0 + e for e in ends],
               "device": ["cuda"] * 5, "precision": ["bf16"] * 5, "pid": [1, 2, 3, 4, 1]},
              spec={"gpus_per_trial": 0.25, "cpus_per_trial": 4})
    row = table.concurrent_row(str(tmp_path), {})
    assert row["result"] == "4 of 5 at once"
    assert row["run"] == "5 trials, --gpus-per-trial 0.25"
    assert "from +1.2 s to +8.7 s (7.5 s)" in row["detail"]
    assert "started_at +0.0/+0.4/+0.9/+1.2/+20.0 s" in row["detail"]
    assert "4 worker processes" in row["detail"] and "NVIDIA H200" in row["detail"]


def test_trainer_row_uses_the_loops_definition_of_images_per_s(tmp_path):
    n = 4992
    write_run(str(tmp_path), "train-bf16-compile",
              {"status": ["completed"], "device": ["cuda"], "precision": ["bf16"],
               "epochs_run": [3], "wall_seconds": [12.0], "final_test_acc": [0.5]},
              epochs={"epoch": [1, 2, 3], "epoch_seconds": [10.0, 0.5, 0.4],
                      "train_images_per_s": [n / 10.0, n / 0.5, n / 0.4]},
              spec={"train": {"compile": True}})
    row = table.trainer_row(str(tmp_path), "train-bf16-compile", {})
    assert row["ips"] == pytest.approx(3 * n / 12.0)
    assert row["device"] == "cuda, bf16, compiled" and row["run"] == "trainer bf16 + compile"
    assert f"steady {n / 0.45:,.0f} img/s" in row["detail"]  # median of epochs 2 and 3


PLAIN_LOG = """params 175258
epoch 1 loss 2.0 train_acc 0.2 test_acc 0.3 t 4.0s
epoch 2 loss 1.8 train_acc 0.3 test_acc 0.4 t 5.0s
epoch 3 loss 1.6 train_acc 0.4 test_acc 0.45 t 6.5s
total 6.5s
train_images_per_s 2347
final_test_acc 0.4500
plain_loop_device cuda: model parameters on cuda:0, training images on cuda:0
plain_loop_train_images 5085
"""


def test_parse_plain_reads_the_loops_lines():
    p = table.parse_plain(PLAIN_LOG)
    assert p["train_images_per_s"] == 2347 and p["final_test_acc"] == 0.45
    assert p["epochs"] == 3 and p["epoch_s"] == pytest.approx(1.25)  # median of 1.0, 1.5
    assert p["device"] == "cuda" and "cuda:0" in p["where"] and p["images"] == 5085


def test_table_has_every_part_and_failed_steps_are_rows_not_tracebacks(tmp_path):
    out = str(tmp_path)
    with open(os.path.join(out, "plain.log"), "w") as f:
        f.write(PLAIN_LOG)
    write_run(out, "probe", {"status": ["completed"] * 40},
              spec={"families": ["mlp"], "depths": [5, 34], "seeds": 10},
              timing={"run_started_at": 100.0, "run_ended_at": 102.0})
    write_steps(out, [("plain", 0, 0, 10), ("train-fp32", 124, 10, 250),
                      ("train-fp32-compile", -1, 250, 250), ("probe", 0, 250, 270)])
    rows = table.build_rows(out, limit_s=300, started_at=-5.0)
    text = table.format_table(rows)
    lines = text.splitlines()
    assert len({line.count(" | ") for line in lines}) == 1  # one column count throughout
    by_run = {r["run"]: r for r in rows}
    assert by_run["trainer fp32"]["result"] == "failed"
    assert "timed out" in by_run["trainer fp32"]["detail"]
    assert by_run["trainer fp32 + compile"]["result"] == "skipped"
    assert by_run["probe mlp depths 5,34, 10 seeds"]["result"] == "20 probes/s"
    assert rows[0]["result"] == "2,347 img/s"
    assert [r["result"] for r in rows if r["part"] == "2 sharing"] == ["failed"]
    assert "3 epochs x 5085 images" in rows[0]["detail"]
    assert rows[-1]["result"] == "275 s" and "within the 300 s limit" in rows[-1]["detail"]
    assert "checks before the steps 5 s" in rows[-1]["detail"]


# ---------------------------------------------------------------- the GPU runner

def test_host_sampler_works_under_a_foreign_default_device_and_keeps_the_cpu_order():
    _, HostRandomSampler = runner.host_shuffled_loader(torch)
    torch.manual_seed(3)
    expected = list(torch.utils.data.RandomSampler(range(50)))
    torch.set_default_device("meta")  # like cuda: the stock sampler's draws land off the CPU
    try:
        with pytest.raises(Exception):
            list(torch.utils.data.RandomSampler(range(50)))
        torch.manual_seed(3)
        got = list(HostRandomSampler(range(50)))
        assert torch.empty(1).device.type == "meta"  # the default device is back after it
    finally:
        torch.set_default_device(None)
    assert got == expected


def test_host_loader_batches_equal_the_stock_loaders():
    Loader, _ = runner.host_shuffled_loader(torch)
    data = torch.utils.data.TensorDataset(torch.arange(37.0), torch.arange(37))
    torch.manual_seed(0)
    ours = [y.tolist() for _, y in Loader(data, batch_size=8, shuffle=True)]
    torch.manual_seed(0)
    stock = [y.tolist() for _, y in torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)]
    assert ours == stock and sorted(sum(ours, [])) == list(range(37))


def fake_cifar(folder, n=64):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)


def test_runner_refuses_a_folder_without_the_batches(tmp_path):
    script = tmp_path / "loop.py"  # any script: the data folder is checked before it runs
    script.write_text("raise SystemExit('must not run')\n")
    data = tmp_path / "empty"
    data.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plain_loop_cuda.py"),
                        "--device", "cpu", "--script", str(script), str(data), "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "lacks data_batch_1" in r.stderr


def test_runner_refuses_a_missing_loop_script(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plain_loop_cuda.py"),
                        "--device", "cpu", "--script", str(tmp_path / "nope.py"),
                        str(tmp_path), "1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no loop script at" in r.stderr


@pytest.mark.skipif(not os.path.isfile(LOOP), reason="../shared/bench/plain_loop.py is absent")
def test_runner_on_the_cpu_trains_exactly_like_the_loop_itself(tmp_path):
    data = str(tmp_path / "batches")
    fake_cifar(data)
    # the loop crops with the unseeded np.random (its runs differ from each other): this
    # test runs it with numpy seeded, directly and through the runner
    loop = tmp_path / "plain_loop_seeded.py"
    loop.write_text("import numpy; numpy.random.seed(0)\n" + open(LOOP).read())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    direct = subprocess.run([sys.executable, str(loop), data, "2", "1"], capture_output=True,
                            text=True, check=True, env=env).stdout
    ours = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plain_loop_cuda.py"),
                           "--device", "cpu", "--script", str(loop), data, "2", "1"],
                          capture_output=True, text=True, check=True, env=env).stdout
    untimed = lambda s: [re.sub(r" t [0-9.]+s$", "", line) for line in s.splitlines()  # noqa
                         if line.startswith(("params", "epoch", "final_test_acc"))]
    assert len(untimed(direct)) == 4 and untimed(ours) == untimed(direct)
    assert re.search(r"^plain_loop_device cpu: model parameters on cpu, training images on cpu$",
                     ours, re.M)
    assert re.search(r"^plain_loop_train_images 320$", ours, re.M)  # 5 batches of 64
