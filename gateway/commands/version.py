"""``fieldgate version``."""

from __future__ import annotations

import argparse

from gateway import __version__


def configure(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    """Print ``fieldgate X.Y.Z``."""
    print(f"fieldgate {__version__}")
    return 0
