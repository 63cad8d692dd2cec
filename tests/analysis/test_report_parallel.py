"""report.build with several jobs: the serial build's files, report and failures, from
forked workers; a figure that raises or a worker that dies costs only its own item."""
import os
import re
import signal
from pathlib import Path

import pytest

from analysis import figures, report, report_items, report_pool
from analysis.__main__ import main
from analysis.saving import save_figure, save_figure_once
from tests.analysis.test_report import FIGURES, TABLES, _files, _raise, _write_results

pytestmark = pytest.mark.skipif(not report_pool.available(), reason="needs the fork start method")


def _md(run_dir: Path) -> list[str]:
    """report.md without its time stamp and with its folder's name replaced."""
    text = (run_dir / "report.md").read_text().replace(str(run_dir), "RUN")
    return [ln for ln in text.splitlines() if not ln.startswith("Generated ")]


def _build_both(tmp_path, capsys, **kw):
    """The same results built serially and with 2 jobs: (serial, parallel) results,
    folders and stderr lines."""
    out = {}
    for jobs in (1, 2):
        run = tmp_path / f"jobs{jobs}" / "run"  # one name: the report's title
        _write_results(run)
        capsys.readouterr()
        result = report.build(run, jobs=jobs, **kw)
        out[jobs] = (result, run, capsys.readouterr().err.splitlines())
    return out[1], out[2]


def test_parallel_build_writes_the_serial_builds_files_and_report(tmp_path, capsys):
    (serial, run1, err1), (parallel, run2, err2) = _build_both(tmp_path, capsys)
    expected = ({f"figures/{f}.{x}" for f in FIGURES for x in ("pdf", "png")}
                | {f"tables/{t}.{x}" for t in TABLES for x in ("md", "tex")})
    assert _files(run1) == _files(run2) == expected
    assert ([str(Path(p).relative_to(run1)) for p in serial.written]
            == [str(Path(p).relative_to(run2)) for p in parallel.written])
    assert serial.failures == parallel.failures == [] and err1 == err2 == []
    assert _md(run1) == _md(run2)
    for t in TABLES:  # tables are made by the same code in either build: the same bytes
        for x in ("md", "tex"):
            assert (run1 / "tables" / f"{t}.{x}").read_bytes() == \
                (run2 / "tables" / f"{t}.{x}").read_bytes()
    for f in FIGURES:  # so are the figures, each laid out once for its formats
        assert (run1 / "figures" / f"{f}.png").read_bytes() == \
            (run2 / "figures" / f"{f}.png").read_bytes()
    # The HTML embeds every figure, as a PNG, in either build.
    for run in (run1, run2):
        page = (run / "report.html").read_text()
        assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', page)) == len(FIGURES)


def test_failures_in_workers_read_as_in_the_serial_build(tmp_path, monkeypatch, capsys):
    """A figure and a table that raise, and a worker that dies: each is a "could not"
    line of its own item, the failures and their warnings in the serial build's order
    (plan order, whichever worker finished first), everything else written."""
    monkeypatch.setattr(figures, "gradient_flow", _raise(AttributeError("no ticks")))
    monkeypatch.setattr(report_items, "contrast_table", _raise(KeyError("final_test_acc")))
    (serial, run1, err1), (parallel, run2, err2) = _build_both(tmp_path, capsys,
                                                               formats=("png",))
    entries = ["could not draw gradient_flow: AttributeError: no ticks",
               "could not make table paired: KeyError: 'final_test_acc'"]
    assert [f.entry for f in serial.failures] == [f.entry for f in parallel.failures] == entries
    assert err1 == err2 == [f"warning: {e}" for e in entries]
    assert _md(run1) == _md(run2)
    assert _files(run1) == _files(run2)
    assert not (run2 / "figures" / "gradient_flow.png").exists()
    log = Path(parallel.log).read_text()  # the worker's traceback came back whole
    assert log.count("Traceback (most recent call last)") == 2 and "in fn" in log


