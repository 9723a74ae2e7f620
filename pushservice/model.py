"""The resources of RFC 8030 as plain frozen records (no I/O, no clocks)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import IntEnum

from pushservice.settings import CAPABILITY_TOKEN_BYTES

# RFC 8030 §6.2 / §6.3 receipt statuses.
RECEIPT_ACKED = 204
RECEIPT_GONE = 410


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


@dataclass(frozen=True)
class Subscription:
    """A push message subscription: ``id`` is the UA's capability, ``push_id`` the AS's."""

    id: str
    push_id: str
    set_id: str
    vapid_key: bytes | None
    created: float


@dataclass(frozen=True)
class NewMessage:
    """A message an application server pushed, before the store accepted it."""

    id: str
    sub_id: str
    push_id: str
    set_id: str
    body: bytes
    content_encoding: str | None
    urgency: Urgency
    topic: str | None
    created: float
    expires: float
    receipt_id: str | None


@dataclass(frozen=True)
class Message(NewMessage):
    """A stored push message; ``seq`` orders messages in the order the store accepted them."""

    seq: int

    def remaining_ttl(self, now: float) -> int:
        """Whole seconds left before expiry (never negative)."""
        return max(0, int(self.expires - now))


@dataclass(frozen=True)
class ReceiptEvent:
    """One delivery receipt: 204 acknowledged, 410 given up (RFC 8030 §6.2, §6.3)."""

    receipt_id: str
    message_id: str
    status: int
    seq: int
