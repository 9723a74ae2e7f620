"""``fieldgate subscriptions``: print each route's PushSubscription JSON."""

from __future__ import annotations

import argparse
import sys

HELP = "print each route's PushSubscription JSON"


def configure(parser: argparse.ArgumentParser) -> None:
    """Not implemented yet."""


def run(args: argparse.Namespace) -> int:
    """Not implemented yet."""
    print("fieldgate: this command is not implemented yet", file=sys.stderr)
    return 1
