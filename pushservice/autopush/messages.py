"""The WebSocket protocol's messages as autopush-rs reads them (sans-IO).

Mirrors ``autoconnect/autoconnect-common/src/protocol.rs``: ``ClientMessage`` is a serde enum
tagged by ``messageType``; an empty object ``{}`` is a ping; a wrong type or an unknown
``messageType`` is a JSON error, which closes the connection. Unknown fields are ignored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass


class MessageError(ValueError):
    """The text is not a client message autopush would accept (its ``WSErrorKind::Json``)."""


@dataclass(frozen=True)
class Hello:
    """``hello``: ``uaid`` as sent (None when absent)."""

    uaid: str | None


@dataclass(frozen=True)
class Register:
    """``register``: the channel id as sent (validated by the state machine), the VAPID key."""

    channel_id: str
    key: str | None


@dataclass(frozen=True)
class Unregister:
    """``unregister``: the channel id, already a UUID (hyphenated, lowercase)."""

    channel_id: str
    code: int | None


@dataclass(frozen=True)
class AckUpdate:
    """One entry of ``ack.updates``."""

    channel_id: str
    version: str
    code: int | None


@dataclass(frozen=True)
class Ack:
    """``ack``."""

    updates: tuple[AckUpdate, ...]


@dataclass(frozen=True)
class Nack:
    """``nack``: counted, nothing else."""

    version: str
    code: int | None


@dataclass(frozen=True)
class Ping:
    """``{}`` or ``{"messageType": "ping"}``."""


@dataclass(frozen=True)
class BroadcastSubscribe:
    """``broadcast_subscribe`` (this double serves no broadcasts)."""


ClientMessage = Hello | Register | Unregister | Ack | Nack | Ping | BroadcastSubscribe


def _uuid(value: object, what: str) -> str:
    """serde's ``Uuid``: any form the uuid crate parses, normalised to hyphenated lowercase."""
    if not isinstance(value, str):
        raise MessageError(f"{what} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MessageError(f"{what} is not a UUID") from None


def _opt_str(message: dict[str, object], key: str) -> str | None:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise MessageError(f"{key} must be a string")
    return value


def _opt_int(message: dict[str, object], key: str, low: int, high: int) -> int | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MessageError(f"{key} must be an integer in [{low}, {high}]")
    return value


def _str_map(value: object, what: str) -> None:
    if value is not None and (
        not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
    ):
        raise MessageError(f"{what} must map strings to strings")


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame; :class:`MessageError` for anything autopush would refuse."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise MessageError("not JSON") from None
    if not isinstance(message, dict):
        raise MessageError("not a JSON object")
    if not message:
        return Ping()
    kind = message.get("messageType")
    if kind == "hello":
        ids = message.get("channelIDs")
        if ids is not None:
            if not isinstance(ids, list):
                raise MessageError("channelIDs must be a list")
            for item in ids:
                _uuid(item, "channelIDs[]")
        _str_map(message.get("broadcasts"), "broadcasts")
        return Hello(_opt_str(message, "uaid"))
    if kind == "register":
        channel_id = message.get("channelID")
        if not isinstance(channel_id, str):
            raise MessageError("channelID must be a string")
        return Register(channel_id, _opt_str(message, "key"))
    if kind == "unregister":
        code = _opt_int(message, "code", 0, 2**32 - 1)
        return Unregister(_uuid(message.get("channelID"), "channelID"), code)
    if kind == "ack":
        updates = message.get("updates")
        if not isinstance(updates, list):
            raise MessageError("updates must be a list")
        parsed = []
        for update in updates:
            if not isinstance(update, dict):
                raise MessageError("an update must be an object")
            version = update.get("version")
            if not isinstance(version, str):
                raise MessageError("an update needs a version")
            chid = _uuid(update.get("channelID"), "channelID")
            parsed.append(AckUpdate(chid, version, _opt_int(update, "code", 0, 65535)))
        return Ack(tuple(parsed))
    if kind == "nack":
        version = message.get("version")
        if not isinstance(version, str):
            raise MessageError("nack needs a version")
        return Nack(version, _opt_int(message, "code", -(2**31), 2**31 - 1))
    if kind == "ping":
        return Ping()
    if kind == "broadcast_subscribe":
        _str_map(message.get("broadcasts"), "broadcasts")
        if message.get("broadcasts") is None:
            raise MessageError("broadcast_subscribe needs broadcasts")
        return BroadcastSubscribe()
    raise MessageError("unknown messageType")


def dumps(message: dict[str, object]) -> str:
    """Compact JSON, as serde writes it."""
    return json.dumps(message, separators=(",", ":"))
