"""The gateway's configuration: TOML loaded into frozen dataclasses.

Durations are seconds (``float``) and sizes are bytes (``int``) once loaded; in TOML they are
written ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` and ``4096``, ``"64KiB"``, ``"16MiB"``.
The loader (:func:`load_config`) reports every problem it finds with the file, the key path,
the TOML line where known, what was expected and what was found.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime
import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.units import UnitError, format_duration, parse_duration, parse_size

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

KeyPath = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(path: KeyPath) -> str:
    """``("routes", 2, "deliver", 0, "adapter")`` -> ``routes[2].deliver[0].adapter``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


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


# ------------------------------------------------------------------------ source lines


class _SourceMap:
    """The line on which each key path of a valid TOML document is written (best effort).

    tomllib does not report positions for values, so this walks the text once with a tiny
    lexer that understands just enough TOML (tables, arrays of tables, keys, strings, arrays,
    inline tables) to map ``("routes", 2, "deliver", 0, "adapter")`` to a line.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._offsets: dict[KeyPath, int] = {}
        self._array_tables: dict[KeyPath, int] = {}  # [[x]] path -> how many seen so far
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        # A line number is a courtesy: whatever the lexer trips over, never fail over it.
        with contextlib.suppress(Exception):
            self._document()

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest written ancestor; ``None`` if none is."""
        for length in range(len(path), 0, -1):
            offset = self._offsets.get(path[:length])
            if offset is not None:
                return bisect.bisect_left(self._newlines, offset) + 1
        return None

    # -- lexer
    def _peek(self, count: int = 1) -> str:
        return self._text[self._pos : self._pos + count]

    def _skip_blanks(self, newlines: bool) -> None:
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self._pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                return

    def _record(self, path: KeyPath, offset: int) -> None:
        for length in range(1, len(path) + 1):
            self._offsets.setdefault(path[:length], offset)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blanks(newlines=True)
            if self._pos >= len(self._text):
                return
            start = self._pos
            if self._peek(2) == "[[":
                self._pos += 2
                keys = self._key()
                self._expect("]]")
                base = (*self._resolve(keys[:-1]), keys[-1])
                index = self._array_tables.get(base, 0)
                self._array_tables[base] = index + 1
                table = (*base, index)
                self._record(table, start)
            elif self._peek() == "[":
                self._pos += 1
                table = self._resolve(self._key())
                self._expect("]")
                self._record(table, start)
            else:
                self._key_value(table)

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's keys as a concrete path: an array of tables means its latest element."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self._array_tables.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _expect(self, token: str) -> None:
        self._skip_blanks(newlines=False)
        if self._peek(len(token)) != token:
            raise ValueError(f"expected {token!r} at offset {self._pos}")
        self._pos += len(token)

    def _key(self) -> list[str]:
        keys = []
        while True:
            self._skip_blanks(newlines=False)
            char = self._peek()
            if char == '"' or char == "'":
                start = self._pos
                self._string()
                keys.append(str(tomllib.loads("k = " + self._text[start : self._pos])["k"]))
            else:
                match = _BARE_KEY.match(self._text, self._pos)
                if match is None:
                    raise ValueError(f"expected a key at offset {self._pos}")
                keys.append(match.group())
                self._pos = match.end()
            self._skip_blanks(newlines=False)
            if self._peek() != ".":
                return keys
            self._pos += 1

    def _key_value(self, table: KeyPath) -> None:
        start = self._pos
        path = (*table, *self._key())
        self._record(path, start)
        self._expect("=")
        self._skip_blanks(newlines=False)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char == "[":
            self._pos += 1
            self._array(path)
        elif char == "{":
            self._pos += 1
            self._inline_table(path)
        else:
            match = _SCALAR.match(self._text, self._pos)
            self._pos = match.end() if match else self._pos + 1

    def _array(self, path: KeyPath) -> None:
        index = 0
        while True:
            self._skip_blanks(newlines=True)
            if self._peek() == "]":
                self._pos += 1
                return
            self._record((*path, index), self._pos)
            self._value((*path, index))
            index += 1
            self._skip_blanks(newlines=True)
            if self._peek() == ",":
                self._pos += 1
            elif self._peek() == "]":
                self._pos += 1
                return
            else:
                raise ValueError(f"unexpected text in an array at offset {self._pos}")

    def _inline_table(self, path: KeyPath) -> None:
        while True:
            self._skip_blanks(newlines=True)
            if self._peek() == "}":
                self._pos += 1
                return
            self._key_value(path)
            self._skip_blanks(newlines=True)
            if self._peek() == ",":
                self._pos += 1
            elif self._peek() == "}":
                self._pos += 1
                return
            else:
                raise ValueError(f"unexpected text in an inline table at offset {self._pos}")

    def _string(self) -> None:
        text = self._text
        quote = text[self._pos]
        if text.startswith(quote * 3, self._pos):
            end = self._string_end(self._pos + 3, quote * 3, escapes=quote == '"')
            # a multi-line string may end with up to two extra quotes: """a""""" is 'a""'
            extra = 0
            while extra < 2 and text.startswith(quote, end):
                end += 1
                extra += 1
            self._pos = end
        else:
            self._pos = self._string_end(self._pos + 1, quote, escapes=quote == '"')

    def _string_end(self, position: int, closing: str, escapes: bool) -> int:
        text = self._text
        while position < len(text):
            if escapes and text[position] == "\\":
                position += 2
            elif text.startswith(closing, position):
                return position + len(closing)
            else:
                position += 1
        raise ValueError("unterminated string")


