"""run the reference RFC 8030 push service (one node; several on PostgreSQL)."""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import sys
from pathlib import Path

import trio

from fieldgate_common import malloc
from fieldgate_common.config_problems import ConfigError
from fieldgate_common.logs import get_logger, setup_logging
from fieldgate_common.sdnotify import Notifier
from fieldgate_common.status_http import serve_status
from pushservice.config import PushServiceConfig, load_push_config
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from pushservice.store import StoreUnavailable
from pushservice.tls import ReloadableTls
from pushservice.tlsgen import write_self_signed

HELP = "run the reference RFC 8030 push service"

EXIT_FAILED = 1
EXIT_USAGE = 2
# Flags the configuration file replaces (given together with --config they are an error).
FILE_FLAGS = (
    "listen",
    "state",
    "tls_cert",
    "tls_key",
    "self_signed",
    "max_body",
    "redelivery_after",
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the push-service options."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration (listen, public URL, storage, TLS, limits, status endpoint)",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="address (port 0 = any)")
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
    parser.add_argument("--max-body", type=int, metavar="N")
    parser.add_argument("--redelivery-after", type=float, metavar="SECONDS")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)  # atomic: readers never see a partial URL


def _from_flags(args: argparse.Namespace) -> PushServiceConfig:
    """The configuration the development flags describe (ValueError for a bad one)."""
    defaults = ServiceSettings()
    host, port = _split_listen(args.listen or "127.0.0.1:8443")
    settings = ServiceSettings(
        max_body=defaults.max_body if args.max_body is None else args.max_body,
        redelivery_after=args.redelivery_after or defaults.redelivery_after,
    )
    if args.self_signed and (args.tls_cert or args.tls_key):
        raise ValueError("--self-signed excludes --tls-cert/--tls-key")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    cert, key = args.tls_cert, args.tls_key
    if args.self_signed:
        hosts = [host, "localhost", "127.0.0.1", "::1"]
        _, cert, key = write_self_signed(args.self_signed, list(dict.fromkeys(hosts)))
    storage = None if args.state is None else f"sqlite://{args.state.absolute()}"
    return PushServiceConfig(
        host=host, port=port, settings=settings, storage=storage, tls_cert=cert, tls_key=key
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT, or SIGTERM (drained); SIGHUP reloads the TLS certificate."""
    try:
        if args.config is not None:
            given = [f"--{f.replace('_', '-')}" for f in FILE_FLAGS if getattr(args, f)]
            if given:
                raise ValueError(f"{', '.join(given)}: set these in {args.config} instead")
            config = load_push_config(args.config)
        else:
            config = _from_flags(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"fieldgate push-service: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level or config.log_level)
    log = get_logger("pushservice")
    if args.self_signed:
        log.info("self-signed CA written to %s", args.self_signed / "ca.pem")
    try:
        tls = None
        if config.tls_cert is not None and config.tls_key is not None:
            tls = ReloadableTls(config.tls_cert, config.tls_key, log)
        service = PushService(config.settings, storage=config.storage, control=args.control)
    except (OSError, ValueError) as exc:
        print(f"fieldgate push-service: TLS: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreUnavailable as exc:
        print(f"fieldgate push-service: storage: {exc}", file=sys.stderr)
        return EXIT_FAILED
    malloc.limit_arenas()  # before trio starts a worker thread (a long-running service)
    try:
        trio.run(_main, service, config, tls, args)
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"fieldgate push-service: cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        service.close()
    return 0


async def _main(
    service: PushService,
    config: PushServiceConfig,
    tls: ReloadableTls | None,
    args: argparse.Namespace,
) -> None:
    log = get_logger("pushservice")
    notifier = Notifier.from_environ()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: service.serve(
                config.host,
                config.port,
                tls=tls,
                proxy_protocol=config.proxy_protocol,
                task_status=task_status,
            )
        )
        if config.status_listen:
            await nursery.start(
                lambda task_status: serve_status(
                    config.status_listen,
                    _StatusView(service),
                    allow_remote=config.status_allow_remote,
                    task_status=task_status,
                )
            )
        if args.control:
            log.warning("fault-injection control API enabled (loopback only)")
        if args.ready_file:
            _write_ready(args.ready_file, service.subscribe_url)
        print(service.subscribe_url, flush=True)
        notifier.ready(f"serving {service.origin}")
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if tls is not None:
                        tls.reload()
                    continue
                log.info("stopping on signal %d", signum)
                if signum == signal.SIGTERM:
                    notifier.stopping()
                    await service.drain()
                nursery.cancel_scope.cancel()
                break


class _StatusView:
    """The push service as the status endpoint (fieldgate_common.status_http) sees it."""

    schema_version = 1

    def __init__(self, service: PushService) -> None:
        self._service = service

    def page(self, document: dict[str, object]) -> str:
        """A plain page: the status document, pretty-printed (escaped)."""
        text = html.escape(json.dumps(document, indent=2, sort_keys=True))
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>fieldgate push service</title></head><body>"
            f"<h1>fieldgate push service</h1><pre>{text}</pre></body></html>\n"
        )

    def status(self) -> dict[str, object]:
        return self._service.status()

    def metrics(self) -> str:
        return self._service.render_metrics()

    def health(self) -> tuple[bool, str]:
        return self._service.health()
