"""The ``fieldgate`` command line: one subcommand per module, each with ``configure`` and ``run``.

A command module exposes ``configure(parser)`` to add its arguments and ``run(args) -> int``
(the exit status); its one line of help is in :data:`COMMANDS`. Adding a command is one line
there.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from gateway import __version__

# (command, module, one line of help); the order is the order in --help. A command's module is
# imported only when that command runs (or its --help is asked for): `fieldgate run` on a
# Raspberry Pi loads the gateway, not the push service.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "gateway.commands.run", "run the gateway (as systemd's ExecStart does)"),
    (
        "check-config",
        "gateway.commands.check_config",
        "validate a configuration file: print ok, or every problem found",
    ),
    (
        "subscriptions",
        "gateway.commands.subscriptions",
        "print each route's PushSubscription JSON (what an application server needs)",
    ),
    ("status", "gateway.commands.status", "show the running gateway's status"),
    ("dead-letters", "gateway.commands.dead_letters", "list, show, replay or purge dead letters"),
    ("send", "pushservice.send", "encrypt a message and send it to a push subscription"),
    ("push-service", "pushservice.cli", "run the reference RFC 8030 push service"),
    (
        "autopush-service",
        "pushservice.autopush.cli",
        "run a test double of Mozilla's autopush service (WebSocket user agents, HTTP senders)",
    ),
    (
        "demo",
        "gateway.commands.demo",
        "run the whole pipeline on loopback: push service, gateway, MQTT broker, serial device",
    ),
    ("version", "gateway.commands.version", "print the version"),
)

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command ended by SIGPIPE


def _load(module_name: str) -> ModuleType:
    return importlib.import_module(module_name)


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one), or None."""
    names = {name for name, _module, _help in COMMANDS}
    for word in argv:
        if word in names:
            return word
        if not word.startswith("-"):
            return None
    return None


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` command's module is imported (every one when None)."""
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description=(
            "Web Push (RFC 8030) user agent for IoT field gateways: holds one connection "
            "to a push service, decrypts each message and delivers it to devices over MQTT or "
            "serial lines."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fieldgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is None or name == chosen:
            module = _load(module_name)
            module.configure(command_parser)
            command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fieldgate`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen(words) or "").parse_args(words)
    try:
        status: int = args._module.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fieldgate check-config --show | head`): stop quietly, as a
        # command killed by SIGPIPE would, without a traceback or a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status
