"""The gateway's configuration: TOML loaded into frozen dataclasses.

Durations are seconds (``float``) and sizes are bytes (``int``) once loaded; in TOML they are
written ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` and ``4096``, ``"64KiB"``, ``"16MiB"``.
The loader (:func:`load_config`, :func:`parse_config`) reports every problem it finds with the
file, the key path, the TOML line where known, what was expected and what was found, as a
:class:`ConfigError`. Value converters live in :mod:`fieldgate_common.config_values`, the
key-to-line map in :mod:`fieldgate_common.config_source`; each adapter kind's schema beside
its code (:mod:`adapters.registry`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from adapters.base import AdapterConfig, TargetConfig
from adapters.registry import KINDS
from fieldgate_common import config_values as check
from fieldgate_common import file_checks
from fieldgate_common.config_problems import (
    ConfigError,
    ConfigProblem,
    TableReader,
    parse_toml,
    read_text,
)
from fieldgate_common.config_source import KeyPath, SourceMap, format_key_path

__all__ = [
    "AckPolicy",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "JournalConfig",
    "LogConfig",
    "PushConfig",
    "QueueFullPolicy",
    "RouteConfig",
    "StatusConfig",
    "Urgency",
    "load_config",
    "parse_config",
    "preflight",
]

Urgency = Literal["very-low", "low", "normal", "high"]
AckPolicy = Literal["stored", "delivered"]
QueueFullPolicy = Literal["drop-oldest", "refuse-newest"]


@dataclass(frozen=True)
class PushConfig:
    """``[push]``: the upstream push service and how the user agent talks to it."""

    # https://: the subscribe URL of an RFC 8030 push service (HTTP/2); wss://: an autopush
    # service's WebSocket (Mozilla's push service); http:// and ws:// only on loopback.
    service: str
    state_dir: Path = Path("/var/lib/fieldgate")
    keepalive: float = 60.0  # HTTP/2 PING interval; a dead path is detected within two
    urgency: Urgency | None = None  # RFC 8030 §5.3 filter on the monitoring GET
    ca_file: Path | None = None  # extra trust anchor; the system store is always used otherwise
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    healthy_after: float = 60.0  # connected this long resets the backoff
    max_message_bytes: int = 65536  # pushed bodies above this are refused and counted
    connect_timeout: float = 30.0


@dataclass(frozen=True)
class StatusConfig:
    """``[status]``: the local status endpoint."""

    listen: str = "127.0.0.1:8088"  # "HOST:PORT" or "unix:/path/to/socket"; "" disables it
    allow_remote: bool = False  # must be true to bind a non-loopback address


@dataclass(frozen=True)
class JournalConfig:
    """``[journal]``: the durable store's global limits."""

    max_bytes: int = 256 * 1024 * 1024
    dedupe_retention: float = 28 * 86400.0  # at most: a URI whose ack is never confirmed, salts


