"""``fieldgate run``: run the gateway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from fieldgate_common.logs import get_logger, setup_logging
from gateway.config import ConfigError, load_config

EXIT_CONFIG = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/fieldgate/config.toml"),
        help="configuration file (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration, then run until SIGTERM or SIGINT."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level)
    for warning in config.warnings:
        get_logger("config").warning("%s", warning)
    from gateway.app import run_gateway
    from gateway.store import StoreError

    try:
        return trio.run(run_gateway, config)
    except StoreError as exc:
        print(f"fieldgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
