"""``fieldgate push-service --config FILE``: the push service's TOML, checked like the gateway's.

Every mistake is reported with the file, the line, the key and what was expected and found
(:class:`fieldgate_common.config_problems.ConfigError`), with the machinery the gateway's
configuration uses too (:mod:`fieldgate_common.config_problems`,
:mod:`fieldgate_common.config_values`). Example::

    [service]
    listen = "0.0.0.0:8443"
    public_url = "https://push.example.com"   # every node mints URLs under this origin
    tls_cert = "/etc/fieldgate-push/cert.pem" # reloaded on SIGHUP
    tls_key = "/etc/fieldgate-push/key.pem"
    proxy_protocol = true                     # behind HAProxy with send-proxy-v2

    [storage]
    url = "postgresql://fieldgate@db.internal/push"   # or "sqlite:///var/lib/x/push.sqlite3"

    [limits]
    max_body = "16KiB"
    require_vapid = true

    [status]
    listen = "127.0.0.1:9101"
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldgate_common import config_values as check
from fieldgate_common.config_problems import (
    ConfigError,
    TableReader,
    file_order,
    parse_toml,
    read_text,
)
from fieldgate_common.config_source import SourceMap
from pushservice.settings import MIN_MAX_BODY, TTL_CEILING, ServiceSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
# Worker threads (database connections) per node: PostgreSQL's default max_connections is 100,
# so three nodes of 32 still fit.
MAX_STORE_THREADS = 32
# RFC 9113 §6.5.2 recommends at least 100 concurrent streams; h2 accepts up to 2^31 - 1.
MAX_STREAMS = 2**31 - 1
# Per-second rates: anything above this is a typo for "no limit" (0).
MAX_RATE = 1_000_000
DEFAULT_LISTEN = "127.0.0.1:8443"
TABLES = ("service", "storage", "limits", "status", "log")


@dataclass(frozen=True)
class PushServiceConfig:
    """The checked configuration of one push-service node."""

    host: str = "127.0.0.1"
    port: int = 8443
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    storage: str | None = None  # None: SQLite in memory
    tls_cert: Path | None = None
    tls_key: Path | None = None
    proxy_protocol: bool = False
    status_listen: str = ""  # "" disables the status endpoint
    status_allow_remote: bool = False
    log_level: str = "info"


def _host_port(value: object) -> tuple[str, int]:
    return check.split_host_port(check.nonempty_text(value))


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise check.Invalid(
            f"expected requests per second (0: no limit), found {check.found(value)}"
        )
    if not 0 <= value <= MAX_RATE:
        raise check.Invalid(f"expected 0 to {MAX_RATE} per second, found {check.found(value)}")
    return float(value)


class _Loader(TableReader):
    def __init__(self, source: Path, text: str) -> None:
        super().__init__(source, SourceMap(text))

    def section(self, data: Mapping[str, object], name: str) -> dict[str, object]:
        """The table ``[name]`` (empty when absent or not a table, the latter reported)."""
        return self.table(data.get(name, {}), (name,), f"[{name}]") or {}

    def values(
        self, data: Mapping[str, object], name: str, specs: Mapping[str, check.Convert]
    ) -> dict[str, Any]:
        """The converted keys of ``[name]``."""
        values, _failed = self.fields(self.section(data, name), (name,), specs)
        return values

    def readable(self, value: object) -> Path:
        path = self.path(value)
        if not os.access(path, os.R_OK):
            raise check.Invalid(f"cannot read {check.quoted(str(path))}")
        return path

    def storage(self, value: object) -> str:
        url = check.nonempty_text(value)
        if not url.startswith(STORAGE_SCHEMES):
            listing = ", ".join(f'"{s}..."' for s in STORAGE_SCHEMES[:2])
            raise check.Invalid(f"expected a URL starting {listing}, found {check.quoted(url)}")
        if url.startswith("sqlite:///"):
            return "sqlite://" + str(self.path(url.removeprefix("sqlite://")))
        return url

    def load(self, data: dict[str, object]) -> PushServiceConfig | None:
        for key in data:
            if key not in TABLES:
                self.error((key,), "unknown table", check.closest(key, TABLES))
        service = self.values(
            data,
            "service",
            {
                "listen": _host_port,
                "public_url": check.web_url,
                "tls_cert": self.readable,
                "tls_key": self.readable,
                "proxy_protocol": check.boolean,
                "redelivery_after": check.duration(),
                "drain_timeout": check.duration(allow_zero=True),
            },
        )
        storage = self.values(
            data,
            "storage",
            {"url": self.storage, "threads": check.integer(1, MAX_STORE_THREADS)},
        )
        limits = self.values(
            data,
            "limits",
            {
                "max_body": check.size,
                "max_ttl": check.duration(maximum=float(TTL_CEILING)),
                "messages_per_subscription": check.integer(1, 10**9),
                "subscriptions_per_connection": check.integer(1, 10**9),
                "requests_per_second_per_address": _rate,
                "pushes_per_second_per_resource": _rate,
                "require_vapid": check.boolean,
                "max_concurrent_streams": check.integer(1, MAX_STREAMS),
            },
        )
        status = self.values(
            data,
            "status",
            {"listen": check.listen, "allow_remote": check.boolean},
        )
        log = self.values(data, "log", {"level": check.choice(*LOG_LEVELS)})
        self.cross_checks(data, service, storage, limits)
        if self.errors:
            return None
        host, port = service.get("listen", check.split_host_port(DEFAULT_LISTEN))
        settings = ServiceSettings(
            max_body=limits.get("max_body", ServiceSettings.max_body),
            redelivery_after=service.get("redelivery_after", ServiceSettings.redelivery_after),
            max_concurrent_streams=limits.get(
                "max_concurrent_streams", ServiceSettings.max_concurrent_streams
            ),
            max_subscriptions_per_connection=limits.get(
                "subscriptions_per_connection", ServiceSettings.max_subscriptions_per_connection
            ),
            max_ttl=int(limits.get("max_ttl", ServiceSettings.max_ttl)),
            max_messages_per_subscription=limits.get(
                "messages_per_subscription", ServiceSettings.max_messages_per_subscription
            ),
            require_vapid=limits.get("require_vapid", False),
            requests_per_address=limits.get("requests_per_second_per_address", 0.0),
            pushes_per_resource=limits.get("pushes_per_second_per_resource", 0.0),
            public_url=service.get("public_url"),
            store_threads=storage.get("threads", ServiceSettings.store_threads),
            drain_timeout=service.get("drain_timeout", ServiceSettings.drain_timeout),
        )
        return PushServiceConfig(
            host=host.strip("[]") or "127.0.0.1",
            port=port,
            settings=settings,
            storage=storage.get("url"),
            tls_cert=service.get("tls_cert"),
            tls_key=service.get("tls_key"),
            proxy_protocol=service.get("proxy_protocol", False),
            status_listen=status.get("listen", ""),
            status_allow_remote=status.get("allow_remote", False),
            log_level=log.get("level", "info"),
        )

    def cross_checks(
        self,
        data: Mapping[str, object],
        service: Mapping[str, Any],
        storage: Mapping[str, Any],
        limits: Mapping[str, Any],
    ) -> None:
        written = data.get("service", {})
        written = written if isinstance(written, dict) else {}
        for have, need in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
            if have in written and need not in written:
                self.error(("service", have), f"{have} needs {need} in [service] too")
        if "max_body" in limits and limits["max_body"] < MIN_MAX_BODY:
            self.error(
                ("limits", "max_body"),
                f"must be at least {MIN_MAX_BODY} bytes (RFC 8030 §7.2), "
                f"found {limits['max_body']}",
            )
        url = storage.get("url")
        if isinstance(url, str) and url.startswith("postgres") and "public_url" not in service:
            self.error(
                ("storage", "url"),
                "several nodes on one database need [service] public_url: every node must mint "
                "URLs under the origin clients reach (the load balancer's)",
            )


def parse_push_config(text: str, source: Path) -> PushServiceConfig:
    """The configuration in ``text`` (read from ``source``); raises ConfigError."""
    loader = _Loader(source, text)
    config = loader.load(parse_toml(text, source))
    if config is None:
        raise ConfigError(sorted(loader.errors, key=file_order))
    return config


def load_push_config(path: Path) -> PushServiceConfig:
    """Read and check the file at ``path``; raises ConfigError."""
    return parse_push_config(read_text(path), path)
