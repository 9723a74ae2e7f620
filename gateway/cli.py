"""The ``fieldgate`` command line: one subcommand per module, each with ``configure`` and ``run``.

A command module exposes ``HELP`` (one line), ``configure(parser)`` to add its arguments and
``run(args) -> int`` (the exit status). Adding a command is one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from gateway import __version__

# (command, module); the order is the order in --help.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "gateway.commands.run"),
    ("check-config", "gateway.commands.check_config"),
    ("subscriptions", "gateway.commands.subscriptions"),
    ("status", "gateway.commands.status"),
    ("dead-letters", "gateway.commands.dead_letters"),
    ("send", "pushservice.send"),
    ("push-service", "pushservice.cli"),
    ("demo", "gateway.commands.demo"),
    ("version", "gateway.commands.version"),
)

EXIT_USAGE = 2


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, every subcommand's arguments included."""
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description=(
            "Web Push (RFC 8030) user agent for IoT field gateways: holds one HTTP/2 connection "
            "to a push service, decrypts each message and delivers it to devices over MQTT or "
            "serial lines."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fieldgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS:
        module = _load(module_name)
        help_text = getattr(module, "HELP", "")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fieldgate`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        status: int = args._module.run(args)
    except KeyboardInterrupt:
        return 130
    return status
