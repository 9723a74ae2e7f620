"""What a WebSocket session needs from the service that accepted it (a protocol, so that the
session module does not import the service module), and the service's counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pushservice.autopush.settings import AutopushSettings
from pushservice.autopush.state import AutopushState, User

S = TypeVar("S")


@dataclass
class Counters:
    """What happened since start (the double's own bookkeeping, for tests and the demo)."""

    connections: int = 0
    hellos: int = 0
    new_uaids: int = 0
    uaid_resets: int = 0  # hellos with a uaid we did not know: answered with a new one
    registers: int = 0
    unregisters: int = 0
    accepted: int = 0  # 201 answers to application servers
    stored: int = 0  # accepted for a uaid that was not connected
    delivered_direct: int = 0
    delivered_stored: int = 0  # stored messages sent (redeliveries included)
    acked: int = 0
    acked_with_error: int = 0  # acks with code 101 or 102
    nacks: int = 0
    expired: int = 0  # stored messages whose TTL ran out
    dropped_ttl0: int = 0  # TTL 0 for a uaid that was not connected
    rejected: int = 0  # 4xx answers to application servers
    msg_limit_resets: int = 0
    users_dropped: int = 0
    pong_timeouts: int = 0
    excessive_pings: int = 0
    acks_ignored: int = 0  # read and dropped while ignore_acks is set (a fault for tests)


class SessionHost(Protocol[S]):
    """The service as one of its sessions (of type ``S``) sees it."""

    settings: AutopushSettings
    state: AutopushState
    counters: Counters
    clock: Callable[[], float]
    sessions: dict[str, S]  # identified sessions by uaid
    ignore_acks: bool

    def lookup_user(self, uaid: str | None, now: float) -> User | None:
        """A live user record, or None."""
        ...

    def drop_user(self, uaid: str) -> None:
        """Forget a uaid and its channels and messages."""
        ...

    def mint_endpoint(self, uaid: str, channel_id: str, raw_key: bytes | None) -> str:
        """A push endpoint for a new channel."""
        ...
