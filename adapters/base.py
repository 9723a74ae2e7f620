"""The interface every device transport implements.

An adapter moves one message to one target and says what happened; it keeps no durability of its
own (the store does), so anything it has not confirmed will be offered again.

Lifetime follows trio's structured concurrency: the router starts an adapter with
``await nursery.start(adapter.run)`` (``run`` calls ``task_status.started()`` once it accepts
deliveries, even while its device or broker is still unreachable) and stops it by cancelling that
nursery. ``deliver`` may be called concurrently for different targets; the router never has more
than one delivery in flight per target.

Each adapter kind owns its configuration (``adapters/<kind>_config.py``: the settings and target
dataclasses, their schema and checks) and is registered in :mod:`adapters.registry`.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Literal

import trio

PayloadForm = Literal["raw", "envelope"]


# The message ids a device running firmware-bridge remembers for duplicate suppression
# (FB_DEDUPE_SLOTS in firmware-bridge/src/fieldgate_bridge.h): the repeats a crash may cause
# per target.
DEVICE_REPEAT_WINDOW = 8


@dataclass(frozen=True)
class AdapterConfig:
    """The settings of one ``[adapters.NAME]`` table; each kind subclasses it (``type`` set)."""

    name: str

    @property
    def type(self) -> str:
        """The kind's name (``"mqtt"``): each kind's settings class defines it as a field."""
        raise NotImplementedError


@dataclass(frozen=True)
class TargetConfig:
    """One ``deliver`` entry of a route: the adapter it names and that kind's options."""

    adapter: str
    payload: PayloadForm = "raw"  # the body as sent, or the msgpack envelope around it


@dataclass(frozen=True)
class Message:
    """A decrypted, journalled message on its way to the devices of one route."""

    id: str  # stable across restarts and redeliveries (the journal's id)
    route: str
    body: bytes
    received_at: float  # Unix time the gateway received it
    expires_at: float | None  # Unix time after which it must never reach a device
    content_type: str | None = None

    def remaining_lifetime(self, now: float | None = None) -> float | None:
        """Seconds until expiry (negative once expired); ``None`` when it never expires."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def expired(self, now: float, *, margin: float = 0.0) -> bool:
        """Whether the deadline has passed (or is closer than ``margin`` seconds).

        The one test of a message's deadline: the router asks it before every attempt and an
        adapter asks it as the last thing before the bytes go out. The deadline itself is
        decided on arrival (``gateway.policy``); nobody downstream computes another.
        """
        return self.expires_at is not None and self.expires_at - margin <= now


@dataclass(frozen=True)
class Delivered:
    """The target confirmed the message (PUBACK, the device's application ACK, ...)."""

    detail: str = ""


@dataclass(frozen=True)
class RetryLater:
    """Not delivered this time; the router retries with backoff (``after`` is a floor)."""

    reason: str
    after: float | None = None


@dataclass(frozen=True)
class Rejected:
    """The target refused the message for good; it goes to the dead letters with ``reason``."""

    reason: str


@dataclass(frozen=True)
class Expired:
    """The deadline passed before the message could go out: never sent, counted as expired."""

    detail: str = ""


Outcome = Delivered | RetryLater | Rejected | Expired


class Confirmation(abc.ABC):
    """A message sent and not yet confirmed: :meth:`outcome` waits for the transport's answer."""

    @abc.abstractmethod
    async def outcome(self) -> Outcome:
        """The confirmation (call once)."""


@dataclass(frozen=True)
class Settled(Confirmation):
    """A confirmation already known (the transport answered at once, or refused to send)."""

    value: Outcome

    async def outcome(self) -> Outcome:
        return self.value


@dataclass(frozen=True)
class Health:
    """What an adapter reports about itself for the status endpoint."""

    ok: bool
    state: str  # e.g. "connected", "connecting", "port missing"
    detail: str = ""
    since: float = field(default_factory=time.time)
    counters: dict[str, int] = field(default_factory=dict)


class Adapter(abc.ABC):
    """One configured transport instance (``[adapters.NAME]``)."""

    name: str

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection (reconnects included) until cancelled."""

    @abc.abstractmethod
    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        """Deliver ``message`` to ``target`` and wait for the transport's confirmation."""

    def repeat_window(self, target: TargetConfig) -> int:
        """How many confirmed deliveries to ``target`` a crash may repeat: the router never
        lets more wait to be recorded in the journal, so a receiver that suppresses repeats by
        message id and remembers this many ids sees none.

        :data:`DEVICE_REPEAT_WINDOW` (the default): what the C library's devices remember.
        """
        return DEVICE_REPEAT_WINDOW

    def repeat_scope(self, target: TargetConfig) -> str | None:
        """Which targets share one receiver's memory of message ids, and so one
        :meth:`repeat_window`: targets of this adapter with the same scope count their
        unrecorded confirmations together; None, the target's own.

        The default, one scope for the whole adapter: a serial port is one device, which
        remembers its last ids whichever route they came by.
        """
        return ""

    def window(self, target: TargetConfig) -> int:
        """How many messages to ``target`` may be sent before the first is confirmed.

        1 (the default): one at a time, as a stop-and-wait serial link must. More lets the
        router pipeline: it sends in order with :meth:`send` and awaits the confirmations
        concurrently (MQTT: the broker's Receive Maximum).
        """
        return 1

    async def send(self, message: Message, target: TargetConfig) -> Confirmation:
        """Put ``message`` on its way to ``target`` (in the order of the calls) and return
        its confirmation without waiting for it. The default delivers and waits."""
        return Settled(await self.deliver(message, target))

    @abc.abstractmethod
    def health(self) -> Health:
        """A snapshot of the adapter's state."""
