"""``fieldgate status``: show the running gateway's status."""

from __future__ import annotations

import argparse
import sys

HELP = "show the running gateway's status"


def configure(parser: argparse.ArgumentParser) -> None:
    """Not implemented yet."""


def run(args: argparse.Namespace) -> int:
    """Not implemented yet."""
    print("fieldgate: this command is not implemented yet", file=sys.stderr)
    return 1
