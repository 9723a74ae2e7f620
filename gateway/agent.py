"""The user agent's trio shell: one HTTP/2 connection to the push service, kept alive.

The protocol itself is :class:`~gateway.webpush.useragent.UserAgentProtocol` (sans-IO); this
module owns the socket, TLS, time and tasks:

* the **supervisor** (:meth:`Agent.run`) opens a connection, and when it fails opens the next one
  after an exponential, fully jittered backoff (``Retry-After`` honoured, reset after a healthy
  period); on GOAWAY the next connection opens at once while the old one finishes its streams;
* each **session** (:class:`_Session`) reads frames, writes what the protocol queues, pings when
  the line has been quiet for a keepalive interval (a dead path is found within two), makes sure
  every route is subscribed (in one set), monitors each set (``Prefer: wait=0`` first), and hands
  pushed messages to the committer;
* the **committer** journals every message that arrived together in one transaction (group
  commit) and only then queues their DELETEs: acknowledge after durability.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import trio

from fieldgate_common.backoff import Backoff
from fieldgate_common.logs import get_logger, redact_url
from fieldgate_common.metrics import Metrics
from gateway.config import Config, RouteConfig
from gateway.http1 import HttpError, client_ssl_context, is_loopback_host, post_json
from gateway.ingest import Ingestor
from gateway.policy import Admission, DeadLetter, admit
from gateway.routes import CurrentRoutes
from gateway.status_model import UpstreamSnapshot
from gateway.store import COMMIT_RETRY_BASE, COMMIT_RETRY_CAP, Store, StoreError, SubscriptionRecord
from gateway.webpush import useragent as ua
from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionKeys

log = get_logger("agent")

READ_CHUNK = 64 * 1024
# A connection that carried traffic this long counts as healthy (resets the backoff): from config.
# GOAWAY: how long the old connection may take to finish its streams once the next one is open.
GOAWAY_GRACE = 30.0
# Distribution of push resources: retried with backoff between these bounds until accepted.
DISTRIBUTE_BACKOFF_BASE = 5.0
DISTRIBUTE_BACKOFF_CAP = 3600.0
# Messages received but not yet committed, at most: beyond this they are left unacknowledged
# with the push service (which redelivers them), so a failing disk cannot exhaust memory.
MAX_UNCOMMITTED = 5000
# Push message URLs committed by this process that are remembered in memory, so that a
# redelivery skips decryption: a few MB at most, and redeliveries come soon after the original.
RECENT_MESSAGES = 10_000
# A held monitoring GET that ends sooner than this is suspicious: re-issued with backoff.
MIN_MONITOR_HOLD = 1.0
# Re-monitoring after a 5xx without Retry-After, and re-subscribing a route after a failure.
REQUEST_RETRY_FLOOR = 1.0

State = Literal["starting", "connecting", "connected", "backoff", "stopped"]


def describe(exc: BaseException) -> str:
    """A one-line reason for a network failure, with the root cause trio wraps inside."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        text = str(seen).strip()
        parts.append(f"{type(seen).__name__}: {text}" if text else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


# Called with (event, push message URL, journal message id) as a message moves: "received",
# "journalled", "duplicate", "dead_lettered", "refused", "expired", "acknowledged". For the demo
# and for tests; None costs nothing on the hot path.
Observer = Callable[[str, str, str | None], None]


class SessionEnded(Exception):
    """Why a connection ended (the text goes to the log and the status page)."""


@dataclass
class _Pending:
    """A request whose answer a task is waiting for."""

    done: trio.Event
    result: ua.Event | None = None


class AgentStatus:
    """What the status endpoint shows about the upstream side (mutated by the agent only)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.state: State = "starting"
        self.since = time.time()
        self.last_error: str | None = None
        self.connections = 0
        self.sets: set[str] = set()
        self.last_message_at: float | None = None

    def set_state(self, state: State, error: str | None = None) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error


class Agent:
    """Keeps the gateway subscribed and connected; journals and acknowledges what arrives."""

    def __init__(
        self,
        config: Config,
        routes: CurrentRoutes,
        store: Store,
        metrics: Metrics,
        *,
        on_journalled: Callable[[], None] = lambda: None,
        on_counted: Callable[[], None] = lambda: None,
        observer: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.push = config.push
        self.routes = routes
        self.store = store
        self.metrics = metrics
        self.on_journalled = on_journalled
        self.on_counted = on_counted
        self.observer = observer
        self._rng = rng or random.Random()
        parts = urlsplit(self.push.service)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.status = AgentStatus(self.push.service)
        self.ingestor = Ingestor(store.subscriptions(), max_body=self.push.max_message_bytes)
        self._session: _Session | None = None
        self._batch: list[Admission] = []
        self._acked: list[str] = []
        self._commit_wanted = trio.Event()
        self._owed_acks: list[str] = list(store.pending_acks())
        self._recent: OrderedDict[str, None] = OrderedDict()  # committed push message URLs
        self._subscribe_lock = trio.Lock()
        self._distribute_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_resubscribe: float | None = None
        self._resubscribe_backoff = Backoff(
            self.push.backoff_base, self.push.backoff_cap, rng=self._rng
        )
        self._register_metrics()

    def _register_metrics(self) -> None:
        m = self.metrics
        self.m_received = m.counter(
            "fieldgate_messages_received_total", "Pushed messages received", ["route"]
        )
        self.m_acked = m.counter(
            "fieldgate_messages_acknowledged_total",
            "Push messages acknowledged upstream (DELETE done)",
        )
        self.m_ack_failed = m.counter(
            "fieldgate_ack_failures_total", "DELETEs the push service did not accept"
        )
        self.m_dead = m.counter(
            "fieldgate_messages_poison_total",
            "Pushed messages dead-lettered on arrival",
            ["reason"],
        )
        self.m_reconnects = m.counter(
            "fieldgate_reconnects_total", "Connections to the push service opened after the first"
        )
        self.m_subscribes = m.counter(
            "fieldgate_subscriptions_created_total", "Push subscriptions created", ["route"]
        )
        self.m_commit_failed = m.counter(
            "fieldgate_journal_commit_failures_total", "Journal transactions that failed"
        )
        self.m_deferred = m.counter(
            "fieldgate_messages_deferred_total",
            "Pushed messages left unacknowledged because the journal was behind",
        )
        self.m_pushes_refused = m.counter(
            "fieldgate_pushes_refused_total",
            "Server pushes refused because too many were open at once",
        )
        self.m_connected = m.gauge(
            "fieldgate_upstream_connected", "1 while connected to the push service"
        )
        self.m_batch = m.histogram(
            "fieldgate_commit_batch_messages",
            "Messages per journal transaction (group commit)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )

    # ------------------------------------------------------------------------- public API

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the supervisor, the committer and the distributor."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._committer)
            nursery.start_soon(self._distributor)
            task_status.started()
            await self._supervise(nursery)

    def acknowledge(self, push_message_urls: Sequence[str]) -> None:
        """Queue DELETEs (the router calls this for `delivered`-policy messages)."""
        session = self._session
        if session is not None and session.usable:
            session.acknowledge(push_message_urls)
        else:
            self._owed_acks.extend(push_message_urls)

    def reconfigure(self) -> None:
        """The route table was replaced ([push] stays): subscribe new routes, unsubscribe
        removed ones, on the connection that is already open."""
        self._distribute_wanted.set()
        session = self._session
        if session is not None and session.usable and session._nursery is not None:
            session._nursery.start_soon(session._guarded, session._sync_subscriptions)

    def snapshot(self) -> UpstreamSnapshot:
        """The connection's state for the status document."""
        status = self.status
        return UpstreamSnapshot(
            state="connecting" if status.state == "starting" else status.state,
            since=status.since,
            service=status.service,
            last_error=status.last_error,
            last_message_at=status.last_message_at,
        )

    def subscription_infos(self) -> dict[str, PushSubscriptionInfo]:
        """Each subscribed route's W3C PushSubscription."""
        infos: dict[str, PushSubscriptionInfo] = {}
        for record in self.store.subscriptions():
            keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
            infos[record.route] = PushSubscriptionInfo(
                record.push_url, keys.p256dh, keys.auth_secret
            )
        return infos

    # -------------------------------------------------------------------------- supervisor

    async def _supervise(self, nursery: trio.Nursery) -> None:
        backoff = Backoff(self.push.backoff_base, self.push.backoff_cap, rng=self._rng)
        while True:
            session = _Session(self)
            self._session = session
            self.status.set_state("connecting")
            if self.status.connections:
                self.m_reconnects.inc()
            self.status.connections += 1
            nursery.start_soon(session.run)
            await session.replace_wanted.wait()
            self.m_connected.set(0)
            if session.goaway:
                # The service is moving us: the next connection opens now, this one drains.
                log.info("GOAWAY from the push service: opening the next connection")
                backoff.reset()
                continue
            if session.healthy_since is not None and (
                time.monotonic() - session.healthy_since >= self.push.healthy_after
            ):
                backoff.reset()
            delay = backoff.next_delay(session.retry_after)
            self.status.set_state("backoff", session.error)
            log.warning("connection ended (%s); reconnecting in %.1f s", session.error, delay)
            await trio.sleep(delay)

    # --------------------------------------------------------------------------- committer

    def _enqueue(self, incoming: Admission) -> None:
        if len(self._batch) >= MAX_UNCOMMITTED:
            # The journal cannot keep up (or the disk is failing): leave the message with the
            # push service, which redelivers what we did not acknowledge.
            self.m_deferred.inc()
            return
        self._batch.append(incoming)
        self._commit_wanted.set()

    def _acked_upstream(self, url: str) -> None:
        self._acked.append(url)
        self._commit_wanted.set()

    async def _committer(self) -> None:
        # Everything that arrived while the previous transaction ran goes in the next one: the
        # batch grows with the load, and so the fsync cost per message shrinks with it.
        backoff = Backoff(COMMIT_RETRY_BASE, COMMIT_RETRY_CAP, rng=self._rng)
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            batch, self._batch = self._batch, []
            acked, self._acked = self._acked, []
            if not batch and not acked:
                continue
            try:
                # One transaction, so one fsync, for the acks recorded and the batch journalled.
                results = await trio.to_thread.run_sync(
                    partial(self.store.ingest, batch, acked=acked)
                )
            except (sqlite3.Error, OSError, StoreError) as exc:
                # Disk full, a locked or failing card: nothing was acknowledged, so nothing is
                # lost; keep the batch and try again. The service redelivers meanwhile.
                self._batch[:0] = batch
                self._acked[:0] = acked
                self.m_commit_failed.inc()
                delay = backoff.next_delay()
                self.status.last_error = f"journal: {exc}"
                log.error("journal commit failed (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
                self._commit_wanted.set()
                continue
            backoff.reset()
            if not batch:
                continue
            self.m_batch.observe(len(batch))
            for result in results:
                self._recent[result.push_message_url] = None
            while len(self._recent) > RECENT_MESSAGES:
                self._recent.popitem(last=False)
            if self.observer is not None:
                for result in results:
                    self.observer(result.status, result.push_message_url, result.message_id)
            ack_now = [r.push_message_url for r in results if r.ack_now]
            if ack_now:
                self.acknowledge(ack_now)
            if any(r.status == "journalled" for r in results):
                self.on_journalled()
            else:
                self.on_counted()  # duplicates, dead letters, drops: only the counters moved

    # ------------------------------------------------------------------------- distributor

    async def _distributor(self) -> None:
        backoff = Backoff(DISTRIBUTE_BACKOFF_BASE, DISTRIBUTE_BACKOFF_CAP, rng=self._rng)
        while True:
            await self._distribute_wanted.wait()
            self._distribute_wanted = trio.Event()
            routes = {r.name: r for r in self.routes.table}
            pending = [
                rec
                for rec in self.store.subscriptions()
                if rec.distributed_at is None
                and routes.get(rec.route) is not None
                and routes[rec.route].distribute_url
            ]
            failed = False
            for record in pending:
                if not await self._distribute(routes[record.route], record):
                    failed = True
            if failed:
                await trio.sleep(backoff.next_delay())
                self._distribute_wanted.set()
            else:
                backoff.reset()

    async def _distribute(self, route: RouteConfig, record: SubscriptionRecord) -> bool:
        assert route.distribute_url
        keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
        info = PushSubscriptionInfo(record.push_url, keys.p256dh, keys.auth_secret)
        body = json.dumps(info.to_json()).encode()
        try:
            response = await post_json(route.distribute_url, body, ca_file=self.push.ca_file)
        except HttpError as exc:
            log.warning("route %s: distributing its push resource failed: %s", route.name, exc)
            return False
        if not 200 <= response.status < 300:
            log.warning(
                "route %s: %s answered %d to its push resource",
                route.name,
                urlsplit(route.distribute_url).netloc,
                response.status,
            )
            return False
        current = self.ingestor.record(route.name)
        if current is not None and current.push_url == record.push_url:
            updated = replace(current, distributed_at=time.time())
            await trio.to_thread.run_sync(self.store.save_subscription, updated)
            self.ingestor.add(updated)
        log.info("route %s: push resource distributed", route.name)
        return True

    # ---------------------------------------------------------------------- subscriptions

    def known_set(self) -> str | None:
        """The set the routes are collected in (the first one, when the service made several)."""
        for record in self.store.subscriptions():
            if record.set_url:
                return record.set_url
        return None

    async def _save(self, record: SubscriptionRecord) -> None:
        await trio.to_thread.run_sync(self.store.save_subscription, record)
        self.ingestor.add(record)
        self.m_subscribes.inc(route=record.route)
        if record.distributed_at is None:
            self._distribute_wanted.set()


class _Session:
    """One HTTP/2 connection and the tasks that serve it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.push = agent.push
        self.proto = ua.UserAgentProtocol(agent.origin, max_body=agent.push.max_message_bytes)
        self.replace_wanted = trio.Event()
        self.goaway = False
        self.error: str | None = None
        self.retry_after: float | None = None
        self.healthy_since: float | None = None
        self._closed = False
        self._wake_writer = trio.Event()
        self._pending: dict[int, _Pending] = {}
        self._last_received = time.monotonic()
        self._frames_seen = 0
        self._pong = trio.Event()
        self._monitors: dict[int, str] = {}
        self._monitor_started: dict[int, tuple[float, bool]] = {}
        self._quick_monitor_ends: dict[str, Backoff] = {}
        self._pushes_refused_seen = 0
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._drained = trio.Event()
        self._flushed = trio.Event()
        self._established = trio.Event()
        self._closing = False

    @property
    def usable(self) -> bool:
        """True while new requests may be sent here."""
        return not self._closed and not self.goaway

    def acknowledge(self, urls: Sequence[str]) -> None:
        for url in urls:
            request_id = self.proto.acknowledge(url)
            self._pending[request_id] = _Pending(trio.Event())
        self._flush()

    def _flush(self) -> None:
        self._wake_writer.set()

    def _end(self, error: str, *, retry_after: float | None = None) -> None:
        if self.error is None:
            self.error = error
        if retry_after is not None:
            self.retry_after = retry_after
        self._closed = True
        self.replace_wanted.set()
        if self._cancel is not None:
            self._cancel.cancel()

    # --------------------------------------------------------------------------- connect

    async def _open(self) -> trio.abc.Stream:
        parts = urlsplit(self.push.service)
        host = parts.hostname or ""
        if parts.scheme == "https":
            context = client_ssl_context(self.push.ca_file, alpn=["h2"])
            tcp = await trio.open_tcp_stream(host, parts.port or 443)
            stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
            await stream.do_handshake()
            if stream.selected_alpn_protocol() != "h2":
                await stream.aclose()
                raise SessionEnded(f"{host} did not agree to HTTP/2 (ALPN)")
            return stream
        if parts.scheme == "http" and is_loopback_host(host):
            return await trio.open_tcp_stream(host, parts.port or 80)
        raise SessionEnded(f"refusing {parts.scheme}:// to {host}: only https, or http on loopback")

    async def run(self) -> None:
        """Connect, serve until the connection ends; never raises for network trouble."""
        try:
            with trio.CancelScope() as scope:
                self._cancel = scope
                try:
                    with trio.fail_after(self.push.connect_timeout):
                        stream = await self._open()
                except trio.TooSlowError:
                    self._end(f"connecting took over {self.push.connect_timeout:g} s")
                    return
                async with stream:
                    await self._serve(stream)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(describe(exc))
        except SessionEnded as exc:
            self._end(str(exc))
        finally:
            self._closed = True
            self.replace_wanted.set()
            for pending in self._pending.values():
                pending.done.set()
            # Acks that never reached this connection go to the next one.
            unsent = self.proto.take_unsent_acks()
            if unsent:
                self.agent.acknowledge(unsent)

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        # Every failure of a connection's task ends the connection with a reason, never the
        # process: the supervisor opens the next one.
        try:
            await task()
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(describe(exc))
        except (SessionEnded, ua.ProtocolViolation) as exc:
            self._end(str(exc))
        except Exception as exc:  # a bug must not take the gateway down: log it fully
            log.exception("unexpected error on the push service connection")
            self._end(f"internal error: {type(exc).__name__}: {exc}")

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.proto.initiate()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._guarded, partial(self._writer, stream))
            nursery.start_soon(self._guarded, partial(self._reader, stream))
            nursery.start_soon(self._guarded, self._keepalive)
            nursery.start_soon(self._guarded, self._setup)
            self._flush()

    async def _writer(self, stream: trio.abc.Stream) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            data = self.proto.data_to_send()
            if data:
                await stream.send_all(data)
            if self._closing:
                self._flushed.set()

    async def _reader(self, stream: trio.abc.Stream) -> None:
        while True:
            data = bytes(await stream.receive_some(READ_CHUNK))
            events = self.proto.receive_data(data)
            if events or self.proto.frames_received != self._frames_seen:
                # Liveness is whole frames, not bytes: a peer trickling one byte at a time
                # (slow-loris) never completes a PING answer and is found dead.
                self._frames_seen = self.proto.frames_received
                self._last_received = time.monotonic()
            for event in events:
                self._dispatch(event)
            self._flush()
            self._check_drained()
            if self.proto.established:
                self._established.set()
            refused = self.proto.pushes_refused
            if refused != self._pushes_refused_seen:
                if self._pushes_refused_seen == 0:
                    log.warning("the push service promised more pushes than allowed: refusing")
                self.agent.m_pushes_refused.inc(refused - self._pushes_refused_seen)
                self._pushes_refused_seen = refused
            if not data:
                return

    async def _keepalive(self) -> None:
        # Traffic counts as liveness; only a quiet line is pinged, so an idle gateway wakes once
        # per interval. No answer within the next interval: the path is dead.
        interval = self.push.keepalive
        seen_pushes: frozenset[int] = frozenset()
        while True:
            await trio.sleep(interval)
            # A pushed message still incomplete one interval after it was first seen has
            # stalled (a body that never ends): reset it, the service redelivers it.
            now_open = self.proto.open_pushes()
            stalled = self.proto.cancel_pushes(seen_pushes & now_open)
            if stalled:
                log.warning("reset %d pushed message(s) that stalled for %g s", stalled, interval)
                self._flush()
            seen_pushes = now_open - seen_pushes
            if time.monotonic() - self._last_received < interval:
                continue
            self._pong = trio.Event()
            self.proto.ping(os.urandom(8))
            self._flush()
            with trio.move_on_after(interval):
                await self._pong.wait()
                continue
            self._end(f"no answer to PING within {interval:g} s")

    # -------------------------------------------------------------------------- dispatch

    def _dispatch(self, event: ua.Event) -> None:
        agent = self.agent
        if isinstance(event, ua.MessageReceived):
            now = time.time()
            if event.message_url in agent._recent:
                # A redelivery of a message already committed: the store's dedupe record
                # answers it, so spare the decryption (an ECDH, the costliest step).
                agent._enqueue(
                    admit(
                        agent.ingestor.redelivery(event.message_url, now), agent.routes.table, now
                    )
                )
                return
            admission = admit(
                agent.ingestor.prepare(event, received_at=now), agent.routes.table, now
            )
            agent.status.last_message_at = now
            disposition = admission.disposition
            if isinstance(disposition, DeadLetter):
                agent.m_dead.inc(reason=disposition.reason)
                log.warning(
                    "dead letter (%s): %d-byte message for %s",
                    disposition.reason,
                    len(event.body),
                    disposition.route or "no known subscription",
                )
            else:
                agent.m_received.inc(route=admission.incoming.route or "")
            if agent.observer is not None:
                agent.observer("received", event.message_url, None)
            agent._enqueue(admission)
        elif isinstance(event, ua.MessageRefused):
            agent.m_dead.inc(reason=event.reason)
            log.warning("refused a pushed message: %s", event.detail)
            now = time.time()
            agent._enqueue(
                admit(agent.ingestor.refused(event, received_at=now), agent.routes.table, now)
            )
        elif isinstance(event, ua.AckCompleted):
            self._pending.pop(event.request_id, None)
            if event.ok:
                agent.m_acked.inc()
                agent._acked_upstream(event.message_url)
                if agent.observer is not None:
                    agent.observer("acknowledged", event.message_url, None)
            else:
                # The service keeps the message and redelivers it; the dedupe record answers.
                agent.m_ack_failed.inc()
                log.warning("DELETE of a push message answered %d", event.status)
        elif isinstance(event, ua.PingAcknowledged):
            self._pong.set()
        elif isinstance(event, ua.MonitorEnded):
            self._monitor_ended(event)
        elif isinstance(event, ua.GoAway):
            self._goaway(event)
        elif isinstance(event, ua.ConnectionClosed):
            self._end(event.reason)
        elif isinstance(event, ua.RequestReset) and event.kind == "monitor":
            self._remonitor(event.url, delay=REQUEST_RETRY_FLOOR)
        elif isinstance(event, ua.RequestReset) and event.kind == "ack":
            self._pending.pop(event.request_id, None)
            agent.m_ack_failed.inc()
        if isinstance(
            event, ua.Subscribed | ua.SubscribeFailed | ua.UnsubscribeCompleted | ua.RequestReset
        ):
            pending = self._pending.pop(event.request_id, None)
            if pending is not None:
                pending.result = event
                pending.done.set()

    def _goaway(self, event: ua.GoAway) -> None:
        self.goaway = True
        log.info("GOAWAY (error %d) %s", event.error_code, event.detail)
        unsent = self.proto.take_unsent_acks(event.last_stream_id)
        self.replace_wanted.set()
        self.agent._owed_acks.extend(unsent)
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, self._drain)

    async def _drain(self) -> None:
        # Let acks and pushes in flight finish, within a bound, then close.
        self._check_drained()
        with trio.move_on_after(GOAWAY_GRACE):
            await self._drained.wait()
        self.proto.close()
        self._closing = True
        self._flush()
        with trio.move_on_after(1.0):
            await self._flushed.wait()
        self._end("drained after GOAWAY")

    def _check_drained(self) -> None:
        if self.goaway and not self.proto.has_pending_work():
            self._drained.set()

    def _monitor_ended(self, event: ua.MonitorEnded) -> None:
        self._monitors.pop(event.request_id, None)
        started, wait0 = self._monitor_started.pop(event.request_id, (0.0, False))
        if self.goaway:
            return
        if event.status in (200, 204):
            # A held GET that the service ends at once, again and again, must not become a
            # busy loop: back off unless it was held a while (a wait=0 drain ends at once).
            quick = not wait0 and time.monotonic() - started < MIN_MONITOR_HOLD
            backoff = self._quick_monitor_ends.setdefault(
                event.url,
                Backoff(
                    REQUEST_RETRY_FLOOR,
                    max(REQUEST_RETRY_FLOOR, self.push.backoff_cap),
                    rng=self.agent._rng,
                ),
            )
            if not quick:
                backoff.reset()
            self._remonitor(event.url, delay=backoff.next_delay() if quick else 0.0)
        elif event.status in (404, 410) or 400 <= event.status < 500:
            # RFC 8030 §7.3.1: the service expired the set and every subscription in it.
            log.warning(
                "the push service expired %s (HTTP %d): re-subscribing",
                redact_url(event.url),
                event.status,
            )
            assert self._nursery is not None
            self._nursery.start_soon(self._resubscribe_set, event.url)
        else:
            delay = max(REQUEST_RETRY_FLOOR, event.retry_after or 0.0)
            log.warning("monitoring answered %d; again in %.0f s", event.status, delay)
            self._remonitor(event.url, delay=delay)

    def _remonitor(self, url: str, *, delay: float = 0.0, wait0: bool = False) -> None:
        if delay <= 0:
            self._start_monitor(url, wait0=wait0)
            return
        assert self._nursery is not None

        async def later() -> None:
            await trio.sleep(delay)
            if self.usable:
                self._start_monitor(url, wait0=wait0)

        self._nursery.start_soon(later)

    def _start_monitor(self, url: str, *, wait0: bool) -> None:
        if url in self._monitors.values():
            return
        request_id = self.proto.monitor(url, urgency=self.push.urgency, wait0=wait0)
        self._monitors[request_id] = url
        self._monitor_started[request_id] = (time.monotonic(), wait0)
        self.agent.status.sets.add(url)
        self._flush()

    # ----------------------------------------------------------------------------- setup

    async def _request(self, send: Callable[[], int]) -> ua.Event | None:
        request_id = send()
        pending = _Pending(trio.Event())
        self._pending[request_id] = pending
        self._flush()
        await pending.done.wait()
        return pending.result

    async def _setup(self) -> None:
        agent = self.agent
        # Connected means the service answered our preface, not merely that TCP is up: a
        # service that accepts connections and then says nothing is not a working upstream.
        with trio.move_on_after(self.push.connect_timeout):
            await self._established.wait()
        if not self._established.is_set():
            raise SessionEnded(
                f"no HTTP/2 SETTINGS from the push service within {self.push.connect_timeout:g} s"
            )
        # Acks owed from before (a restart, a dropped connection) go first.
        owed, agent._owed_acks = agent._owed_acks, []
        if owed:
            self.acknowledge(owed)
        await self._sync_subscriptions()
        monitored = {rec.set_url or rec.subscription_url for rec in agent.store.subscriptions()}
        for url in sorted(monitored):
            self._start_monitor(url, wait0=True)
        agent.status.set_state("connected")
        agent.m_connected.set(1)
        self.healthy_since = time.monotonic()
        log.info("connected to %s, monitoring %d set(s)", agent.origin, len(monitored))

    async def _sync_subscriptions(self) -> None:
        agent = self.agent
        async with agent._subscribe_lock:
            records = {rec.route: rec for rec in agent.store.subscriptions()}
            wanted = {route.name: route for route in agent.routes.table}
            for name, record in records.items():
                if name not in wanted:
                    await self._unsubscribe(record)
            for name, route in wanted.items():
                if name not in records:
                    await self._subscribe(route)

    async def _unsubscribe(self, record: SubscriptionRecord) -> None:
        result = await self._request(lambda: self.proto.unsubscribe(record.subscription_url))
        if isinstance(result, ua.UnsubscribeCompleted) and (
            200 <= result.status < 300 or result.status in (404, 410)
        ):
            await trio.to_thread.run_sync(self.agent.store.delete_subscription, record.route)
            self.agent.ingestor.remove(record.route)
            log.info("route %s removed from the configuration: unsubscribed", record.route)

    async def _subscribe(self, route: RouteConfig) -> bool:
        """Create the route's subscription in the known set; False when it must wait."""
        agent = self.agent
        set_url = agent.known_set()
        for _attempt in range(2):
            result = await self._request(
                lambda s=set_url: self.proto.subscribe(  # type: ignore[misc]
                    self.push.service, set_url=s, vapid_key=route.vapid_public_key, tag=route.name
                )
            )
            if isinstance(result, ua.Subscribed):
                keys = SubscriptionKeys.generate()
                record = SubscriptionRecord(
                    route=route.name,
                    subscription_url=result.subscription_url,
                    push_url=result.push_url,
                    set_url=result.set_url,
                    private_key_der=keys.private_bytes(),
                    auth_secret=keys.auth_secret,
                    created_at=time.time(),
                )
                await agent._save(record)
                log.info("route %s subscribed", route.name)
                monitor_url = record.set_url or record.subscription_url
                if (
                    monitor_url not in self._monitors.values()
                    and self.agent.status.state == "connected"
                ):
                    self._start_monitor(monitor_url, wait0=True)
                return True
            if isinstance(result, ua.SubscribeFailed) and result.set_rejected and set_url:
                log.warning(
                    "the push service refused set %s: subscribing without it", redact_url(set_url)
                )
                set_url = None
                continue
            reason = getattr(result, "reason", "connection lost")
            retry_after = getattr(result, "retry_after", None)
            log.warning("route %s: subscribing failed: %s", route.name, reason)
            agent.status.last_error = f"subscribe {route.name}: {reason}"
            if self._nursery is not None and self.usable:
                self._nursery.start_soon(
                    self._subscribe_later, route, max(REQUEST_RETRY_FLOOR, retry_after or 0.0)
                )
            return False
        return False

    async def _subscribe_later(self, route: RouteConfig, delay: float) -> None:
        await trio.sleep(delay * (1 + self.agent._rng.random()))
        if not self.usable or self.agent.ingestor.record(route.name) is not None:
            return
        async with self.agent._subscribe_lock:
            if self.agent.ingestor.record(route.name) is None:
                await self._subscribe(route)

    async def _resubscribe_set(self, url: str) -> None:
        agent = self.agent
        agent.status.sets.discard(url)
        # A service whose sets keep expiring (or flip between 404 and 200) must not make us
        # re-subscribe in a tight loop: back off unless the previous set lived a healthy while.
        now = time.monotonic()
        last = agent._last_resubscribe
        if last is not None and now - last < self.push.healthy_after:
            delay = agent._resubscribe_backoff.next_delay()
            log.warning("sets keep expiring: re-subscribing in %.1f s", delay)
            await trio.sleep(delay)
        else:
            agent._resubscribe_backoff.reset()
        agent._last_resubscribe = time.monotonic()
        async with agent._subscribe_lock:
            expired = [
                rec
                for rec in agent.store.subscriptions()
                if url in (rec.set_url, rec.subscription_url)
            ]
            for record in expired:
                await trio.to_thread.run_sync(agent.store.delete_subscription, record.route)
                agent.ingestor.remove(record.route)
            routes = {r.name: r for r in agent.routes.table}
            for record in expired:
                if record.route in routes:
                    await self._subscribe(routes[record.route])
