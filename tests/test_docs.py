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
