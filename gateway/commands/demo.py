"""``fieldgate demo``: run the whole pipeline on loopback."""

from __future__ import annotations

import argparse
import sys

HELP = "run the whole pipeline on loopback"


def configure(parser: argparse.ArgumentParser) -> None:
    """Not implemented yet."""


def run(args: argparse.Namespace) -> int:
    """Not implemented yet."""
    print("fieldgate: this command is not implemented yet", file=sys.stderr)
    return 1
