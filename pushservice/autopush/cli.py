"""run the autopush test double (Mozilla's WebSocket push protocol) on loopback."""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from fieldgate_common.logs import get_logger, setup_logging
from pushservice.autopush.service import AutopushService
from pushservice.autopush.settings import AutopushSettings
from pushservice.tlsgen import server_context

PROG = "fieldgate autopush-service"
EXIT_USAGE = 2
EXIT_FAILED = 1


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the autopush-service options."""
    defaults = AutopushSettings()
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="user agents' WebSocket address (port 0 = any); also the endpoints unless "
        "--endpoint-listen is given",
    )
    parser.add_argument(
        "--endpoint-listen", metavar="HOST:PORT", help="a separate address for the endpoints"
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="origin of the push endpoints (VAPID aud); default: the endpoint address",
    )
    parser.add_argument("--state", type=Path, metavar="FILE", help="persist state in SQLite")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=defaults.ping_interval,
        metavar="SECONDS",
        help="WebSocket ping interval (a pong must come within 4 s)",
    )
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="private key (PEM)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="enable the loopback-only control API (POST /_control/<action>)",
    )
    parser.add_argument(
        "--ready-file", type=Path, metavar="PATH", help="write the WebSocket URL here when ready"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def _split_listen(flag: str, listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)  # atomic: readers never see a partial URL


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; start-up faults are one line on stderr."""
    setup_logging(args.log_level)
    log = get_logger("autopush-service")
    try:
        host, port = _split_listen("--listen", args.listen)
        endpoint = (
            _split_listen("--endpoint-listen", args.endpoint_listen)
            if args.endpoint_listen
            else None
        )
        settings = AutopushSettings(ping_interval=args.ping_interval)
    except ValueError as exc:
        return _fail(str(exc))
    if bool(args.tls_cert) != bool(args.tls_key):
        return _fail("--tls-cert and --tls-key go together")
    if args.public_url and not args.public_url.startswith(("http://", "https://")):
        return _fail(f"--public-url must be an http(s) URL, got {args.public_url!r}")
    ssl_context = None
    if args.tls_cert:
        try:
            ssl_context = server_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            return _fail(f"cannot load --tls-cert/--tls-key: {exc}", EXIT_FAILED)
    try:
        service = AutopushService(settings, state_path=args.state, control=args.control)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot open --state {args.state}: {exc}", EXIT_FAILED)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(
                    service.serve,
                    host,
                    port,
                    endpoint_port=endpoint[1] if endpoint else None,
                    endpoint_host=endpoint[0] if endpoint else None,
                    public_url=args.public_url,
                    ssl_context=ssl_context,
                )
            )
            if args.control:
                log.warning("control API enabled (loopback only)")
            if args.ready_file:
                _write_ready(args.ready_file, url)
            print(url, flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except OSError as exc:
        return _fail(f"cannot listen: {exc.strerror or exc}", EXIT_FAILED)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pushservice.autopush.cli`` (the same as ``fieldgate autopush-service``)."""
    parser = argparse.ArgumentParser(prog=PROG)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
