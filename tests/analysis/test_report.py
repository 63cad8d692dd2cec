"""report.build on synthetic results folders, and the ``python -m analysis`` command line."""
import base64
from html import escape as html_escape
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablations import factors
from analysis import figures, report, report_items, report_text
from analysis.__main__ import FORMATS as CLI_FORMATS
from analysis.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _write_results(run_dir: Path, train: bool = True, residual=(False, True)) -> None:
    """MLP depths 5 and 8, 2 seeds; plain depth 8 seed 1 diverges (inf gradients)."""
    trials, layers, epochs = [], [], []
    for depth in (5, 8):
        for res in residual:
            for seed in (0, 1):
                tid = f"mlp-{depth}-{'residual' if res else 'plain'}-s{seed}"
                diverged = train and depth == 8 and not res and seed == 1
                base = dict(trial_id=tid, family="mlp", model="mlp", depth=depth, residual=res,
                            seed=seed)
                trials.append({**base, "params": 1000 * depth,
                               "status": "diverged" if diverged else "completed",
                               **({"final_test_acc": 0.5 + 0.1 * res, "final_train_loss": 0.3}
                                  if train else {})})
                phases = (("init", 0), ("train", 10), ("train", 20)) if train else (("init", 0),)
                for phase, step in phases:
                    for i in range(depth):
                        v = np.inf if diverged and step == 20 else 1e-3 * (1 + i) * (1 + seed)
                        for layer, stat in ((f"layers.{i}.weight", "grad_mean_abs"),
                                            (f"layers.{i}", "act_mean_abs")):
                            layers.append({**base, "phase": phase, "step": step, "epoch": step // 10,
                                           "layer": layer, "layer_index": i, "stat": stat,
                                           "value": v})
                for e in range(1, 3 if diverged else 5):
                    epochs.append({**base, "epoch": e, "train_loss": 1.0 / e, "train_acc": 0.2 * e,
                                   "test_loss": 1.1 / e, "test_acc": 0.18 * e, "lr": 0.1 if e < 3 else 0.01})
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(trials).to_parquet(run_dir / "trials.parquet")
    pd.DataFrame(layers).to_parquet(run_dir / "layers.parquet")
    if train:
        pd.DataFrame(epochs).to_parquet(run_dir / "epochs.parquet")
        (run_dir / "features").mkdir()
        rng = np.random.default_rng(0)
        np.savez(run_dir / "features" / "mlp-5-residual-s0.npz",
                 maps=rng.normal(size=(8, 8, 8)).astype("float32"),
                 image=rng.random((3, 32, 32)).astype("float32"))


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for sub in ("figures", "tables")
            for p in (run_dir / sub).glob("*")}


FIGURES = ["interaction", "degradation_vs_depth", "training_curves_by_depth", "training_curves",
           "gradient_flow", "grad_by_layer", "act_by_layer", "act_through_training",
           "features_mlp-5-residual-s0"]
TABLES = ["summary", "paired", "factor_effects", "degradation", "robust", "improvement",
          "failures", "survivorship", "grad_mlp-5", "grad_mlp-8"]


def test_build_writes_every_figure_and_table(tmp_path):
    _write_results(tmp_path)
    result = report.build(tmp_path)
    assert result.failures == [] and result.log is None
    assert not (tmp_path / "report_errors.log").exists()
    written = result.written
    expected = ({f"figures/{f}.{x}" for f in FIGURES for x in ("pdf", "png")}
                | {f"tables/{t}.{x}" for t in TABLES for x in ("md", "tex")})
    assert _files(tmp_path) == expected  # and no temporary files left behind
    assert {str(Path(p).relative_to(tmp_path)) for p in written} == expected | {
        "report.md", "report.html"}
    assert written[-2:] == [str(tmp_path / "report.md"), str(tmp_path / "report.html")]
    assert all(Path(p).stat().st_size > 0 for p in written)
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "| mlp | 8 | plain | 8,000 | 1/2 (1 diverged) | 0.300 | 50.0 |" in summary
    grad = (tmp_path / "tables" / "grad_mlp-5.md").read_text().splitlines()
    assert grad[2] == "| layers.0.weight | 1.50e-03 | 1.50e-03 | 1.00 |"
    assert r"\bottomrule" in (tmp_path / "tables" / "grad_mlp-8.tex").read_text()
    md = (tmp_path / "report.md").read_text()
    assert ("- mlp depth 8: residual minus plain test accuracy +10.0 pp over 1 seed(s) "
            "(means only); 1 seed(s) unpaired.") in md
    # the headline comes first: the depth x residual interaction of train loss
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert [ln for ln in findings.splitlines() if ln.startswith("- ")][0].startswith(
        "- mlp 5 -> 8: plain's train loss")


