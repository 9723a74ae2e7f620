"""The resources of RFC 8030 as plain records (no I/O, no clocks)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import IntEnum

from pushservice.settings import CAPABILITY_TOKEN_BYTES


class Urgency(IntEnum):
    """RFC 8030 §5.3 urgency, ordered very-low < low < normal < high."""

    VERY_LOW = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3

    @classmethod
    def parse(cls, text: str) -> Urgency:
        """Parse one urgency-option; ValueError if it is not one."""
        try:
            return _URGENCY_BY_NAME[text.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown urgency {text!r}") from None

    @property
    def label(self) -> str:
        """The header value for this urgency."""
        return self.name.lower().replace("_", "-")


_URGENCY_BY_NAME = {u.label: u for u in Urgency}


def new_token() -> str:
    """A capability token: 192 random bits, URL-safe (RFC 8030 §8 asks for >= 120)."""
    return secrets.token_urlsafe(CAPABILITY_TOKEN_BYTES)


@dataclass
class Subscription:
    """A push message subscription: ``id`` is the UA's capability, ``push_id`` the AS's."""

    id: str
    push_id: str
    set_id: str
    vapid_key: bytes | None
    created: float


@dataclass
class SubscriptionSet:
    """A push message subscription set; ``joinable`` False makes subscribe with it 400."""

    id: str
    members: set[str] = field(default_factory=set)
    joinable: bool = True


@dataclass
class Message:
    """A stored push message. ``pushed_at`` is when it was last pushed to a monitor."""

    id: str
    sub_id: str
    body: bytes
    content_encoding: str | None
    urgency: Urgency
    topic: str | None
    created: float
    expires: float
    receipt_id: str | None
    pushed_at: float | None = None
    # The connection it was last pushed on (not persisted): a new monitor on that same
    # connection does not get it again while it is in flight.
    pushed_on: object | None = field(default=None, compare=False, repr=False)

    def remaining_ttl(self, now: float) -> int:
        """Whole seconds left before expiry (never negative)."""
        return max(0, int(self.expires - now))


@dataclass
class ReceiptEvent:
    """One delivery receipt: 204 acknowledged, 410 given up (RFC 8030 §6.2, §6.3)."""

    message_id: str
    status: int
    pushed: bool = False


@dataclass
class ReceiptSubscription:
    """A receipt subscription collects receipts for the messages that named it."""

    id: str
    events: list[ReceiptEvent] = field(default_factory=list)
