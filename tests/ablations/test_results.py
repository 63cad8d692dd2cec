"""Damaged files in a results folder cost at most their own trial: an unreadable
fragment (row.json or Parquet) or checkpoint is moved aside (never deleted, never
overwritten), named in one warning line, and the trial counts as unfinished."""
import dataclasses
import io
import json

import pandas as pd
import pytest
import torch

from ablations import files, results
from ablations.checkpoint import load_state, save_state


@dataclasses.dataclass(frozen=True)
class Trial:  # what merge needs of a planned trial
    trial_id: str

    def record(self):
        return {"trial_id": self.trial_id, "family": "mlp", "depth": 4}


TRIALS = [Trial("mlp-4-plain-s0"), Trial("mlp-4-residual-s0"), Trial("mlp-4-plain-s1")]


def write_trial(run_dir, trial_id, epochs=3):
    frames = {"epochs": pd.DataFrame({"trial_id": trial_id, "epoch": range(1, epochs + 1),
                                      "train_loss": [1.0 / e for e in range(1, epochs + 1)]}),
              "layers": pd.DataFrame({"trial_id": trial_id, "layer": ["a", "b"],
                                      "value": [0.5, 0.25]})}
    results.write_fragment(run_dir, trial_id, {"trial_id": trial_id, "status": "completed",
                                               "final_train_loss": 1.0 / epochs}, frames)


@pytest.fixture
def run_dir(tmp_path):
    for t in TRIALS:
        write_trial(tmp_path, t.trial_id)
    return tmp_path


def warnings_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path.read_bytes()


ROW_DAMAGE = {
    "truncated": lambda p: truncate(p),
    "garbage": lambda p: (p.write_bytes(b"\x00\xff\xfe garbage \x89PNG" * 20), p.read_bytes())[1],
    "empty": lambda p: (p.write_bytes(b""), b"")[1],
    "not a row": lambda p: (p.write_text("[1, 2, 3]\n"), p.read_bytes())[1],
}


@pytest.mark.parametrize("damage", ROW_DAMAGE)
def test_unreadable_row_json_is_moved_aside_with_its_fragment(run_dir, capsys, damage):
    d = results.trial_dir(run_dir, "mlp-4-plain-s0")
    epochs_bytes = (d / "epochs.parquet").read_bytes()
    damaged = ROW_DAMAGE[damage](d / "row.json")
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s0") is None  # unfinished again
    (line,) = warnings_of(capsys)
    assert line.startswith("warning: ") and str(d / "row.json") in line
    assert "mlp-4-plain-s0" in line and "--resume" in line
    # moved aside, byte for byte; the frames go with it, so a rerun cannot merge them
    assert (d / "row.json.corrupt").read_bytes() == damaged
    assert (d / "epochs.parquet.corrupt").read_bytes() == epochs_bytes
    assert (d / "layers.parquet.corrupt").exists()
    assert not (d / "row.json").exists() and not list(d.glob("*.parquet"))
    # asked again: still unfinished, and nothing more to say
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s0") is None
    assert warnings_of(capsys) == []
    # the other trials are untouched
    assert results.read_fragment_row(run_dir, "mlp-4-residual-s0")["status"] == "completed"


def test_truncated_parquet_makes_the_fragment_unfinished(run_dir, capsys):
    d = results.trial_dir(run_dir, "mlp-4-residual-s0")
    row = (d / "row.json").read_bytes()
    damaged = truncate(d / "layers.parquet", keep=0.7)
    assert results.read_fragment_row(run_dir, "mlp-4-residual-s0") is None
    (line,) = warnings_of(capsys)
    assert str(d / "layers.parquet") in line and "mlp-4-residual-s0" in line
    assert (d / "layers.parquet.corrupt").read_bytes() == damaged
    assert (d / "row.json.corrupt").read_bytes() == row


def test_merge_survives_a_damaged_row_and_keeps_the_others(run_dir, capsys):
    (results.trial_dir(run_dir, "mlp-4-residual-s0") / "row.json").write_text('{"trial_id": ')
    during = results.merge(run_dir, TRIALS, final=False)
    assert list(during["trials"].status) == ["completed", "pending", "completed"]
    assert len(warnings_of(capsys)) == 1
    out = results.merge(run_dir, TRIALS)
    trials = out["trials"].set_index("trial_id")
    assert trials.loc["mlp-4-residual-s0"].status == "error"
    assert "--resume" in trials.loc["mlp-4-residual-s0"].error  # how to get it back
    assert (trials.drop("mlp-4-residual-s0").status == "completed").all()
    assert sorted(out["epochs"].trial_id.unique()) == ["mlp-4-plain-s0", "mlp-4-plain-s1"]
    assert pd.read_parquet(run_dir / "trials.parquet").shape[0] == 3


