"""The typed contract between the gateway's parts and its status document.

Each part reports what it knows as a frozen snapshot: the router per route
(:class:`RouteDelivery`), the upstream connection (:class:`UpstreamSnapshot`), the adapters
(:class:`adapters.base.Health`). :class:`StatusSnapshot` gathers them and
:func:`gateway.status_schema.status_document` alone turns it into the ``/status`` JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from adapters.base import Health


@dataclass(frozen=True)
class TargetDelivery:
    """One target of a route, as its router worker sees it."""

    key: str  # "0:site-broker"
    adapter: str
    last_delivery_at: float | None
    last_error: str | None
    retrying: int  # attempts on the message at the head of its queue


@dataclass(frozen=True)
class RouteDelivery:
    """One route's journal and deliveries."""

    queue_messages: int
    queue_bytes: int
    last_message_at: float | None  # the newest undelivered message's arrival
    last_delivery_at: float | None  # the latest confirmation by any of its targets
    last_error: str | None
    targets: tuple[TargetDelivery, ...] = ()


@dataclass(frozen=True)
class AutopushSnapshot:
    """The autopush side (a ``wss://`` service): the uaid is a secret, only its age shows."""

    uaid_since: float | None  # when the service assigned the current uaid
    channels: int
    last_hello_at: float | None
    notifications: int  # received since the gateway started
    uaid_resets: int  # times the service dropped the uaid since the gateway started


@dataclass(frozen=True)
class UpstreamSnapshot:
    """The connection to the push service."""

    state: str  # "connecting", "connected", "backoff", "stopped"
    since: float
    service: str
    last_error: str | None
    last_message_at: float | None
    protocol: str = "rfc8030"  # or "autopush"
    autopush: AutopushSnapshot | None = None


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """One route's push subscription (capability URLs: see the status document's rules)."""

    route: str
    push_resource: str
    monitored: str  # the set URL, or the subscription URL when it is in no set
    created_at: float


@dataclass(frozen=True)
class RouteSnapshot:
    """A configured route with its deliveries."""

    name: str
    ack: str
    targets: tuple[str, ...]  # adapter names
    delivery: RouteDelivery


@dataclass(frozen=True)
class AdapterSnapshot:
    """A configured adapter with its health."""

    name: str
    type: str
    health: Health


@dataclass(frozen=True)
class StatusSnapshot:
    """Everything the status document shows, gathered at one moment."""

    now: float
    version: str
    uptime: float
    upstream: UpstreamSnapshot
    routes: tuple[RouteSnapshot, ...]
    subscriptions: tuple[SubscriptionSnapshot, ...]
    adapters: tuple[AdapterSnapshot, ...]
    counters: Mapping[str, float] = field(default_factory=dict)
