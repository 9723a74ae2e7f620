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

from adapters.base import DEVICE_REPEAT_WINDOW
from gateway.config import RouteConfig
from gateway.routes import RouteTable
from gateway.store_types import Incoming, QueueUsage
from gateway.upstream.contract import AckCode
from gateway.webpush.crypto import REASONS as DECRYPT_FAILURES

Headers = tuple[tuple[str, str], ...]

# The only content coding RFC 8291 defines; legacy "aesgcm" drafts are not accepted.
SUPPORTED_ENCODING = "aes128gcm"
# A push message URL is remembered until the service confirmed its acknowledgement (then it
# has forgotten the message and cannot deliver it again) and this much longer: a redelivery
# already on the wire, another node of the service that had not heard of the acknowledgement.
# Memory and disk then follow the backlog and the rate, not the rate times a TTL (issue 20).
DEDUPE_GRACE = 60.0
# A device recognises a repeated delivery by its message id among the last few it took
# (firmware-bridge keeps 8): never more confirmed deliveries than this wait for a durable
# commit (the router pauses a target; the store fsyncs a resolution that reaches it), so a power
# loss repeats only deliveries a device can still recognise.
REPEAT_WINDOW = DEVICE_REPEAT_WINDOW
# Records that need no fsync of their own — a confirmed delivery, the service's confirmation of
# an acknowledgement — wait this long for a commit that is made anyway (the next message's
# ingest) before one is made for them alone: at a few messages a minute a message then costs
# one transaction, not two (the second's WAL frame and the -shm pages it dirties: ~5 KB written
# a message, measured). A crash meanwhile repeats them: deliveries within REPEAT_WINDOW (the
# router and the store bound those), acknowledgements sent again and answered 404.
RECORD_DEFER = 60.0
# RFC 8188 §2.1: an aes128gcm body starts with salt (16 octets), rs (4), idlen (1), keyid.
RECORD_SALT_BYTES = 16
AES128GCM_HEADER_MIN = RECORD_SALT_BYTES + 4 + 1
# What one more journalled message costs on disk beyond its payload: its journal row (push
# message URL, targets, times) and b-tree cell, in 1 KiB pages. Measured: ~217 bytes a message
# with a 100-byte push message URL (pages in use after 2,000 messages of 300 bytes); rounded up.
# Only an estimate: the store measures the pages again before it refuses.
MESSAGE_DISK_OVERHEAD = 320


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


def pushed_at(headers: Headers) -> float | None:
    """When the service pushed the message (its ``Date``, RFC 9110 §6.6.1): the moment it
    measured the remaining ``TTL`` it sent with it."""
    value = header(headers, "date")
    return _http_date(value) if value else None


def deadline(headers: Headers, *, received_at: float, max_age: float) -> float:
    """When a message must no longer reach a device.

    ``max_age`` counts from ``Last-Modified`` (when the application server sent it) or, without
    one, from receipt; a ``TTL`` header from the service can only shorten that. The TTL is what
    was left when the service pushed the message, so it counts from the push (``Date``), not
    from our receipt: after a reconnect a backlog of pushed messages waits seconds in socket
    buffers and in our queue before each is received, and counting from receipt would stretch
    each one's life by that wait. Both dates are whole seconds (rounded down): a deadline is
    never later than the service's, at most a second earlier.
    """
    sent = sent_at(headers)
    base = received_at if sent is None else min(received_at, sent)
    expires = base + max_age
    ttl = ttl_seconds(headers)
    if ttl is not None:
        pushed = pushed_at(headers)
        ttl_base = received_at if pushed is None else min(received_at, pushed)
        expires = min(expires, ttl_base + ttl)
    return expires


def replay_deadline(route: RouteConfig, now: float) -> float:
    """A replayed dead letter's deadline: a fresh ``max_age`` (the operator asked for it now)."""
    return now + route.max_age


def dedupe_forget_at(ack_confirmed_at: float) -> float:
    """When a push message URL whose acknowledgement the service confirmed may be forgotten."""
    return ack_confirmed_at + DEDUPE_GRACE


