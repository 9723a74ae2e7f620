"""RFC 8030 resources: a request becomes store calls and a response (URL space in :mod:`paths`).

Everything lives in the store; the only memory here is a cache of subscriptions by push id
(immutable records: a stale entry is caught by the store, which answers "gone"). A store that
cannot be reached turns any request into 503 with Retry-After: nothing is accepted that could
not be stored.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable

from pushservice.db import Database
from pushservice.delivery import Delivery
from pushservice.faults import Faults
from pushservice.http import MonitorRequest, Request, Response, text_response
from pushservice.links import REL_PUSH, REL_RECEIPT, REL_SET, LinkParseError, links_with_rel
from pushservice.metrics import ServiceMetrics
from pushservice.model import RECEIPT_GONE, NewMessage, Subscription, Urgency, new_token
from pushservice.paths import (
    id_from_link,
    message_path,
    resource_url,
    split_path,
)
from pushservice.ratelimit import RateLimiter
from pushservice.settings import (
    MAX_SUBSCRIBE_BODY,
    MAX_TOPIC_LENGTH,
    TTL_CEILING,
    ZERO_TTL_REACH,
    ServiceSettings,
)
from pushservice.store import Changes, InvalidSet, ResourceKind, StoreUnavailable
from pushservice.vapid import VapidError, parse_authorization, parse_public_key, verify_vapid

WEBPUSH_OPTIONS_TYPE = "application/webpush-options+json"
# Retry-After of a 503 answered because the store is unavailable (a restart takes seconds).
STORE_RETRY_AFTER = 2
# Subscriptions remembered by push id; ~300 bytes each.
SUBSCRIPTION_CACHE = 50_000

_TOPIC_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_TOPIC_LENGTH}}}$")
_TTL_RE = re.compile(r"^[0-9]+$")
_PREFER_WAIT0_RE = re.compile(r"(^|[,;\s])wait\s*=\s*\"?0\"?\s*($|[,;])", re.IGNORECASE)

Control = Callable[[str, dict[str, object]], Response]


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


def _too_many(reason: str, retry_after: float) -> Response:
    return text_response(429, reason, [("retry-after", str(max(1, round(retry_after))))])


class _SubscriptionCache:
    """Subscriptions by push id, least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_push: OrderedDict[str, Subscription] = OrderedDict()
        self._push_of: dict[str, str] = {}

    def get(self, push_id: str) -> Subscription | None:
        sub = self._by_push.get(push_id)
        if sub is not None:
            self._by_push.move_to_end(push_id)
        return sub

    def put(self, sub: Subscription) -> None:
        self._by_push[sub.push_id] = sub
        self._push_of[sub.id] = sub.push_id
        if len(self._by_push) > self._size:
            _, old = self._by_push.popitem(last=False)
            self._push_of.pop(old.id, None)

    def forget(self, sub_id: str) -> None:
        push_id = self._push_of.pop(sub_id, None)
        if push_id is not None:
            self._by_push.pop(push_id, None)


