"""Getting stored messages and receipts onto the monitors this node holds.

Three ways a message reaches a monitor:

* **at once** — the node that accepts a POST holds a live monitor for it: the message is stored
  already stamped as pushed and pushed from memory (no notification, no second query);
* **woken** — a :class:`~pushservice.store.Changes` (from this node, or from another node through
  ``pg_notify``) says a target has due messages: the waker claims them (``FOR UPDATE SKIP
  LOCKED``) and pushes them; claims nobody here can take are released (due again);
* **stored** — a new monitor gets everything stored for its target, in pages, with backpressure,
  except what is in flight on that same connection; with ``Prefer: wait=0`` it is answered
  only after the last of those pushes was promised (RFC 8030 §6: 204 when nothing was pushed).

Every monitored target is also re-read on a slow timer and when the listener reconnects, since
notifications sent while a listener was away are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from email.utils import formatdate

import trio

from pushservice.db import Database
from pushservice.http import Response, text_response
from pushservice.links import REL_PUSH
from pushservice.metrics import ServiceMetrics
from pushservice.model import Message, ReceiptEvent, Urgency
from pushservice.monitors import Monitor, MonitorRegistry
from pushservice.paths import message_path, resource_url
from pushservice.session_api import PushTarget
from pushservice.settings import ServiceSettings
from pushservice.store import NO_CHANGES, Changes, DueQuery, StoreUnavailable, TargetKind

# Stored messages fetched per store call for a new monitor: the pages of a large drain. Each
# page is pushed, then the next fetched once the connection's push queue is short again.
STORED_PAGE = 500
# Due messages claimed per store call when woken.
CLAIM_BATCH = 500
# A connection with this many pushes queued gets no more claims until it drains (its targets
# are claimed again when it has room): bounds the memory one slow user agent can hold.
PUSH_BACKLOG_LIMIT = 2000
# Every monitored target is re-read this often (notifications lost while a listener was away).
RESYNC_INTERVAL = 5.0
# After a failed store call the waker tries the same work again this much later.
RETRY_DELAY = 0.5
# Retry-After of a monitor answered 503 because the store is unavailable (seconds).
STORE_RETRY_AFTER = 2


class Delivery:
    """Pushes messages and receipts to this node's monitors; see the module docstring."""

    def __init__(
        self,
        db: Database,
        monitors: MonitorRegistry,
        settings: ServiceSettings,
        clock: Callable[[], float],
        origin_of: Callable[[Monitor], str],
        metrics: ServiceMetrics,
        log: logging.Logger,
        push_delay: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.db = db
        self._push_delay = push_delay  # fault injection: hold each push this long
        self.monitors = monitors
        self.settings = settings
        self.clock = clock
        self._origin_of = origin_of
        self.metrics = metrics
        self.log = log
        # message id -> when it was pushed, per connection: a new monitor on the same
        # connection does not get those again, and the waker does not push them twice.
        self._inflight: dict[PushTarget, dict[str, float]] = {}
        self._pushed_on: dict[str, PushTarget] = {}
        self._pending = NO_CHANGES
        self._deferred: set[tuple[str, str]] = set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- running ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The waker and the resync timer; monitors' drains run in this nursery too."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._waker)
            nursery.start_soon(self._resync_timer)
            task_status.started()

    def apply(self, changes: Changes) -> None:
        """Act on a mutation's changes: end gone monitors now, wake the rest (no I/O here)."""
        for kind, ident in changes.gone:
            for monitor in self.monitors.pop_target(kind, ident):
                monitor.session.end_monitor(monitor.stream_id, 404)  # RFC 8030 §7.3
        self._queue(Changes(due=changes.due, receipts=changes.receipts))

    def _queue(self, changes: Changes) -> None:
        if changes:
            self._pending = self._pending | changes
            self._wake.set()

    def resync(self) -> None:
        """Re-read every monitored target (after the listener reconnected, and on a timer)."""
        due = {(t, "") for t in self.monitors.targets("set")}
        due |= {("", t) for t in self.monitors.targets("subscription")}
        self._queue(
            Changes(due=frozenset(due), receipts=frozenset(self.monitors.targets("receipt")))
        )

    async def _resync_timer(self) -> None:
        while True:
            await trio.sleep(RESYNC_INTERVAL)
            self.resync()

    async def _waker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            changes, self._pending = self._pending, NO_CHANGES
            try:
                if changes.receipts:
                    await self._push_receipts(sorted(changes.receipts))
                if changes.due:
                    more = await self._claim(changes.due)
                    self._queue(Changes(due=more))
            except StoreUnavailable as exc:
                self.log.warning("store unavailable, delivery retries: %s", exc)
                self._pending = self._pending | changes
                await trio.sleep(RETRY_DELAY)
                self._wake.set()

    # -- monitors -----------------------------------------------------------------------------
    def start_monitor(self, monitor: Monitor, *, wait0: bool) -> None:
        """Hold a monitor (unless ``wait0``) and push what is stored for it, in the background."""
        if not wait0:
            self.monitors.add(monitor)
            self.metrics.monitors.set(len(self.monitors))
        assert self._nursery is not None, "Delivery.run is not running"
        self._nursery.start_soon(self._drain, monitor, wait0)

    async def _drain(self, monitor: Monitor, wait0: bool) -> None:
        try:
            if monitor.kind == "receipt":
                pushed = await self._push_receipts([monitor.target_id], only=monitor)
            else:
                pushed = await self._push_stored(monitor)
        except StoreUnavailable:
            self.end(monitor)
            monitor.session.respond(
                monitor.stream_id,
                text_response(503, "store unavailable", [("retry-after", str(STORE_RETRY_AFTER))]),
            )
            return
        if wait0:
            # RFC 8030 §6: 204 means nothing was pushed. The answer ends the stream, and no push
            # can be promised on an ended stream: answer only once every push went out.
            await monitor.session.pushes_promised(monitor.stream_id)
            monitor.session.respond(monitor.stream_id, Response(200 if pushed else 204))

    async def _push_stored(self, monitor: Monitor) -> int:
        kind: TargetKind = "set" if monitor.kind == "set" else "subscription"
        after = 0
        pushed = 0
        while monitor.session.stream_open(monitor.stream_id):
            page = await self.db.call(
                self.db.store.stored,
                kind,
                monitor.target_id,
                after_seq=after,
                min_urgency=monitor.min_urgency or Urgency.VERY_LOW,
                now=self.clock(),
                limit=STORED_PAGE,
            )
            for message in page:
                if not self._in_flight(monitor.session, message.id) and self.push(monitor, message):
                    pushed += 1
            if len(page) < STORED_PAGE:
                break
            after = page[-1].seq
            await monitor.session.push_room()
        return pushed

    def end(self, monitor: Monitor) -> None:
        """Forget a monitor (its stream ended)."""
        self.monitors.remove(monitor)
        self.metrics.monitors.set(len(self.monitors))

    def stream_reset(self, session: PushTarget, stream_id: int) -> None:
        """The client reset a stream: drop a monitor on it."""
        monitor = self.monitors.on_stream(session, stream_id)
        if monitor is not None:
            self.end(monitor)

    def session_closed(self, session: PushTarget) -> None:
        """Forget a finished connection, its monitors and what was in flight on it."""
        self.monitors.drop_session(session)
        self.metrics.monitors.set(len(self.monitors))
        for message_id in self._inflight.pop(session, {}):
            if self._pushed_on.get(message_id) is session:
                del self._pushed_on[message_id]

    def room_for_pushes(self, session: PushTarget) -> None:
        """A connection drained its push queue: claim again what was deferred for it."""
        if self._deferred:
            self._queue(Changes(due=frozenset(self._deferred)))
            self._deferred.clear()

    # -- messages -----------------------------------------------------------------------------
    def monitor_for(self, set_id: str, sub_id: str, urgency: Urgency) -> Monitor | None:
        """A live monitor here that can take a new message at once (with room to queue it)."""
        monitor = self.monitors.live_for(set_id, sub_id, urgency)
        if monitor is None or monitor.session.push_backlog() >= PUSH_BACKLOG_LIMIT:
            return None
        return monitor

    def _in_flight(self, session: PushTarget, message_id: str) -> bool:
        pushed = self._inflight.get(session, {}).get(message_id)
        return pushed is not None and self.clock() - pushed < self.settings.redelivery_after

    def push(self, monitor: Monitor, m: Message) -> bool:
        """Server-push one message on a monitor; False if the monitor can no longer push."""
        delay = self._push_delay()
        if delay > 0 and self._nursery is not None:
            self._inflight.setdefault(monitor.session, {})[m.id] = self.clock()
            self._nursery.start_soon(self._delayed_push, monitor, m, delay)
            return True
        return self._push_now(monitor, m)

    async def _delayed_push(self, monitor: Monitor, m: Message, delay: float) -> None:
        await trio.sleep(delay)
        if not self._push_now(monitor, m):
            self._inflight.get(monitor.session, {}).pop(m.id, None)  # redelivered later

    def _push_now(self, monitor: Monitor, m: Message) -> bool:
        session = monitor.session
        req = monitor.request
        now = self.clock()
        origin = self._origin_of(monitor)
        promise = [
            (":method", "GET"),
            (":path", message_path(m.id)),
            (":authority", req.authority),
            (":scheme", req.conn.scheme),
        ]
        response = [
            (":status", "200"),
            ("date", formatdate(now, usegmt=True)),
            ("last-modified", formatdate(m.created, usegmt=True)),
            ("link", f'<{resource_url(origin, "push", m.push_id)}>; rel="{REL_PUSH}"'),
            ("cache-control", "private"),
            ("ttl", str(m.remaining_ttl(now))),  # fieldgate extension: remaining TTL
        ]
        if m.content_encoding:
            response.append(("content-encoding", m.content_encoding))
        inflight = self._inflight.setdefault(session, {})

        def withdrawn() -> None:
            # Reset before it completed: a new monitor on this connection may have it again.
            inflight.pop(m.id, None)

        # Marked before pushing: a fault may withdraw the push inside push() itself.
        inflight[m.id] = now
        if session.push(monitor.stream_id, promise, response, m.body, withdrawn):
            self._pushed_on[m.id] = session
            self.metrics.delivered.inc()
            return True
        inflight.pop(m.id, None)
        return False

    async def _claim(self, due: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        """Claim and push due messages of the targets monitored here; what needs another go."""
        floors: dict[Urgency, tuple[set[str], set[str]]] = {}
        for set_id, sub_id in due:
            targets: tuple[tuple[TargetKind, str], ...] = (
                ("set", set_id),
                ("subscription", sub_id),
            )
            for kind, ident in targets:
                live = [m for m in self.monitors.of_target(kind, ident) if m.live]
                if not ident or not live:
                    continue
                if all(m.session.push_backlog() >= PUSH_BACKLOG_LIMIT for m in live):
                    self._deferred.add((set_id, sub_id))
                    continue
                floor = min(m.min_urgency or Urgency.VERY_LOW for m in live)
                sets, subs = floors.setdefault(floor, (set(), set()))
                (sets if kind == "set" else subs).add(ident)
        more: set[tuple[str, str]] = set()
        for floor, (sets, subs) in floors.items():
            query = DueQuery(tuple(sorted(sets)), tuple(sorted(subs)), floor)
            claimed = await self.db.call(
                self.db.store.claim, query, now=self.clock(), limit=CLAIM_BATCH
            )
            unpushed = [m.id for m in claimed if not self._push_claimed(m)]
            if unpushed:
                self.apply(await self.db.call(self.db.store.release, unpushed))
            if len(claimed) >= CLAIM_BATCH:
                more |= {(s, "") for s in sets} | {("", s) for s in subs}
        return frozenset(more)

    def _push_claimed(self, m: Message) -> bool:
        monitor = self.monitors.live_for(m.set_id, m.sub_id, m.urgency)
        return monitor is not None and self.push_fresh(monitor, m)

    def push_fresh(self, monitor: Monitor, m: Message) -> bool:
        """Push a message just claimed for ``monitor``, unless a drain pushed it meanwhile."""
        if self._in_flight(monitor.session, m.id):
            return True
        return self.push(monitor, m)

    def acknowledged(self, message_ids: frozenset[str]) -> None:
        """Messages acknowledged (on any connection): no longer in flight anywhere here."""
        for message_id in message_ids:
            session = self._pushed_on.pop(message_id, None)
            if session is not None:
                self._inflight.get(session, {}).pop(message_id, None)

    # -- receipts -----------------------------------------------------------------------------
    async def _push_receipts(self, receipt_ids: list[str], only: Monitor | None = None) -> int:
        wanted = [r for r in receipt_ids if only is not None or self._receipt_monitor(r)]
        if not wanted:
            return 0
        events = await self.db.call(self.db.store.claim_receipts, wanted)
        failed: list[int] = []
        pushed = 0
        for event in events:
            monitor = only if only is not None else self._receipt_monitor(event.receipt_id)
            if monitor is not None and self._push_receipt(monitor, event):
                pushed += 1
            else:
                failed.append(event.seq)
        if failed:
            await self.db.call(self.db.store.unclaim_receipts, failed)
        return pushed

    def _receipt_monitor(self, receipt_id: str) -> Monitor | None:
        return next((m for m in self.monitors.of_target("receipt", receipt_id) if m.live), None)

    def _push_receipt(self, monitor: Monitor, event: ReceiptEvent) -> bool:
        req = monitor.request
        promise = [
            (":method", "GET"),
            (":path", message_path(event.message_id)),
            (":authority", req.authority),
            (":scheme", req.conn.scheme),
        ]
        response = [(":status", str(event.status)), ("date", formatdate(self.clock(), usegmt=True))]
        if monitor.session.push(monitor.stream_id, promise, response, b""):
            self.metrics.receipts.inc()
            return True
        return False
