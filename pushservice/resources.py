"""RFC 8030 resources: maps a request to a state change and a response (sans-IO).

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

import json
import re
from typing import Protocol

from pushservice.faults import Faults
from pushservice.http import MonitorRequest, Request, Response, text_response
from pushservice.links import LinkParseError, links_with_rel
from pushservice.model import Message, Subscription, Urgency
from pushservice.settings import MAX_SUBSCRIBE_BODY, MAX_TOPIC_LENGTH, TTL_CEILING, ServiceSettings
from pushservice.state import InvalidSet, PushState
from pushservice.vapid import VapidError, parse_public_key, verify_vapid

REL_PUSH = "urn:ietf:params:push"
REL_SET = "urn:ietf:params:push:set"
REL_RECEIPT = "urn:ietf:params:push:receipt"
WEBPUSH_OPTIONS_TYPE = "application/webpush-options+json"

_TOPIC_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_TOPIC_LENGTH}}}$")
_TTL_RE = re.compile(r"^[0-9]+$")
_PREFER_WAIT0_RE = re.compile(r"(^|[,;\s])wait\s*=\s*\"?0\"?\s*($|[,;])", re.IGNORECASE)

KINDS_BY_PREFIX = {
    "subscription": "subscription",
    "set": "set",
    "push": "push",
    "message": "message",
    "receipt": "receipt",
}


class Delivery(Protocol):
    """The live side the resources notify (implemented by the service)."""

    def message_stored(self, message: Message) -> bool:
        """Push a new message now if a monitor wants it; True if it went to a monitor."""
        ...

    def monitors_gone(self, kind: str, target_ids: list[str]) -> None:
        """End (404) the monitors of removed subscriptions/sets."""
        ...

    def messages_dropped(self, messages: list[Message]) -> None:
        """Tell receipt monitors about messages given up (410)."""
        ...

    def message_acked(self, message: Message) -> None:
        """Tell receipt monitors a message was acknowledged (204)."""
        ...

    def control(self, fault: str, args: dict[str, object]) -> Response:
        """Run a control-API fault."""
        ...


def message_path(message_id: str) -> str:
    """Path of a push message resource."""
    return f"/message/{message_id}"


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


def parse_ttl(values: list[str]) -> int:
    """RFC 8030 §5.2 TTL = 1*DIGIT; ValueError if absent, repeated or malformed."""
    if len(values) != 1 or not _TTL_RE.match(values[0].strip()):
        raise ValueError("TTL header must be one non-negative integer")
    return min(int(values[0].strip()), TTL_CEILING)


def parse_urgency(values: list[str]) -> Urgency:
    """RFC 8030 §5.3: exactly one urgency-option (default normal); ValueError otherwise."""
    if not values:
        return Urgency.NORMAL
    if len(values) > 1 or "," in values[0]:
        raise ValueError("Urgency must be a single value")
    return Urgency.parse(values[0])


def parse_topic(values: list[str]) -> str | None:
    """RFC 8030 §5.4: at most 32 URL-safe base64 characters; ValueError otherwise."""
    if not values:
        return None
    if len(values) > 1 or not _TOPIC_RE.match(values[0].strip()):
        raise ValueError("Topic must be 1-32 characters of the URL-safe base64 alphabet")
    return values[0].strip()


def wants_wait0(prefer_values: list[str]) -> bool:
    """``Prefer: wait=0`` (RFC 7240)."""
    return any(_PREFER_WAIT0_RE.search(v) for v in prefer_values)


def wants_respond_async(prefer_values: list[str]) -> bool:
    """``Prefer: respond-async`` (RFC 7240)."""
    return any(
        token.strip().split("=")[0].strip().lower() == "respond-async"
        for v in prefer_values
        for token in v.replace(";", ",").split(",")
    )


def _id_from_link(target: str, kind: str) -> str | None:
    # Accept absolute or relative link targets; the id is the last path segment under /kind/.
    path = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*", "", target)
    found_kind, found_id = split_path(path)
    return found_id if found_kind == kind else None


class Resources:
    """Turns requests into state changes and responses."""

    def __init__(
        self,
        state: PushState,
        settings: ServiceSettings,
        faults: Faults,
        delivery: Delivery,
        *,
        control_enabled: bool = False,
    ) -> None:
        self.state = state
        self.settings = settings
        self.faults = faults
        self.delivery = delivery
        self.control_enabled = control_enabled

    def handle(self, req: Request, now: float) -> Response | MonitorRequest:
        """Answer one request (or ask the front end to hold it open as a monitor)."""
        kind, ident = split_path(req.path)
        if kind == "control":
            return self._control(req, ident)
        rule = self.faults.take_failure(req.method, kind)
        if rule is not None:
            extra = [] if rule.retry_after is None else [("retry-after", str(rule.retry_after))]
            return text_response(rule.status, "injected failure", extra)
        route = (kind, req.method)
        if route == ("subscribe", "POST"):
            return self._subscribe(req, now)
        if route in (("subscription", "GET"), ("set", "GET"), ("receipt", "GET")):
            return self._monitor(req, kind, ident)
        if route == ("subscription", "DELETE"):
            return self._unsubscribe(ident)
        if route == ("set", "DELETE"):
            return self._delete_set(ident)
        if route == ("push", "POST"):
            return self._push(req, ident, now)
        if route == ("message", "DELETE"):
            return self._ack(ident)
        if kind == "unknown":
            return text_response(404, "no such resource")
        return text_response(405, "method not allowed")

    # -- user agent --------------------------------------------------------------------------
    def _subscribe(self, req: Request, now: float) -> Response:
        if req.conn.subscriptions_created >= self.settings.max_subscriptions_per_connection:
            return text_response(429, "too many subscriptions on this connection")
        try:
            set_links = links_with_rel(req.header_values("link"), REL_SET)
        except LinkParseError:
            return text_response(400, "malformed Link header")
        set_id: str | None = None
        if set_links:
            set_id = _id_from_link(set_links[0], "set")
            if set_id is None or len(set(set_links)) > 1:
                return text_response(400, "invalid subscription set")
        vapid_key: bytes | None = None
        content_type = (req.header("content-type") or "").split(";")[0].strip().lower()
        if content_type == WEBPUSH_OPTIONS_TYPE and req.body:  # RFC 8292 §4.1; others ignored
            if len(req.body) > MAX_SUBSCRIBE_BODY:
                return text_response(413, "subscribe options too large")
            try:
                options = json.loads(req.body)
            except (ValueError, UnicodeDecodeError):
                return text_response(400, "options body is not JSON")
            if not isinstance(options, dict):
                return text_response(400, "options body must be a JSON object")
            vapid = options.get("vapid")
            if vapid is not None:
                try:
                    if not isinstance(vapid, str):
                        raise ValueError("vapid must be a string")
                    vapid_key = parse_public_key(vapid)
                except ValueError:
                    return text_response(400, "vapid is not a P-256 public key")
        try:
            sub = self.state.subscribe(set_id, vapid_key, now)
        except InvalidSet:
            return text_response(400, "invalid subscription set")
        req.conn.subscriptions_created += 1
        return Response(
            201,
            [
                ("location", f"{req.origin}/subscription/{sub.id}"),
                ("link", f'<{req.origin}/push/{sub.push_id}>; rel="{REL_PUSH}"'),
                ("link", f'<{req.origin}/set/{sub.set_id}>; rel="{REL_SET}"'),
                ("cache-control", "no-store"),
                ("content-length", "0"),
            ],
        )

    def _monitor(self, req: Request, kind: str, ident: str) -> Response | MonitorRequest:
        known = {
            "subscription": ident in self.state.subscriptions,
            "set": ident in self.state.sets,
            "receipt": ident in self.state.receipts,
        }[kind]
        if not known:
            return text_response(404, f"no such {kind}")
        try:
            min_urgency = (
                parse_urgency(req.header_values("urgency")) if req.header("urgency") else None
            )
        except ValueError:
            return text_response(400, "invalid Urgency")
        return MonitorRequest(kind, ident, min_urgency, wants_wait0(req.header_values("prefer")))

    def _unsubscribe(self, ident: str) -> Response:
        if ident not in self.state.subscriptions:
            return text_response(404, "no such subscription")
        dropped = self.state.delete_subscription(ident)
        self.delivery.monitors_gone("subscription", [ident])
        self.delivery.messages_dropped(dropped)
        return Response(204)

    def _delete_set(self, ident: str) -> Response:
        s = self.state.sets.get(ident)
        if s is None:
            return text_response(404, "no such set")
        members = list(s.members)
        dropped = self.state.delete_set(ident)
        self.delivery.monitors_gone("set", [ident])
        self.delivery.monitors_gone("subscription", members)
        self.delivery.messages_dropped(dropped)
        return Response(204)

    def _ack(self, ident: str) -> Response:
        m = self.state.ack(ident)
        if m is None:
            return text_response(404, "no such message (acknowledged, expired or replaced)")
        self.delivery.message_acked(m)
        return Response(204)

    # -- application server ------------------------------------------------------------------
    def _push(self, req: Request, ident: str, now: float) -> Response:
        sub = self.state.by_push_id.get(ident)
        if sub is None:
            return text_response(404, "no such subscription (expired or never existed)")
        if len(req.body) > self.settings.max_body:
            return text_response(413, f"body larger than {self.settings.max_body} bytes")
        if sub.vapid_key is not None:
            try:
                verify_vapid(
                    req.header("authorization"),
                    audience=req.origin,
                    restricted_key=sub.vapid_key,
                    now=now,
                )
            except VapidError as exc:
                extra = [("www-authenticate", "vapid")] if exc.status == 401 else []
                return text_response(exc.status, exc.reason, extra)
        try:
            requested_ttl = parse_ttl(req.header_values("ttl"))
            urgency = parse_urgency(req.header_values("urgency"))
            topic = parse_topic(req.header_values("topic"))
        except ValueError as exc:
            return text_response(400, str(exc))
        receipt_id = self._receipt_for(req)
        if receipt_id == "":
            return text_response(400, "invalid receipt subscription")
        if self.state.pending_count(sub.id) >= self.settings.max_messages_per_subscription:
            return text_response(429, "too many undelivered messages", [("retry-after", "60")])
        ttl = min(requested_ttl, self.settings.max_ttl)
        message = self._store(req, sub, urgency, topic, ttl, receipt_id, now)
        headers = [
            ("location", f"{req.origin}{message_path(message.id)}"),
            ("ttl", str(ttl)),
            ("content-length", "0"),
        ]
        if receipt_id is not None:
            headers.append(("link", f'<{req.origin}/receipt/{receipt_id}>; rel="{REL_RECEIPT}"'))
            return Response(202, headers)
        return Response(201, headers)

    def _receipt_for(self, req: Request) -> str | None:
        """The receipt subscription to use: "" invalid, None none wanted."""
        try:
            links = links_with_rel(req.header_values("link"), REL_RECEIPT)
        except LinkParseError:
            return ""
        if links:
            rid = _id_from_link(links[0], "receipt")
            return rid if rid is not None and rid in self.state.receipts else ""
        if wants_respond_async(req.header_values("prefer")):
            return self.state.new_receipt_subscription().id
        return None

    def _store(
        self,
        req: Request,
        sub: Subscription,
        urgency: Urgency,
        topic: str | None,
        ttl: int,
        receipt_id: str | None,
        now: float,
    ) -> Message:
        message, _replaced = self.state.store_message(
            sub,
            body=req.body,
            content_encoding=req.header("content-encoding"),
            urgency=urgency,
            topic=topic,
            ttl=ttl,
            receipt_id=receipt_id,
            now=now,
        )
        delivered = self.delivery.message_stored(message)
        if ttl == 0 and not delivered:
            # RFC 8030 §5.2: no user agent available, so a zero-TTL message is never delivered.
            self.state.give_up(message)
            self.delivery.messages_dropped([message])
        return message

    # -- control -----------------------------------------------------------------------------
    def _control(self, req: Request, fault: str) -> Response:
        if not self.control_enabled or not req.conn.peer_is_loopback:
            return text_response(404, "no such resource")
        if req.method != "POST":
            return text_response(405, "control requests are POSTs")
        try:
            args = json.loads(req.body) if req.body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return text_response(400, "control body is not JSON")
        if not isinstance(args, dict):
            return text_response(400, "control body must be a JSON object")
        return self.delivery.control(fault, args)
