"""The records the store takes and hands out (no SQLite here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from adapters.base import Message, TargetConfig
from gateway.config import RouteConfig


class StoreError(Exception):
    """The store cannot be opened or used safely; the message says why and what to do."""


class JournalMissing(StoreError):
    """There is no journal where one was asked for without creating it (a fresh state dir)."""


JournalProblemKind = Literal["deleted", "replaced", "truncated", "corrupt"]


@dataclass(frozen=True)
class JournalProblem:
    """Why the open journal can no longer be trusted with new messages."""

    kind: JournalProblemKind
    detail: str  # names the file and what happened to it

    def __str__(self) -> str:
        return (
            f"{self.detail}: no message is acknowledged any more (the push service keeps them); "
            "messages already journalled are still delivered. Restore the file and restart, or "
            "restart with `fieldgate run --reset` for a new journal (new subscriptions)"
        )


@dataclass(frozen=True)
class SubscriptionRecord:
    """One route's push subscription and its key material."""

    route: str
    subscription_url: str
    push_url: str
    set_url: str | None
    private_key_der: bytes  # PKCS#8 DER of the P-256 key (secret: the db file is 0600)
    auth_secret: bytes
    created_at: float
    distributed_at: float | None = None  # when distribute_url last accepted the JSON


@dataclass(frozen=True)
class Incoming:
    """One pushed message as the agent received it: identified and decrypted, or why not."""

    push_message_url: str  # what the agent acknowledges; the dedupe key
    route: str | None  # None: no subscription matched
    plaintext: bytes | None  # None when it could not be decrypted
    raw_body: bytes
    headers: tuple[tuple[str, str], ...]
    received_at: float  # Unix time
    failure: str | None = None  # why it cannot be used ("auth_tag_mismatch", "too_large", ...)
    redelivery: bool = False  # already committed by this process: not decrypted again


IngestStatus = Literal["journalled", "duplicate", "replayed", "dead_lettered", "refused", "expired"]


@dataclass(frozen=True)
class IngestResult:
    """What happened to one :class:`Incoming`, and whether the agent may DELETE it now."""

    push_message_url: str
    status: IngestStatus
    message_id: str | None
    # False for the `delivered` policy while not every target has confirmed (a duplicate of
    # such a message included): the DELETE then comes through the router's on_ack. False for a
    # "refused" message too (a full queue): never acknowledged, the push service keeps it.
    ack_now: bool


@dataclass(frozen=True)
class PendingDelivery:
    """One message still owed to one target, with its retry state."""

    message: Message
    push_message_url: str
    attempts: int
    next_attempt_at: float  # Unix time; 0 for "as soon as possible"
    # The target keys the message still had when it was read (or journalled): once each of
    # them finished, nothing of it waits (Store.note_finished). Empty: not known.
    targets: tuple[str, ...] = ()


DeliveryEnd = Literal["delivered", "expired", "rejected"]


@dataclass(frozen=True)
class Resolution:
    """A delivery that is finished for good (the router batches these into one commit)."""

    message_id: str
    route: str
    target: str  # the target key, see :func:`target_key`
    end: DeliveryEnd
    reason: str = ""  # why it was rejected (the dead letter's reason)


@dataclass(frozen=True)
class CarriedResolutions:
    """Finished deliveries handed to a journal commit that is made anyway (an ingest), so that
    they need no transaction of their own; ``done`` is told, once, whether that commit
    recorded them (False: they are the giver's again, to record another way)."""

    resolutions: tuple[Resolution, ...]
    done: Callable[[bool], None]


@dataclass(frozen=True)
class CarriedAcks:
    """Confirmed acknowledgements handed to a journal commit that is made anyway (the router's
    record of finished deliveries), so that they need no transaction of their own; ``done``
    is told, once, whether that commit recorded them (False: they are the giver's again)."""

    keys: tuple[str, ...]
    done: Callable[[bool], None]


@dataclass(frozen=True)
class DeadLetter:
    """A message that will not be delivered: poison from upstream or rejected by a target."""

    id: int
    reason: str
    route: str | None
    target: str | None  # the target key that rejected it; None for poison messages
    push_message_url: str | None
    headers: tuple[tuple[str, str], ...]
    raw_body: bytes
    plaintext: bytes | None
    received_at: float
    dead_at: float
    expires_at: float | None


@dataclass
class StoreCounts:
    """Events since the last :meth:`Store.take_counts` (the router turns them into metrics)."""

    journalled: dict[str, int] = field(default_factory=dict)  # by route
    duplicates: int = 0
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)  # by (route, reason)
    # not journalled nor acknowledged (left with the push service), by (route, reason)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    replays: dict[str, int] = field(default_factory=dict)  # repeated record salts, by route
    expired: dict[str, int] = field(default_factory=dict)  # by route (ingest or queue)
    dead_letters: dict[str, int] = field(default_factory=dict)  # by reason
    # push message URLs of `delivered`-policy messages whose ack became owed without the router
    # (dropped from a full queue): the router hands them to on_ack.
    released_acks: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        """True when nothing happened."""
        return not (
            self.journalled
            or self.duplicates
            or self.dropped
            or self.refused
            or self.replays
            or self.expired
            or self.dead_letters
            or self.released_acks
        )

    def merge(self, other: StoreCounts) -> None:
        """Add ``other`` into this one."""
        for route, n in other.journalled.items():
            self.journalled[route] = self.journalled.get(route, 0) + n
        self.duplicates += other.duplicates
        for key, n in other.dropped.items():
            self.dropped[key] = self.dropped.get(key, 0) + n
        for key, n in other.refused.items():
            self.refused[key] = self.refused.get(key, 0) + n
        for route, n in other.replays.items():
            self.replays[route] = self.replays.get(route, 0) + n
        for route, n in other.expired.items():
            self.expired[route] = self.expired.get(route, 0) + n
        for reason, n in other.dead_letters.items():
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + n
        self.released_acks.extend(other.released_acks)


@dataclass(frozen=True)
class QueueUsage:
    """One route's journal: undelivered messages, their bytes, the last arrival."""

    messages: int
    bytes: int
    last_received_at: float | None


def target_key(index: int, target: TargetConfig) -> str:
    """A target's stable name inside its route: position and adapter (``"0:mqtt"``).

    Pending deliveries are stored under it, so reordering a route's ``deliver`` list in the
    configuration moves queues between targets; adding a target at the end does not.
    """
    return f"{index}:{target.adapter}"


def target_keys(route: RouteConfig) -> tuple[str, ...]:
    """The keys of every target of ``route``, in order: what its journal rows list."""
    return tuple(target_key(index, target) for index, target in enumerate(route.deliver))