# A bare value: number, boolean or date-time, up to the next separator or comment.
_SCALAR = re.compile(r"[^,\]}\r\n#]+")


# -------------------------------------------------------------------------- converters
#
# A converter takes the value tomllib produced for one key and returns what the dataclass
# field holds, or raises _Invalid with what was expected and what was found.

Convert = Callable[[object], Any]

# Route and adapter names appear in metric labels, log lines, MQTT client ids and file names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
URGENCIES = ("very-low", "low", "normal", "high")  # RFC 8030 §5.3
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL (unix(7)).
UNIX_PATH_MAX = 107
# MQTT strings (topic names) are prefixed by a two-byte length (MQTT 5 §1.5.4).
MQTT_STRING_MAX = 65535
# MQTT Keep Alive is a two-byte number of seconds (MQTT 5 §3.1.2.10).
MQTT_KEEPALIVE_MAX = 65535.0
# RFC 8030 §7.2: a push service MUST support messages of at least 4096 octets.
RFC8030_MIN_MESSAGE_BYTES = 4096
# A VAPID public key is an uncompressed P-256 point: 0x04 || X || Y (RFC 8292 §3.2).
VAPID_KEY_BYTES = 65
TOP_LEVEL_KEYS = ("push", "status", "journal", "log", "adapters", "routes")


class _Invalid(Exception):
    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion


def _quoted(text: str) -> str:
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 50 else shown[:46] + '..."'


def _found(value: object) -> str:
    """``a string ("abc")``: the TOML type and a short rendering of a value."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})" if abs(value) < 10**30 else "a huge integer"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({_quoted(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _closest(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, found {_found(value)}")
    return value


def _nonempty_text(value: object) -> str:
    text = _text(value)
    if not text.strip():
        raise _Invalid("expected a non-empty string, found an empty one")
    if "\x00" in text:
        raise _Invalid("expected a string without NUL characters")
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, found {_found(value)}")
    return value


def _integer(low: int, high: int) -> Convert:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, found {_found(value)}")
        if not low <= value <= high:
            raise _Invalid(f"expected an integer from {low} to {high}, found {_found(value)}")
        return value

    return convert


def _one_of_integers(*choices: int) -> Convert:
    listing = " or ".join(str(choice) for choice in choices)

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
            raise _Invalid(f"expected {listing}, found {_found(value)}")
        return value

    return convert


def _choice(*choices: str) -> Convert:
    listing = ", ".join(f'"{choice}"' for choice in choices)

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            suggestion = _closest(value, choices) if isinstance(value, str) else None
            raise _Invalid(f"expected one of {listing}, found {_found(value)}", suggestion)
        return value

    return convert


def _duration(*, allow_zero: bool = False, maximum: float | None = None) -> Convert:
    def convert(value: object) -> float:
        try:
            seconds = parse_duration(value, allow_zero=allow_zero)
        except UnitError as error:
            raise _Invalid(str(error)) from None
        if maximum is not None and seconds > maximum:
            raise _Invalid(f"expected at most {format_duration(maximum)}, found {_found(value)}")
        return seconds

    return convert


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except UnitError as error:
        raise _Invalid(str(error)) from None


def _name(kind: str) -> Convert:
    def convert(value: object) -> str:
        name = _text(value)
        if not NAME_PATTERN.fullmatch(name):
            raise _Invalid(
                f"{kind} name {_quoted(name)} must be 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return name

    return convert


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _web_url(value: object) -> str:
    """An https:// URL, or http:// when the host is loopback (a local test service)."""
    text = _nonempty_text(value)
    expected = f"expected an https:// URL, found {_quoted(text)}"
    if any(char.isspace() or ord(char) < 32 for char in text):
        raise _Invalid(f"{expected}: a URL has no spaces or control characters")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise _Invalid(expected) from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise _Invalid(expected)
    if scheme == "http" and not _is_loopback(host):
        raise _Invalid(
            f"http:// is allowed only for a loopback host (127.0.0.0/8, ::1, localhost), "
            f"found host {_quoted(host)}: use https://",
            "https" + text[len(scheme) :],
        )
    return text


