"""The ``/status`` JSON document: its schema (a JSON Schema subset) and a checker.

The schema is the contract between the gateway (whose parts report typed snapshots,
:mod:`gateway.status_model`, turned into the document by :func:`status_document` here and
nowhere else), the status endpoint, ``fieldgate status`` and any operator tooling.
``docs/status-schema.md`` explains each field. Compatible changes add optional fields (every
object accepts unknown keys); anything else bumps :data:`STATUS_SCHEMA_VERSION`.

Times are Unix seconds (float, UTC) or ``null`` when the event never happened; durations are
seconds.

No capability leaves through it: a push resource or a subscription-set URL lets whoever holds it
send to a route or read (and acknowledge) its messages, so the document names them by
:func:`capability_id` only (``fieldgate subscriptions`` prints the same identifiers), and the
push service's URL is shown without credentials or query.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.status_model import StatusSnapshot

# 2: push resources and set URLs are replaced by their identifiers (routes[].push_resource_id,
# sets[].id), the service URL loses any credentials and query.
STATUS_SCHEMA_VERSION = 2
# Hex digits of a capability URL's SHA-256 shown in its place: 32 bits tell a handful of routes
# apart and reveal nothing usable.
CAPABILITY_ID_CHARS = 8

UPSTREAM_STATES = ("connecting", "connected", "backoff", "stopped")

_NUMBER = {"type": "number"}
_TIME_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}

ROUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "name",
        "push_resource_id",
        "subscription_age",
        "queue_depth",
        "last_message",
        "last_delivery",
        "last_error",
    ],
    "properties": {
        "name": {"type": "string"},
        "push_resource_id": _STRING_OR_NULL,
        "subscription_age": {"type": ["number", "null"]},
        "queue_depth": {"type": "integer"},
        "last_message": _TIME_OR_NULL,
        "last_delivery": _TIME_OR_NULL,
        "last_error": _STRING_OR_NULL,
    },
}

ADAPTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "type", "ok", "state", "detail"],
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string"},
        "ok": {"type": "boolean"},
        "state": {"type": "string"},
        "detail": {"type": "string"},
    },
}

# The document the provider returns; the endpoint adds "schema" and "health" to it.
PROVIDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["upstream", "sets", "routes", "adapters", "counters", "version", "uptime"],
    "properties": {
        "upstream": {
            "type": "object",
            "required": ["state", "since", "service"],
            "properties": {
                "state": {"type": "string", "enum": list(UPSTREAM_STATES)},
                "since": _TIME_OR_NULL,
                "service": {"type": "string"},
                "protocol": {"type": "string", "enum": ["rfc8030", "autopush"]},
                "autopush": {
                    "type": "object",
                    "required": ["uaid_age", "channels", "last_hello", "notifications"],
                    "properties": {
                        "uaid_age": {"type": ["number", "null"]},
                        "channels": {"type": "integer"},
                        "last_hello": _TIME_OR_NULL,
                        "notifications": {"type": "integer"},
                        "uaid_resets": {"type": "integer"},
                    },
                },
            },
        },
        "sets": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "routes"],
                "properties": {
                    "id": {"type": "string"},
                    "routes": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "routes": {"type": "array", "items": ROUTE_SCHEMA},
        "adapters": {"type": "array", "items": ADAPTER_SCHEMA},
        "counters": {"type": "object", "additionalProperties": _NUMBER},
        "version": {"type": "string"},
        "uptime": _NUMBER,
    },
}

# The document served at GET /status.
STATUS_SCHEMA: dict[str, Any] = {
    **PROVIDER_SCHEMA,
    "required": ["schema", "health", *PROVIDER_SCHEMA["required"]],
    "properties": {
        "schema": {"type": "integer", "enum": [STATUS_SCHEMA_VERSION]},
        "health": {
            "type": "object",
            "required": ["ok", "reason"],
            "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
        },
        **PROVIDER_SCHEMA["properties"],
    },
}


def _type_matches(value: object, name: str) -> bool:
    # bool is an int in Python but not a number in JSON.
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list | tuple)
    if name == "object":
        return isinstance(value, dict)
    raise ValueError(f"schema uses unknown type {name!r}")


def schema_errors(value: object, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (keywords: type, enum, required, properties,
    additionalProperties, items), as ``"$.routes[0].name: ..."`` lines; empty when it conforms.
    """
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_type_matches(value, n) for n in names):
            return [f"{path}: expected {' or '.join(names)}, found {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        errors.extend(
            f"{path}: missing {key!r}" for key in schema.get("required", ()) if key not in value
        )
        properties: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                errors.extend(schema_errors(item, properties[key], f"{path}.{key}"))
            elif isinstance(extra, dict):
                errors.extend(schema_errors(item, extra, f"{path}.{key}"))
    if isinstance(value, list | tuple) and "items" in schema:
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{path}[{i}]"))
    return errors


