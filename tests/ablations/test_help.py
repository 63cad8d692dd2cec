"""``python sweep.py --help``: every option that takes a value says its default once, in
words (no ``None``, no Python tuple reprs); its metavar says what goes there; the
options sit in the sections study, training, resources, tracking and output."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ablations import arguments, helptext

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("study", "training", "resources", "tracking", "output")


def entries(help_text: str) -> dict[str, str]:
    """``{"--depths": "--depths N,N,... depths ... (default: 5,18,34; --smoke: 4)"}``: each
    option's entry of the help, its wrapped lines joined."""
    out, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-\w|--[\w-]+)", line)
        if m:
            current = m.group(1)
            out[current] = line.strip()
        elif current and line.startswith("    "):
            out[current] += " " + line.strip()
        else:
            current = None
    return {k: re.sub(r"(\w)- (\w)", r"\1-\2", v) for k, v in out.items()}  # wrapped "pixel- mean"


@pytest.fixture(scope="module")
def sweep_help() -> str:
    p = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def value_options(parser):
    return [a for a in parser._actions if a.option_strings and a.nargs != 0]


def test_every_option_says_its_default_once_in_words(sweep_help):
    found = entries(sweep_help)
    parser = arguments.build_parser()
    for action in parser._actions:
        flag = action.option_strings[0]
        text = found[flag]
        if action.nargs == 0:  # a switch: off unless given, said once in the description
            assert "(default:" not in text, text
            continue
        assert text.count("(default:") == 1, text
        default = text[text.index("(default:"):]
        assert not re.search(r"\bNone\b|\(\)|\('|\(\d+,", default), text
    assert "a switch (an option without a value) is off unless given" in sweep_help


def test_the_defaults_said_are_the_defaults_used(sweep_help):
    found = entries(sweep_help)
    spec = arguments.spec_from_args(arguments.build_parser().parse_args([]))
    assert "(default: 5,18,34; --smoke: 4)" in found["--depths"] and spec.depths == (5, 18, 34)
    assert "(default: mlp,resnet)" in found["--families"]
    assert "(default: 5000; --smoke: 512)" in found["--subset"] and spec.train.subset == 5000
    assert "(default: cifar10; --smoke: synthetic)" in found["--dataset"]
    assert f"(default: {spec.train.stats_every};" in found["--stats-every"]
    assert "(default: 0.1 in every --recipe)" in found["--lr"] and spec.train.lr == 0.1
    assert "he2016 0.0001" in found["--weight-decay"]
    assert "(default: 10)" in found["--checkpoint-every"]  # 10.0 written plainly
    assert "(default: none)" in found["--tune"] and "(default: none)" in found["--models"]
    assert "(default: results)" in found["--out"] and "(default: auto)" in found["--device"]
    # a factor's default: the recipes' levels, else each family's own, said once
    assert re.search(r"--norm LEVELS .*\(default: from --recipe: default mlp layer; otherwise "
                     r"each family's own: mlp \w+, resnet batch\)$", found["--norm"])


def test_metavars_say_what_goes_there(sweep_help):
    found = entries(sweep_help)
    for action in value_options(arguments.build_parser()):
        flag = action.option_strings[0]
        if action.choices:
            assert "{" in found[flag], found[flag]
            continue
        assert action.metavar is not None, f"{flag} has argparse's own metavar"
        auto = action.dest.upper()
        assert action.metavar != auto or auto == "NAME", f"{flag} {action.metavar}"
    for bad in ("--tune TUNE", "--out OUT", "--depths DEPTHS", "--cpus-per-trial CPUS_PER"):
        assert bad not in sweep_help


def test_options_are_grouped_in_sections(sweep_help):
    headers = re.findall(r"^(\w[\w ]*):$", sweep_help, flags=re.M)
    assert headers == ["options", *SECTIONS]
    parser = arguments.build_parser()
    where = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert where["depths"] == where["smoke"] == where["norm"] == "study"
    assert where["epochs"] == where["data_root"] == where["download"] == "training"
    assert where["gpus_per_trial"] == where["device"] == "resources"
    assert where["wandb"] == where["wandb_report"] == "tracking"
    assert where["out"] == where["resume"] == "output"


def test_the_formatter_writes_defaults_plainly():
    assert helptext.plain((5, 18, 34)) == "5,18,34" and helptext.plain(()) == "none"
    assert helptext.plain(10.0) == "10" and helptext.plain(("mlp", "resnet")) == "mlp,resnet"
    p = argparse.ArgumentParser(formatter_class=helptext.HelpFormatter)
    p.add_argument("--a", default=(1, 2), help="list")
    p.add_argument("--b", default=None, help="later (default: from --mode)")
    p.add_argument("--c", action="store_true", help="switch")
    got = entries(p.format_help())
    assert got["--a"].endswith("list (default: 1,2)")
    assert got["--b"].endswith("later (default: from --mode)")
    assert got["--c"].endswith("switch")
