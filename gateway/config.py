"""The gateway's configuration: TOML loaded into frozen dataclasses.

Durations are seconds (``float``) and sizes are bytes (``int``) once loaded; in TOML they are
written ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` and ``4096``, ``"64KiB"``, ``"16MiB"``.
The loader (:func:`load_config`, :func:`parse_config`) reports every problem it finds with the
file, the key path, the TOML line where known, what was expected and what was found, as a
:class:`ConfigError`. Value converters live in :mod:`gateway.config_values`, the key-to-line
map in :mod:`gateway.config_source`.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway import config_values as check
from gateway.config_source import KeyPath as KeyPath
from gateway.config_source import SourceMap
from gateway.config_source import format_key_path as format_key_path
from gateway.units import format_duration

Urgency = Literal["very-low", "low", "normal", "high"]
AckPolicy = Literal["stored", "delivered"]
QueueFullPolicy = Literal["drop-oldest", "refuse-newest"]
PayloadForm = Literal["raw", "envelope"]


@dataclass(frozen=True)
class PushConfig:
    """``[push]``: the upstream push service and how the user agent talks to it."""

    service: str  # subscribe URL of the RFC 8030 push service (https://, or http:// on loopback)
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
    dedupe_retention: float = 28 * 86400.0  # how long a push message URI is remembered


@dataclass(frozen=True)
class LogConfig:
    """``[log]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class MqttAdapterConfig:
    """``[adapters.NAME]`` with ``type = "mqtt"``."""

    name: str
    host: str = "127.0.0.1"
    port: int | None = None  # default 1883, or 8883 with TLS
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None  # default "fieldgate-<hostname>-<adapter name>"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    keepalive: float = 60.0
    clean_start: bool = False
    session_expiry: float = 3600.0  # MQTT 5 Session Expiry Interval
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    reconnect_base: float = 1.0
    reconnect_cap: float = 60.0
    type: Literal["mqtt"] = "mqtt"


@dataclass(frozen=True)
class SerialAdapterConfig:
    """``[adapters.NAME]`` with ``type = "serial"``."""

    name: str
    port: str  # prefer /dev/serial/by-id/... paths: they survive re-enumeration
    baud: int = 115200
    parity: Literal["none", "even", "odd"] = "none"
    stop_bits: Literal[1, 2] = 1
    rtscts: bool = False
    rs485: bool = False  # drive RTS as the RS-485 transmit enable
    rs485_rts_level_for_tx: bool = True
    rs485_delay_before_tx: float = 0.0
    rs485_delay_before_rx: float = 0.0
    ping_interval: float = 10.0
    ack_timeout: float | None = None  # None: derived from the baud rate and frame size
    max_tries: int = 5
    reopen_base: float = 1.0
    reopen_cap: float = 30.0
    type: Literal["serial"] = "serial"


@dataclass(frozen=True)
class LogAdapterConfig:
    """``[adapters.NAME]`` with ``type = "log"``: writes deliveries to the log or a file."""

    name: str
    path: Path | None = None  # None: the gateway's log
    type: Literal["log"] = "log"


AdapterConfig = MqttAdapterConfig | SerialAdapterConfig | LogAdapterConfig


@dataclass(frozen=True)
class MqttTarget:
    """One ``deliver`` entry naming an MQTT adapter."""

    adapter: str
    topic: str = "fieldgate/{route}"  # {route} and {id} are replaced
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    payload: PayloadForm = "raw"
    content_type: str | None = None  # MQTT 5 Content Type


@dataclass(frozen=True)
class SerialTarget:
    """One ``deliver`` entry naming a serial adapter."""

    adapter: str
    payload: PayloadForm = "envelope"


@dataclass(frozen=True)
class LogTarget:
    """One ``deliver`` entry naming a log adapter."""

    adapter: str
    payload: PayloadForm = "raw"


Target = MqttTarget | SerialTarget | LogTarget


