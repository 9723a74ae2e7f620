"""encrypt a message and send it to a push subscription."""

from __future__ import annotations

import argparse
import sys

HELP = "encrypt a message and send it to a push subscription"


def configure(parser: argparse.ArgumentParser) -> None:
    """Not implemented yet."""


def run(args: argparse.Namespace) -> int:
    """Not implemented yet."""
    print("fieldgate: this command is not implemented yet", file=sys.stderr)
    return 1
