"""The upstream supervisor: one connection to the push service at a time, kept alive.

:class:`Upstream` opens a connection for the protocol the service URL names (``https://``:
RFC 8030 over HTTP/2; ``wss://``: autopush), and when it ends opens the next one:

* at once after GOAWAY (the old one drains beside the new one);
* after a short, jittered delay when the connection had worked (the backoff starts afresh: an
  outage after hours of service must not wait for the window of the last outage);
* after an exponential, fully jittered backoff that grows only over attempts that failed,
  never before a ``Retry-After``.

It is also the :class:`~gateway.upstream.contract.Hub` of its connections: it hands their
messages to the journal writer, their acknowledgements to the owner of acknowledgements, their
subscription work to the owner of subscriptions; and it reports the upstream side's status.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import trio

from adapters.base import Message
from fieldgate_common.backoff import Backoff
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Metrics
from gateway.config import Config, is_websocket_service
from gateway.ingest import Ingestor
from gateway.routes import CurrentRoutes
from gateway.status_model import AutopushSnapshot, UpstreamSnapshot
from gateway.store import CarriedAcks, CarriedResolutions, Store, SubscriptionRecord
from gateway.upstream.acks import Acknowledgements
from gateway.upstream.contract import UAID_SINCE_KEY, Ack, Connection, Ended, Pushed
from gateway.upstream.instruments import AutopushStats, UpstreamInstruments
from gateway.upstream.journal import JournalWriter, Observer
from gateway.upstream.subscriptions import Subscriptions
from gateway.webpush.crypto import PushSubscriptionInfo

log = get_logger("upstream")

__all__ = ["Observer", "Upstream", "UpstreamStatus"]

State = Literal["starting", "connecting", "connected", "backoff", "stopped"]
# The service asked not to be reconnected to automatically (autopush close code 4774): come back
# no sooner than this, with the reason on the status page.
DO_NOT_RECONNECT_DELAY = 3600.0


class RunnableConnection(Connection, Protocol):
    """A connection as the supervisor runs it."""

    replace_wanted: trio.Event
    ended: Ended | None

    async def run(self) -> None:
        """Connect and serve until the connection ends (never raises for network trouble)."""
        ...


class UpstreamStatus:
    """What the status endpoint shows about the upstream side (mutated by :class:`Upstream`)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.state: State = "starting"
        self.since = time.time()
        self.last_error: str | None = None
        self.connections = 0

    def set_state(self, state: State, error: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error


class Upstream:
    """Keeps the gateway subscribed and connected; journals and acknowledges what arrives."""

    def __init__(
        self,
        config: Config,
        routes: CurrentRoutes,
        store: Store,
        metrics: Metrics,
        *,
        on_journalled: Callable[[Sequence[Message]], None] = lambda messages: None,
        on_counted: Callable[[], None] = lambda: None,
        carry: Callable[[], CarriedResolutions | None] = lambda: None,
        observer: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.push = config.push
        self.store = store
        self._rng = rng or random.Random()
        self.status = UpstreamStatus(self.push.service)
        self.m = UpstreamInstruments.register(metrics)
        ingestor = Ingestor(store.subscriptions(), max_body=self.push.max_message_bytes)
        self.acks = Acknowledgements(store.pending_acks())
        self.journal = JournalWriter(
            store,
            routes,
            ingestor,
            self.acks,
            self.m,
            on_journalled=on_journalled,
            on_counted=on_counted,
            carry=carry,
            observer=observer,
            rng=self._rng,
        )
        self.subscriptions = Subscriptions(
            store,
            routes,
            ingestor,
            self.m,
            ca_file=self.push.ca_file,
            backoff_base=self.push.backoff_base,
            backoff_cap=self.push.backoff_cap,
            healthy_after=self.push.healthy_after,
            rng=self._rng,
        )
        self._connection: RunnableConnection | None = None
        self.autopush_stats = AutopushStats()

    # ------------------------------------------------------------------------- public API

    @property
    def observer(self) -> Observer | None:
        """Told as messages move (the demo, tests); see :data:`~.journal.Observer`."""
        return self.journal.observer

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        self.journal.observer = observer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the supervisor, the journal writer, the subscriptions."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.journal.run)
            nursery.start_soon(self.subscriptions.run)
            nursery.start_soon(self.subscriptions.run_distributor)
            task_status.started()
            await self.subscriptions.adopt_service(self.push.service)
            try:
                await self._supervise(nursery)
            finally:
                self.status.set_state("stopped")

    def acknowledge(self, keys: Sequence[str]) -> None:
        """These messages may be acknowledged now (the router's ``delivered`` confirmations)."""
        self.acks.owe(Ack(key) for key in keys)
        self.m.acks_owed.set(self.acks.owed)

    def carry_acks(self) -> CarriedAcks | None:
        """Confirmed acknowledgements for the router's record of deliveries to take along
        (see :meth:`JournalWriter.carry_acks`)."""
        return self.journal.carry_acks()

    def committed_elsewhere(self) -> None:
        """The router committed to the journal: a checkpoint that commit made due waits for a quiet
        moment (see :meth:`JournalWriter.committed_elsewhere`)."""
        self.journal.committed_elsewhere()

    def reconfigure(self) -> None:
        """The route table was replaced ([push] stays): subscribe new routes, unsubscribe
        removed ones, on the connection that is already open; distribute."""
        self.subscriptions.reconfigured()

    def subscription_infos(self) -> dict[str, PushSubscriptionInfo]:
        """Each subscribed route's W3C PushSubscription."""
        return self.subscriptions.infos()

    def snapshot(self) -> UpstreamSnapshot:
        """The upstream side's state for the status document."""
        status = self.status
        autopush = None
        if is_websocket_service(self.push.service):
            stats = self.autopush_stats
            since = self.store.upstream_value(UAID_SINCE_KEY)
            autopush = AutopushSnapshot(
                uaid_since=float(since) if since else None,
                channels=len(self.subscriptions.records()),
                last_hello_at=stats.last_hello_at,
                notifications=stats.notifications,
                uaid_resets=stats.uaid_resets,
            )
        return UpstreamSnapshot(
            state="connecting" if status.state == "starting" else status.state,
            since=status.since,
            service=status.service,
            last_error=status.last_error,
            last_message_at=self.journal.last_message_at,
            protocol="autopush" if autopush is not None else "rfc8030",
            autopush=autopush,
        )

    def problem(self) -> str | None:
        """Why the upstream side is not doing its job (None when it is)."""
        if self.journal.problem is not None:
            return self.journal.problem
        if self.status.state != "connected":
            reason = self.status.last_error or self.status.state
            return f"push service {self.status.state}: {reason}"
        return None

    # -------------------------------------------------------------------------- supervisor

    def _connect(self) -> RunnableConnection:
        """A connection for the protocol the service URL's scheme names."""
        if is_websocket_service(self.push.service):
            from gateway.upstream.autopush import WebSocketConnection

            return WebSocketConnection(
                self.push, self, self.m, self.store, self.autopush_stats, rng=self._rng
            )
        from gateway.upstream.rfc8030 import Http2Connection

        return Http2Connection(self.push, self, self.m, rng=self._rng)

    async def _supervise(self, nursery: trio.Nursery) -> None:
        backoff = Backoff(self.push.backoff_base, self.push.backoff_cap, rng=self._rng)
        while True:
            connection = self._connect()
            self._connection = connection
            self.status.set_state("connecting")
            if self.status.connections:
                self.m.reconnects.inc()
            self.status.connections += 1
            nursery.start_soon(connection.run)
            await connection.replace_wanted.wait()
            self.m.connected.set(0)
            ended = connection.ended or Ended("connection ended")
            if ended.goaway:
                # The service is moving us: the next connection opens now, this one drains.
                log.info("opening the next connection (the service moved us)")
                backoff.reset()
                continue
            if ended.established:
                # It worked: start the backoff afresh, the first retry comes within one base
                # window (jittered, so a fleet that lost the service together spreads out).
                backoff.reset()
            if ended.do_not_reconnect:
                delay = max(DO_NOT_RECONNECT_DELAY, ended.retry_after or 0.0)
            else:
                delay = backoff.next_delay(ended.retry_after)
            self.status.set_state("backoff", ended.reason)
            log.warning("connection ended (%s); reconnecting in %.1f s", ended.reason, delay)
            await trio.sleep(delay)

    # ------------------------------------------------------------------------------- hub

    def pushed(self, message: Pushed) -> None:
        """A connection received a message."""
        self.journal.take(message)

    def acked(self, key: str, ok: bool) -> None:
        """A connection finished an acknowledgement."""
        self.acks.done(key, ok)
        if ok:
            self.m.acked.inc()
            if self.journal.observer is not None:
                self.journal.observer("acknowledged", key, None)
            self.journal.acks_finished()
        self.m.acks_owed.set(self.acks.owed)

    async def attach(self, connection: Connection) -> None:
        """The service answered: owed acknowledgements go out first, then subscriptions."""
        self.acks.attach(connection)
        await self.subscriptions.sync(connection)

    def connected(self, connection: Connection, detail: str) -> None:
        """The connection is set up and serving."""
        if connection is not self._connection:
            return
        self.status.set_state("connected")
        self.m.connected.set(1)
        log.info("connected to the push service, %s", detail)

    def detach(self, connection: Connection, unsent: Sequence[str] = ()) -> None:
        """No new requests on ``connection``."""
        self.acks.detach(connection, unsent)
        self.subscriptions.detach(connection)

    def closed(self, connection: Connection) -> None:
        """``connection`` is closed: what it did not answer goes to the next one."""
        self.subscriptions.detach(connection)
        self.acks.ended(connection)
        self.m.acks_owed.set(self.acks.owed)

    def records(self) -> Sequence[SubscriptionRecord]:
        """Every subscription there is now."""
        return self.subscriptions.records()

    async def lost(self, which: Callable[[SubscriptionRecord], bool], reason: str) -> None:
        """The service dropped subscriptions: create them again."""
        await self.subscriptions.lost(which, reason)