def status_errors(document: object) -> list[str]:
    """Problems with a served ``/status`` document (empty when valid)."""
    return schema_errors(document, STATUS_SCHEMA)


def provider_errors(document: object) -> list[str]:
    """Problems with what a ``StatusProvider.status()`` returned (empty when valid)."""
    return schema_errors(document, PROVIDER_SCHEMA)


def capability_id(url: str) -> str:
    """What the status document shows for a capability URL: the start of its SHA-256 in hex.

    An operator matches it against ``fieldgate subscriptions`` (which prints the same); nobody can
    turn it back into the URL.
    """
    return hashlib.sha256(url.encode()).hexdigest()[:CAPABILITY_ID_CHARS]


def public_url(url: str) -> str:
    """A URL without user:password and query (where tokens live), for showing."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_URL = re.compile(r"\b(?:https?|wss?)://[^\s\"'<>]+")


def redact_urls(text: str | None) -> str | None:
    """``text`` with every URL that has a path shown as its origin and :func:`capability_id`
    (an error message may quote a push resource, a set or a message URL)."""
    if text is None:
        return None

    def shown(match: re.Match[str]) -> str:
        url = match.group(0)
        parts = urlsplit(url)
        if parts.path in ("", "/") and not parts.query:
            return public_url(url)
        origin = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))
        return f"{origin}/…({capability_id(url)})"

    return _URL.sub(shown, text)


def status_document(snapshot: StatusSnapshot) -> dict[str, object]:
    """The provider's part of ``/status`` (the endpoint adds ``schema`` and ``health``)."""
    now = snapshot.now
    subscriptions = {sub.route: sub for sub in snapshot.subscriptions}
    routes = []
    for route in snapshot.routes:
        sub = subscriptions.get(route.name)
        delivery = route.delivery
        routes.append(
            {
                "name": route.name,
                "ack": route.ack,
                "push_resource_id": capability_id(sub.push_resource) if sub else None,
                "subscription_age": (now - sub.created_at) if sub else None,
                "queue_depth": delivery.queue_messages,
                "queue_bytes": delivery.queue_bytes,
                "last_message": delivery.last_message_at,
                "last_delivery": delivery.last_delivery_at,
                "last_error": redact_urls(delivery.last_error),
                "targets": list(route.targets),
            }
        )
    sets: dict[str, list[str]] = {}
    for sub in snapshot.subscriptions:
        sets.setdefault(capability_id(sub.monitored), []).append(sub.route)
    adapters = [
        {
            "name": adapter.name,
            "type": adapter.type,
            "ok": adapter.health.ok,
            "state": adapter.health.state,
            "detail": adapter.health.detail,
            "since": adapter.health.since,
            "counters": dict(adapter.health.counters),
        }
        for adapter in snapshot.adapters
    ]
    upstream = snapshot.upstream
    upstream_doc: dict[str, object] = {
        "state": upstream.state,
        "since": upstream.since,
        "service": public_url(upstream.service),
        "protocol": upstream.protocol,
        "last_error": redact_urls(upstream.last_error),
        "last_message": upstream.last_message_at,
    }
    if upstream.autopush is not None:
        ap = upstream.autopush
        upstream_doc["autopush"] = {
            "uaid_age": None if ap.uaid_since is None else now - ap.uaid_since,
            "channels": ap.channels,
            "last_hello": ap.last_hello_at,
            "notifications": ap.notifications,
            "uaid_resets": ap.uaid_resets,
        }
    return {
        "upstream": upstream_doc,
        "sets": [{"id": ident, "routes": sorted(names)} for ident, names in sorted(sets.items())],
        "routes": routes,
        "adapters": adapters,
        "counters": dict(snapshot.counters),
        "version": snapshot.version,
        "uptime": snapshot.uptime,
    }
