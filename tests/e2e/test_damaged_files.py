"""Damaged files cost at most their own trial's progress: sweep.py for real, through
Ray Tune, on the synthetic dataset. Before, one truncated row.json made --resume die
with a JSONDecodeError, and one truncated checkpoint made every retry of its trial
reload it and fail, until the trial ended as status=error."""
import pandas as pd

from tests.e2e.test_resilience import SMALL, rows, run


def truncate(path, keep=0.5) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path.read_bytes()


def damage_warnings(stderr) -> list[str]:
    return [line for line in stderr.splitlines()
            if "warning: " in line and ("is unreadable" in line or "is unusable" in line)]


def test_resume_reruns_only_the_trials_with_damaged_fragments(tmp_path):
    run_dir = tmp_path / "res" / "d"
    run(*SMALL, "--residual", "both", "--seeds", "2", "--epochs", "2", "--wandb", "disabled",
        "--out", "res", "--name", "d", cwd=tmp_path)
    trials = lambda t: run_dir / "trials" / t  # noqa: E731
    kept = {t: (r["finished_at"], (trials(t) / "row.json").stat().st_mtime_ns)
            for t, r in rows(run_dir).items() if t in ("mlp-4-residual-s0", "mlp-4-plain-s1")}
    bad_row = truncate(trials("mlp-4-plain-s0") / "row.json")
    bad_parquet = truncate(trials("mlp-4-residual-s1") / "epochs.parquet", keep=0.8)

    p = run("--out", "res", "--resume", "d", cwd=tmp_path)
    assert "2 trial(s) already finished, 2 to run" in p.stdout
    assert "4 trials: 4 completed, 0 diverged, 0 errored" in p.stdout
    assert "Traceback" not in p.stderr
    found = damage_warnings(p.stderr)
    assert len(found) == 2, found  # one line per damaged fragment
    # named as the sweep knows them: relative to where it runs
    assert any(w.startswith("warning: res/d/trials/mlp-4-plain-s0/row.json is unreadable")
               for w in found)
    assert any(w.startswith("warning: res/d/trials/mlp-4-residual-s1/epochs.parquet is "
                            "unreadable") for w in found)
    # moved aside, not deleted
    assert (trials("mlp-4-plain-s0") / "row.json.corrupt").read_bytes() == bad_row
    assert (trials("mlp-4-residual-s1") / "epochs.parquet.corrupt").read_bytes() == bad_parquet
    after = rows(run_dir)
    for t, (finished_at, mtime) in kept.items():  # the others are kept as they were
        assert after[t]["finished_at"] == finished_at
        assert (trials(t) / "row.json").stat().st_mtime_ns == mtime
    for t in ("mlp-4-plain-s0", "mlp-4-residual-s1"):  # the damaged ones ran again
        assert after[t]["status"] == "completed" and after[t]["attempts"] == 2
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert {t: sorted(g.epoch) for t, g in epochs.groupby("trial_id")} == \
        {t: [1, 2] for t in after}  # every trial's epochs once, none stale


def test_a_damaged_checkpoint_is_set_aside_and_the_trial_completes(tmp_path):
    run_dir = tmp_path / "res" / "c"
    ckpt = run_dir / "ray" / "checkpoints" / "mlp-4-plain-s0.pt"
    # the trial stops at epoch 3 with the checkpoint of epoch 2 left behind
    run(*SMALL, "--residual", "off", "--epochs", "3", "--max-failures", "0", "--wandb",
        "disabled", "--out", "res", "--name", "c", cwd=tmp_path, expect=1,
        env={"RESABLATE_FAULT": "raise:mlp-4-plain-s0:3"})
    assert rows(run_dir)["mlp-4-plain-s0"]["status"] == "error"
    damaged = truncate(ckpt)  # what a failing disk leaves

    p = run("--out", "res", "--retry-failed", "c", cwd=tmp_path)
    assert "1 trials: 1 completed, 0 diverged, 0 errored" in p.stdout
    (line,) = damage_warnings(p.stderr)
    assert f"checkpoint {ckpt} is unusable" in line  # workers get absolute paths
    assert "starts over from epoch 1" in line
    assert (ckpt.parent / "mlp-4-plain-s0.pt.corrupt").read_bytes() == damaged
    assert not ckpt.exists()  # the new one went once the result was written
    row = rows(run_dir)["mlp-4-plain-s0"]
    assert row["status"] == "completed" and row["attempts"] == 2  # no retry was needed
    assert row["resumed_from_epoch"] is None  # started over
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert list(epochs.epoch) == [1, 2, 3]
