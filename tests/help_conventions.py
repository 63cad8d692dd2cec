"""The checks every command's ``--help`` passes (sweep.py's in tests/ablations/test_help.py;
``python -m analysis`` and ``python -m ablations.measure`` in their own tests): each
option that takes a value says its default once, in words; a switch says none; a metavar
says what goes there; the options sit in named sections."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.ablations.test_help import entries

ROOT = Path(__file__).resolve().parents[1]
# A Python repr where a default should be in words: None, (), ('a', ...), (1, ...), [].
REPR = re.compile(r"\bNone\b|\(\)|\('|\(\d+,|\[\]|\['")

__all__ = ["entries", "help_of", "check_conventions"]


def help_of(module: str) -> str:
    """``python -m MODULE --help`` of this tree, as a user sees it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    p = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def check_conventions(help_text: str, parser, sections: tuple[str, ...]) -> None:
    """Assert the conventions on ``help_text``, the ``--help`` of ``parser``."""
    found = entries(help_text)
    assert not re.search(r"\(default(?!:)", help_text), "a default without its colon"
    for action in parser._actions:
        if not action.option_strings:  # a positional: its metavar says what goes there
            assert action.metavar and action.metavar.isupper(), action.dest
            assert re.search(rf"^  {action.metavar} ", help_text, flags=re.M), action.dest
            continue
        flag = action.option_strings[0]
        if flag == "-h":
            continue
        text = found[flag]
        if action.nargs == 0:  # a switch: off unless given, said once in the description
            assert "(default:" not in text, text
            continue
        assert text.count("(default:") == 1, text
        assert not REPR.search(text[text.index("(default:"):]), text
        if action.choices:
            assert "{" in text, text
        else:
            assert action.metavar is not None, f"{flag} has argparse's own metavar"
            assert action.metavar != action.dest.upper(), f"{flag} {action.metavar}"
            assert f"{flag} {action.metavar}" in text, text
    headers = re.findall(r"^(\w[\w ]*):$", help_text, flags=re.M)
    positional = ["positional arguments"] if any(
        not a.option_strings for a in parser._actions) else []
    assert headers == [*positional, "options", *sections], headers
    assert "Each option below says its default" in " ".join(help_text.split())