def test_report_references_every_figure_and_table(tmp_path):
    _write_results(tmp_path)
    report.build(tmp_path, formats=("pdf",))  # no PNG on disk: the HTML still embeds PNGs
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for f in FIGURES:
        assert f"figures/{f}.pdf" in md and f'<figure id="{f}">' in page
    for t in TABLES:
        assert f"### {t}" in md and f'<h3 id="{t}">' in page
        # the table itself is in the report, not just a link
        body = (tmp_path / "tables" / f"{t}.md").read_text().splitlines()[2]
        assert body in md
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [a for a, _ in imgs] == FIGURES
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for _, b in imgs)
    assert "<script" not in page and "http" not in page.split("<h2>Weights")[0]


def _with_error_trial(run_dir: Path) -> None:
    """Add an errored trial (a row, no epochs or layers), like results.write_error leaves."""
    trials = pd.read_parquet(run_dir / "trials.parquet")
    err = dict(trial_id="mlp-8-residual-s2", family="mlp", model="mlp", depth=8, residual=True,
               seed=2, params=8000, status="error", final_test_acc=np.nan, final_train_loss=np.nan)
    pd.concat([trials, pd.DataFrame([err])]).to_parquet(run_dir / "trials.parquet")


def test_cli_counts_diverged_and_errored_trials(tmp_path):
    _write_results(tmp_path)
    _with_error_trial(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path), "--format", "png"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(tmp_path / "report.html")
    md = (tmp_path / "report.md").read_text()
    assert "**9 trials: 7 completed, 1 diverged, 1 errored.**" in md
    assert "| mlp | 8 | residual | 3 | 2 | 0 | 1 |" in md  # status: planned, completed, div., error
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "| mlp | 8 | residual | 8,000 | 2/3 (1 error) |" in summary
    assert "| mlp | 8 | plain | 8,000 | 1/2 (1 diverged) |" in summary


def test_where_writes_a_view_and_leaves_the_full_report(tmp_path):
    _write_results(tmp_path)
    report.build(tmp_path, formats=("png",))
    full = (tmp_path / "report.html").read_bytes()
    assert main([str(tmp_path), "--format", "png", "--where", "depth=8",
                 "--where", "residual=plain", "--style", "slides", "--width", "single"]) == 0
    view = tmp_path / "views" / "depth=8_residual=plain"
    md = (view / "report.md").read_text()
    assert "**2 trials: 1 completed, 1 diverged, 0 errored.**" in md
    assert "view: depth=8_residual=plain" in md
    assert "- mlp depth 8: no seed with both variants completed (plain: 1 diverged)." in md
    assert (tmp_path / "report.html").read_bytes() == full
    assert not (view / "tables" / "paired.md").exists()  # one variant: nothing to pair