@dataclass(frozen=True)
class RouteConfig:
    """``[[routes]]``: one push subscription and where its messages go."""

    name: str
    deliver: tuple[Target, ...]
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


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, located as precisely as we can."""

    file: Path
    key_path: str  # "" when the problem is the file itself (unreadable, TOML syntax)
    line: int | None
    message: str  # what was expected and what was found
    suggestion: str | None = None  # a close match for a misspelt name

    def render(self, severity: str = "") -> str:
        """``FILE:LINE: [severity: ]KEY.PATH: message (did you mean "x"?)``."""
        parts = [f"{self.file}:{self.line}" if self.line is not None else str(self.file)]
        if severity:
            parts.append(severity)
        if self.key_path:
            parts.append(self.key_path)
        text = ": ".join([*parts, self.message])
        if self.suggestion is not None:
            text += f' (did you mean "{self.suggestion}"?)'
        return text

    def __str__(self) -> str:
        return self.render()


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists everything found, in file order."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# ------------------------------------------------------------------------------ loader


class _Loader:
    """Reads the parsed TOML into dataclasses, collecting every problem on the way."""

    def __init__(self, source: Path, lines: SourceMap, environ: Mapping[str, str]) -> None:
        self.source = source
        self.lines = lines
        self.environ = environ
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        self.adapter_types: dict[str, str] = {}  # adapters whose "type" is known
        self.adapter_names: list[str] = []  # every [adapters.NAME], valid or not
        self.used_adapters: set[str] = set()

    # -- reporting
    def _problem(self, path: KeyPath, message: str, suggestion: str | None) -> ConfigProblem:
        return ConfigProblem(
            self.source, format_key_path(path), self.lines.line_of(path), message, suggestion
        )

    def error(self, path: KeyPath, message: str, suggestion: str | None = None) -> None:
        self.errors.append(self._problem(path, message, suggestion))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(self._problem(path, message, None))

    def _path(self, value: object) -> Path:
        """A file or directory; relative paths are relative to the configuration file."""
        path = Path(check.nonempty_text(value))
        return path if path.is_absolute() else (self.source.parent / path).absolute()

    # -- tables
    def table(self, value: object, path: KeyPath, example: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"expected a table such as {example}, found {check.found(value)}")
        return None

    def fields(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        specs: Mapping[str, check.Convert],
        *,
        required: Sequence[str] = (),
        handled: Sequence[str] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], set[str]]:
        """Convert each key of ``table`` with its spec; returns the values and the failed keys.

        ``handled`` keys are read by the caller; ``elsewhere`` explains keys that belong to
        another kind of table (a serial option in an mqtt adapter, for instance).
        """
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for key, value in table.items():
            if key in handled:
                continue
            convert = specs.get(key)
            if convert is None:
                failed.add(key)
                if elsewhere and key in elsewhere:
                    self.error((*path, key), elsewhere[key])
                    continue
                known = [*handled, *specs]
                suggestion = check.closest(key, known)
                hint = "" if suggestion else f" (the keys here are: {', '.join(known)})"
                self.error((*path, key), f"unknown key{hint}", suggestion)
                continue
            try:
                values[key] = convert(value)
            except check.Invalid as invalid:
                failed.add(key)
                self.error((*path, key), invalid.message, invalid.suggestion)
        for key in required:
            if key not in table:
                failed.add(key)
                self.error((*path, key), f'missing required key "{key}"')
        return values, failed

    def order(
        self, path: KeyPath, low: tuple[str, float], high: tuple[str, float], failed: set[str]
    ) -> None:
        """Report ``low`` > ``high`` (a backoff base above its cap), unless either is broken."""
        if low[0] in failed or high[0] in failed or low[1] <= high[1]:
            return
        self.error(
            (*path, low[0]),
            f"{low[0]} ({format_duration(low[1])}) must not exceed {high[0]} "
            f"({format_duration(high[1])})",
        )

    # -- the document
    def load(self, data: dict[str, object]) -> Config | None:
        for key in data:
            if key not in check.TOP_LEVEL_KEYS:
                suggestion = check.closest(key, check.TOP_LEVEL_KEYS)
                hint = (
                    "" if suggestion else f" (the sections are: {', '.join(check.TOP_LEVEL_KEYS)})"
                )
                self.error((key,), f"unknown section{hint}", suggestion)
        push = self.push(data.get("push"))
        status = self.status(data.get("status", {}))
        journal = self.simple(data, "journal", JournalConfig, self.journal_specs())
        log = self.simple(data, "log", LogConfig, {"level": check.choice(*LOG_LEVELS)})
        adapters = self.adapters(data.get("adapters", {}))
        routes = self.routes(data.get("routes"))
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
            "service": check.web_url,
            "state_dir": self._path,
            "keepalive": check.duration(),
            "urgency": check.choice(*check.URGENCIES),
            "ca_file": self._path,
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
    def adapter_specs(self, kind: str) -> dict[str, check.Convert]:
        if kind == "mqtt":
            return {
                "host": check.mqtt_host,
                "port": check.integer(1, 65535),
                "protocol": check.mqtt_protocol,
                "client_id": check.nonempty_text,
                "username": check.nonempty_text,
                "password": check.string,
                "password_file": self._path,
                "keepalive": check.duration(maximum=check.MQTT_KEEPALIVE_MAX),
                "clean_start": check.boolean,
                "session_expiry": check.duration(allow_zero=True),
                "tls": check.boolean,
                "ca_file": self._path,
                "cert_file": self._path,
                "key_file": self._path,
                "reconnect_base": check.duration(),
                "reconnect_cap": check.duration(),
            }
        if kind == "serial":
            return {
                "port": check.nonempty_text,
                "baud": check.integer(1, 2**31 - 1),
                "parity": check.choice("none", "even", "odd"),
                "stop_bits": check.one_of_integers(1, 2),
                "rtscts": check.boolean,
                "rs485": check.boolean,
                "rs485_rts_level_for_tx": check.boolean,
                "rs485_delay_before_tx": check.duration(allow_zero=True),
                "rs485_delay_before_rx": check.duration(allow_zero=True),
                "ping_interval": check.duration(),
                "ack_timeout": check.duration(),
                "max_tries": check.integer(1, 1000),
                "reopen_base": check.duration(),
                "reopen_cap": check.duration(),
            }
        return {"path": self._path}

    def adapters(self, value: object) -> dict[str, AdapterConfig] | None:
        table = self.table(value, ("adapters",), '[adapters.NAME] with type = "mqtt"')
        if table is None:
            return None
        result: dict[str, AdapterConfig] = {}
        serial_owner: dict[str, str] = {}  # device path -> first adapter opening it
        for name, body in table.items():
            self.adapter_names.append(name)
            adapter = self.adapter(name, body)
            if adapter is None:
                continue
            result[name] = adapter
            if isinstance(adapter, SerialAdapterConfig):
                # Two adapters on one line would interleave frames and steal each other's ACKs.
                owner = serial_owner.setdefault(adapter.port, name)
                if owner != name:
                    self.error(
                        ("adapters", name, "port"),
                        f"{check.quoted(adapter.port)} is already the port of adapter "
                        f"{check.quoted(owner)}: one serial line, one adapter",
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
        kind = table.get("type")
        kinds = ADAPTER_TYPES
        if kind is None:
            self.error((*path, "type"), 'missing required key "type" ("mqtt", "serial" or "log")')
            return None
        if not isinstance(kind, str) or kind not in kinds:
            suggestion = check.closest(kind, kinds) if isinstance(kind, str) else None
            self.error(
                (*path, "type"),
                f'expected "mqtt", "serial" or "log", found {check.found(kind)}',
                suggestion,
            )
            return None
        self.adapter_types[name] = kind
        specs = self.adapter_specs(kind)
        elsewhere = {"name": "the adapter's name is its table name, [adapters.NAME]"}
        for other in kinds:
            for key in self.adapter_specs(other):
                if key not in specs:
                    elsewhere.setdefault(
                        key, f'"{key}" is an option of {other} adapters, not of {kind} adapters'
                    )
        required = ("port",) if kind == "serial" else ()
        values, failed = self.fields(
            table, path, specs, required=required, handled=("type",), elsewhere=elsewhere
        )
        if any(key in failed for key in required) or not name_ok:
            return None
        if kind == "mqtt":
            mqtt = MqttAdapterConfig(name=name, **values)
            self.check_mqtt(path, mqtt, failed)
            return mqtt
        if kind == "serial":
            serial = SerialAdapterConfig(name=name, **values)
            self.order(
                path, ("reopen_base", serial.reopen_base), ("reopen_cap", serial.reopen_cap), failed
            )
            if serial.rs485 and serial.rtscts:
                self.error(
                    (*path, "rtscts"),
                    "rtscts = true cannot be combined with rs485 = true: both drive the RTS line",
                )
            return serial
        return LogAdapterConfig(name=name, **values)

    def check_mqtt(self, path: KeyPath, mqtt: MqttAdapterConfig, failed: set[str]) -> None:
        self.order(
            path,
            ("reconnect_base", mqtt.reconnect_base),
            ("reconnect_cap", mqtt.reconnect_cap),
            failed,
        )
        if mqtt.cert_file is not None and mqtt.key_file is None and "key_file" not in failed:
            self.error((*path, "cert_file"), "cert_file needs key_file (the client's private key)")
        if mqtt.key_file is not None and mqtt.cert_file is None and "cert_file" not in failed:
            self.error((*path, "key_file"), "key_file needs cert_file (the client certificate)")
        if not mqtt.tls and "tls" not in failed:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(mqtt, key) is not None:
                    self.error(
                        (*path, key),
                        f"{key} is set but tls = false: set tls = true (we never fall back to "
                        "plain MQTT when TLS settings are given)",
                    )
        if mqtt.password is not None and mqtt.password_file is not None:
            self.error((*path, "password_file"), "give password or password_file, not both")
        if (
            mqtt.protocol == "3.1.1"
            and mqtt.username is None
            and (mqtt.password is not None or mqtt.password_file is not None)
        ):
            self.error(
                (*path, "username"), "MQTT 3.1.1 sends a password only with a username: add one"
            )

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

    def target_specs(self, kind: str) -> dict[str, check.Convert]:
        payload = check.choice("raw", "envelope")
        if kind == "mqtt":
            return {
                "topic": check.topic,
                "qos": check.integer(0, 2),
                "retain": check.boolean,
                "payload": payload,
                "content_type": check.nonempty_text,
            }
        return {"payload": payload}

    def deliver(self, value: object, path: KeyPath) -> tuple[Target, ...] | None:
        example = '[{ adapter = "site-broker", topic = "sensors/{id}" }]'
        if not isinstance(value, list):
            self.error(
                path, f"expected an array of targets such as {example}, found {check.found(value)}"
            )
            return None
        if not value:
            self.error(path, f"a route needs at least one target, as in deliver = {example}")
            return None
        targets: list[Target] = []
        ok = True
        for index, entry in enumerate(value):
            target = self.target(entry, (*path, index))
            if target is None:
                ok = False
            else:
                targets.append(target)
        return tuple(targets) if ok else None

    def target(self, value: object, path: KeyPath) -> Target | None:
        table = self.table(value, path, '{ adapter = "site-broker" }')
        if table is None:
            return None
        every_option: dict[str, check.Convert] = {}
        for any_kind in ADAPTER_TYPES:
            every_option.update(self.target_specs(any_kind))
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
        specs = self.target_specs(kind)
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
        if kind == "mqtt":
            return MqttTarget(adapter=adapter, **values)
        if kind == "serial":
            return SerialTarget(adapter=adapter, **values)
        return LogTarget(adapter=adapter, **values)


LOG_LEVELS = ("debug", "info", "warning", "error")
ADAPTER_TYPES = ("mqtt", "serial", "log")
_T = TypeVar("_T")

# tomllib's messages end with "(at line 3, column 7)" or "(at end of document)".
_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$", re.S
)


def _syntax_problem(source: Path, error: ValueError, text: str) -> ConfigProblem:
    match = _TOML_POSITION.match(str(error))
    if match is None:
        return ConfigProblem(source, "", None, f"invalid TOML: {error}")
    message = match.group("message")
    if match.group("line") is None:
        return ConfigProblem(
            source, "", text.count("\n") + 1, f"invalid TOML: {message} at end of file"
        )
    return ConfigProblem(
        source,
        "",
        int(match.group("line")),
        f"invalid TOML: {message} (column {match.group('column')})",
    )


def parse_config(text: str, source: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration in ``text`` (read from ``source``); raises :class:`ConfigError`.

    ``environ`` defaults to the process environment; only ``STATE_DIRECTORY`` is read from it.
    """
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as error:
        # TOMLDecodeError is a ValueError; so is int()'s refusal of a 5000-digit number, and
        # deeply nested arrays exhaust the parser's recursion.
        if isinstance(error, RecursionError):
            raise ConfigError(
                [ConfigProblem(source, "", None, "invalid TOML: nested too deeply")]
            ) from None
        raise ConfigError([_syntax_problem(source, error, text)]) from None
    loader = _Loader(source, SourceMap(text), os.environ if environ is None else environ)
    config = loader.load(data)
    if loader.errors or config is None:
        raise ConfigError(sorted(loader.errors, key=_file_order))
    warnings = tuple(w.render("warning") for w in sorted(loader.warnings, key=_file_order))
    return replace(config, warnings=warnings)


def _file_order(problem: ConfigProblem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration file at ``path``; raises :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            [ConfigProblem(path, "", None, f"cannot read the file: {reason}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        message = f"not UTF-8 text: byte 0x{raw[error.start]:02x} cannot be decoded"
        raise ConfigError([ConfigProblem(path, "", line, message)]) from None
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
        if isinstance(adapter, MqttAdapterConfig) and adapter.password is not None:
            key: KeyPath = ("adapters", name, "password")
            problem = ConfigProblem(
                path,
                format_key_path(key),
                lines.line_of(key),
                "the file holds a password and every user can read it: chmod 600 it, or use "
                "password_file",
            )
            extra.append(problem.render("warning"))
    return replace(config, warnings=config.warnings + tuple(extra)) if extra else config
