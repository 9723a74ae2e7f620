"""Converters for configuration values: TOML value in, dataclass field value out.

Each converter takes what tomllib produced for one key and returns the field's value, or raises
:class:`Invalid` saying what was expected and what was found (and a close match, if any).
"""

from __future__ import annotations

import base64
import datetime
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from fieldgate_common.units import UnitError, format_duration, parse_duration, parse_size

Convert = Callable[[object], Any]  # TOML value -> field value, or raises Invalid

# Route and adapter names appear in metric labels, log lines, MQTT client ids and file names.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
URGENCIES = ("very-low", "low", "normal", "high")  # RFC 8030 §5.3
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL (unix(7)).
UNIX_PATH_MAX = 107
# RFC 8030 §7.2: a push service MUST support messages of at least 4096 octets.
RFC8030_MIN_MESSAGE_BYTES = 4096
# A VAPID public key is an uncompressed P-256 point: 0x04 || X || Y (RFC 8292 §3.2).
VAPID_KEY_BYTES = 65
# TCP ports are 16-bit numbers (RFC 9293 §3.1); 0 is not one a client can connect to.
MAX_PORT = 65535


class Invalid(Exception):
    """A value that does not fit its key; ``message`` says what was expected and found."""

    def __init__(self, message: str, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion


def quoted(text: str) -> str:
    """A string as JSON shows it, cut to a readable length."""
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 50 else shown[:46] + '..."'


def found(value: object) -> str:
    """``a string ("abc")``: the TOML type and a short rendering of a value."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})" if abs(value) < 10**30 else "a huge integer"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({quoted(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def alternatives(choices: Sequence[str]) -> str:
    """``"a", "b" or "c"``: choices quoted for a message."""
    shown = [f'"{choice}"' for choice in choices]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The close match difflib finds for a misspelt ``word``, if any."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def string(value: object) -> str:
    """Any string."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, found {found(value)}")
    return value


def nonempty_text(value: object) -> str:
    """A string with something in it (and no NUL)."""
    text = string(value)
    if not text.strip():
        raise Invalid("expected a non-empty string, found an empty one")
    if "\x00" in text:
        raise Invalid("expected a string without NUL characters")
    return text


