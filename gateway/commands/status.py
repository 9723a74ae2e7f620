"""``fieldgate status [--config FILE | --url URL] [--json]``: the running gateway's status.

Fetches ``/status`` from the local status endpoint (found through the configuration's
``[status] listen``, or given with ``--url``) and prints it as tables, or as the raw JSON
document with ``--json``. Exit status: 0 when the gateway reports itself healthy, 1 when it
reports a problem, 3 when the endpoint cannot be reached or answers nonsense.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from gateway.config import PushConfig, StatusConfig
from gateway.statedir import STATUS_ADDRESS, read_status_address
from gateway.status_client import FetchError, endpoint_from_url, fetch
from gateway.status_format import format_ago, format_duration, format_since, format_value

DEFAULT_CONFIG = Path("/etc/fieldgate/config.toml")
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 3
# Table cells longer than this are cut with an ellipsis so a row fits a terminal.
MAX_CELL_CHARS = 48


def configure(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` | ``--url URL``, and ``--json``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        help=f"read the endpoint address from this configuration (default {DEFAULT_CONFIG})",
    )
    where.add_argument(
        "--url", help="the endpoint: http://HOST:PORT or unix:/path (overrides the configuration)"
    )
    parser.add_argument("--json", action="store_true", help="print the /status JSON document")


def listen_from_config(path: Path, explicit: bool) -> str:
    """Where the status endpoint of a configuration file listens (the default when unset).

    Only ``[status]`` (and, for a port chosen at start, ``[push] state_dir``) is read, so a
    configuration with problems elsewhere still tells us where to look. A missing default file
    means the default address. ``listen = "HOST:0"`` is only known once bound: the running
    gateway writes it to its state directory (:func:`gateway.statedir.write_status_address`).
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        if explicit:
            raise
        return StatusConfig().listen
    status = data.get("status", {})
    listen = status.get("listen", StatusConfig().listen) if isinstance(status, dict) else None
    if not isinstance(listen, str):
        raise ValueError(f"{path}: status.listen must be a string")
    if listen and not listen.startswith("unix:") and listen.rpartition(":")[2] == "0":
        state_dir = _state_dir(path, data)
        bound = read_status_address(state_dir)
        if bound is None:
            raise ValueError(
                f"{path}: status.listen {listen!r} picks its port when the gateway starts, and "
                f"no running gateway has written it to {state_dir / STATUS_ADDRESS} (is it "
                "running? can this user read its state directory?)"
            )
        return bound
    return listen


def _state_dir(path: Path, data: dict[str, object]) -> Path:
    """``[push] state_dir`` as the gateway resolves it (relative to the file, else systemd's
    STATE_DIRECTORY, else the default)."""
    push = data.get("push", {})
    value = push.get("state_dir") if isinstance(push, dict) else None
    if isinstance(value, str) and value:
        state = Path(value)
        return state if state.is_absolute() else (path.parent / state).absolute()
    state_directory = os.environ.get("STATE_DIRECTORY", "")
    if state_directory:
        return Path(state_directory.split(":")[0])
    return PushConfig.state_dir


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def format_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    cells = [[_cut(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headings)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headings, widths, strict=True))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return [line.rstrip() for line in lines]


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def render_status(document: dict[str, object], now: float) -> str:
    """The /status document as text for a terminal (tolerates missing or odd fields)."""
    health = document.get("health")
    health = health if isinstance(health, dict) else {}
    verdict = "WORKING" if health.get("ok") is True else "NOT WORKING"
    reason = str(health.get("reason") or "")
    upstream = document.get("upstream")
    up = upstream if isinstance(upstream, dict) else {}
    lines = [
        f"fieldgate {format_value(document.get('version'))}: {verdict}"
        + (f" ({reason})" if reason else ""),
        f"push service  {format_value(up.get('service'))}",
        f"connection    {format_value(up.get('state'))} {format_since(up.get('since'), now)}",
        f"uptime        {format_duration(document.get('uptime'))}",
        "",
    ]
    routes = [
        [
            format_value(r.get("name")),
            format_value(r.get("queue_depth")),
            format_ago(r.get("last_message"), now),
            format_ago(r.get("last_delivery"), now),
            format_duration(r.get("subscription_age")),
            format_value(r.get("last_error")),
        ]
        for r in _dicts(document.get("routes"))
    ]
    headings = ("route", "queued", "last message", "last delivery", "subscribed", "last error")
    lines += format_table(headings, routes) if routes else ["no routes"]
    lines.append("")
    adapters = [
        [
            format_value(a.get("name")),
            format_value(a.get("type")),
            ("ok " if a.get("ok") is True else "BAD ") + format_value(a.get("state")),
            format_value(a.get("detail") or None),
        ]
        for a in _dicts(document.get("adapters"))
    ]
    lines += (
        format_table(("adapter", "type", "state", "detail"), adapters)
        if adapters
        else ["no adapters"]
    )
    counters = document.get("counters")
    if isinstance(counters, dict) and counters:
        lines.append("")
        items = sorted(counters.items())
        lines += format_table(("counter", "value"), [[k, format_value(v)] for k, v in items])
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Fetch and print; the exit status says whether the gateway is healthy."""
    try:
        if args.url:
            address = endpoint_from_url(args.url)
        else:
            config = args.config or DEFAULT_CONFIG
            listen = listen_from_config(config, explicit=args.config is not None)
            if not listen:
                print(f"fieldgate: the status endpoint is disabled in {config}", file=sys.stderr)
                return EXIT_UNREACHABLE
            address = endpoint_from_url(listen)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"fieldgate: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        result = fetch(address, "/status")
        if result.status != 200:
            raise FetchError(f"/status answered HTTP {result.status}")
        document = json.loads(result.body)
        if not isinstance(document, dict):
            raise FetchError("/status is not a JSON object")
    except (FetchError, ValueError) as exc:
        print(f"fieldgate: cannot read the gateway's status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_status(document, time.time()))
    health = document.get("health")
    healthy = isinstance(health, dict) and health.get("ok") is True
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
