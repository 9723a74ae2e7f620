"""The MQTT adapter's configuration: ``[adapters.NAME]`` with ``type = "mqtt"`` and its targets.

The settings and target dataclasses, the converters of their keys and the checks across keys;
registered as :data:`MQTT` in :mod:`adapters.registry`. Imports neither paho nor trio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapters.base import AdapterConfig, TargetConfig
from adapters.kind import AdapterKind, PathConvert
from fieldgate_common import config_values as check
from fieldgate_common import file_checks
from fieldgate_common.config_problems import TableReader
from fieldgate_common.config_source import KeyPath

# MQTT strings (topic names) are prefixed by a two-byte length (MQTT 5 §1.5.4).
MQTT_STRING_MAX = 65535
# MQTT Keep Alive is a two-byte number of seconds (MQTT 5 §3.1.2.10).
MQTT_KEEPALIVE_MAX = 65535.0
TOPIC_PLACEHOLDERS = ("route", "id")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class MqttAdapterConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``type = "mqtt"``."""

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
class MqttTarget(TargetConfig):
    """One ``deliver`` entry naming an MQTT adapter."""

    topic: str = "fieldgate/{route}"  # {route} and {id} are replaced
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    content_type: str | None = None  # MQTT 5 Content Type


def topic(value: object) -> str:
    """An MQTT topic to publish to, with ``{route}`` and ``{id}`` placeholders."""
    text = check.nonempty_text(value)
    if "+" in text or "#" in text:
        raise check.Invalid(
            f"topic {check.quoted(text)} contains a wildcard (+ or #): wildcards are for "
            "subscriptions; a published message goes to one topic"
        )
    for match in _PLACEHOLDER.finditer(text):
        if match.group(1) not in TOPIC_PLACEHOLDERS:
            close = check.closest(match.group(1), TOPIC_PLACEHOLDERS)
            raise check.Invalid(
                f"unknown placeholder {check.quoted(match.group())} in topic: the placeholders "
                "are {route} and {id}",
                None if close is None else "{" + close + "}",
            )
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise check.Invalid(
            f"unbalanced brace in topic {check.quoted(text)}: placeholders are {{id}}"
        )
    if text.startswith("$"):
        raise check.Invalid(
            f"topic {check.quoted(text)} starts with $: such topics belong to the broker"
        )
    if len(text.encode()) > MQTT_STRING_MAX:
        raise check.Invalid(f"topic is longer than {MQTT_STRING_MAX} bytes")
    return text


def host(value: object) -> str:
    """A broker host name or address (not a URL)."""
    text = check.nonempty_text(value)
    if "://" in text or "/" in text:
        raise check.Invalid(
            f"expected a host name or address, found {check.quoted(text)}: give the port in "
            '"port" and set tls = true for MQTT over TLS'
        )
    return text


def protocol(value: object) -> str:
    """``"5"`` or ``"3.1.1"`` (the integer 5 is accepted too)."""
    if value == 5 and not isinstance(value, bool):
        return "5"
    result: str = check.choice("5", "3.1.1")(value)
    return result


def adapter_specs(path: PathConvert) -> dict[str, check.Convert]:
    """The keys of an MQTT adapter's table."""
    return {
        "host": host,
        "port": check.integer(1, 65535),
        "protocol": protocol,
        "client_id": check.nonempty_text,
        "username": check.nonempty_text,
        "password": check.string,
        "password_file": path,
        "keepalive": check.duration(maximum=MQTT_KEEPALIVE_MAX),
        "clean_start": check.boolean,
        "session_expiry": check.duration(allow_zero=True),
        "tls": check.boolean,
        "ca_file": path,
        "cert_file": path,
        "key_file": path,
        "reconnect_base": check.duration(),
        "reconnect_cap": check.duration(),
    }


def target_specs() -> dict[str, check.Convert]:
    """The keys of a ``deliver`` entry naming an MQTT adapter."""
    return {
        "topic": topic,
        "qos": check.integer(0, 2),
        "retain": check.boolean,
        "payload": check.choice("raw", "envelope"),
        "content_type": check.nonempty_text,
    }


