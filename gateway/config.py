"""The gateway's configuration: TOML loaded into frozen dataclasses.

Durations are seconds (``float``) and sizes are bytes (``int``) once loaded; in TOML they are
written ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` and ``4096``, ``"64KiB"``, ``"16MiB"``.
The loader (:func:`load_config`) reports every problem it finds with the file, the key path,
the TOML line where known, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