@dataclass(frozen=True)
class LogConfig:
    """``[log]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class RouteConfig:
    """``[[routes]]``: one push subscription and where its messages go."""

    name: str
    deliver: tuple[TargetConfig, ...]
    ack: AckPolicy = "stored"
    max_age: float = 86400.0
    distribute_url: str | None = None  # where the PushSubscription JSON is POSTed
    vapid_public_key: str | None = None  # base64url P-256 point: restricts the subscription
    queue_max_messages: int = 10000
    queue_max_bytes: int = 16 * 1024 * 1024
    queue_full: QueueFullPolicy = "drop-oldest"
    retry_base: float = 1.0
    retry_cap: float = 600.0


@dataclass(frozen=True)
class Config:
    """The whole configuration, as loaded from one file."""

    push: PushConfig
    routes: tuple[RouteConfig, ...]
    adapters: dict[str, AdapterConfig] = field(default_factory=dict)
    status: StatusConfig = field(default_factory=StatusConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None
    warnings: tuple[str, ...] = ()  # rendered like problems; the gateway runs despite them


# ------------------------------------------------------------------------------ loader


class _Loader(TableReader):
    """Reads the parsed TOML into dataclasses, collecting every problem on the way."""

    def __init__(self, source: Path, lines: SourceMap, environ: Mapping[str, str]) -> None:
        super().__init__(source, lines)
        self.environ = environ
        self.adapter_types: dict[str, str] = {}  # adapters whose "type" is known
        self.adapter_names: list[str] = []  # every [adapters.NAME], valid or not
        self.used_adapters: set[str] = set()

    # -- the document
    def load(self, data: dict[str, object]) -> Config | None:
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                suggestion = check.closest(key, TOP_LEVEL_KEYS)
                hint = "" if suggestion else f" (the sections are: {', '.join(TOP_LEVEL_KEYS)})"
                self.error((key,), f"unknown section{hint}", suggestion)
        push = self.push(data.get("push"))
        status = self.status(data.get("status", {}))
        journal = self.simple(data, "journal", JournalConfig, self.journal_specs())
        log = self.simple(data, "log", LogConfig, {"level": check.choice(*LOG_LEVELS)})
        adapters = self.adapters(data.get("adapters", {}))
        routes = self.routes(data.get("routes"))
        if push is not None:
            self.check_protocol(push, data.get("routes"))
        for name in self.adapter_names:
            if name not in self.used_adapters:
                self.warn(("adapters", name), "adapter is not used by any route")
        if self.errors or push is None or status is None or journal is None or log is None:
            return None
        if adapters is None or routes is None:
            return None
        return Config(
            push=push,
            routes=routes,
            adapters=adapters,
            status=status,
            journal=journal,
            log=log,
            source=self.source,
        )

    def check_protocol(self, push: PushConfig, raw_routes: object) -> None:
        """What the autopush protocol (a ``wss://`` service) cannot do."""
        if not is_websocket_service(push.service):
            return
        if push.urgency is not None:
            self.warn(
                ("push", "urgency"),
                "an autopush (wss://) service has no Urgency filter: every message is delivered",
            )
        for index, raw in enumerate(raw_routes if isinstance(raw_routes, list) else []):
            if isinstance(raw, dict) and raw.get("ack") == "delivered":
                self.error(
                    ("routes", index, "ack"),
                    'ack = "delivered" needs RFC 8030 delivery receipts, which an autopush '
                    "(wss://) service never sends; a held acknowledgement would also stall the "
                    'next batch of stored messages for every route: use ack = "stored"',
                )

    def simple(
        self,
        data: Mapping[str, object],
        key: str,
        kind: type[_T],
        specs: Mapping[str, check.Convert],
    ) -> _T | None:
        """A section with no required keys and no cross-checks beyond its own fields."""
        table = self.table(data.get(key, {}), (key,), f"[{key}]")
        if table is None:
            return None
        values, _failed = self.fields(table, (key,), specs)
        return kind(**values)

    # -- [push]
    def push(self, value: object) -> PushConfig | None:
        if value is None:
            self.error(("push",), 'missing required section [push] with service = "https://..."')
            return None
        table = self.table(value, ("push",), "[push]")
        if table is None:
            return None
        specs: dict[str, check.Convert] = {
            "service": check.push_service_url,
            "state_dir": self.path,
            "keepalive": check.duration(),
            "urgency": check.choice(*check.URGENCIES),
            "ca_file": self.path,
            "backoff_base": check.duration(),
            "backoff_cap": check.duration(),
            "healthy_after": check.duration(),
            "max_message_bytes": check.size,
            "connect_timeout": check.duration(),
        }
        values, failed = self.fields(table, ("push",), specs, required=("service",))
        state_directory = self.environ.get("STATE_DIRECTORY", "")
        if "state_dir" not in table and state_directory:
            # systemd's StateDirectory= exports the absolute path(s), colon-separated.
            values["state_dir"] = Path(state_directory.split(":")[0])
        if "service" not in values:
            return None
        push = PushConfig(**values)
        self.order(
            ("push",),
            ("backoff_base", push.backoff_base),
            ("backoff_cap", push.backoff_cap),
            failed,
        )
        if push.max_message_bytes < check.RFC8030_MIN_MESSAGE_BYTES:
            self.warn(
                ("push", "max_message_bytes"),
                f"below {check.RFC8030_MIN_MESSAGE_BYTES}: RFC 8030 §7.2 lets senders rely on "
                "4096-byte messages, which would then be refused",
            )
        return push

    # -- [status], [journal]
    def status(self, value: object) -> StatusConfig | None:
        table = self.table(value, ("status",), "[status]")
        if table is None:
            return None
        specs = {"listen": check.listen, "allow_remote": check.boolean}
        values, failed = self.fields(table, ("status",), specs)
        status = StatusConfig(**values)
        if not failed:
            self.check_listen(status)
        return status

    def journal_specs(self) -> dict[str, check.Convert]:
        return {"max_bytes": check.size, "dedupe_retention": check.duration()}

    def check_listen(self, status: StatusConfig) -> None:
        if not status.listen or status.listen.startswith("unix:") or status.allow_remote:
            return
        host, _port = check.split_host_port(status.listen)
        if not check.is_loopback(host):
            self.error(
                ("status", "listen"),
                f"{check.quoted(status.listen)} is not a loopback address: the status endpoint "
                "would be reachable from the network; set allow_remote = true if that is intended",
            )

    # -- [adapters.NAME]
    def adapters(self, value: object) -> dict[str, AdapterConfig] | None:
        table = self.table(value, ("adapters",), '[adapters.NAME] with type = "mqtt"')
        if table is None:
            return None
        result: dict[str, AdapterConfig] = {}
        owners: dict[tuple[str, str, str], str] = {}  # (type, key, value) -> first adapter
        for name, body in table.items():
            self.adapter_names.append(name)
            adapter = self.adapter(name, body)
            if adapter is None:
                continue
            result[name] = adapter
            kind = KINDS[self.adapter_types[name]]
            held = kind.exclusive(adapter)
            if held is not None:
                key, resource = held
                owner = owners.setdefault((kind.name, key, resource), name)
                if owner != name:
                    self.error(
                        ("adapters", name, key),
                        f"{check.quoted(resource)} is already the {key} of adapter "
                        f"{check.quoted(owner)}: one {kind.name} {key}, one adapter",
                    )
        return result

    def adapter(self, name: str, value: object) -> AdapterConfig | None:
        path: KeyPath = ("adapters", name)
        name_ok = True
        try:
            check.named("adapter")(name)
        except check.Invalid as invalid:
            self.error(path, invalid.message)
            name_ok = False
        table = self.table(value, path, f'[adapters.{format_key_path((name,))}] with type = "mqtt"')
        if table is None:
            return None
        kind_name = table.get("type")
        if kind_name is None:
            self.error((*path, "type"), f'missing required key "type" ({_KIND_LIST})')
            return None
        if not isinstance(kind_name, str) or kind_name not in KINDS:
            suggestion = check.closest(kind_name, KINDS) if isinstance(kind_name, str) else None
            found = check.found(kind_name)
            self.error((*path, "type"), f"expected {_KIND_LIST}, found {found}", suggestion)
            return None
        self.adapter_types[name] = kind_name
        kind = KINDS[kind_name]
        specs = kind.adapter_specs(self.path)
        elsewhere = {"name": "the adapter's name is its table name, [adapters.NAME]"}
        for other in KINDS.values():
            for key in other.adapter_specs(self.path):
                if key not in specs:
                    elsewhere.setdefault(
                        key,
                        f'"{key}" is an option of {other.name} adapters, not of {kind_name} '
                        "adapters",
                    )
        values, failed = self.fields(
            table, path, specs, required=kind.required, handled=("type",), elsewhere=elsewhere
        )
        if any(key in failed for key in kind.required) or not name_ok:
            return None
        settings = kind.settings(name=name, **values)
        kind.check(self, path, settings, failed)
        return settings

    # -- [[routes]]
    def route_specs(self) -> dict[str, check.Convert]:
        return {
            "name": check.named("route"),
            "ack": check.choice("stored", "delivered"),
            "max_age": check.duration(),
            "distribute_url": check.web_url,
            "vapid_public_key": check.vapid_public_key,
            "queue_max_messages": check.integer(1, 2**31 - 1),
            "queue_max_bytes": check.size,
            "queue_full": check.choice("drop-oldest", "refuse-newest"),
            "retry_base": check.duration(),
            "retry_cap": check.duration(),
        }

    def routes(self, value: object) -> tuple[RouteConfig, ...] | None:
        if value is None:
            self.warn(("routes",), "no [[routes]]: the gateway has nothing to subscribe to")
            return ()
        if not isinstance(value, list):
            self.error(("routes",), f"expected [[routes]] tables, found {check.found(value)}")
            return None
        routes: list[RouteConfig] = []
        first_use: dict[str, int] = {}
        for index, body in enumerate(value):
            path: KeyPath = ("routes", index)
            table = self.table(body, path, "[[routes]]")
            if table is None:
                continue
            values, failed = self.fields(
                table, path, self.route_specs(), required=("name", "deliver"), handled=("deliver",)
            )
            name = values.get("name")
            if name is not None:
                if name in first_use:
                    self.error(
                        (*path, "name"),
                        f"duplicate route name {check.quoted(name)} (first used by "
                        f"routes[{first_use[name]}])",
                    )
                else:
                    first_use[name] = index
            deliver = (
                self.deliver(table["deliver"], (*path, "deliver")) if "deliver" in table else None
            )
            if name is None or deliver is None:
                continue
            route = RouteConfig(deliver=deliver, **values)
            self.order(
                path, ("retry_base", route.retry_base), ("retry_cap", route.retry_cap), failed
            )
            routes.append(route)
        return tuple(routes)

    def deliver(self, value: object, path: KeyPath) -> tuple[TargetConfig, ...] | None:
        example = '[{ adapter = "site-broker", topic = "sensors/{id}" }]'
        if not isinstance(value, list):
            self.error(
                path, f"expected an array of targets such as {example}, found {check.found(value)}"
            )
            return None
        if not value:
            self.error(path, f"a route needs at least one target, as in deliver = {example}")
            return None
        targets: list[TargetConfig] = []
        ok = True
        for index, entry in enumerate(value):
            target = self.target(entry, (*path, index))
            if target is None:
                ok = False
            else:
                targets.append(target)
        return tuple(targets) if ok else None

    def target(self, value: object, path: KeyPath) -> TargetConfig | None:
        table = self.table(value, path, '{ adapter = "site-broker" }')
        if table is None:
            return None
        every_option: dict[str, check.Convert] = {}
        for any_kind in KINDS.values():
            every_option.update(any_kind.target_specs())
        adapter = table.get("adapter")
        if not isinstance(adapter, str):
            if adapter is None:
                self.error((*path, "adapter"), 'missing required key "adapter"')
            else:
                self.error(
                    (*path, "adapter"), f"expected an adapter name, found {check.found(adapter)}"
                )
            self.fields(table, path, every_option, handled=("adapter",))
            return None
        self.used_adapters.add(adapter)
        kind = self.adapter_types.get(adapter)
        if kind is None:
            if adapter not in self.adapter_names:  # else its own table already has an error
                suggestion = check.closest(adapter, self.adapter_names)
                known = ", ".join(self.adapter_names) or "none: add an [adapters.NAME] table"
                hint = "" if suggestion else f" (adapters: {known})"
                self.error(
                    (*path, "adapter"),
                    f"no adapter named {check.quoted(adapter)}{hint}",
                    suggestion,
                )
            self.fields(table, path, every_option, handled=("adapter",))
            return None
        specs = KINDS[kind].target_specs()
        own = ", ".join(["adapter", *specs])
        elsewhere = {
            key: f'"{key}" is not an option for {kind} adapter {check.quoted(adapter)} '
            f"(its options: {own})"
            for key in every_option
            if key not in specs
        }
        values, failed = self.fields(table, path, specs, handled=("adapter",), elsewhere=elsewhere)
        if failed:
            return None
        return KINDS[kind].target(adapter=adapter, **values)


LOG_LEVELS = ("debug", "info", "warning", "error")
TOP_LEVEL_KEYS = ("push", "status", "journal", "log", "adapters", "routes")
_KIND_LIST = check.alternatives(list(KINDS))  # '"mqtt", "serial" or "log"'
_T = TypeVar("_T")


def parse_config(text: str, source: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration in ``text`` (read from ``source``); raises :class:`ConfigError`.

    ``environ`` defaults to the process environment; only ``STATE_DIRECTORY`` is read from it.
    """
    data = parse_toml(text, source)
    loader = _Loader(source, SourceMap(text), os.environ if environ is None else environ)
    config = loader.load(data)
    warnings = loader.raise_if_errors()
    if config is None:
        raise ConfigError(loader.errors)
    return replace(config, warnings=warnings)


def is_websocket_service(service: str) -> bool:
    """Whether ``[push] service`` names an autopush (WebSocket) service."""
    return service.split("://", 1)[0].lower() in ("wss", "ws")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration file at ``path``; raises :class:`ConfigError`."""
    text = read_text(path)
    config = parse_config(text, path, environ)
    return _warn_if_secrets_exposed(config, path, text)


def _warn_if_secrets_exposed(config: Config, path: Path, text: str) -> Config:
    """A password in a file every user can read deserves a warning (fix: chmod 600)."""
    try:
        world_readable = path.stat().st_mode & stat.S_IROTH
    except OSError:
        return config
    if not world_readable:
        return config
    lines = SourceMap(text)
    extra = []
    for name, adapter in config.adapters.items():
        for secret in KINDS[adapter.type].secret_keys:
            if getattr(adapter, secret) is None:
                continue
            key: KeyPath = ("adapters", name, secret)
            problem = ConfigProblem(
                path,
                format_key_path(key),
                lines.line_of(key),
                f"the file holds a {secret} and every user can read it: chmod 600 it, or use "
                f"{secret}_file",
            )
            extra.append(problem.render("warning"))
    return replace(config, warnings=config.warnings + tuple(extra)) if extra else config


# ------------------------------------------------------------------------------ preflight


def preflight(config: Config) -> list[ConfigProblem]:
    """What the machine says about the paths the configuration names, as problems (empty: fine).

    ``[push]`` (the state directory, ``ca_file``), ``[status]`` (a Unix socket's directory) and
    each adapter kind's own preflight (its ``AdapterKind.preflight``: the log file, the MQTT TLS
    files). ``check-config`` reports them and ``fieldgate run`` refuses to start on them. Looks
    only: creates nothing, so it can run beside a running gateway. (A status port in use is not
    among them: the running gateway holds it; ``run`` reports it when binding.)
    """
    source = config.source or Path("<config>")
    try:
        lines = SourceMap(read_text(source)) if config.source is not None else SourceMap("")
    except ConfigError:
        lines = SourceMap("")
    found: list[tuple[KeyPath, str]] = []
    problem = file_checks.writable_directory(config.push.state_dir)
    if problem is not None:
        found.append((("push", "state_dir"), problem))
    if config.push.ca_file is not None:
        problem = file_checks.certificate_file(config.push.ca_file)
        if problem is not None:
            found.append((("push", "ca_file"), problem))
    listen = config.status.listen
    if listen.startswith("unix:"):
        problem = file_checks.existing_directory(Path(listen.removeprefix("unix:")).parent)
        if problem is not None:
            found.append((("status", "listen"), f"cannot create the socket: {problem}"))
    for name, adapter in config.adapters.items():
        for key, message in KINDS[adapter.type].preflight(adapter):
            found.append((("adapters", name, key), message))
    return [
        ConfigProblem(source, format_key_path(path), lines.line_of(path), message)
        for path, message in found
    ]
