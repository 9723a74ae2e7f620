"""The push service's URL space (RFC 8030 resources) and link relations, in one place.

Paths (every id a capability token):
  POST   /subscribe                 subscribe (201, Location, Link push + set)
  GET    /subscription/<id>         monitor one subscription (HTTP/2 server push)
  DELETE /subscription/<id>         unsubscribe
  GET    /set/<id>                  monitor a subscription set
  DELETE /set/<id>                  delete the set and its members
  POST   /push/<id>                 push a message (application server)
  DELETE /message/<id>              acknowledge a message (user agent)
  GET    /receipt/<id>              receipts: HTTP/2 monitor with pushed 204/410, or over
                                    HTTP/1.1 a JSON list [{"message": URL, "status": 204|410}]
  POST   /_control/<fault>          fault injection (only with --control, only from loopback)
"""

from __future__ import annotations

import re

KINDS_BY_PREFIX = {
    "subscription": "subscription",
    "set": "set",
    "push": "push",
    "message": "message",
    "receipt": "receipt",
}
_ORIGIN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*")


def message_path(message_id: str) -> str:
    """Path of a push message resource."""
    return f"/message/{message_id}"


def resource_url(origin: str, kind: str, ident: str) -> str:
    """The absolute URL of a resource under ``origin`` (``scheme://host[:port]``)."""
    return f"{origin}/{kind}/{ident}"


def split_path(path: str) -> tuple[str, str]:
    """``/kind/id`` -> (kind, id); ("subscribe", "") for the subscribe resource."""
    path = path.split("?", 1)[0]
    if path.rstrip("/") == "/subscribe":
        return "subscribe", ""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "" and parts[2]:
        if parts[1] in KINDS_BY_PREFIX:
            return KINDS_BY_PREFIX[parts[1]], parts[2]
        if parts[1] == "_control":
            return "control", parts[2]
    return "unknown", ""


def id_from_link(target: str, kind: str) -> str | None:
    """The id in an absolute or relative link target under ``/kind/``, or None."""
    found_kind, found_id = split_path(_ORIGIN.sub("", target))
    return found_id if found_kind == kind else None
