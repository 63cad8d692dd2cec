"""``python -m analysis --help``: each option says its default once, in words (no Python
reprs); its metavar says what goes there; the options sit in the sections view, figures,
output and tracking; ``--where`` names every registered factor with its levels."""
from __future__ import annotations

import pytest

import analysis.__main__ as entry
from ablations import factors
from ablations.factors import Factor, styled_levels
from ablations.where import parse_where, where_keys
from tests.help_conventions import check_conventions, entries, help_of

SECTIONS = ("view", "figures", "output", "tracking")


@pytest.fixture(scope="module")
def analysis_help() -> str:
    return help_of("analysis")


def test_the_help_keeps_the_conventions(analysis_help):
    check_conventions(analysis_help, entry.build_parser(), SECTIONS)
    for bad in ("--format FORMAT ", "--out OUT", "run_dir", "(default pdf"):
        assert bad not in analysis_help


def test_the_defaults_said_are_the_defaults_used(analysis_help):
    found = entries(analysis_help)
    args = entry.build_parser().parse_args(["results/x"])
    assert found["--format"].endswith("(default: pdf,png)") and args.format == ("pdf", "png")
    assert found["--style"].endswith("(default: paper)") and args.style == "paper"
    assert found["--width"].endswith("(default: double)") and args.width == "double"
    assert found["--jobs"].endswith("(default: auto)") and args.jobs is None  # None: auto
    assert found["--where"].endswith("(default: every row)") and args.where == []
    assert found["--wandb-report"].endswith("(default: none: not published)")
    assert args.wandb_report is None and args.out is None
    parser = entry.build_parser()
    where = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert where["where"] == "view" and where["format"] == where["width"] == "figures"
    assert where["out"] == where["jobs"] == "output" and where["wandb_report"] == "tracking"


def test_where_names_every_factor_and_level_it_accepts(analysis_help):
    text = entries(analysis_help)["--where"]
    for key in where_keys():
        assert key in text, key
    for f in factors.all_factors():
        assert f"{f.name}={'/'.join(f.level_names)}" in text, f.name
        for level in f.level_names:  # every level the help names, --where accepts
            parse_where([f"{f.name}={level}"])
    assert "activation=relu/gelu" in text


def test_where_help_follows_the_registry():
    """A factor registered later appears in the help without touching it."""
    toy = Factor(name="toy_width", label="width", tag="tw", families=("mlp",),
                 default={"mlp": "x1"}, levels=styled_levels(("x1", "x1"), ("x2", "x2")),
                 baseline="x1")
    factors.register(toy)
    try:
        found = entries(entry.build_parser().format_help())
    finally:
        factors.unregister("toy_width")
    assert "toy_width=x1/x2" in found["--where"]
    assert "toy_width" not in entries(entry.build_parser().format_help())["--where"]