def test_merge_survives_a_parquet_damaged_inside(run_dir, capsys):
    """A footer intact but a data page broken passes the cheap check; merge finds it."""
    d = results.trial_dir(run_dir, "mlp-4-plain-s1")
    big = pd.DataFrame({"trial_id": "mlp-4-plain-s1", "epoch": range(1, 2001),
                        "train_loss": [float(i % 97) for i in range(2000)]})
    big.to_parquet(d / "epochs.parquet")
    data = bytearray((d / "epochs.parquet").read_bytes())
    data[100:300] = b"\x00" * 200
    (d / "epochs.parquet").write_bytes(bytes(data))
    with pytest.raises(Exception):  # the damage this test is about
        pd.read_parquet(d / "epochs.parquet")
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s1") is not None
    out = results.merge(run_dir, TRIALS)
    trials = out["trials"].set_index("trial_id")
    assert trials.loc["mlp-4-plain-s1"].status == "error"
    assert list(trials.drop("mlp-4-plain-s1").status) == ["completed", "completed"]
    assert "mlp-4-plain-s1" not in set(out["epochs"].trial_id)
    assert (d / "epochs.parquet.corrupt").read_bytes() == bytes(data)
    (line,) = warnings_of(capsys)
    assert str(d / "epochs.parquet") in line


def test_damaged_again_never_overwrites_what_was_moved_aside(run_dir, capsys):
    d = results.trial_dir(run_dir, "mlp-4-plain-s0")
    (d / "row.json").write_text("first")
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s0") is None
    write_trial(run_dir, "mlp-4-plain-s0")  # the rerun
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s0")["status"] == "completed"
    (d / "row.json").write_text("second")
    assert results.read_fragment_row(run_dir, "mlp-4-plain-s0") is None
    assert (d / "row.json.corrupt").read_text() == "first"
    assert (d / "row.json.corrupt-2").read_text() == "second"
    assert len(warnings_of(capsys)) == 2


def test_unreadable_attempt_count_restarts_at_zero(run_dir, capsys):
    p = results.trial_dir(run_dir, "mlp-4-plain-s0") / "attempts"
    p.write_bytes(b"\x00\x00")
    assert results.count_attempt(run_dir, "mlp-4-plain-s0") == 1
    assert p.read_text() == "1" and (p.parent / "attempts.corrupt").read_bytes() == b"\x00\x00"
    assert len(warnings_of(capsys)) == 1


# ---------------------------------------------------------------- checkpoints

def checkpoint_bytes():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return save_state(model, opt, sched, torch.Generator().manual_seed(0), 2,
                      [{"epoch": 1}, {"epoch": 2}], [])


def not_a_checkpoint():
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buf)
    return buf.getvalue()


PT_DAMAGE = {
    "truncated": lambda b: b[:len(b) // 2],
    "tail cut": lambda b: b[:-10],
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x00garbage" * 64,
    "not a trial checkpoint": lambda b: not_a_checkpoint(),
}


def test_intact_checkpoint_loads(tmp_path, capsys):
    ckpt = results.checkpoint_path(tmp_path, "t")
    files.write_bytes(ckpt, checkpoint_bytes())
    state = load_state(ckpt)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert load_state(tmp_path / "none.pt") is None
    assert warnings_of(capsys) == []


@pytest.mark.parametrize("damage", PT_DAMAGE)
def test_unreadable_checkpoint_is_moved_aside_and_the_trial_starts_over(tmp_path, capsys,
                                                                        damage):
    ckpt = results.checkpoint_path(tmp_path, "mlp-4-plain-s0")
    damaged = PT_DAMAGE[damage](checkpoint_bytes())
    files.write_bytes(ckpt, damaged)
    assert load_state(ckpt) is None
    assert not ckpt.exists()
    assert (ckpt.parent / "mlp-4-plain-s0.pt.corrupt").read_bytes() == damaged
    (line,) = warnings_of(capsys)
    assert line.startswith("warning: ") and str(ckpt) in line and "starts over" in line
    assert load_state(ckpt) is None and warnings_of(capsys) == []


def test_row_json_written_by_write_fragment_reads_back(tmp_path):
    write_trial(tmp_path, "x")
    row = results.read_fragment_row(tmp_path, "x")
    assert row == json.loads((results.trial_dir(tmp_path, "x") / "row.json").read_text())