def record_salt(body: bytes) -> bytes | None:
    """The record salt of an ``aes128gcm`` body (RFC 8188 §2.1), or None when it has no header.

    Senders draw a fresh random salt for every message (it derives the content key and nonce), so
    a salt seen twice for one subscription is the same ciphertext sent twice: a replay.
    """
    if len(body) < AES128GCM_HEADER_MIN:
        return None
    return body[:RECORD_SALT_BYTES]


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


# ----------------------------------------------------------------------------- a full queue


@dataclass(frozen=True)
class JournalSpace:
    """How much of ``journal.max_bytes`` the journal takes on disk now (the store measures it:
    database pages in use plus the WAL file, plus what the batch being committed adds)."""

    used: int
    limit: int
    # What the filesystem can still give the journal beyond the room it keeps for its own
    # progress (the WAL's budget, a checkpoint's growth, DISK_RESERVE); None: not known.
    disk_room: int | None = None


@dataclass(frozen=True)
class Admit:
    """There is room: journal it."""


@dataclass(frozen=True)
class DropOldest:
    """Drop the route's oldest message (already in our custody: counted and logged), then ask
    again."""

    reason: str  # "queue_full" or "journal_full"


@dataclass(frozen=True)
class Refuse:
    """No room: do not journal, remember or acknowledge it. The push service keeps it and
    redelivers it later (backpressure)."""

    reason: str  # "queue_full", "journal_full" or "disk_full"


@dataclass(frozen=True)
class NeverFits:
    """Larger than the route's queue (or the whole journal) can ever hold: poison, so a dead
    letter (acknowledged, kept for inspection) rather than a redelivery forever."""

    reason: str = "too_large_for_queue"


RoomDecision = Admit | DropOldest | Refuse | NeverFits


def disk_cost(size: int) -> int:
    """What a journalled message of ``size`` payload bytes adds on disk (an estimate)."""
    return size + MESSAGE_DISK_OVERHEAD


def room_for(
    route: RouteConfig, usage: QueueUsage, size: int, journal: JournalSpace
) -> RoomDecision:
    """Whether one more message of ``size`` bytes may be journalled for ``route``.

    The route's limits count its messages and their payload bytes; the journal's limit counts
    what is on disk. When full: a ``delivered`` route refuses the newest whatever ``queue_full``
    says (dropping the oldest would acknowledge a message no device has), as ``refuse-newest``
    does; ``drop-oldest`` on a ``stored`` route drops its oldest (ours already) until the newest
    fits, and refuses when dropping all of its own would not make room (the journal is full of
    other routes' messages, dedupe records or dead letters). A disk without room refuses.
    """
    if size > route.queue_max_bytes or disk_cost(size) > journal.limit:
        return NeverFits()
    if journal.disk_room is not None and disk_cost(size) > journal.disk_room:
        # The disk is smaller than the journal's limit, or something else filled it: refused
        # whatever the route's queue_full says (the space may come back; dropping our oldest
        # for it would lose messages to another program's files), and before the journal
        # fills the disk so far that it cannot record deliveries, prune or checkpoint.
        return Refuse("disk_full")
    route_full = (
        usage.messages + 1 > route.queue_max_messages or usage.bytes + size > route.queue_max_bytes
    )
    journal_full = journal.used + disk_cost(size) > journal.limit
    if not (route_full or journal_full):
        return Admit()
    reason = "queue_full" if route_full else "journal_full"
    if acknowledge_after_delivery(route) or route.queue_full == "refuse-newest":
        return Refuse(reason)
    if usage.messages == 0:
        return Refuse(reason)
    if journal_full:
        # What dropping every message of the route would give back; when even that is not room
        # enough (the journal is full of other routes' messages, dedupe records, dead letters),
        # dropping would lose them for nothing.
        reclaimable = usage.bytes + usage.messages * MESSAGE_DISK_OVERHEAD
        if journal.used - reclaimable + disk_cost(size) > journal.limit:
            return Refuse(reason)
    return DropOldest(reason)