def test_a_worker_that_dies_costs_only_the_figure_it_was_drawing(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _write_results(run)
    report.build(run, formats=("png",), jobs=2)  # a good build first: its files must go
    assert (run / "figures" / "act_through_training.png").exists()
    parent = os.getpid()

    def die(*_, **__):
        assert os.getpid() != parent, "drawn in the test process: it would be killed"
        os.kill(os.getpid(), signal.SIGKILL)
    monkeypatch.setattr(figures, "act_through_training", die)
    capsys.readouterr()
    result = report.build(run, formats=("png",), jobs=2)

    entry = "could not draw act_through_training: worker process died (signal SIGKILL)"
    assert [f.entry for f in result.failures] == [entry]
    assert capsys.readouterr().err.splitlines() == [f"warning: {entry}"]
    expected = ({f"figures/{f}.png" for f in FIGURES if f != "act_through_training"}
                | {f"tables/{t}.{x}" for t in TABLES for x in ("md", "tex")})
    assert _files(run) == expected  # the items after it were made by a new worker
    md = (run / "report.md").read_text()
    assert md.count(entry) == 2  # in "Problems" and where the figure would be
    assert "=== figure act_through_training: worker process died" in Path(result.log).read_text()


def test_run_tasks_survives_a_dying_worker_and_an_unpicklable_result():
    parent = os.getpid()

    def run(i):
        assert os.getpid() != parent
        if i == 2:
            os._exit(3)
        return (lambda: 0) if i == 4 else i * i  # a lambda cannot be pickled

    got = {}
    report_pool.run_tasks(range(7), run, 2, got.__setitem__)
    assert sorted(got) == list(range(7))
    assert got[2] == report_pool.Lost("worker process died (exit code 3)")
    assert isinstance(got[4], report_pool.Lost) and "could not be sent back" in got[4].reason
    assert [got[i] for i in (0, 1, 3, 5, 6)] == [0, 1, 9, 25, 36]


def test_run_tasks_kills_a_hung_worker_and_finishes_the_rest():
    """A forked worker that never answers (e.g. deadlocked on a lock held at the fork)
    costs its task only: killed after the timeout, replaced for the other tasks."""
    import time

    def run(i):
        if i == 1:
            time.sleep(60)
        return i * 10
    got = {}
    t0 = time.monotonic()
    report_pool.run_tasks(range(5), run, 2, got.__setitem__, task_timeout=2.0)
    assert time.monotonic() - t0 < 30
    assert got[1] == report_pool.Lost("worker process timed out after 2 s")
    assert {i: v for i, v in got.items() if i != 1} == {0: 0, 2: 20, 3: 30, 4: 40}


def test_save_figure_once_writes_what_save_figure_writes(tmp_path):
    from matplotlib.figure import Figure

    def fig():
        f = Figure(figsize=(3, 2), layout="constrained")
        ax = f.add_subplot()
        ax.plot([1, 2, 3], [1e-3, 1e-1, 1])
        ax.set_yscale("log")
        ax.set_title("a title")
        return f
    old = save_figure(fig(), tmp_path / "old" / "f", ("pdf", "png", "svg"))
    new, png = save_figure_once(fig(), tmp_path / "new" / "f", ("pdf", "png", "svg"))
    assert [Path(p).name for p in old] == [Path(p).name for p in new] == ["f.pdf", "f.png", "f.svg"]
    assert png == Path(new[1]).read_bytes()
    assert Path(new[0]).read_bytes().startswith(b"%PDF") and b"<svg" in Path(new[2]).read_bytes()
    # Laid out and cropped once: the same size as each format laid out on its own.
    from PIL import Image
    assert Image.open(new[1]).size == Image.open(old[1]).size
    _, preview = save_figure_once(fig(), tmp_path / "pdf_only" / "f", ("pdf",))
    assert preview.startswith(b"\x89PNG") and not (tmp_path / "pdf_only" / "f.png").exists()
    assert [p.name for p in (tmp_path / "new").iterdir()] != [] and \
        not list((tmp_path / "new").glob(".*.tmp"))


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5"])
def test_cli_bad_jobs_is_one_line_and_exit_2(tmp_path, capsys, value):
    _write_results(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--jobs", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--jobs" in err[0] and "auto or a whole number >= 1" in err[0]
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("jobs", [0, -1, 1.5, "2", True])
def test_build_rejects_a_bad_jobs_before_writing(tmp_path, jobs):
    _write_results(tmp_path)
    with pytest.raises(report.ResultsError, match="jobs must be"):
        report.build(tmp_path, jobs=jobs)
    assert not (tmp_path / "report.md").exists()


def test_cli_with_jobs_writes_the_report_and_the_wandb_spec(tmp_path, capsys):
    """With 2 jobs the W&B report spec is written by a forked process; the command
    prints the same paths, in the same order, as with --jobs 1."""
    printed = {}
    for jobs in ("1", "2"):
        run = tmp_path / f"jobs{jobs}"
        _write_results(run)
        capsys.readouterr()
        assert main([str(run), "--jobs", jobs, "--format", "png"]) == 0
        out = capsys.readouterr().out.split()
        printed[jobs] = [str(Path(p).relative_to(run)) for p in out]
        assert (run / "wandb_report.json").is_file()
    assert printed["1"] == printed["2"]
    assert printed["2"][-3:] == ["wandb_report.json", "report.md", "report.html"]
