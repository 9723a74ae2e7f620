"""What a protocol connection and the upstream core say to each other (frozen values, one
protocol each way): whatever the wire protocol, a message arrives as :class:`Pushed`, a
subscription comes back as :class:`NewSubscription`, an acknowledgement goes out as
:class:`Ack`, and a connection ends with :class:`Ended`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from gateway.config import RouteConfig
from gateway.store_types import SubscriptionRecord

Headers = tuple[tuple[str, str], ...]

# What the upstream side remembers in the journal besides subscriptions (Store.upstream_value):
# the push service the subscriptions belong to, and the autopush identity (a secret).
SERVICE_KEY = "service"
UAID_KEY = "autopush.uaid"
UAID_SINCE_KEY = "autopush.uaid_since"
# Facts that belong to one push service, forgotten when [push] service names another.
SERVICE_STATE_KEYS = (UAID_KEY, UAID_SINCE_KEY)


class AckCode(IntEnum):
    """Why a message is acknowledged (autopush sends the code; RFC 8030's DELETE has none)."""

    # autopush-rs autoconnect-common protocol.rs ClientAck codes.
    TAKEN = 100  # journalled, expired or a duplicate: the gateway has it
    UNDECRYPTABLE = 101  # dead-lettered because it could not be decrypted
    REFUSED = 102  # dead-lettered for another reason (too large, unknown subscription, ...)


@dataclass(frozen=True)
class Ack:
    """One acknowledgement owed upstream."""

    key: str  # the message's identity: RFC 8030's push message URL, autopush's channel/version
    code: AckCode = AckCode.TAKEN


@dataclass(frozen=True)
class Pushed:
    """A message as a connection received it, before anything was decided about it."""

    key: str  # acknowledges and deduplicates it (see Ack.key)
    push_url: str | None  # the push resource it was sent to (None: unknown, see monitor_url)
    monitor_url: str | None  # the set (or subscription) whose monitor received it
    headers: Headers
    body: bytes
    content_encoding: str | None
    refused: str | None = None  # the protocol refused it: "too_large", "bad_status", ...
    detail: str = ""  # why, for the log (no secrets)


@dataclass(frozen=True)
class NewSubscription:
    """The service created a subscription (RFC 8030 §4) or registered a channel (autopush)."""

    subscription_url: str  # what unsubscribes it (autopush: the channel id)
    push_url: str  # the push resource application servers send to
    set_url: str | None  # the set it joined, if any


@dataclass(frozen=True)
class SubscribeFailed:
    """The service did not create it; try again later (not before ``retry_after``)."""

    reason: str
    retry_after: float | None = None
    set_rejected: bool = False  # a 400 to a request that named a set: try without one


@dataclass(frozen=True)
class Ended:
    """Why a connection ended (the text goes to the log and the status page)."""

    reason: str
    retry_after: float | None = None  # the service asked us to wait at least this long
    goaway: bool = False  # the service moved us: the next connection opens at once
    established: bool = False  # it worked (the service answered and we were set up)
    do_not_reconnect: bool = False  # the service asked not to come back soon (autopush 4774)


class Connection(Protocol):
    """One connection to a push service, as the upstream core uses it."""

    @property
    def usable(self) -> bool:
        """True while new requests (subscriptions, acknowledgements) may be sent on it."""
        ...

    def send_acks(self, acks: Sequence[Ack]) -> None:
        """Put acknowledgements on the wire; their results come back through the hub."""
        ...

    async def subscribe(
        self, route: RouteConfig, known: Sequence[SubscriptionRecord]
    ) -> NewSubscription | SubscribeFailed:
        """Create a subscription for ``route`` (``known``: the subscriptions there are)."""
        ...

    async def unsubscribe(self, record: SubscriptionRecord) -> bool:
        """Remove a subscription; True once the service no longer has it."""
        ...


class Hub(Protocol):
    """What a connection reports to the upstream core."""

    def pushed(self, message: Pushed) -> None:
        """A message arrived (complete, or refused by the protocol)."""
        ...

    def acked(self, key: str, ok: bool) -> None:
        """An acknowledgement finished: ``ok`` when the service no longer holds the message."""
        ...

    async def attach(self, connection: Connection) -> None:
        """The service answered: owed acknowledgements go out, subscriptions are synced."""
        ...

    def connected(self, connection: Connection, detail: str) -> None:
        """Set up and serving (``detail`` for the log: no secrets)."""
        ...

    def detach(self, connection: Connection, unsent: Sequence[str] = ()) -> None:
        """No new requests on ``connection`` (GOAWAY); ``unsent``: acknowledgements given to
        it that the service never saw, to go out on the next connection."""
        ...

    def closed(self, connection: Connection) -> None:
        """``connection`` is closed; what it did not answer goes to the next one."""
        ...

    def records(self) -> Sequence[SubscriptionRecord]:
        """Every subscription there is now."""
        ...

    async def lost(self, which: Callable[[SubscriptionRecord], bool], reason: str) -> None:
        """The service dropped these subscriptions (an expired set, a new uaid): forget them
        and create new ones on the current connection."""
        ...