def check_settings(
    reader: TableReader, path: KeyPath, mqtt: MqttAdapterConfig, failed: set[str]
) -> None:
    """Checks across the keys of one MQTT adapter."""
    reader.order(
        path,
        ("reconnect_base", mqtt.reconnect_base),
        ("reconnect_cap", mqtt.reconnect_cap),
        failed,
    )
    if mqtt.cert_file is not None and mqtt.key_file is None and "key_file" not in failed:
        reader.error((*path, "cert_file"), "cert_file needs key_file (the client's private key)")
    if mqtt.key_file is not None and mqtt.cert_file is None and "cert_file" not in failed:
        reader.error((*path, "key_file"), "key_file needs cert_file (the client certificate)")
    if not mqtt.tls and "tls" not in failed:
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(mqtt, key) is not None:
                reader.error(
                    (*path, key),
                    f"{key} is set but tls = false: set tls = true (we never fall back to "
                    "plain MQTT when TLS settings are given)",
                )
    if mqtt.password is not None and mqtt.password_file is not None:
        reader.error((*path, "password_file"), "give password or password_file, not both")
    if (
        mqtt.protocol == "3.1.1"
        and mqtt.username is None
        and (mqtt.password is not None or mqtt.password_file is not None)
    ):
        reader.error(
            (*path, "username"), "MQTT 3.1.1 sends a password only with a username: add one"
        )


def preflight(mqtt: MqttAdapterConfig) -> list[tuple[str, str]]:
    """The TLS files and the password file must be there, readable and what their key says."""
    problems: list[tuple[str, str]] = []
    if mqtt.ca_file is not None:
        problem = file_checks.certificate_file(mqtt.ca_file)
        if problem is not None:
            problems.append(("ca_file", problem))
    pair_ok = mqtt.cert_file is not None and mqtt.key_file is not None
    for key, check_file in (
        ("cert_file", file_checks.certificate_file),
        ("key_file", file_checks.readable_file),
        ("password_file", file_checks.readable_file),
    ):
        path = getattr(mqtt, key)
        problem = None if path is None else check_file(path)
        if problem is not None:
            problems.append((key, problem))
            pair_ok = pair_ok and key == "password_file"
    if pair_ok and mqtt.cert_file is not None and mqtt.key_file is not None:
        problem = file_checks.client_certificate(mqtt.cert_file, mqtt.key_file)
        if problem is not None:
            problems.append(("key_file", problem))
    return problems


def describe(adapter: MqttAdapterConfig) -> str:
    """``mqtt mqtts://host:8883 (MQTT 5, user x, password ***)`` (secrets masked)."""
    scheme = "mqtts" if adapter.tls else "mqtt"
    port = adapter.port or (8883 if adapter.tls else 1883)
    shown_host = f"[{adapter.host}]" if ":" in adapter.host else adapter.host
    text = f"mqtt {scheme}://{shown_host}:{port} (MQTT {adapter.protocol}"
    if adapter.username is not None:
        text += f", user {adapter.username}"
    if adapter.password is not None:
        text += ", password ***"
    if adapter.password_file is not None:
        text += f", password from {adapter.password_file}"
    if adapter.cert_file is not None:
        text += f", client certificate {adapter.cert_file}"
    return text + ")"


def describe_target(target: MqttTarget) -> str:
    """``, topic x, qos 1[, retained]``."""
    return f", topic {target.topic}, qos {target.qos}" + (", retained" if target.retain else "")


MQTT = AdapterKind(
    name="mqtt",
    settings=MqttAdapterConfig,
    target=MqttTarget,
    adapter_specs=adapter_specs,
    target_specs=target_specs,
    factory="adapters.mqtt:MqttAdapter",
    check=check_settings,
    preflight=preflight,
    secret_keys=("password",),
    describe=describe,
    describe_target=describe_target,
)