def _split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8088"`` / ``"[::1]:8088"`` / ``"localhost:8088"`` -> host and port."""
    expected = f'expected "HOST:PORT" or "unix:/path", found {_quoted(text)}'
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise _Invalid(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{expected}: {_quoted(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise _Invalid(f"{expected}: write an IPv6 address in brackets, as in [::1]:8088")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise _Invalid(f"{expected}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def _listen(value: object) -> str:
    text = _text(value)
    if text == "":
        return text  # the status endpoint is disabled
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise _Invalid("the socket path must be absolute, as in unix:/run/fieldgate/status")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise _Invalid(f"the socket path is longer than {UNIX_PATH_MAX} bytes")
        return text
    _split_host_port(text)
    return text


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
TOPIC_PLACEHOLDERS = ("route", "id")


def _topic(value: object) -> str:
    topic = _nonempty_text(value)
    if "+" in topic or "#" in topic:
        raise _Invalid(
            f"topic {_quoted(topic)} contains a wildcard (+ or #): wildcards are for "
            "subscriptions; a published message goes to one topic"
        )
    for match in _PLACEHOLDER.finditer(topic):
        if match.group(1) not in TOPIC_PLACEHOLDERS:
            close = _closest(match.group(1), TOPIC_PLACEHOLDERS)
            raise _Invalid(
                f"unknown placeholder {_quoted(match.group())} in topic: the placeholders are "
                "{route} and {id}",
                None if close is None else "{" + close + "}",
            )
    if "{" in _PLACEHOLDER.sub("", topic) or "}" in _PLACEHOLDER.sub("", topic):
        raise _Invalid(f"unbalanced brace in topic {_quoted(topic)}: placeholders are {{id}}")
    if topic.startswith("$"):
        raise _Invalid(f"topic {_quoted(topic)} starts with $: such topics belong to the broker")
    if len(topic.encode()) > MQTT_STRING_MAX:
        raise _Invalid(f"topic is longer than {MQTT_STRING_MAX} bytes")
    return topic


def _mqtt_host(value: object) -> str:
    host = _nonempty_text(value)
    if "://" in host or "/" in host:
        raise _Invalid(
            f"expected a host name or address, found {_quoted(host)}: give the port in "
            '"port" and set tls = true for MQTT over TLS'
        )
    return host


def _mqtt_protocol(value: object) -> str:
    if value == 5 and not isinstance(value, bool):
        return "5"
    result: str = _choice("5", "3.1.1")(value)
    return result


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _vapid_public_key(value: object) -> str:
    text = _nonempty_text(value).strip()
    expected = (
        "expected the base64url encoding of an uncompressed P-256 public key (87 characters, "
        "as the application server's VAPID library prints it)"
    )
    if not _BASE64URL.fullmatch(text):
        hint = (
            " ('+' and '/' are plain base64: base64url uses '-' and '_')"
            if ("+" in text or "/" in text)
            else ""
        )
        raise _Invalid(f"{expected}, found {_quoted(text)}{hint}")
    unpadded = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except ValueError:
        raise _Invalid(f"{expected}, found {_quoted(text)}") from None
    if len(raw) != VAPID_KEY_BYTES or raw[0] != 0x04:
        raise _Invalid(f"{expected}; it decodes to {len(raw)} bytes, not 65 starting with 0x04")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise _Invalid(f"{expected}; the point is not on the P-256 curve") from None
    return text


# ------------------------------------------------------------------------------ loader


class _Loader:
    """Reads the parsed TOML into dataclasses, collecting every problem on the way."""

    def __init__(self, source: Path, lines: _SourceMap, environ: Mapping[str, str]) -> None:
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
        path = Path(_nonempty_text(value))
        return path if path.is_absolute() else (self.source.parent / path).absolute()

    # -- tables
    def table(self, value: object, path: KeyPath, example: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"expected a table such as {example}, found {_found(value)}")
        return None

    def fields(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        specs: Mapping[str, Convert],
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
                suggestion = _closest(key, known)
                hint = "" if suggestion else f" (the keys here are: {', '.join(known)})"
                self.error((*path, key), f"unknown key{hint}", suggestion)
                continue
            try:
                values[key] = convert(value)
            except _Invalid as invalid:
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
            if key not in TOP_LEVEL_KEYS:
                suggestion = _closest(key, TOP_LEVEL_KEYS)
                hint = "" if suggestion else f" (the sections are: {', '.join(TOP_LEVEL_KEYS)})"
                self.error((key,), f"unknown section{hint}", suggestion)
        push = self.push(data.get("push"))
        status = self.status(data.get("status", {}))
        journal = self.simple(data, "journal", JournalConfig, self.journal_specs())
        log = self.simple(data, "log", LogConfig, {"level": _choice(*LOG_LEVELS)})
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
        self, data: Mapping[str, object], key: str, kind: type[_T], specs: Mapping[str, Convert]
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
        specs: dict[str, Convert] = {
            "service": _web_url,
            "state_dir": self._path,
            "keepalive": _duration(),
            "urgency": _choice(*URGENCIES),
            "ca_file": self._path,
            "backoff_base": _duration(),
            "backoff_cap": _duration(),
            "healthy_after": _duration(),
            "max_message_bytes": _size,
            "connect_timeout": _duration(),
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
        if push.max_message_bytes < RFC8030_MIN_MESSAGE_BYTES:
            self.warn(
                ("push", "max_message_bytes"),
                f"below {RFC8030_MIN_MESSAGE_BYTES}: RFC 8030 §7.2 lets senders rely on 4096-byte "
                "messages, which would then be refused",
            )
        return push

    # -- [status], [journal]
    def status(self, value: object) -> StatusConfig | None:
        table = self.table(value, ("status",), "[status]")
        if table is None:
            return None
        specs = {"listen": _listen, "allow_remote": _bool}
        values, failed = self.fields(table, ("status",), specs)
        status = StatusConfig(**values)
        if not failed:
            self.check_listen(status)
        return status

    def journal_specs(self) -> dict[str, Convert]:
        return {"max_bytes": _size, "dedupe_retention": _duration()}

    def check_listen(self, status: StatusConfig) -> None:
        if not status.listen or status.listen.startswith("unix:") or status.allow_remote:
            return
        host, _port = _split_host_port(status.listen)
        if not _is_loopback(host):
            self.error(
                ("status", "listen"),
                f"{_quoted(status.listen)} is not a loopback address: the status endpoint would "
                "be reachable from the network; set allow_remote = true if that is intended",
            )

    # -- [adapters.NAME]
    def adapter_specs(self, kind: str) -> dict[str, Convert]:
        if kind == "mqtt":
            return {
                "host": _mqtt_host,
                "port": _integer(1, 65535),
                "protocol": _mqtt_protocol,
                "client_id": _nonempty_text,
                "username": _nonempty_text,
                "password": _text,
                "password_file": self._path,
                "keepalive": _duration(maximum=MQTT_KEEPALIVE_MAX),
                "clean_start": _bool,
                "session_expiry": _duration(allow_zero=True),
                "tls": _bool,
                "ca_file": self._path,
                "cert_file": self._path,
                "key_file": self._path,
                "reconnect_base": _duration(),
                "reconnect_cap": _duration(),
            }
        if kind == "serial":
            return {
                "port": _nonempty_text,
                "baud": _integer(1, 2**31 - 1),
                "parity": _choice("none", "even", "odd"),
                "stop_bits": _one_of_integers(1, 2),
                "rtscts": _bool,
                "rs485": _bool,
                "rs485_rts_level_for_tx": _bool,
                "rs485_delay_before_tx": _duration(allow_zero=True),
                "rs485_delay_before_rx": _duration(allow_zero=True),
                "ping_interval": _duration(),
                "ack_timeout": _duration(),
                "max_tries": _integer(1, 1000),
                "reopen_base": _duration(),
                "reopen_cap": _duration(),
            }
        return {"path": self._path}

    def adapters(self, value: object) -> dict[str, AdapterConfig] | None:
        table = self.table(value, ("adapters",), '[adapters.NAME] with type = "mqtt"')
        if table is None:
            return None
        result: dict[str, AdapterConfig] = {}
        for name, body in table.items():
            self.adapter_names.append(name)
            adapter = self.adapter(name, body)
            if adapter is not None:
                result[name] = adapter
        return result

    def adapter(self, name: str, value: object) -> AdapterConfig | None:
        path: KeyPath = ("adapters", name)
        name_ok = True
        try:
            _name("adapter")(name)
        except _Invalid as invalid:
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
            suggestion = _closest(kind, kinds) if isinstance(kind, str) else None
            self.error(
                (*path, "type"),
                f'expected "mqtt", "serial" or "log", found {_found(kind)}',
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
    def route_specs(self) -> dict[str, Convert]:
        return {
            "name": _name("route"),
            "ack": _choice("stored", "delivered"),
            "max_age": _duration(),
            "distribute_url": _web_url,
            "vapid_public_key": _vapid_public_key,
            "queue_max_messages": _integer(1, 2**31 - 1),
            "queue_max_bytes": _size,
            "queue_full": _choice("drop-oldest", "refuse-newest"),
            "retry_base": _duration(),
            "retry_cap": _duration(),
        }

    def routes(self, value: object) -> tuple[RouteConfig, ...] | None:
        if value is None:
            self.warn(("routes",), "no [[routes]]: the gateway has nothing to subscribe to")
            return ()
        if not isinstance(value, list):
            self.error(("routes",), f"expected [[routes]] tables, found {_found(value)}")
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
                        f"duplicate route name {_quoted(name)} (first used by "
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

    def target_specs(self, kind: str) -> dict[str, Convert]:
        payload = _choice("raw", "envelope")
        if kind == "mqtt":
            return {
                "topic": _topic,
                "qos": _integer(0, 2),
                "retain": _bool,
                "payload": payload,
                "content_type": _nonempty_text,
            }
        return {"payload": payload}

    def deliver(self, value: object, path: KeyPath) -> tuple[Target, ...] | None:
        example = '[{ adapter = "site-broker", topic = "sensors/{id}" }]'
        if not isinstance(value, list):
            self.error(
                path, f"expected an array of targets such as {example}, found {_found(value)}"
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
        every_option: dict[str, Convert] = {}
        for any_kind in ADAPTER_TYPES:
            every_option.update(self.target_specs(any_kind))
        adapter = table.get("adapter")
        if not isinstance(adapter, str):
            if adapter is None:
                self.error((*path, "adapter"), 'missing required key "adapter"')
            else:
                self.error((*path, "adapter"), f"expected an adapter name, found {_found(adapter)}")
            self.fields(table, path, every_option, handled=("adapter",))
            return None
        self.used_adapters.add(adapter)
        kind = self.adapter_types.get(adapter)
        if kind is None:
            if adapter not in self.adapter_names:  # else its own table already has an error
                suggestion = _closest(adapter, self.adapter_names)
                known = ", ".join(self.adapter_names) or "none: add an [adapters.NAME] table"
                hint = "" if suggestion else f" (adapters: {known})"
                self.error(
                    (*path, "adapter"), f"no adapter named {_quoted(adapter)}{hint}", suggestion
                )
            self.fields(table, path, every_option, handled=("adapter",))
            return None
        specs = self.target_specs(kind)
        own = ", ".join(["adapter", *specs])
        elsewhere = {
            key: f'"{key}" is not an option for {kind} adapter {_quoted(adapter)} '
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
    loader = _Loader(source, _SourceMap(text), os.environ if environ is None else environ)
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
    lines = _SourceMap(text)
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