class Resources:
    """Turns requests into store calls and responses."""

    def __init__(
        self,
        db: Database,
        settings: ServiceSettings,
        faults: Faults,
        delivery: Delivery,
        metrics: ServiceMetrics,
        *,
        control: Control | None = None,
    ) -> None:
        self.db = db
        self.store = db.store
        self.settings = settings
        self.faults = faults
        self.delivery = delivery
        self.metrics = metrics
        self.control = control
        self._subscriptions = _SubscriptionCache(SUBSCRIPTION_CACHE)
        self._per_address = RateLimiter(settings.requests_per_address)
        self._per_resource = RateLimiter(settings.pushes_per_resource)

    def origin(self, req: Request) -> str:
        """The origin of every URL we mint: the public URL when set, else the request's."""
        return (self.settings.public_url or req.origin).rstrip("/")

    def changed(self, changes: Changes) -> None:
        """Forget removed subscriptions and tell delivery (also for other nodes' changes)."""
        for kind, ident in changes.gone:
            if kind == "subscription":
                self._subscriptions.forget(ident)
        self.delivery.apply(changes)

    async def handle(self, req: Request, now: float) -> Response | MonitorRequest:
        """Answer one request (or ask the front end to hold it open as a monitor)."""
        kind, ident = split_path(req.path)
        if kind == "control":
            return self._control(req, ident)
        wait = self._per_address.check(req.conn.peer, now)
        if wait is not None:
            self.metrics.refused.inc(reason="rate")
            return _too_many("too many requests from this address", wait)
        rule = self.faults.take_failure(req.method, kind)
        if rule is not None:
            extra = [] if rule.retry_after is None else [("retry-after", str(rule.retry_after))]
            return text_response(rule.status, "injected failure", extra)
        try:
            return await self._route(req, kind, ident, now)
        except StoreUnavailable:
            self.metrics.refused.inc(reason="store")
            retry = [("retry-after", str(STORE_RETRY_AFTER))]
            return text_response(503, "storage unavailable, try again", retry)

    async def _route(
        self, req: Request, kind: str, ident: str, now: float
    ) -> Response | MonitorRequest:
        route = (kind, req.method)
        if route == ("subscribe", "POST"):
            return await self._subscribe(req, now)
        if route in (("subscription", "GET"), ("set", "GET"), ("receipt", "GET")):
            return await self._monitor(req, kind, ident)
        if route == ("subscription", "DELETE"):
            return self._removed(await self.db.call(self.store.delete_subscription, ident, now))
        if route == ("set", "DELETE"):
            return self._removed(await self.db.call(self.store.delete_set, ident, now))
        if route == ("push", "POST"):
            return await self._push(req, ident, now)
        if route == ("message", "DELETE"):
            return (await self.acknowledge([req], now))[0]
        if kind == "unknown":
            return text_response(404, "no such resource")
        return text_response(405, "method not allowed")

    # -- user agent --------------------------------------------------------------------------
    async def _subscribe(self, req: Request, now: float) -> Response:
        if req.conn.subscriptions_created >= self.settings.max_subscriptions_per_connection:
            return text_response(429, "too many subscriptions on this connection")
        try:
            set_links = links_with_rel(req.header_values("link"), REL_SET)
        except LinkParseError:
            return text_response(400, "malformed Link header")
        set_id: str | None = None
        if set_links:
            set_id = id_from_link(set_links[0], "set")
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
            sub = await self.db.call(self.store.subscribe, set_id, vapid_key, now)
        except InvalidSet:
            return text_response(400, "invalid subscription set")
        self._subscriptions.put(sub)
        req.conn.subscriptions_created += 1
        origin = self.origin(req)
        return Response(
            201,
            [
                ("location", resource_url(origin, "subscription", sub.id)),
                ("link", f'<{resource_url(origin, "push", sub.push_id)}>; rel="{REL_PUSH}"'),
                ("link", f'<{resource_url(origin, "set", sub.set_id)}>; rel="{REL_SET}"'),
                ("cache-control", "no-store"),
                ("content-length", "0"),
            ],
        )

    async def _monitor(self, req: Request, kind: str, ident: str) -> Response | MonitorRequest:
        target: ResourceKind = (
            "set" if kind == "set" else "receipt" if kind == "receipt" else "subscription"
        )
        if not await self.db.call(self.store.exists, target, ident):
            return text_response(404, f"no such {kind}")
        try:
            min_urgency = (
                parse_urgency(req.header_values("urgency")) if req.header("urgency") else None
            )
        except ValueError:
            return text_response(400, "invalid Urgency")
        return MonitorRequest(target, ident, min_urgency, wants_wait0(req.header_values("prefer")))

    def _removed(self, changes: Changes | None) -> Response:
        if changes is None:
            return text_response(404, "no such resource")
        self.changed(changes)
        return Response(204)

    async def acknowledge(self, requests: list[Request], now: float) -> list[Response]:
        """``DELETE /message/<id>`` for several requests at once (one store call)."""
        answers: list[Response | None] = []
        ids: list[str] = []
        for req in requests:
            rule = self.faults.take_failure(req.method, "message")
            if rule is not None:
                extra = [] if rule.retry_after is None else [("retry-after", str(rule.retry_after))]
                answers.append(text_response(rule.status, "injected failure", extra))
            else:
                answers.append(None)
                ids.append(split_path(req.path)[1])
        try:
            acked = await self.db.call(self.store.ack, ids, now)
        except StoreUnavailable:
            self.metrics.refused.inc(len(ids), reason="store")
            busy = text_response(
                503, "storage unavailable, try again", [("retry-after", str(STORE_RETRY_AFTER))]
            )
            return [busy if a is None else a for a in answers]
        self.delivery.acknowledged(acked.message_ids)
        self.changed(acked.changes)
        self.metrics.acknowledged.inc(len(acked.message_ids))
        gone = text_response(404, "no such message (acknowledged, expired or replaced)")
        result: list[Response] = []
        pending = iter(ids)
        for answer in answers:
            if answer is None:
                answer = Response(204) if next(pending) in acked.message_ids else gone
            result.append(answer)
        return result

    # -- application server ------------------------------------------------------------------
    async def _subscription(self, push_id: str) -> Subscription | None:
        sub = self._subscriptions.get(push_id)
        if sub is None:
            sub = await self.db.call(self.store.subscription_by_push, push_id)
            if sub is not None:
                self._subscriptions.put(sub)
        return sub

    def _check_vapid(self, req: Request, sub: Subscription, now: float) -> Response | None:
        key = sub.vapid_key
        if key is None and not self.settings.require_vapid:
            return None
        try:
            if key is None:  # require_vapid: any key, as long as the JWT verifies with it
                try:
                    key = parse_public_key(parse_authorization(req.header("authorization")).key)
                except ValueError as exc:
                    raise VapidError(401, "invalid vapid key") from exc
            verify_vapid(
                req.header("authorization"), audience=self.origin(req), restricted_key=key, now=now
            )
        except VapidError as exc:
            extra = [("www-authenticate", "vapid")] if exc.status == 401 else []
            return text_response(exc.status, exc.reason, extra)
        return None

    async def _push(self, req: Request, ident: str, now: float) -> Response:
        sub = await self._subscription(ident)
        if sub is None:
            return text_response(404, "no such subscription (expired or never existed)")
        if len(req.body) > self.settings.max_body:
            return text_response(413, f"body larger than {self.settings.max_body} bytes")
        refused = self._check_vapid(req, sub, now)
        if refused is not None:
            return refused
        try:
            requested_ttl = parse_ttl(req.header_values("ttl"))
            urgency = parse_urgency(req.header_values("urgency"))
            topic = parse_topic(req.header_values("topic"))
        except ValueError as exc:
            return text_response(400, str(exc))
        wait = self._per_resource.check(sub.push_id, now)
        if wait is not None:
            self.metrics.refused.inc(reason="rate")
            return _too_many("too many pushes to this resource", wait)
        receipt_id = await self._receipt_for(req, now)
        if receipt_id == "":
            return text_response(400, "invalid receipt subscription")
        ttl = min(requested_ttl, self.settings.max_ttl)
        message_id = await self._store(req, sub, urgency, topic, ttl, receipt_id, now)
        if message_id is None:
            self._subscriptions.forget(sub.id)
            return text_response(404, "no such subscription (expired or never existed)")
        if message_id == "":
            self.metrics.refused.inc(reason="full")
            return _too_many("too many undelivered messages", 60)
        self.metrics.accepted.inc()
        origin = self.origin(req)
        headers = [
            ("location", f"{origin}{message_path(message_id)}"),
            ("ttl", str(ttl)),
            ("content-length", "0"),
        ]
        if receipt_id is not None:
            receipt_url = resource_url(origin, "receipt", receipt_id)
            headers.append(("link", f'<{receipt_url}>; rel="{REL_RECEIPT}"'))
            return Response(202, headers)
        return Response(201, headers)

    async def _receipt_for(self, req: Request, now: float) -> str | None:
        """The receipt subscription to use: "" invalid, None none wanted."""
        try:
            links = links_with_rel(req.header_values("link"), REL_RECEIPT)
        except LinkParseError:
            return ""
        if links:
            rid = id_from_link(links[0], "receipt")
            if rid is None or not await self.db.call(self.store.exists, "receipt", rid):
                return ""
            return rid
        if wants_respond_async(req.header_values("prefer")):
            return await self.db.call(self.store.new_receipt, now)
        return None

    async def _store(
        self,
        req: Request,
        sub: Subscription,
        urgency: Urgency,
        topic: str | None,
        ttl: int,
        receipt_id: str | None,
        now: float,
    ) -> str | None:
        """Store (and push) a message: its id; None if the subscription is gone, "" if full."""
        monitor = self.delivery.monitor_for(sub.set_id, sub.id, urgency)
        message_id = new_token()
        expires = now + ttl
        if ttl == 0 and monitor is None:
            # RFC 8030 §5.2: no user agent is available here. On one node that is final; with
            # other nodes, one of them may hold the monitor: it has ZERO_TTL_REACH to claim it.
            if not self.store.shared:
                if receipt_id is not None:
                    changes = await self.db.call(
                        self.store.record_receipt, receipt_id, message_id, RECEIPT_GONE, now
                    )
                    self.changed(changes)
                return message_id
            expires = now + ZERO_TTL_REACH
        new = NewMessage(
            message_id, sub.id, sub.push_id, sub.set_id, req.body, req.header("content-encoding"),
            urgency, topic, now, expires, receipt_id,
        )  # fmt: skip
        result = await self.db.call(
            self.store.accept,
            new,
            max_pending=self.settings.max_messages_per_subscription,
            claimed=monitor is not None,
        )
        if result == "gone":
            return None
        if result == "full":
            return ""
        self.changed(result.changes)
        if monitor is not None and not self.delivery.push_fresh(monitor, result.message):
            # The monitor went away while the message was stored: due again, for anyone.
            self.changed(await self.db.call(self.store.release, [message_id]))
        return message_id

    # -- control -----------------------------------------------------------------------------
    def _control(self, req: Request, fault: str) -> Response:
        if self.control is None or not req.conn.peer_is_loopback:
            return text_response(404, "no such resource")
        if req.method != "POST":
            return text_response(405, "control requests are POSTs")
        try:
            args = json.loads(req.body) if req.body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return text_response(400, "control body is not JSON")
        if not isinstance(args, dict):
            return text_response(400, "control body must be a JSON object")
        return self.control(fault, args)
