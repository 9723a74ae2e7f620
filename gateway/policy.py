"""What happens to a pushed message, decided once: pure functions of the message, its route and
the time. No I/O, no clock of its own (``now`` is passed in).

The ingest path decrypts and identifies a message (:class:`~gateway.store_types.Incoming`), asks
:func:`dispose` what to do with it, and hands both to the store, which only carries the decision
out. The deadline decided here is the only one: the router and the adapters compare the clock
with it (``Message.expired``) and never compute another.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.config import RouteConfig
from gateway.routes import RouteTable
from gateway.store_types import Incoming
from gateway.upstream.contract import AckCode
from gateway.webpush.crypto import REASONS as DECRYPT_FAILURES

Headers = tuple[tuple[str, str], ...]

# The only content coding RFC 8291 defines; legacy "aesgcm" drafts are not accepted.
SUPPORTED_ENCODING = "aes128gcm"
# After a message's TTL has run out at the push service it cannot be redelivered; this much
# later its dedupe record goes (clock differences, a redelivery already on the wire).
DEDUPE_TTL_SLACK = 600.0


def header(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def ttl_seconds(headers: Headers) -> int | None:
    """The ``TTL`` response header a push service may send (not in RFC 8030; our reference
    service and autopush do): whole seconds the message had left when it was pushed."""
    value = header(headers, "ttl")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


@functools.lru_cache(maxsize=64)
def _http_date(value: str) -> float | None:
    # Cached: messages arriving in the same second carry the same Last-Modified (a pure
    # function of its argument, so the cache holds no state that matters).
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def sent_at(headers: Headers) -> float | None:
    """When the application server sent the message (``Last-Modified``, RFC 8030 §7.2)."""
    value = header(headers, "last-modified")
    return _http_date(value) if value else None


def deadline(headers: Headers, *, received_at: float, max_age: float) -> float:
    """When a message must no longer reach a device.

    ``max_age`` counts from ``Last-Modified`` (when the application server sent it) or, without
    one, from receipt; a ``TTL`` header from the service can only shorten that.
    """
    sent = sent_at(headers)
    base = received_at if sent is None else min(received_at, sent)
    expires = base + max_age
    ttl = ttl_seconds(headers)
    if ttl is not None:
        expires = min(expires, received_at + ttl)
    return expires


def replay_deadline(route: RouteConfig, now: float) -> float:
    """A replayed dead letter's deadline: a fresh ``max_age`` (the operator asked for it now)."""
    return now + route.max_age


def dedupe_horizon(headers: Headers, now: float) -> float | None:
    """When a push message URL may be forgotten: the service's remaining TTL plus slack; None
    means ``journal.dedupe_retention`` (the service sent no TTL)."""
    ttl = ttl_seconds(headers)
    return None if ttl is None else now + ttl + DEDUPE_TTL_SLACK


def encoding_supported(content_encoding: str | None) -> bool:
    """Whether a pushed body's ``Content-Encoding`` is one we decrypt (absent: aes128gcm)."""
    return (content_encoding or SUPPORTED_ENCODING).strip().lower() == SUPPORTED_ENCODING


def acknowledge_after_delivery(route: RouteConfig) -> bool:
    """The ack policy: hold the upstream acknowledgement until every target confirmed.

    ``ack = "delivered"`` on a route that delivers somewhere; ``stored`` (the default)
    acknowledges once the message is committed to the journal.
    """
    return route.ack == "delivered" and bool(route.deliver)


# ----------------------------------------------------------------------------- dispositions


@dataclass(frozen=True)
class Journal:
    """Keep the message for its route's targets until ``deadline``."""

    route: RouteConfig
    deadline: float
    ack_after_delivery: bool


@dataclass(frozen=True)
class DeadLetter:
    """Poison: acknowledge it (else it comes back forever) and keep it for inspection."""

    reason: str
    route: str | None


@dataclass(frozen=True)
class Expired:
    """It arrived too late for any device: acknowledge it, count it, never deliver it."""

    route: str


@dataclass(frozen=True)
class Redelivered:
    """A redelivery of a message this process has already committed (decryption was spared)."""


Disposition = Journal | DeadLetter | Expired | Redelivered


@dataclass(frozen=True)
class Admission:
    """A message and what to do with it: what the store carries out."""

    incoming: Incoming
    disposition: Disposition


def admit(incoming: Incoming, routes: RouteTable, now: float) -> Admission:
    """The message with its disposition (see :func:`dispose`)."""
    return Admission(incoming, dispose(incoming, routes, now))


def dispose(incoming: Incoming, routes: RouteTable, now: float) -> Disposition:
    """Decide what happens to one identified, decrypted (or undecryptable) message."""
    if incoming.redelivery:
        return Redelivered()
    if incoming.failure is not None:
        return DeadLetter(incoming.failure, incoming.route)
    if incoming.route is None:
        return DeadLetter("unknown_subscription", None)
    route = routes.get(incoming.route)
    if route is None:
        # Its subscription outlived the route (removed from the configuration).
        return DeadLetter("unknown_route", incoming.route)
    if incoming.plaintext is None:
        return DeadLetter("no_plaintext", route.name)
    expires = deadline(incoming.headers, received_at=incoming.received_at, max_age=route.max_age)
    if expires <= now:
        return Expired(route.name)
    return Journal(route, expires, acknowledge_after_delivery(route))


def ack_code(disposition: Disposition) -> AckCode:
    """What the service is told with the acknowledgement (autopush keeps statistics of it)."""
    if isinstance(disposition, DeadLetter):
        if disposition.reason in DECRYPT_FAILURES:
            return AckCode.UNDECRYPTABLE
        return AckCode.REFUSED
    return AckCode.TAKEN