@pytest.mark.parametrize("args,needle", [
    (["--where", "family=cnn"], "present: mlp"),
    (["--where", "depth=x"], "integers"),
    # every registered factor between depth and seed (activation: added with its factor)
    (["--where", "colour=red"], "valid: family, model, depth, residual, norm, block, "
     "branch_scale, shortcut, " + "".join(f"{n}, " for n in factors.names()[5:]) + "seed"),
    (["--where", "depth"], "FACTOR=VALUE"),
    (["--where", "norm=group"], "norm takes batch, layer, none, n/a; got 'group'"),
    (["--where", "branch_scale=half"], "branch_scale takes one, invsqrt, zero, n/a"),
    (["--where", "residual=maybe"], "residual takes residual or plain"),
    # an old folder (no norm column) is the family default: mlp has no norm
    (["--where", "norm=batch"], "--where norm=batch: no such trials; present: none"),
    (["--where", "shortcut=pad"], "present: n/a"),
    (["--style", "poster"], "paper"),
    (["--width", "triple"], "single"),
])
def test_cli_bad_options_are_one_line(tmp_path, capsys, args, needle):
    _write_results(tmp_path, train=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _exit_code(main, [str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def _exit_code(fn, argv) -> int:
    """``fn(argv)``'s return value, or the code of the SystemExit argparse raises."""
    try:
        return fn(argv)
    except SystemExit as exc:
        return exc.code


def test_build_rejects_bad_folders_and_formats(tmp_path):
    with pytest.raises(report.ResultsError, match="does not exist"):
        report.build(tmp_path / "missing")
    with pytest.raises(report.ResultsError, match="none of"):
        report.build(tmp_path)
    (tmp_path / "layers.parquet").write_bytes(b"not parquet")
    with pytest.raises(report.ResultsError, match="cannot read"):
        report.build(tmp_path)
    with pytest.raises(report.ResultsError, match="valid: pdf, png, svg"):
        report.build(tmp_path, formats=("jpg",))
    assert CLI_FORMATS == report.FORMATS


def test_main_prints_written_paths(tmp_path, capsys):
    _write_results(tmp_path, train=False)
    assert main([str(tmp_path), "--format", "png"]) == 0
    out = capsys.readouterr().out.split()
    assert str(tmp_path / "figures" / "grad_by_layer.png") in out
    assert all(Path(p).exists() for p in out)


def test_main_bad_format_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--format", "pdf,jpg"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--format" in err[0] and "jpg" in err[0]


def test_cli_bad_path_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr
    assert proc.stdout == ""


def test_report_imports_neither_ray_nor_wandb():
    code = ("import sys, analysis.report, analysis.__main__; "
            "bad = [m for m in ('ray', 'wandb', 'torch') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- isolation of items
#
# A sweep ends with report.build after hours of training: one item that raises
# must cost that item only. The faults below are injected where a real bug
# would sit: in a figure function (the ScalarFormatter error of style.log_axis),
# in a table function, in a report section, and in damaged files on disk.

SCALAR = "This method only works with the ScalarFormatter"


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc
    return fn


def _rel(paths, root):
    return {str(Path(p).relative_to(root)) for p in paths}


def _entries(md: str) -> list[str]:
    """The lines of report.md that name a failure."""
    return [ln for ln in md.splitlines()
            if re.search(r"could not (draw|make table|write|read) ", ln)]


def test_failing_figure_and_table_cost_only_themselves(tmp_path, monkeypatch, capsys):
    _write_results(tmp_path)
    report.build(tmp_path, formats=("png",))  # a good build first: its files must not linger
    assert (tmp_path / "figures" / "gradient_flow.png").exists()
    capsys.readouterr()
    monkeypatch.setattr(figures, "gradient_flow",
                        _raise(AttributeError(SCALAR + "\nsecond line of the message")))
    monkeypatch.setattr(report_items, "contrast_table", _raise(KeyError("final_test_acc")))
    result = report.build(tmp_path, formats=("png",))

    assert [(f.kind, f.name) for f in result.failures] == [("figure", "gradient_flow"),
                                                           ("table", "paired")]
    assert result.failures[0].reason == f"AttributeError: {SCALAR}"
    assert result.failures[1].reason == "KeyError: 'final_test_acc'"
    # Everything else is written, and the failed items leave no file (not even the old one).
    expected = ({f"figures/{f}.png" for f in FIGURES if f != "gradient_flow"}
                | {f"tables/{t}.{x}" for t in TABLES if t != "paired" for x in ("md", "tex")})
    assert _files(tmp_path) == expected
    assert _rel(result.written, tmp_path) == expected | {"report.md", "report.html"}
    entry_fig = f"could not draw gradient_flow: AttributeError: {SCALAR}"
    entry_tab = "could not make table paired: KeyError: 'final_test_acc'"
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    # Each failure: once in "Problems" at the top, once where the item would be.
    assert [e.count(entry_fig) + 2 * e.count(entry_tab) for e in _entries(md)] == [1, 2, 2, 1]
    assert md.index("## Problems") < md.index("## Spec")
    assert "second line" not in md and "second line" not in page
    assert page.count(html_escape(entry_fig)) == 2 and page.count(html_escape(entry_tab)) == 2
    assert '<figure id="gradient_flow" class="failed">' in page
    assert len(re.findall(r"<img ", page)) == len(FIGURES) - 1
    # The other items are intact: the summary table and the findings.
    assert "| mlp | 8 | plain | 8,000 | 1/2 (1 diverged) | 0.300 | 50.0 |" in md
    assert "- mlp depth 8: residual minus plain test accuracy +10.0 pp" in md
    # One warning line per failure on stderr; the full tracebacks in the log.
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {entry_fig}", f"warning: {entry_tab}"]
    assert result.log == str(tmp_path / "report_errors.log")
    log = Path(result.log).read_text()
    assert log.count("Traceback (most recent call last)") == 2
    assert "second line of the message" in log and "in fn" in log  # the raising frame


def test_error_log_describes_the_latest_build_only(tmp_path, monkeypatch):
    _write_results(tmp_path, train=False)
    monkeypatch.setattr(figures, "grad_by_layer", _raise(ValueError("first")))
    first = report.build(tmp_path, formats=("png",))
    assert "=== figure grad_by_layer: ValueError: first" in Path(first.log).read_text()
    monkeypatch.setattr(figures, "grad_by_layer", _raise(ValueError("second")))
    monkeypatch.setattr(figures, "act_by_layer", _raise(ValueError("third")))
    log = Path(report.build(tmp_path, formats=("png",)).log).read_text()
    assert "first" not in log and "2 item(s) failed" in log
    monkeypatch.undo()
    clean = report.build(tmp_path, formats=("png",))
    assert clean.failures == [] and clean.log is None
    assert not (tmp_path / "report_errors.log").exists()
    assert "## Problems" not in (tmp_path / "report.md").read_text()


def test_failing_section_keeps_the_others(tmp_path, monkeypatch):
    _write_results(tmp_path)
    monkeypatch.setattr(report_text, "env_lines", _raise(TypeError("bad environment record")))
    result = report.build(tmp_path, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures] == [("section", "environment")]
    md = (tmp_path / "report.md").read_text()
    entry = "could not write environment: TypeError: bad environment record"
    assert f"## Environment\n\n- **{entry}**" in md
    for heading in ("## Findings", "## Spec", "## Plan and status", "## Tables", "## Figures",
                    "## Weights & Biases"):
        assert heading in md
    assert f'<p class="failed">{entry}</p>' in (tmp_path / "report.html").read_text()


def test_duplicate_trials_fail_the_paired_items_not_the_report(tmp_path):
    """A frame the statistics reject (two trials of one cell and seed) is a real
    fault, not an injected one: findings and the paired table name it, the rest stands."""
    _write_results(tmp_path)
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    dup = trials.iloc[[0]].assign(trial_id="mlp-5-plain-s0-again")
    pd.concat([trials, dup]).to_parquet(tmp_path / "trials.parquet")
    result = report.build(tmp_path, formats=("png",))
    # everything built on the seed-paired statistics: the report's multiplicity family,
    # the interaction figure, the contrast tables and the findings that use them
    assert {(f.kind, f.name) for f in result.failures} == {
        ("section", "multiplicity family"), ("section", "interaction findings"),
        ("section", "findings"), ("section", "survivorship findings"),
        ("figure", "interaction"), ("table", "paired"), ("table", "factor_effects"),
        ("table", "improvement"), ("table", "survivorship")}
    assert all(f.reason.startswith("ValueError: more than one trial per (cell, seed)")
               for f in result.failures)
    assert (tmp_path / "tables" / "summary.md").exists()
    assert "| mlp | 5 | plain | 5,000 | 3 |" in (tmp_path / "tables" / "summary.md").read_text()


def test_corrupt_feature_file_costs_its_figure_only(tmp_path):
    _write_results(tmp_path)
    (tmp_path / "features" / "mlp-5-residual-s0.npz").write_bytes(b"PK\x03\x04 truncated")
    result = report.build(tmp_path, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures] == [("figure", "features_mlp-5-residual-s0")]
    assert result.failures[0].reason.startswith("BadZipFile: ")
    assert _files(tmp_path) == {f"figures/{f}.png" for f in FIGURES[:-1]} | {
        f"tables/{t}.{x}" for t in TABLES for x in ("md", "tex")}
    assert "could not draw features_mlp-5-residual-s0: BadZipFile" in \
        (tmp_path / "report.md").read_text()


def test_damaged_epochs_beside_good_trials_is_an_entry_not_a_crash(tmp_path):
    _write_results(tmp_path)
    (tmp_path / "epochs.parquet").write_bytes(b"PAR1 not really parquet")
    result = report.build(tmp_path, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures] == [("input", "epochs.parquet")]
    # Only the epoch figures are missing; the trials and layers items are all there.
    epoch_figs = {"training_curves", "training_curves_by_depth"}
    assert _files(tmp_path) == {f"figures/{f}.png" for f in FIGURES if f not in epoch_figs} | {
        f"tables/{t}.{x}" for t in TABLES for x in ("md", "tex")}
    md = (tmp_path / "report.md").read_text()
    assert [ln for ln in _entries(md)] == [f"- {result.failures[0].entry}"]
    assert result.failures[0].entry.startswith("could not read epochs.parquet: ")
    assert "ArrowInvalid" in Path(result.log).read_text()


def test_damaged_trials_is_still_bad_input(tmp_path):
    """Without trials.parquet every count would be wrong: that is exit 2, not a report."""
    _write_results(tmp_path)
    (tmp_path / "trials.parquet").write_bytes(b"not parquet")
    with pytest.raises(report.ResultsError, match=r"cannot read .*trials\.parquet"):
        report.build(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_main_exits_1_after_writing_the_rest(tmp_path, monkeypatch, capsys):
    _write_results(tmp_path, train=False)
    monkeypatch.setattr(figures, "act_by_layer", _raise(AttributeError(SCALAR)))
    assert main([str(tmp_path), "--format", "png"]) == 1
    out, err = capsys.readouterr()
    assert out.split()[-1] == str(tmp_path / "report.html")
    assert str(tmp_path / "figures" / "grad_by_layer.png") in out.split()
    err = err.strip().splitlines()
    assert err[0] == f"warning: could not draw act_by_layer: AttributeError: {SCALAR}"
    assert err[-1].startswith("python -m analysis: 1 item(s) failed")
    assert err[-1].endswith(f"tracebacks in {tmp_path / 'report_errors.log'}")


def test_cli_exits_1_on_a_damaged_optional_file(tmp_path):
    """The real process, no monkeypatch: a damaged layers.parquet beside good trials."""
    _write_results(tmp_path, train=False)
    (tmp_path / "layers.parquet").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path), "--format", "png"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.split()[-1] == str(tmp_path / "report.html")
    last = proc.stderr.strip().splitlines()[-1]
    assert "1 item(s) failed" in last and str(tmp_path / "report_errors.log") in last
    assert "could not read layers.parquet" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "tables" / "summary.md").exists()


@pytest.mark.parametrize("text,reason", [
    ('{"spec": {"name": "cut', "JSONDecodeError: Unterminated string"),
    ("[1, 2]", "ValueError: expected a JSON object, found list"),
    ('{"spec": "train"}', "ValueError: 'spec' is not an object"),
])
def test_damaged_spec_json_is_named_and_the_report_built(tmp_path, text, reason):
    _write_results(tmp_path, train=False)
    (tmp_path / "spec.json").write_text(text)
    result = report.build(tmp_path, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures] == [("input", "spec.json")]
    assert result.failures[0].reason.startswith(reason)
    md = (tmp_path / "report.md").read_text()
    assert f"- could not read spec.json: {reason}" in md
    assert "- **spec**: spec.json missing or unreadable" in md
    assert (tmp_path / "figures" / "grad_by_layer.png").exists()


# --------------------------------------------------------------------------- factors

def _with_default_factor_columns(src: Path, dst: Path) -> None:
    """``src`` as a folder written today: every row carries every factor's column at the
    family's default level ("n/a" where it does not apply)."""
    import shutil

    from ablations import levels
    shutil.copytree(src, dst)
    for name in ("trials", "layers", "epochs"):
        path = dst / f"{name}.parquet"
        if path.exists():
            levels.with_levels(pd.read_parquet(path)).to_parquet(path)


def _body(md: str) -> str:
    """report.md without its title and generation lines (folder name and time)."""
    return "\n".join(md.splitlines()[3:])


def test_residual_only_report_is_the_same_with_or_without_factor_columns(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    _write_results(old)
    _with_error_trial(old)
    _with_default_factor_columns(old, new)
    assert "branch_scale" in pd.read_parquet(new / "layers.parquet")
    for run in (old, new):
        assert report.build(run, formats=("png",)).failures == []
    assert _body((new / "report.md").read_text()) == _body((old / "report.md").read_text())
    assert _files(new) == _files(old)
    for table in sorted((old / "tables").glob("*")):
        assert (new / "tables" / table.name).read_text() == table.read_text(), table.name
    md = (old / "report.md").read_text()
    assert ("## Findings (the depth x residual interaction first; then residual minus plain, "
            "paired by seed)") in md
    assert "| family | depth | variant | params |" in md  # no factor columns in the summary
    assert ("| family | depth | factor | contrast | metric | difference | pairs | unpaired | "
            "p (t, Holm) | p (Wilcoxon, Holm) | q (t, BH) |") in md


def test_multi_factor_report(tmp_path):
    from tests.analysis.test_findings import ONE, PLAIN, write_folder
    run = write_folder(tmp_path / "run")
    result = report.build(run, formats=("png",))
    assert [(f.kind, f.name) for f in result.failures if f.kind != "figure"] == []
    tables = {p.name for p in (run / "tables").glob("*.md")}
    # one seed-article table per residual cell, named like trial ids (non-default levels)
    assert tables == {"summary.md", "paired.md", "factor_effects.md", "robust.md",
                      "improvement.md", "failures.md", "survivorship.md",
                      "grad_resnet-32-norm=none.md", "grad_resnet-32-norm=none-scale=zero.md"}
    summary = (run / "tables" / "summary.md").read_text().splitlines()
    # norm is "none" throughout and shortcut one level or n/a: neither is shown
    assert summary[0] == ("| family | depth | variant | branch_scale | params | n | train loss "
                          "| test acc (%) |")
    assert summary[2].startswith("| resnet | 32 | plain | n/a | 470,000 | 0/2 (2 diverged) |")
    paired = (run / "tables" / "paired.md").read_text().splitlines()
    assert paired[0].startswith("| family | depth | factor | contrast | within | metric |")
    assert ("| resnet | 32 | branch_scale | zero - one | residual | test acc (pp) | 50.0 "
            "| 2 | 0 | n/a (2 seeds: means only) | n/a (2 seeds: means only) | n/a |") in paired
    md = (run / "report.md").read_text()
    assert "| family | depth | variant | branch_scale | planned | completed | diverged |" in md
    assert f"- {PLAIN}" in md and f"- {ONE}" in md
    grad = (run / "tables" / "grad_resnet-32-norm=none-scale=zero.md").read_text()
    assert "| conv1.weight | 1.00e-03 | 1.00e-03 | 1.00 |" in grad
    assert "(branch_scale=zero)" in md  # the caption names the levels


@pytest.mark.parametrize("where,trials", [
    (["norm=none"], 6), (["branch_scale=zero,one"], 6), (["branch_scale=one"], 4),
    (["residual=plain"], 2), (["block=post", "shortcut=projection"], 6),
])
def test_where_accepts_every_factor(tmp_path, where, trials):
    from tests.analysis.test_findings import write_folder
    run = write_folder(tmp_path / "run")
    out = tmp_path / "view"
    assert main([str(run), "--format", "png", "--out", str(out),
                 *[a for w in where for a in ("--where", w)]]) == 0
    assert f"**{trials} trials:" in (out / "report.md").read_text()


def test_where_factor_on_an_old_folder_uses_the_default_level(tmp_path):
    _write_results(tmp_path, train=False)  # mlp: norm none, block post by default
    report.build(tmp_path, formats=("png",), where=report.parse_where(["norm=none",
                                                                       "block=post"]))
    md = (tmp_path / "views" / "norm=none_block=post" / "report.md").read_text()
    assert "**8 trials: 8 completed, 0 diverged, 0 errored.**" in md


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_cli_with_out_writes_nothing_into_the_folder_it_reads(tmp_path, jobs):
    run, out = tmp_path / "run", tmp_path / "elsewhere"
    _write_results(run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main([str(run), "--out", str(out), "--format", "png", "--jobs", jobs]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert (out / "wandb_report.json").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("dataset,root,shown", [
    ("synthetic", "/home/u/data", "synthetic, subset 512, val fraction 0.1"),
    ("cifar10", "/home/u/data", "cifar10 (/home/u/data), subset 512, val fraction 0.1"),
])
def test_the_spec_names_a_data_folder_only_where_it_was_read(dataset, root, shown):
    spec = {"mode": "train", "train": {"dataset": dataset, "data_root": root, "subset": 512,
                                       "val_fraction": 0.1, "epochs": 2}}
    assert dict(report_text.spec_lines({"spec": spec}))["data"] == shown
