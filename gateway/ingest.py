"""From a pushed message to a journal entry: find its subscription, decrypt, compute expiry.

Pure functions and a small key index; no I/O. The agent calls :meth:`Ingestor.prepare` for each
:class:`~gateway.webpush.useragent.MessageReceived` and hands the results to the store in one
transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.config import RouteConfig
from gateway.store import Incoming, SubscriptionRecord
from gateway.webpush.crypto import DecryptError, SubscriptionKeys
from gateway.webpush.useragent import Headers, MessageReceived, MessageRefused

# The only content coding RFC 8291 defines; legacy "aesgcm" drafts are not accepted.
SUPPORTED_ENCODING = "aes128gcm"
# Trial decryption of a message that names no push resource tries at most this many
# subscriptions of its set (each try costs one ECDH, ~70 µs): enough for any real gateway,
# bounded for a hostile service.
MAX_TRIAL_DECRYPTS = 64


def _header(headers: Headers, name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _safe_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    # Pseudo-headers go; nothing secret travels in pushed response headers.
    return tuple((k, v) for k, v in headers if not k.startswith(":"))


@functools.lru_cache(maxsize=64)
def _http_date(value: str) -> float | None:
    # Cached: messages arriving in the same second carry the same Last-Modified (a pure
    # function of its argument, so the cache holds no state that matters).
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


def expiry(headers: Headers, *, received_at: float, max_age: float) -> float:
    """When a message must no longer reach a device.

    ``max_age`` counts from ``Last-Modified`` (when the application server sent it, RFC 8030
    §7.2) or, without one, from receipt; a ``TTL`` header from the service (not in RFC 8030,
    sent by our reference service) can only shorten that.
    """
    base = received_at
    last_modified = _header(headers, "last-modified")
    sent = _http_date(last_modified) if last_modified else None
    if sent is not None:
        base = min(received_at, sent)
    expires = base + max_age
    ttl = _header(headers, "ttl")
    if ttl and ttl.strip().isdigit():
        expires = min(expires, received_at + int(ttl.strip()))
    return expires


@dataclass(frozen=True)
class _Entry:
    route: RouteConfig
    record: SubscriptionRecord
    keys: SubscriptionKeys


class Ingestor:
    """Knows each route's subscription and keys; turns pushed messages into :class:`Incoming`."""

    def __init__(
        self,
        routes: Iterable[RouteConfig],
        records: Iterable[SubscriptionRecord],
        *,
        max_body: int,
    ) -> None:
        self.max_body = max_body
        self._routes: dict[str, RouteConfig] = {r.name: r for r in routes}
        self._by_push_url: dict[str, _Entry] = {}
        self._by_route: dict[str, _Entry] = {}
        for record in records:
            self.add(record)

    @property
    def routes(self) -> Mapping[str, RouteConfig]:
        """The configured routes by name."""
        return self._routes

    def add(self, record: SubscriptionRecord) -> None:
        """Learn (or replace) a route's subscription."""
        route = self._routes.get(record.route)
        if route is None:
            return
        self.remove(record.route)
        keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
        entry = _Entry(route, record, keys)
        self._by_push_url[record.push_url] = entry
        self._by_route[record.route] = entry

    def remove(self, route: str) -> None:
        """Forget a route's subscription."""
        entry = self._by_route.pop(route, None)
        if entry is not None:
            self._by_push_url.pop(entry.record.push_url, None)

    def record(self, route: str) -> SubscriptionRecord | None:
        """The current subscription of a route."""
        entry = self._by_route.get(route)
        return entry.record if entry else None

    def prepare(self, event: MessageReceived, *, received_at: float) -> Incoming:
        """Identify, decrypt and date one pushed message (poison becomes a dead letter)."""
        headers = _safe_headers(event.headers)

        def dead(reason: str, route: str | None = None) -> Incoming:
            return Incoming(
                event.message_url, route, None, event.body, headers, received_at, None, reason
            )

        encoding = (event.content_encoding or SUPPORTED_ENCODING).strip().lower()
        if encoding != SUPPORTED_ENCODING:
            return dead("unsupported_encoding")
        if len(event.body) > self.max_body:
            return dead("too_large")
        entry = self._by_push_url.get(event.push_url) if event.push_url else None
        if entry is None and event.push_url is None:
            return self._trial_decrypt(event, headers, received_at)
        if entry is None:
            return dead("unknown_subscription")
        try:
            plaintext = entry.keys.decrypt(event.body, max_body=self.max_body)
        except DecryptError as exc:
            return dead(exc.reason, entry.route.name)
        return self._journal(event, entry, plaintext, headers, received_at)

    def _journal(
        self,
        event: MessageReceived,
        entry: _Entry,
        plaintext: bytes,
        headers: tuple[tuple[str, str], ...],
        received_at: float,
    ) -> Incoming:
        expires_at = expiry(headers, received_at=received_at, max_age=entry.route.max_age)
        return Incoming(
            event.message_url,
            entry.route.name,
            plaintext,
            event.body,
            headers,
            received_at,
            expires_at,
        )

    def _trial_decrypt(
        self, event: MessageReceived, headers: tuple[tuple[str, str], ...], received_at: float
    ) -> Incoming:
        # No push link: the AES-GCM tag tells which of the set's subscriptions it was for.
        candidates = [
            e
            for e in self._by_route.values()
            if event.set_url in (e.record.set_url, e.record.subscription_url)
        ][:MAX_TRIAL_DECRYPTS]
        for entry in candidates:
            try:
                plaintext = entry.keys.decrypt(event.body, max_body=self.max_body)
            except DecryptError:
                continue
            return self._journal(event, entry, plaintext, headers, received_at)
        return Incoming(
            event.message_url,
            None,
            None,
            event.body,
            headers,
            received_at,
            None,
            "unknown_subscription",
        )

    def refused(self, event: MessageRefused, *, received_at: float) -> Incoming:
        """A message the protocol layer refused (too large, bad status): a dead letter."""
        entry = self._by_push_url.get(event.push_url) if event.push_url else None
        return Incoming(
            event.message_url,
            entry.route.name if entry else None,
            None,
            b"",
            _safe_headers(event.headers),
            received_at,
            None,
            event.reason,
        )
