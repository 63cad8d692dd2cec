"""A W&B report spec that cannot be written is one warning, never a crash of the sweep
(``sweep.write_wandb_report``; it once raised NameError from its own warning)."""
import analysis.wandb_report
import sweep


def test_a_failing_report_spec_is_one_warning(tmp_path, monkeypatch, capsys):
    def fail(run_dir):
        raise ValueError("the run-set filter cannot select group \"lr=0.1\"")
    monkeypatch.setattr(analysis.wandb_report, "write_spec", fail)
    sweep.write_wandb_report(tmp_path, None)  # must not raise
    err = capsys.readouterr().err
    assert "W&B report spec not written" in err and "lr=0.1" in err
