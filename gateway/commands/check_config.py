"""``fieldgate check-config``: validate a configuration file, optionally show what it means.

Besides the file itself it checks what it can know of this machine (:func:`gateway.config.
preflight`): the state directory can be written, the CA, certificate and key files are there
and are what their keys say, the log adapter's file can be appended to, a Unix socket's
directory exists. ``FILE`` or ``--config FILE`` (as every other command takes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from adapters.base import AdapterConfig, TargetConfig
from adapters.registry import KINDS
from fieldgate_common.units import format_duration, format_size
from gateway.config import Config, ConfigError, ConfigProblem, load_config, preflight

EXIT_OK = 0
EXIT_INVALID = 2  # as the issue asks; also argparse's usage-error status
MASK = "***"  # stands in for every secret in --show output


DEFAULT_CONFIG = Path("/etc/fieldgate/config.toml")


def configure(parser: argparse.ArgumentParser) -> None:
    """``[FILE | --config FILE]`` and ``--show``."""
    parser.add_argument(
        "file",
        type=Path,
        nargs="?",
        metavar="FILE",
        help=f"the TOML configuration file (default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the same, as every other command takes it",
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="also print what the gateway would do: push service, routes, targets, adapters "
        "(passwords are masked)",
    )


def config_path(args: argparse.Namespace) -> Path | None:
    """The file to check: FILE or --config (the same one when both are given)."""
    given = [path for path in (args.file, args.config) if path is not None]
    if len(given) == 2 and given[0] != given[1]:
        return None
    return given[0] if given else DEFAULT_CONFIG


def run(args: argparse.Namespace) -> int:
    """Print ``ok`` (after any warnings) and return 0, or print every problem and return 2."""
    path = config_path(args)
    if path is None:
        print(
            f"fieldgate: check-config got two files ({args.file} and --config {args.config}): "
            "give one",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        config = load_config(path)
    except ConfigError as error:
        return _report(path, error.problems)
    for warning in config.warnings:
        print(warning)
    problems = preflight(config)
    if problems:
        return _report(path, problems)
    print("ok")
    if args.show:
        print(describe_config(config))
    return EXIT_OK


def _report(path: Path, problems: list[ConfigProblem]) -> int:
    for problem in problems:
        print(problem)
    count = len(problems)
    print(f"{path}: {count} problem{'s' if count != 1 else ''}, not valid")
    return EXIT_INVALID


def describe_config(config: Config) -> str:
    """A human summary of what the gateway would do with ``config``; no secrets in it."""
    push = config.push
    urgency = push.urgency or "any"
    lines = [
        f"push service: {_public_url(push.service)}",
        f"  state_dir {push.state_dir}, keepalive {format_duration(push.keepalive)}, "
        f"urgency {urgency}, backoff {format_duration(push.backoff_base)}.."
        f"{format_duration(push.backoff_cap)}, max message {format_size(push.max_message_bytes)}",
    ]
    if push.ca_file is not None:
        lines.append(f"  extra CA file {push.ca_file}")
    status = config.status.listen or "disabled"
    lines.append(f"status endpoint: {status}")
    lines.append(f"routes ({len(config.routes)}):")
    for route in config.routes:
        lines.append(
            f"  {route.name}: ack {route.ack}, max_age {format_duration(route.max_age)}, "
            f"queue {route.queue_max_messages} messages / {format_size(route.queue_max_bytes)} "
            f"({route.queue_full})"
        )
        if route.distribute_url is not None:
            lines.append(f"    subscription posted to {_public_url(route.distribute_url)}")
        if route.vapid_public_key is not None:
            lines.append("    restricted to one VAPID application server key")
        for target in route.deliver:
            lines.append(f"    -> {_describe_target(target, config.adapters.get(target.adapter))}")
    lines.append(f"adapters ({len(config.adapters)}):")
    for name, adapter in config.adapters.items():
        lines.append(f"  {name}: {_describe_adapter(adapter)}")
    return "\n".join(lines)


def _public_url(url: str) -> str:
    """The URL without user:password and with any query (tokens live there) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _describe_target(target: TargetConfig, adapter: AdapterConfig | None) -> str:
    text = f"{target.adapter} ({adapter.type if adapter is not None else '?'}"
    if adapter is not None:
        text += KINDS[adapter.type].describe_target(target)
    return text + f", payload {target.payload})"


def _describe_adapter(adapter: AdapterConfig) -> str:
    return KINDS[adapter.type].describe(adapter)
