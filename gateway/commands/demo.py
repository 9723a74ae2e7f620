"""``fieldgate demo``: the whole pipeline on loopback, with embedded defaults."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fieldgate_common.logs import setup_logging


def configure(parser: argparse.ArgumentParser) -> None:
    """``[--keep-running] [--workdir DIR] [--verbose] [--autopush]``."""
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything up until Ctrl-C"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here instead of a temporary directory"
    )
    parser.add_argument("--verbose", action="store_true", help="show the gateway's log too")
    parser.add_argument(
        "--autopush",
        action="store_true",
        help="run the gateway on Mozilla's autopush protocol (wss://) against its test double",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every message completed its journey."""
    setup_logging("info" if args.verbose else "warning")
    if not args.verbose:
        # The journey lines are the demo's output; the components' own logs stay quiet.
        logging.getLogger("fieldgate").setLevel(logging.ERROR)
    from gateway.demo import main

    return main(keep_running=args.keep_running, workdir=args.workdir, autopush=args.autopush)
