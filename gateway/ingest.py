"""From a pushed message to an :class:`~gateway.store_types.Incoming`: find its subscription and
decrypt it (or say why not).

A small key index and pure functions; no I/O. The journal writer calls :meth:`Ingestor.prepare`
for each :class:`~gateway.upstream.contract.Pushed` (whichever protocol brought it), asks
:mod:`gateway.policy` what to do with the result, and hands both to the store in one
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway import policy
from gateway.store_types import Incoming, SubscriptionRecord
from gateway.upstream.contract import Headers, Pushed
from gateway.webpush.crypto import DecryptError, SubscriptionKeys

# Trial decryption of a message that names no push resource tries at most this many
# subscriptions of its set (each try costs one ECDH, ~70 µs): enough for any real gateway,
# bounded for a hostile service.
MAX_TRIAL_DECRYPTS = 64


def _safe_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    # Pseudo-headers go; nothing secret travels in pushed response headers.
    return tuple((k, v) for k, v in headers if not k.startswith(":"))


@dataclass(frozen=True)
class _Entry:
    record: SubscriptionRecord
    keys: SubscriptionKeys


class Ingestor:
    """Knows each route's subscription and keys; turns pushed messages into :class:`Incoming`."""

    def __init__(self, records: Iterable[SubscriptionRecord], *, max_body: int) -> None:
        self.max_body = max_body
        self._by_push_url: dict[str, _Entry] = {}
        self._by_route: dict[str, _Entry] = {}
        for record in records:
            self.add(record)

    def add(self, record: SubscriptionRecord) -> None:
        """Learn (or replace) a route's subscription."""
        self.remove(record.route)
        keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
        entry = _Entry(record, keys)
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

    def prepare(self, event: Pushed, *, received_at: float) -> Incoming:
        """Identify and decrypt one pushed message (or record why it cannot be used)."""
        headers = _safe_headers(event.headers)

        def failed(reason: str, route: str | None = None) -> Incoming:
            return Incoming(
                event.key, route, None, event.body, headers, received_at, failure=reason
            )

        if event.refused is not None:
            entry = self._by_push_url.get(event.push_url) if event.push_url else None
            return failed(event.refused, entry.record.route if entry else None)
        if not policy.encoding_supported(event.content_encoding):
            return failed("unsupported_encoding")
        entry = self._by_push_url.get(event.push_url) if event.push_url else None
        if entry is None and event.push_url is None:
            return self._trial_decrypt(event, headers, received_at)
        if entry is None:
            return failed("unknown_subscription")
        try:
            plaintext = entry.keys.decrypt(event.body, max_body=self.max_body)
        except DecryptError as exc:
            return failed(exc.reason, entry.record.route)
        return Incoming(event.key, entry.record.route, plaintext, event.body, headers, received_at)

    def _trial_decrypt(
        self, event: Pushed, headers: tuple[tuple[str, str], ...], received_at: float
    ) -> Incoming:
        # No push link: the AES-GCM tag tells which of the set's subscriptions it was for.
        candidates = [
            e
            for e in self._by_route.values()
            if event.monitor_url in (e.record.set_url, e.record.subscription_url)
        ][:MAX_TRIAL_DECRYPTS]
        for entry in candidates:
            try:
                plaintext = entry.keys.decrypt(event.body, max_body=self.max_body)
            except DecryptError:
                continue
            return Incoming(
                event.key, entry.record.route, plaintext, event.body, headers, received_at
            )
        return Incoming(
            event.key,
            None,
            None,
            event.body,
            headers,
            received_at,
            failure="unknown_subscription",
        )

    @staticmethod
    def redelivery(message_url: str, received_at: float) -> Incoming:
        """A redelivery of a message already committed: nothing to decrypt."""
        return Incoming(message_url, None, None, b"", (), received_at, redelivery=True)
