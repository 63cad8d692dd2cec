"""The command-line conventions shared by ``sweep.py`` and ``python -m analysis``."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr naming the flag and the valid values, exit 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
