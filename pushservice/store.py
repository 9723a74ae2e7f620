"""The push service's storage contract: one interface, an embedded SQLite and a PostgreSQL store.

The store is the source of truth: subscriptions, sets, messages and receipts live there and
nowhere else, so several nodes on one PostgreSQL database serve the same resources. Every method
is blocking and runs in a worker thread (:mod:`pushservice.db`); each is one transaction, so a
node killed at any moment leaves the database consistent.

A message is *due* when nobody pushed it yet or its redelivery time came (``pushed_at`` is
NULL); pushing it (``claim``, ``stored``) stamps ``pushed_at``; an acknowledgement deletes it
and records a 204 receipt; the sweep gives up on expired ones (410 receipt) and makes unacked
pushes due again after ``redelivery_after``. Every mutation returns the :class:`Changes` that
monitors must hear about: the node that made it applies them at once, and a shared store
(PostgreSQL) also sends them to the other nodes with ``pg_notify`` in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, Protocol

from pushservice.model import Message, NewMessage, ReceiptEvent, Subscription, Urgency

TargetKind = Literal["subscription", "set"]
ResourceKind = Literal["subscription", "set", "receipt"]
Refusal = Literal["gone", "full"]  # no such subscription (404); too many messages stored (429)

# How long receipts stay readable after they were recorded: a little more than the longest TTL
# we accept by default (28 days, settings.ServiceSettings.max_ttl), so a receipt for any message
# outlives the message.
RECEIPT_RETENTION = 30 * 86400.0
# The PostgreSQL channel every node LISTENs on.
NOTIFY_CHANNEL = "fieldgate_push"
# A pg_notify payload must stay under 8000 bytes (PostgreSQL's NOTIFY); ours are < 100.
_SEP = "|"


class StoreUnavailable(Exception):
    """The database cannot be reached or gave up (answer 503 and try again later)."""


class InvalidSet(Exception):
    """A subscribe request named a set that does not exist or may not be joined (400)."""


@dataclass(frozen=True)
class Changes:
    """What monitors must learn about a mutation (applied locally, notified to other nodes).

    ``due``: (set, subscription) pairs that have due messages; ``receipts``: receipt
    subscriptions with new receipts; ``gone``: removed sets and subscriptions (monitors 404).
    """

    due: frozenset[tuple[str, str]] = frozenset()
    receipts: frozenset[str] = frozenset()
    gone: frozenset[tuple[TargetKind, str]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.due or self.receipts or self.gone)

    def __or__(self, other: Changes) -> Changes:
        return Changes(self.due | other.due, self.receipts | other.receipts, self.gone | other.gone)


NO_CHANGES = Changes()


@dataclass(frozen=True)
class Accepted:
    """A message the store took, and what changed (receipts of messages its topic replaced)."""

    message: Message
    changes: Changes


@dataclass(frozen=True)
class Acked:
    """The result of acknowledging messages: the ids that existed, and what changed."""

    message_ids: frozenset[str]
    changes: Changes


@dataclass(frozen=True)
class Swept:
    """One sweep: messages given up (expired), pushes made due again, and what changed."""

    expired: int
    redelivered: int
    changes: Changes


@dataclass(frozen=True)
class Counts:
    """How much the store holds (for /metrics and the control API's stats)."""

    subscriptions: int
    sets: int
    messages: int


@dataclass(frozen=True)
class DueQuery:
    """Which monitored targets a node claims due messages for (one urgency floor per query)."""

    sets: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    min_urgency: Urgency = Urgency.VERY_LOW


class Store(Protocol):
    """What the service needs from its database; every method is one transaction."""

    shared: bool  # other nodes may use the same database (their monitors hear notifications)
    blocking_io: bool  # calls wait on a disk or the network: run them in worker threads
    round_trips: int  # statements sent to the database so far (the benchmark's figure)

    def close(self) -> None:
        """Release the database."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        ...

    # -- subscriptions and sets ---------------------------------------------------------------
    def subscribe(self, set_id: str | None, vapid_key: bytes | None, now: float) -> Subscription:
        """A new subscription, in ``set_id`` (InvalidSet if unknown or closed) or a new set."""
        ...

    def subscription_by_push(self, push_id: str) -> Subscription | None:
        """The subscription behind a push resource."""
        ...

    def exists(self, kind: ResourceKind, ident: str) -> bool:
        """Whether a set, subscription or receipt subscription exists."""
        ...

    def delete_subscription(self, sub_id: str, now: float) -> Changes | None:
        """Remove a subscription and its messages (410 receipts); None if unknown."""
        ...

    def delete_set(self, set_id: str, now: float) -> Changes | None:
        """Remove a set, its members and their messages (RFC 8030 §7.3.1); None if unknown."""
        ...

    def delete_all_sets(self, now: float) -> Changes:
        """Remove every set (fault injection: the service "expired" them)."""
        ...

    def close_sets(self) -> None:
        """Every existing set refuses new members from now on (fault injection)."""
        ...

    # -- messages -----------------------------------------------------------------------------
    def accept(self, message: NewMessage, *, max_pending: int, claimed: bool) -> Accepted | Refusal:
        """Store a message; a topic replaces the subscription's same-topic messages (410).

        ``claimed``: the caller pushes it at once (stamped as pushed, nobody is notified).
        Refused when the subscription is gone or already holds ``max_pending`` messages.
        """
        ...

    def stored(
        self,
        kind: TargetKind,
        ident: str,
        *,
        after_seq: int,
        min_urgency: Urgency,
        now: float,
        limit: int,
    ) -> list[Message]:
        """The next unexpired messages of a target after ``after_seq``, stamped as pushed."""
        ...

    def claim(self, query: DueQuery, *, now: float, limit: int) -> list[Message]:
        """Due messages of these targets, oldest first, stamped as pushed (SKIP LOCKED)."""
        ...

    def release(self, message_ids: Sequence[str]) -> Changes:
        """Claimed messages that could not be pushed: due again."""
        ...

    def ack(self, message_ids: Sequence[str], now: float) -> Acked:
        """Delete acknowledged messages; 204 receipts for those that asked."""
        ...

    def sweep(self, now: float, redelivery_after: float, limit: int) -> Swept:
        """Give up on expired messages (410 receipts) and make stale pushes due again.

        A pushed message gets ``redelivery_after`` past its expiry for its acknowledgement.
        Rows are taken with FOR UPDATE SKIP LOCKED: nodes sweeping at once share the work.
        """
        ...

    # -- receipts -----------------------------------------------------------------------------
    def new_receipt(self, now: float) -> str:
        """Create a receipt subscription (RFC 8030 §5.1)."""
        ...

    def receipts(self, receipt_id: str) -> list[ReceiptEvent] | None:
        """Every receipt of a receipt subscription in order; None if unknown."""
        ...

    def claim_receipts(self, receipt_ids: Sequence[str]) -> list[ReceiptEvent]:
        """Receipts not pushed yet, marked pushed (SKIP LOCKED)."""
        ...

    def unclaim_receipts(self, seqs: Sequence[int]) -> None:
        """Receipts whose push failed: to be pushed again."""
        ...

    def record_receipt(self, receipt_id: str, message_id: str, status: int, now: float) -> Changes:
        """Record a receipt for a message that was never stored (TTL 0, no user agent)."""
        ...

    # -- inspection ---------------------------------------------------------------------------
    def counts(self) -> Counts:
        """Rows held."""
        ...

    def pending(self, push_id: str | None) -> int:
        """Unacknowledged messages of one push resource, or all."""
        ...

    def subscriptions(self) -> list[tuple[Subscription, int]]:
        """Every subscription with its pending count (inspection: tests and tools)."""
        ...

    def message_ids(self) -> list[str]:
        """Ids of every stored message (inspection: tests and tools)."""
        ...


def stored_message(m: NewMessage, seq: int) -> Message:
    """The stored form of a message the store accepted as number ``seq``."""
    return Message(**{f.name: getattr(m, f.name) for f in fields(NewMessage)}, seq=seq)


# -- notification payloads (one place for their format) ------------------------------------------
def encode_changes(node: str, changes: Changes) -> list[str]:
    """The pg_notify payloads telling other nodes about ``changes`` (``node`` is the sender)."""
    payloads = [_SEP.join((node, "m", set_id, sub_id)) for set_id, sub_id in changes.due]
    payloads += [_SEP.join((node, "r", receipt)) for receipt in changes.receipts]
    payloads += [_SEP.join((node, "g", kind, ident)) for kind, ident in changes.gone]
    return sorted(payloads)


def payload_prefix(node: str, kind: str) -> str:
    """The start of a payload of ``kind`` (for SQL that appends the id itself)."""
    return _SEP.join((node, kind)) + _SEP


def decode_payload(payload: str) -> tuple[str, Changes]:
    """(sender node, changes) of one payload; ValueError if it is not ours."""
    parts = payload.split(_SEP)
    if len(parts) == 4 and parts[1] == "m":
        return parts[0], Changes(due=frozenset({(parts[2], parts[3])}))
    if len(parts) == 3 and parts[1] == "r":
        return parts[0], Changes(receipts=frozenset({parts[2]}))
    if len(parts) == 4 and parts[1] == "g" and parts[2] in ("set", "subscription"):
        kind: TargetKind = "set" if parts[2] == "set" else "subscription"
        return parts[0], Changes(gone=frozenset({(kind, parts[3])}))
    raise ValueError("not a fieldgate notification")


def merge(changes: Iterable[Changes]) -> Changes:
    """The union of several Changes."""
    result = NO_CHANGES
    for change in changes:
        result = result | change
    return result
