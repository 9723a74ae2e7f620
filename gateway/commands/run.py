"""``fieldgate run``: run the gateway.

Every fault found before the gateway is up (an invalid configuration, what the machine says
about its files and directories, another gateway on the same state directory, a journal that
cannot be used, a status address that cannot be bound) ends in one line per problem naming the
file and the key, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import trio

from fieldgate_common import malloc
from fieldgate_common.logs import get_logger, setup_logging
from gateway.config import ConfigError, load_config, preflight

EXIT_CONFIG = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """``--config FILE [--reset]``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/fieldgate/config.toml"),
        help="configuration file (default: %(default)s)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="accept that the journal is lost (missing or emptied) and create a new one: new "
        "keys and subscriptions, so every application server must be given the new push "
        "resources; an intact journal is never touched",
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration, then run until SIGTERM or SIGINT."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    problems = preflight(config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level)
    for warning in config.warnings:
        get_logger("config").warning("%s", warning)
    from gateway.app import StartupError, run_gateway
    from gateway.store import StoreError

    malloc.limit_arenas()  # before trio starts a worker thread
    try:
        return trio.run(partial(run_gateway, config, reset=args.reset))
    except StartupError as exc:
        print(f"fieldgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        # Everything the store refuses is about what lies in push.state_dir.
        print(f"fieldgate: {args.config}: push.state_dir: {exc}", file=sys.stderr)
        return EXIT_CONFIG