def boolean(value: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, found {found(value)}")
    return value


def integer(low: int, high: int) -> Convert:
    """An integer from ``low`` to ``high`` (booleans are not integers here)."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, found {found(value)}")
        if not low <= value <= high:
            raise Invalid(f"expected an integer from {low} to {high}, found {found(value)}")
        return value

    return convert


def one_of_integers(*choices: int) -> Convert:
    """One of a few integers."""
    listing = " or ".join(str(choice) for choice in choices)

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
            raise Invalid(f"expected {listing}, found {found(value)}")
        return value

    return convert


def choice(*choices: str) -> Convert:
    """One of a few strings, with a suggestion for a misspelt one."""
    listing = ", ".join(f'"{choice}"' for choice in choices)

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            suggestion = closest(value, choices) if isinstance(value, str) else None
            raise Invalid(f"expected one of {listing}, found {found(value)}", suggestion)
        return value

    return convert


def duration(*, allow_zero: bool = False, maximum: float | None = None) -> Convert:
    """Seconds, from ``"30s"``-style text (see :mod:`fieldgate_common.units`)."""

    def convert(value: object) -> float:
        try:
            seconds = parse_duration(value, allow_zero=allow_zero)
        except UnitError as error:
            raise Invalid(str(error)) from None
        if maximum is not None and seconds > maximum:
            raise Invalid(f"expected at most {format_duration(maximum)}, found {found(value)}")
        return seconds

    return convert


def size(value: object) -> int:
    """Bytes, from ``4096`` or ``"64KiB"``-style text."""
    try:
        return parse_size(value)
    except UnitError as error:
        raise Invalid(str(error)) from None


def named(kind: str) -> Convert:
    """A route or adapter name (:data:`NAME_PATTERN`)."""

    def convert(value: object) -> str:
        name = string(value)
        if not NAME_PATTERN.fullmatch(name):
            raise Invalid(
                f"{kind} name {quoted(name)} must be 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return name

    return convert


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_port_problem(netloc: str) -> str | None:
    """What is wrong with the port of a URL's ``host[:port]`` part, or None (none or fine)."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        _, bracket, rest = hostport.partition("]")
        if not bracket:
            return None  # urlsplit already refused an unclosed bracket
        port = rest[1:] if rest.startswith(":") else None
    else:
        _, colon, port_text = hostport.rpartition(":")
        port = port_text if colon else None
    if port is None or port == "":
        return None
    if not port.isascii() or not port.isdigit():
        return f"the port {quoted(port)} is not a number"
    if not 1 <= int(port) <= MAX_PORT:
        return f"port {int(port)} out of range (1 to {MAX_PORT})"
    return None


def web_url(value: object) -> str:
    """An https:// URL, or http:// when the host is loopback (a local test service)."""
    text = nonempty_text(value)
    expected = f"expected an https:// URL, found {quoted(text)}"
    if any(char.isspace() or ord(char) < 32 for char in text):
        raise Invalid(f"{expected}: a URL has no spaces or control characters")
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        raise Invalid(expected) from None
    port_problem = _url_port_problem(parts.netloc)
    if port_problem is not None:
        raise Invalid(f"{port_problem} in {quoted(text)}")
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise Invalid(expected)
    if scheme == "http" and not is_loopback(host):
        raise Invalid(
            f"http:// is allowed only for a loopback host (127.0.0.0/8, ::1, localhost), "
            f"found host {quoted(host)}: use https://",
            "https" + text[len(scheme) :],
        )
    return text


# A WebSocket URL is checked as the HTTP URL it upgrades from (RFC 6455 §3).
_WEBSOCKET_SCHEMES = {"wss": "https", "ws": "http"}


def push_service_url(value: object) -> str:
    """The push service: ``https://`` (RFC 8030 over HTTP/2) or ``wss://`` (autopush); plain
    ``http://`` and ``ws://`` only when the host is loopback."""
    text = nonempty_text(value)
    scheme, sep, rest = text.partition("://")
    http = _WEBSOCKET_SCHEMES.get(scheme.lower()) if sep else None
    try:
        web_url(text if http is None else f"{http}{sep}{rest}")
    except Invalid as invalid:
        message = invalid.message.replace("an https:// URL", "an https:// or wss:// URL")
        if http is not None:
            message = message.replace("http://", "ws://").replace("use https://", "use wss://")
        suggestion = invalid.suggestion
        if http is not None and suggestion is not None:
            suggestion = "wss" + suggestion[len("https") :]
        raise Invalid(message, suggestion) from None
    return text


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8088"`` / ``"[::1]:8088"`` / ``"localhost:8088"`` -> host and port."""
    expected = f'expected "HOST:PORT" or "unix:/path", found {quoted(text)}'
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise Invalid(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{expected}: {quoted(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise Invalid(f"{expected}: write an IPv6 address in brackets, as in [::1]:8088")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise Invalid(f"{expected}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def listen(value: object) -> str:
    """The status endpoint's ``"HOST:PORT"``, ``"unix:/path"``, or ``""`` (off)."""
    text = string(value)
    if text == "":
        return text  # the status endpoint is disabled
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise Invalid("the socket path must be absolute, as in unix:/run/fieldgate/status")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise Invalid(f"the socket path is longer than {UNIX_PATH_MAX} bytes")
        return text
    split_host_port(text)
    return text


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def vapid_public_key(value: object) -> str:
    """A base64url uncompressed P-256 point that is on the curve (RFC 8292)."""
    text = nonempty_text(value).strip()
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
        raise Invalid(f"{expected}, found {quoted(text)}{hint}")
    unpadded = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except ValueError:
        raise Invalid(f"{expected}, found {quoted(text)}") from None
    if len(raw) != VAPID_KEY_BYTES or raw[0] != 0x04:
        raise Invalid(f"{expected}; it decodes to {len(raw)} bytes, not 65 starting with 0x04")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise Invalid(f"{expected}; the point is not on the P-256 curve") from None
    return text
