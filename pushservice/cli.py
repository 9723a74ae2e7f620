"""run the reference RFC 8030 push service."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import trio

from fieldgate_common.logs import get_logger, setup_logging
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from pushservice.tlsgen import server_context, write_self_signed

HELP = "run the reference RFC 8030 push service"

EXIT_USAGE = 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the push-service options."""
    defaults = ServiceSettings()
    parser.add_argument(
        "--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="address (port 0 = any)"
    )
    parser.add_argument("--state", type=Path, metavar="FILE", help="persist state in SQLite")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="private key (PEM)")
    parser.add_argument(
        "--self-signed",
        type=Path,
        metavar="DIR",
        help="generate a CA (DIR/ca.pem) and a certificate, and serve TLS with them",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="enable the loopback-only fault-injection API (POST /_control/<fault>)",
    )
    parser.add_argument(
        "--ready-file", type=Path, metavar="PATH", help="write the subscribe URL here when ready"
    )
    parser.add_argument("--max-body", type=int, default=defaults.max_body, metavar="N")
    parser.add_argument(
        "--redelivery-after", type=float, default=defaults.redelivery_after, metavar="SECONDS"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)  # atomic: readers never see a partial URL


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    setup_logging(args.log_level)
    log = get_logger("pushservice")
    try:
        host, port = _split_listen(args.listen)
        settings = ServiceSettings(max_body=args.max_body, redelivery_after=args.redelivery_after)
    except ValueError as exc:
        print(f"fieldgate push-service: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.self_signed and (args.tls_cert or args.tls_key):
        print(
            "fieldgate push-service: --self-signed excludes --tls-cert/--tls-key", file=sys.stderr
        )
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("fieldgate push-service: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_USAGE
    ssl_context = None
    if args.self_signed:
        hosts = [host, "localhost", "127.0.0.1", "::1"]
        ca, cert, key = write_self_signed(args.self_signed, list(dict.fromkeys(hosts)))
        log.info("self-signed CA written to %s", ca)
        ssl_context = server_context(cert, key)
    elif args.tls_cert:
        ssl_context = server_context(args.tls_cert, args.tls_key)
    service = PushService(settings, state_path=args.state, control=args.control)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: service.serve(
                    host, port, ssl_context=ssl_context, task_status=task_status
                )
            )
            if args.control:
                log.warning("fault-injection control API enabled (loopback only)")
            if args.ready_file:
                _write_ready(args.ready_file, service.subscribe_url)
            print(service.subscribe_url, flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0
