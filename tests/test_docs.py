"""The documentation site builds with every warning an error, and its command-line
reference is generated from the parsers, so a flag added, renamed or removed shows up
there without anyone editing the page.

The build runs ``mkdocs build --strict`` (the docs tools come with the ``test`` extra)
into a temporary folder; broken links, missing images, pages missing from the nav and
docstrings mkdocstrings cannot render all fail it.
"""
from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("sweep", "analysis", "measure")


def load_hook():
    """docs/hooks/cli_reference.py, imported by path as mkdocs imports it."""
    spec = importlib.util.spec_from_file_location("cli_reference_hook",
                                                  ROOT / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module's tests: (folder, build log)."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[test]' (the docs tools are "
                    "in the test extra)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{log[-4000:]}"
    return out, log


def test_the_site_builds_strict_with_every_page(site):
    out, log = site
    assert "WARNING" not in log, log
    for page in ("index.html", "getting-started/index.html", "reference/cli/index.html",
                 "reference/api/index.html", "how-to/extending/index.html",
                 "studies/degradation/index.html"):
        assert (out / page).is_file(), page
    api = (out / "reference" / "api" / "index.html").read_text()
    assert "create_model" in api and "ReportItem" in api  # rendered from the docstrings


def test_the_cli_page_lists_every_option_of_every_parser(site):
    out, _ = site
    page = html.unescape((out / "reference" / "cli" / "index.html").read_text())
    hook = load_hook()
    for command in COMMANDS:
        names = hook.option_strings(command)
        assert len(names) > 3, command
        missing = [n for n in names if n not in page]
        assert not missing, f"{command}: not on the CLI page: {missing}"
    assert "<!-- cli:" not in page  # every marker was replaced


def test_the_cli_page_is_generated_not_written(monkeypatch):
    """A flag that exists only in the parser appears in the rendered page, with its
    group, help and default; the page's source holds no option of its own."""
    from ablations import arguments
    hook = load_hook()
    real = arguments.build_parser

    def with_probe(*args, **kwargs):
        parser = real(*args, **kwargs)
        group = parser.add_argument_group("a group only the test has")
        group.add_argument("--docs-probe", type=int, default=7, help="only in the parser")
        return parser

    monkeypatch.setattr(arguments, "build_parser", with_probe)
    text = hook.render("sweep")
    assert "### a group only the test has" in text
    assert "--docs-probe DOCS_PROBE" in text and "only in the parser" in text
    assert "(default: 7)" in text
    source = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert "<!-- cli: sweep -->" in source
    parser_flags = {s for a in real()._actions if not isinstance(a, argparse._HelpAction)
                    for s in a.option_strings if s.startswith("--")}
    written = [f for f in parser_flags if f"`{f}" in source.split("## Bad input")[0]]
    assert not written, f"options written by hand on the CLI page: {written}"


def test_an_option_without_help_still_shows_its_default():
    hook = load_hook()
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--level", choices=("a", "b"), default="b")
    p.add_argument("--items", default=(1, 2))
    p.add_argument("--flag", action="store_true")
    dl = "\n".join(hook._option(p, a, "x") for a in p._actions[1:])
    assert "(default: b)" in dl and "(default: 1,2)" in dl
    assert "default: False" not in dl


# --- the prose against the code -------------------------------------------------------

PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md")
                                      if "assets" not in p.relative_to(ROOT / "docs").parts)
# Options of other programs that the pages show: `ray start --head --port --num-cpus`,
# `ray stop --force`, `mkdocs build --strict`, and `--help` (argparse's own).
OTHER_PROGRAMS = {"--head", "--port", "--num-cpus", "--force", "--strict", "--help"}


def test_every_option_the_pages_name_exists():
    """A flag renamed or removed in a parser fails here until README and docs follow."""
    hook = load_hook()
    known = {n for c in COMMANDS for n in hook.option_strings(c)} | OTHER_PROGRAMS
    stale = sorted({(m.group(0), str(p.relative_to(ROOT))) for p in PAGES
                    for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*", p.read_text())
                    if m.group(0) not in known})
    assert not stale, f"options no parser has: {stale}"


def _shape(text: str) -> str:
    """An estimate line with its numbers and durations (42s, 6m12s, 1h05m) replaced."""
    return re.sub(r"\d[\d.,]*[dhms\d]*", "N", text)


def estimate_lines(started: bool, monkeypatch) -> str:
    """The line ``ablations.estimate.line`` prints today, with timings made up."""
    from ablations import estimate
    from ablations.arguments import build_parser, spec_from_args
    from ablations.plan import expand
    spec = spec_from_args(build_parser().parse_args(["--smoke", "--families", "mlp"]))
    trials, _ = expand(spec)
    monkeypatch.setattr(estimate, "estimate_epochs", lambda *a, **k: {t.cell: 1.0 for t in trials})
    monkeypatch.setattr(estimate, "measure_seconds", lambda *a, **k: {})
    text, _ = estimate.line(spec, trials, {"train": 100, "val": 10, "test": 10}, slots=2,
                            started=started)
    assert text.startswith("estimate: about ") and ("start-up" in text) == (not started)
    return text


def test_the_pasted_estimate_lines_have_todays_shape(monkeypatch):
    """Every ``estimate: about ...`` line pasted into README or docs reads as the code
    prints it now (numbers aside; an abridged line up to its ``...``): a sweep's (no
    start-up part) or a dry run's."""
    shapes = [_shape(estimate_lines(started, monkeypatch)) for started in (True, False)]
    pasted = [(p.relative_to(ROOT), line.strip()) for p in PAGES
              for line in p.read_text().splitlines()
              if line.strip().startswith("estimate: about ")]
    assert len(pasted) >= 3  # README's smoke and dry run, getting started, training
    stale = [(str(p), line) for p, line in pasted
             if not any(s.startswith(_shape(line).split("...")[0]) for s in shapes)]
    assert not stale, f"estimate lines the code no longer prints: {stale}; now: {shapes}"


def test_the_readme_is_a_front_door_whose_links_resolve():
    """README stays short (the reference lives in docs/), and every relative link and
    image of it names a file of the repository (mkdocs never sees README)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert len(local) > 10
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    for command in ("python sweep.py --smoke", "--dry-run", "mkdocs build --strict"):
        assert command in text, command
