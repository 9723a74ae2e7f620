"""The router: journalled messages to adapters, one delivery per target of their route.

One worker task per (route, target): it walks that target's queue in message order and retries
the head with exponential backoff and full jitter until it is delivered, rejected (a dead letter)
or expired, so a device sees its route's messages in arrival order, and a broken or hung target
holds up nobody else. Retry times are written to the store, so a restart resumes the schedule.

Finished deliveries are recorded in batches: most ride on the next ingest commit, which is made
anyway (:meth:`Router.carry`), so that a message costs one transaction in the field; what no
ingest takes within RESOLVE_DEFER (a minute; an expiry or a rejection RESOLVE_NOTICE; sooner
when an acknowledgement or a paused target waits for it) one task commits alone, with the
acknowledgements the service confirmed meanwhile. A message all of whose targets finished stops
counting as waiting at once (Store.note_finished), not at its record. A delivery confirmed by
the device but not yet committed when the gateway dies is delivered again after the restart (at
least once, at most a receiver's repeat window: see MAX_UNRECORDED); a graceful stop commits
everything confirmed.
"""

from __future__ import annotations

import enum
import functools
import math
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from adapters.base import (
    Adapter,
    Confirmation,
    Delivered,
    Expired,
    Message,
    Outcome,
    Rejected,
    RetryLater,
    Settled,
    TargetConfig,
)
from fieldgate_common import malloc
from fieldgate_common.backoff import Backoff, full_jitter
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Metrics
from gateway import policy
from gateway.config import RouteConfig
from gateway.routes import RouteTable
from gateway.status_model import RouteDelivery, TargetDelivery
from gateway.store import (
    COMMIT_RETRY_BASE,
    COMMIT_RETRY_CAP,
    CarriedAcks,
    CarriedResolutions,
    PendingDelivery,
    Resolution,
    Store,
    StoreCounts,
    target_keys,
)

log = get_logger("router")

# A misbehaving adapter that asks for an immediate retry gets at most 10 attempts a second per
# target: enough to recover fast, little enough for a Raspberry Pi's CPU and the journal.
RETRY_FLOOR = 0.1
# Deliveries read from the store per round trip: big enough to amortise the thread hop
# (~50-100 us), small enough that a queue drop-oldest shortens is noticed soon.
FETCH_BATCH = 64
# Messages a target's worker holds in memory, handed over at commit: beyond this (a target far
# behind) it reads them from the journal again when it gets there.
INBOX_MAX = 256
# Drops closer together than this belong to one burst, logged once at its start and summed at
# its end.
DROP_BURST_GAP = 10.0
# While the journal holds dedupe records that may be forgotten soon, it is pruned this often
# (memory follows the rate times the grace period, not the rate times this); an idle journal is
# looked at this seldom (salts, the integrity check), and woken when messages come again.
PRUNE_BUSY_INTERVAL = policy.DEDUPE_GRACE / 2
PRUNE_IDLE_INTERVAL = 3600.0
PRUNE_DUE_SLACK = 1.0  # past a record's forget_at, so that the prune finds it due
# A prune is a transaction of its own (its WAL pages, their checkpoint). While the journal holds
# fewer dedupe records than this (a few messages a minute: each one due on its own), the earliest
# waits this long past its forget_at, so that one prune forgets the records of several minutes'
# messages instead of one prune per message (~8 KB written each, measured). What they keep
# meanwhile is a few hundred bytes a record, at most this many: memory follows the rate only
# above it.
PRUNE_LAZY_RECORDS = 1_000
PRUNE_LAZY_DELAY = 600.0
# Confirmed deliveries to one receiver that may wait to be recorded in the journal: a delivery
# the receiver confirmed but the journal did not record yet is repeated after a crash. The
# receiver suppresses a repeat by its message id but remembers only its last few ids (a
# firmware-bridge device: FB_DEDUPE_SLOTS, 8, whichever route they came by), so its targets
# pause once its adapter's repeat_window wait (a full disk), and a crash never repeats more
# than it can recognise. The store fsyncs resolutions by the smallest bound
# (policy.REPEAT_WINDOW): a power loss repeats no more either. This is the default and the
# serial bound.
MAX_UNRECORDED = policy.REPEAT_WINDOW
PAUSED_UNRECORDED = "paused: the journal cannot record confirmed deliveries"
PAUSED_DOUBT = "paused: a message to the same receiver waits for its retry"
# How long confirmed deliveries wait for an ingest commit to take them along before they are
# recorded in a transaction of their own (policy.RECORD_DEFER). While messages come at least
# this often, a delivery costs no transaction of its own (a thread hop, a commit and ~5 KB
# written a message alone, measured); the queue counts leave a finished message out at once
# (Store.note_finished), not at its record. A crash meanwhile repeats them, within the repeat
# bound.
RESOLVE_DEFER = policy.RECORD_DEFER
# Expired and rejected deliveries are recorded this soon: the expiry counter and the dead
# letter are what an operator looks for, and seldom come at field rates.
RESOLVE_NOTICE = 2.0
# When something waits for the record (the upstream acknowledgement of a `delivered`-policy
# message, a target paused by its repeat bound), finished deliveries are gathered this long
# only, so that a few share one commit.
RESOLVE_GATHER = 0.005


def retry_delay(
    attempt: int, base: float, cap: float, floor: float, rand: Callable[[], float]
) -> float:
    """Seconds before retry number ``attempt`` (1 for the first): full jitter, never below floor.

    ``uniform(0, min(cap, base * 2 ** (attempt - 1)))`` spreads a fleet of gateways whose devices
    failed together (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    return max(floor, full_jitter(attempt - 1, base, cap, rand))


class Pruning(enum.Enum):
    """How closely the journal's dedupe records are followed, by how many it holds."""

    IDLE = "idle"  # only the newest row (it always stays: the id high-water mark)
    LAZY = "lazy"  # fewer than PRUNE_LAZY_RECORDS: a trickle's records go a few minutes' at once
    BUSY = "busy"


def pruning(records: int) -> Pruning:
    """The pruning that ``records`` dedupe records call for."""
    if records <= 1:
        return Pruning.IDLE
    return Pruning.LAZY if records < PRUNE_LAZY_RECORDS else Pruning.BUSY


def _often_enough(interval: float, retention: float) -> float:
    """``interval``, but at least ten prunes per retention period, and never a busy loop."""
    return min(interval, max(retention / 10, 1.0))


def prune_within(mode: Pruning, retention: float) -> float:
    """Once messages came, the journal is pruned at the latest this long after (``mode`` is
    what they made it; an idle journal sleeps PRUNE_IDLE_INTERVAL)."""
    interval = {
        Pruning.IDLE: PRUNE_IDLE_INTERVAL,
        Pruning.LAZY: PRUNE_LAZY_DELAY,
        Pruning.BUSY: PRUNE_BUSY_INTERVAL,
    }[mode]
    return _often_enough(interval, retention)


def prune_interval(records: int, due: float | None, now: float, retention: float) -> float:
    """Seconds until the journal is pruned again, given the dedupe records it holds and when
    the earliest confirmed one may go (``due``, on the same clock as ``now``; None: none is).

    Not before that one is due (with few records, PRUNE_LAZY_DELAY after): after the last
    message of a while one more prune forgets the rest, and then the journal sleeps
    (PRUNE_IDLE_INTERVAL) instead of looking every PRUNE_BUSY_INTERVAL. At least ten times per
    retention period either way.
    """
    mode = pruning(records)
    if mode is Pruning.IDLE or due is None:  # none confirmed yet: look again as messages do
        return prune_within(mode, retention)
    past_due = PRUNE_LAZY_DELAY if mode is Pruning.LAZY else PRUNE_DUE_SLACK
    return _often_enough(max(PRUNE_BUSY_INTERVAL, due - now + past_due), retention)


class _Urgency(enum.IntEnum):
    """How soon the committer records finished deliveries that no ingest took along."""

    CALM = 0  # by their deadline (RESOLVE_DEFER, RESOLVE_NOTICE): an ingest usually comes first
    SOON = 1  # an acknowledgement waits for the record (or a failed record is retried)
    NOW = 2  # a target is paused by its repeat bound


@dataclass
class _RepeatBudget:
    """Confirmed deliveries to one receiver not yet recorded in the journal (``unrecorded``)
    and sent to it but not yet confirmed (``in_flight``): at most ``window`` together (the
    adapter's repeat_window; see MAX_UNRECORDED). Targets that share a receiver (two routes to
    one serial device, Adapter.repeat_scope) share one budget."""

    window: int = MAX_UNRECORDED
    unrecorded: int = 0
    in_flight: int = 0
    # Messages whose attempt ended without a confirmation, until they are settled: the
    # receiver may have processed one (an answer lost with the port), and recognises a retry
    # only while it is among its last ``window`` ids. So meanwhile everything else sent to
    # the receiver (``since_doubt``) counts against the window too (chaos seed 4: a serial
    # port lost mid-answer, the other route's 23 messages, then the retry processed again).
    doubtful: int = 0
    since_doubt: int = 0
    changed: trio.Event = field(default_factory=trio.Event)  # set when either count falls

    @property
    def full(self) -> bool:
        """Full for the next send of a message not in doubt."""
        return self.blocks(retry=False)

    def blocks(self, *, retry: bool) -> bool:
        """Full for the next send: of a message in doubt (``retry``: the doubt term left out,
        since only its own settling ends the doubt) or of any other."""
        load = self.unrecorded + self.in_flight
        if self.doubtful and not retry:
            load += self.doubtful + self.since_doubt
        return load >= self.window

    def sending(self) -> None:
        """A message goes on the line to the receiver."""
        self.in_flight += 1
        if self.doubtful:
            self.since_doubt += 1

    def doubt(self) -> None:
        """A message's attempt ended without a confirmation; retries are to come."""
        self.doubtful += 1

    def resolve_doubt(self) -> None:
        """That message is settled (delivered, rejected, expired) or no longer tried."""
        self.doubtful -= 1
        if not self.doubtful:
            self.since_doubt = 0
        self.wake()

    @property
    def stuck(self) -> bool:
        """Full of confirmations that only a record in the journal can free."""
        return self.unrecorded >= self.window

    def landed(self) -> None:
        """A message on its way got its answer (and, if delivered, is now unrecorded)."""
        self.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class _TargetState:
    route: str
    key: str
    adapter: str
    budget: _RepeatBudget
    last_delivery_at: float | None = None
    last_error: str | None = None
    retrying: int = 0  # attempts on the message at the head of the queue
    # Messages journalled since the worker last read the journal, handed over in memory: once
    # the worker has read everything the journal held (caught_up), it takes the next ones from
    # here instead of reading them back through a thread.
    inbox: deque[PendingDelivery] = field(default_factory=deque)
    caught_up: bool = False
    wake: trio.Event = field(default_factory=trio.Event)

    def nudge(self) -> None:
        self.wake.set()


@dataclass
class _DropBurst:
    started_at: float
    last_at: float
    count: int


class Router:
    """Delivers journalled messages to adapters; see the module docstring."""

    def __init__(
        self,
        store: Store,
        routes: RouteTable,
        adapters: Mapping[str, Adapter],
        metrics: Metrics,
        *,
        on_ack: Callable[[Sequence[str]], None],
        on_committed: Callable[[], None] = lambda: None,
        carry_acks: Callable[[], CarriedAcks | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        retry_floor: float = RETRY_FLOOR,
        rng: random.Random | None = None,
    ) -> None:
        for route, _key, target in routes.targets():
            if target.adapter not in adapters:
                raise ValueError(
                    f"route {route.name}: target adapter {target.adapter!r} is not configured"
                )
        self._store = store
        self._routes = routes
        self._adapters = dict(adapters)
        self._on_ack = on_ack
        # Told after each commit of the router's own (records, prunes): a burst of them may
        # have made a checkpoint due, which the journal writer takes in a quiet moment.
        self._on_committed = on_committed
        # The acknowledgements the service confirmed since the journal's last commit: a record
        # of deliveries takes them along (at a few messages a minute no ingest comes to take
        # either, and one transaction writes what two would).
        self._carry_acks = carry_acks
        self._clock = clock
        self._retry_floor = retry_floor
        self._rng = rng or random.Random()
        # Finished deliveries not yet recorded, by when (trio time) at the latest, how soon
        # the committer must record them, and what wakes it when any of that changes.
        self._resolved: list[Resolution] = []
        self._record_by = math.inf
        # Per message of several targets: those of them finished and not recorded yet (until
        # all are, see _note_finished).
        self._finishing: dict[str, set[str]] = {}
        self._urgency = _Urgency.CALM
        self._committer_wake = trio.Event()
        self._record_now = trio.Event()  # ends a RESOLVE_GATHER early
        self._record_failing = False  # the last attempt to record deliveries failed
        self._housekeeping_wake = trio.Event()
        self._pruning = Pruning.LAZY  # what the last prune left (or the messages since made it)
        self._bursts: dict[tuple[str, str, str], _DropBurst] = {}  # (route, reason, action)
        self._keys = {route.name: target_keys(route) for route in routes}
        budgets: dict[tuple[str, str], _RepeatBudget] = {}
        self._targets: dict[tuple[str, str], _TargetState] = {}
        for route, key, target in routes.targets():
            adapter = self._adapters[target.adapter]
            window = max(1, adapter.repeat_window(target))
            scope = adapter.repeat_scope(target)
            if scope is None:
                budget = _RepeatBudget(window)
            else:
                # One receiver: the smallest window any of its targets asks for.
                budget = budgets.setdefault((target.adapter, scope), _RepeatBudget(window))
                budget.window = min(budget.window, window)
            self._targets[(route.name, key)] = _TargetState(route.name, key, target.adapter, budget)
        self._m_journalled = metrics.counter(
            "fieldgate_messages_journalled_total", "Messages committed to the journal", ["route"]
        )
        self._m_duplicate = metrics.counter(
            "fieldgate_messages_duplicate_total", "Pushed messages already seen (redeliveries)"
        )
        self._m_deliveries = metrics.counter(
            "fieldgate_deliveries_total",
            "Delivery attempts by outcome",
            ["route", "adapter", "outcome"],
        )
        self._m_retried = metrics.counter(
            "fieldgate_deliveries_retried_total", "Retries scheduled", ["route", "adapter"]
        )
        self._m_expired = metrics.counter(
            "fieldgate_messages_expired_total", "Messages expired before delivery", ["route"]
        )
        self._m_dropped = metrics.counter(
            "fieldgate_messages_dropped_total",
            "Journalled messages dropped to make room",
            ["route", "reason"],
        )
        self._m_refused = metrics.counter(
            "fieldgate_messages_refused_total",
            "Pushed messages refused for want of room: not acknowledged, left with the service",
            ["route", "reason"],
        )
        self._m_replays = metrics.counter(
            "fieldgate_messages_replayed_total",
            "Pushed messages dropped as replays (a record salt seen before)",
            ["route"],
        )
        self._m_dead = metrics.counter(
            "fieldgate_dead_letters_total", "Messages moved to the dead letters", ["reason"]
        )
        self._m_depth = metrics.gauge(
            "fieldgate_queue_depth", "Undelivered messages in the journal", ["route"]
        )
        self._m_bytes = metrics.gauge(
            "fieldgate_queue_bytes", "Bytes of undelivered messages in the journal", ["route"]
        )
        self._m_latency = metrics.histogram(
            "fieldgate_delivery_latency_seconds",
            "From receipt by the gateway to confirmation by the target",
            ["route", "adapter"],
        )

    # -- the agent's side ------------------------------------------------------------------

    def notify(self) -> None:
        """The journal changed in a way the workers must read (start-up, a replayed dead
        letter): every worker reads it again."""
        self._take_counts()
        for state in self._targets.values():
            state.caught_up = False
            state.nudge()

    def journalled(self, messages: Sequence[Message]) -> None:
        """Messages just committed (call from the trio thread): handed to their route's
        targets in memory, and only those targets' workers wake."""
        self._take_counts()
        if messages and self._pruning is not Pruning.BUSY:
            # An idle journal has records to follow again; a trickle became a burst.
            busy = pruning(self._store.dedupe_records()) is Pruning.BUSY
            mode = Pruning.BUSY if busy else Pruning.LAZY
            if mode is not self._pruning:
                self._pruning = mode
                self._housekeeping_wake.set()
        for message in messages:
            route = self._routes.get(message.route)
            if route is None:
                continue
            keys = self._keys[route.name]  # the journal row's targets (Store.ingest)
            for key in keys:
                state = self._targets.get((route.name, key))
                if state is None:
                    continue
                if state.caught_up and len(state.inbox) < INBOX_MAX:
                    state.inbox.append(PendingDelivery(message, "", 0, 0.0, keys))
                else:
                    state.caught_up = False  # read it from the journal when the worker gets there
                state.nudge()

    def refresh_counts(self) -> None:
        """The store counted something without new deliveries (duplicates, dead letters)."""
        self._take_counts()

    def snapshot(self) -> dict[str, RouteDelivery]:
        """Per route: its journal, last message, last delivery, last error, its targets."""
        usage = self._store.queue_usage()
        snapshot: dict[str, RouteDelivery] = {}
        for route in self._routes:
            q = usage.get(route.name)
            states = [s for s in self._targets.values() if s.route == route.name]
            deliveries = [s.last_delivery_at for s in states if s.last_delivery_at is not None]
            snapshot[route.name] = RouteDelivery(
                queue_messages=q.messages if q else 0,
                queue_bytes=q.bytes if q else 0,
                last_message_at=q.last_received_at if q else None,
                last_delivery_at=max(deliveries, default=None),
                last_error=next((s.last_error for s in states if s.last_error), None),
                targets=tuple(
                    TargetDelivery(s.key, s.adapter, s.last_delivery_at, s.last_error, s.retrying)
                    for s in states
                ),
            )
        return snapshot

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the adapters, then deliver until cancelled (committing what was confirmed)."""
        self._store.clear_finished()
        try:
            async with trio.open_nursery() as adapter_nursery:
                for adapter in self._adapters.values():
                    await adapter_nursery.start(adapter.run)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._committer)
                    nursery.start_soon(self._housekeeping)
                    for route, key, target in self._routes.targets():
                        nursery.start_soon(self._worker, route, key, target)
                    self._take_counts()
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()

    async def _worker(self, route: RouteConfig, key: str, target: TargetConfig) -> None:
        worker = _Worker(self, route, key, target, self._adapters[target.adapter])
        await worker.run()

    def _settled(
        self,
        route: RouteConfig,
        key: str,
        target: TargetConfig,
        state: _TargetState,
        pending: PendingDelivery,
        outcome: Outcome,
    ) -> bool:
        """Record a final outcome (True); False for RetryLater (the caller schedules it)."""
        r, a = route.name, target.adapter
        message = pending.message
        if isinstance(outcome, Delivered):
            now = self._clock()
            self._m_deliveries.inc(route=r, adapter=a, outcome="delivered")
            self._m_latency.observe(max(now - message.received_at, 0.0), route=r, adapter=a)
            self._resolve(Resolution(message.id, route.name, key, "delivered"), pending)
            state.last_delivery_at = now
            state.retrying = 0
            return True
        if isinstance(outcome, Expired):
            self._m_deliveries.inc(route=r, adapter=a, outcome="expired")
            self._resolve(Resolution(message.id, route.name, key, "expired"), pending)
            state.retrying = 0
            return True
        if isinstance(outcome, Rejected):
            self._m_deliveries.inc(route=r, adapter=a, outcome="rejected")
            log.warning(
                "route %s target %s rejected message %s: %s",
                route.name, key, message.id, outcome.reason,
            )  # fmt: skip
            self._resolve(
                Resolution(message.id, route.name, key, "rejected", outcome.reason), pending
            )
            state.last_error = f"rejected: {outcome.reason}"
            state.retrying = 0
            return True
        return False

    async def _deliver(
        self,
        route: RouteConfig,
        key: str,
        target: TargetConfig,
        adapter: Adapter,
        state: _TargetState,
        pending: PendingDelivery,
        first: RetryLater | None = None,
    ) -> None:
        """Deliver one message to one target until delivered, rejected or expired (``first``:
        the outcome of an attempt already made, when it asked for a retry)."""
        message = pending.message
        attempts = pending.attempts
        next_at = pending.next_attempt_at
        r, a = route.name, target.adapter
        outcome: Outcome | None = first
        doubting = False  # after an attempt without a confirmation, until it is settled
        try:
            while True:
                if outcome is None:
                    now = self._clock()
                    if message.expired(now):
                        self._resolve(Resolution(message.id, route.name, key, "expired"), pending)
                        state.retrying = 0
                        return
                    if next_at > now:
                        if message.expires_at is not None and message.expires_at <= next_at:
                            # It expires before the next attempt is due: wait for that, then drop
                            # it (re-reading the clock could land a float ulp short and spin).
                            await trio.sleep(message.expires_at - now)
                            self._resolve(
                                Resolution(message.id, route.name, key, "expired"), pending
                            )
                            state.retrying = 0
                            return
                        await trio.sleep(next_at - now)
                        next_at = 0.0  # due now, whatever a re-read clock says about the last ulp
                        continue
                    if state.budget.blocks(retry=doubting):
                        await self._wait_recorded(state, retry=doubting)
                        continue  # the clock moved: look at the deadline again
                    # On the line it counts too: another target of the same receiver must not
                    # send more than the bound allows while this one waits for its answer.
                    state.budget.sending()
                    try:
                        outcome = await self._attempt(adapter, message, target)
                    finally:
                        state.budget.landed()
                if self._settled(route, key, target, state, pending, outcome):
                    return
                assert isinstance(outcome, RetryLater)
                if not doubting:
                    doubting = True
                    state.budget.doubt()
                now = self._clock()
                attempts += 1
                delay = retry_delay(
                    attempts, route.retry_base, route.retry_cap, self._retry_floor, self._rng.random
                )
                delay = max(delay, outcome.after or 0.0)
                next_at = now + delay
                self._m_deliveries.inc(route=r, adapter=a, outcome="retry_later")
                self._m_retried.inc(route=r, adapter=a)
                state.last_error = outcome.reason
                state.retrying = attempts
                if attempts == 1:
                    log.info(
                        "route %s target %s: message %s not delivered (%s), retrying",
                        route.name, key, message.id, outcome.reason,
                    )  # fmt: skip
                try:
                    await trio.to_thread.run_sync(
                        self._store.schedule_retry,
                        message.id, route.name, key, attempts, next_at, outcome.reason,
                    )  # fmt: skip
                except (sqlite3.Error, OSError) as exc:
                    # The retry still happens; only its schedule is not durable this time.
                    log.error("journal: recording a retry failed: %s", exc)
                outcome = None
        finally:
            if doubting:
                state.budget.resolve_doubt()

    async def _attempt(self, adapter: Adapter, message: Message, target: TargetConfig) -> Outcome:
        try:
            return await adapter.deliver(message, target)
        except Exception as exc:  # an adapter bug must not stop the route: retry it
            log.exception("adapter %s raised on delivery of message %s", adapter.name, message.id)
            return RetryLater(f"adapter error: {type(exc).__name__}")

    async def _send(self, adapter: Adapter, message: Message, target: TargetConfig) -> Confirmation:
        try:
            return await adapter.send(message, target)
        except Exception as exc:  # an adapter bug must not stop the route: retry it
            log.exception("adapter %s raised on delivery of message %s", adapter.name, message.id)
            return Settled(RetryLater(f"adapter error: {type(exc).__name__}"))

    async def _confirmed(self, adapter: Adapter, confirmation: Confirmation) -> Outcome:
        try:
            return await confirmation.outcome()
        except Exception as exc:  # an adapter bug must not stop the route: retry it
            log.exception("adapter %s raised awaiting a confirmation", adapter.name)
            return RetryLater(f"adapter error: {type(exc).__name__}")

    # -- committing ------------------------------------------------------------------------

    def _resolve(self, resolution: Resolution, pending: PendingDelivery) -> None:
        if resolution.end == "delivered":
            self._targets[(resolution.route, resolution.target)].budget.unrecorded += 1
        route = self._routes.get(resolution.route)
        # A `delivered`-policy message's acknowledgement waits for the record.
        urgent = route is not None and route.ack == "delivered"
        if not self._resolved:
            self._record_by = math.inf
        defer = RESOLVE_DEFER if resolution.end == "delivered" else RESOLVE_NOTICE
        self._record_by = min(self._record_by, trio.current_time() + defer)
        self._resolved.append(resolution)
        self._note_finished(resolution, pending)
        self._hurry(_Urgency.SOON if urgent else _Urgency.CALM)

    def _note_finished(self, resolution: Resolution, pending: PendingDelivery) -> None:
        """Once every target the message had left finished, the store's queue counts leave
        it out, though its record may be RESOLVE_DEFER away. A target that finished in an
        earlier record is not known here: such a message counts until its own record."""
        targets = pending.targets
        if resolution.target not in targets:
            return
        if len(targets) > 1:
            finished = self._finishing.setdefault(resolution.message_id, set())
            finished.add(resolution.target)
            if not finished.issuperset(targets):
                return
            del self._finishing[resolution.message_id]
        self._store.note_finished(
            resolution.message_id, resolution.route, len(pending.message.body)
        )

    def _given_back(self, batch: Sequence[Resolution]) -> None:
        """A commit that took ``batch`` failed: they wait again, before any newer ones, and
        are retried soon (not after another RESOLVE_DEFER)."""
        self._resolved[:0] = batch
        self._hurry(_Urgency.SOON)

    def _hurry(self, urgency: _Urgency) -> None:
        self._urgency = max(self._urgency, urgency)
        if urgency is _Urgency.NOW:
            self._record_now.set()
        self._committer_wake.set()

    async def _wait_recorded(self, state: _TargetState, *, retry: bool = False) -> None:
        """Pause ``state``'s target while too many of its receiver's confirmations wait to be
        recorded (or, ``retry`` aside, while an attempt in doubt waits for its retry)."""
        waited = False
        while state.budget.blocks(retry=retry):
            waited = True
            if self._record_failing and state.budget.stuck:
                state.last_error = PAUSED_UNRECORDED
            elif not retry and not state.budget.blocks(retry=True):
                state.last_error = PAUSED_DOUBT
            changed = state.budget.changed
            self._hurry(_Urgency.NOW)
            await changed.wait()
        if waited:
            state.last_error = None

    async def _committer(self) -> None:
        """Record what no ingest commit took along: by its deadline (RESOLVE_DEFER after a
        delivery, RESOLVE_NOTICE after an expiry or a rejection), after RESOLVE_GATHER when
        something waits for it, at once when a target is paused. Each wake-up looks again at
        what is left (an ingest may have taken it all)."""
        backoff = Backoff(COMMIT_RETRY_BASE, COMMIT_RETRY_CAP, rng=self._rng)
        while True:
            self._committer_wake = trio.Event()
            if not self._resolved:
                self._urgency = _Urgency.CALM
                await self._committer_wake.wait()
                continue
            if self._urgency is _Urgency.CALM:
                # At field rates deliveries finish one at a time, and a transaction of their
                # own costs a thread hop and a WAL page each (flash wear on an SD card): the
                # next message's ingest commit usually takes them along first.
                with trio.move_on_at(self._record_by) as deferred:
                    await self._committer_wake.wait()
                if not deferred.cancelled_caught:
                    continue  # taken along, or hurried: look again
            elif self._urgency is _Urgency.SOON:
                self._record_now = trio.Event()
                with trio.move_on_after(RESOLVE_GATHER):  # a few share one commit
                    await self._record_now.wait()
            self._urgency = _Urgency.CALM
            if await self._flush():
                backoff.reset()
                continue
            # Disk full or an I/O error: the confirmations stay in memory and are committed
            # when the disk takes them again (until then a restart would deliver them again).
            await trio.sleep(backoff.next_delay())
            self._hurry(_Urgency.SOON)

    async def _flush(self) -> bool:
        """Commit the finished deliveries; False (and nothing lost) when the store failed."""
        if not self._resolved:
            return True
        batch, self._resolved = self._resolved, []
        acks = self._carry_acks()
        acked = acks.keys if acks is not None else ()
        # Shielded: a cancellation before the thread starts would lose confirmed deliveries.
        with trio.CancelScope(shield=True):
            try:
                released = await trio.to_thread.run_sync(
                    functools.partial(self._store.resolve, batch, acked=acked)
                )
            except (sqlite3.Error, OSError) as exc:
                if acks is not None:
                    acks.done(False)
                self._given_back(batch)  # retried by the committer after its backoff
                log.error("journal: recording %d deliveries failed: %s", len(batch), exc)
                self._record_failing = True
                for state in self._targets.values():
                    if state.budget.stuck:
                        state.last_error = PAUSED_UNRECORDED
                return False
        if acks is not None:
            acks.done(True)
        self._on_committed()
        self._recorded(batch, released)
        return True

    def carry(self) -> CarriedResolutions | None:
        """The finished deliveries not yet recorded, for an ingest commit to take along (call
        from the trio thread); None when there are none. Given back if that commit fails."""
        if not self._resolved:
            return None
        batch, self._resolved = tuple(self._resolved), []
        self._committer_wake.set()  # nothing left for it to wait for
        return CarriedResolutions(batch, functools.partial(self._carried, batch))

    def _carried(self, batch: Sequence[Resolution], recorded: bool) -> None:
        if recorded:
            self._recorded(batch, ())  # what they released is in the store's counts
            return
        self._given_back(batch)  # the committer records them (or fails, and says so)

    def _recorded(self, batch: Sequence[Resolution], released: Sequence[str]) -> None:
        for resolution in batch:
            if resolution.end == "delivered":
                self._targets[(resolution.route, resolution.target)].budget.unrecorded -= 1
            if self._finishing:
                self._finishing.pop(resolution.message_id, None)
        self._record_failing = False
        for state in self._targets.values():
            state.budget.wake()
        self._take_counts(released)

    def _take_counts(self, released: Sequence[str] = ()) -> None:
        """Turn the store's events into metrics, drop logs and acks."""
        counts = self._store.take_counts()
        self._count(counts)
        acks = [*released, *counts.released_acks]
        if acks:
            self._on_ack(acks)

    def publish_gauges(self) -> None:
        """Set the queue gauges from the journal now (a scrape reads what the journal holds,
        not what it held at the last commit)."""
        usage = self._store.queue_usage()
        for route in self._routes:
            q = usage.get(route.name)
            self._m_depth.set(q.messages if q else 0, route=route.name)
            self._m_bytes.set(q.bytes if q else 0, route=route.name)

    def _count(self, counts: StoreCounts) -> None:
        if counts.empty():
            return
        for route, n in counts.journalled.items():
            self._m_journalled.inc(n, route=route)
        if counts.duplicates:
            self._m_duplicate.inc(counts.duplicates)
        for route, n in counts.expired.items():
            self._m_expired.inc(n, route=route)
        for reason, n in counts.dead_letters.items():
            self._m_dead.inc(n, reason=reason)
        for (route, reason), n in counts.dropped.items():
            self._m_dropped.inc(n, route=route, reason=reason)
            self._note_drops(route, reason, n, "dropping the oldest messages")
        for (route, reason), n in counts.refused.items():
            self._m_refused.inc(n, route=route, reason=reason)
            self._note_drops(route, reason, n, "refusing messages (left with the push service)")
        for route, n in counts.replays.items():
            self._m_replays.inc(n, route=route)
            self._note_drops(route, "replayed", n, "dropping replays (a record salt seen before)")

    # -- housekeeping ----------------------------------------------------------------------

    def _note_drops(self, route: str, reason: str, n: int, action: str) -> None:
        now = trio.current_time()
        key = (route, reason.replace("_", " "), action)
        burst = self._bursts.get(key)
        if burst is None:
            self._bursts[key] = _DropBurst(now, now, n)
            log.warning("route %s: %s, %s", route, key[1], action)
            self._housekeeping_wake.set()
        else:
            burst.last_at = now
            burst.count += n

    def _end_bursts(self, now: float) -> float | None:
        """Log bursts that are over; return when the next one could end."""
        next_end: float | None = None
        for key, burst in list(self._bursts.items()):
            end = burst.last_at + DROP_BURST_GAP
            if end <= now:
                route, reason, action = key
                log.warning(
                    "route %s: %s, %d in %.0f s (%s)",
                    route, action.split(" (")[0], burst.count, burst.last_at - burst.started_at,
                    reason,
                )  # fmt: skip
                del self._bursts[key]
            else:
                next_end = end if next_end is None else min(next_end, end)
        return next_end

    def _prune(self) -> tuple[int, float | None]:
        """In a worker thread: prune, then when the next confirmed record may go; and hand
        the memory freed since back to the kernel (see fieldgate_common.malloc)."""
        pruned, due = self._store.prune(), self._store.next_forget_at()
        malloc.trim()
        return pruned, due

    async def _housekeeping(self) -> None:
        """Prune dedupe records now and then; close drop bursts. Sleeps otherwise."""
        # Scheduled on trio's monotonic clock: intervals, not dates.
        next_prune = trio.current_time()
        while True:
            now = trio.current_time()
            retention = self._store.dedupe_retention
            if self._pruning is not Pruning.IDLE:
                next_prune = min(next_prune, now + prune_within(self._pruning, retention))
            if now >= next_prune:
                try:
                    pruned, due = await trio.to_thread.run_sync(self._prune)
                except (sqlite3.Error, OSError) as exc:
                    log.error("journal: pruning failed: %s", exc)
                    pruned, due = 0, None
                if pruned:
                    log.debug("pruned %d dedupe records", pruned)
                    self._on_committed()
                records = self._store.dedupe_records()
                self._pruning = pruning(records)
                next_prune = now + prune_interval(records, due, self._clock(), retention)
            burst_end = self._end_bursts(now)
            wake_at = next_prune if burst_end is None else min(next_prune, burst_end)
            self._housekeeping_wake = trio.Event()
            with trio.move_on_at(wake_at):
                await self._housekeeping_wake.wait()


class _Worker:
    """One target's deliveries, in journal order.

    The queue is the journal (read in batches through a thread) until the worker has read all
    of it; from then on, messages committed since come in memory (:meth:`Router.journalled`).
    An adapter whose ``window`` is larger than one gets messages sent in order without waiting
    for each confirmation (at most ``window`` awaiting); a message the transport asks to retry
    makes the worker settle what is on its way and retry it alone, with the usual backoff,
    before it pipelines again.
    """

    def __init__(
        self, router: Router, route: RouteConfig, key: str, target: TargetConfig, adapter: Adapter
    ) -> None:
        self.router, self.route, self.key, self.target, self.adapter = (
            router,
            route,
            key,
            target,
            adapter,
        )
        self.state = router._targets[(route.name, key)]
        self.cursor = 0  # the id of the last message handed to this target (ids only grow)
        self.in_flight: deque[tuple[PendingDelivery, Confirmation]] = deque()

    async def run(self) -> None:
        state = self.state
        while True:
            if state.caught_up and state.inbox:
                pending = state.inbox.popleft()
                if int(pending.message.id) > self.cursor:  # else the journal read had it
                    await self.handle(pending)
                continue
            if self.in_flight:  # nothing more to send now: take in what is on its way
                await self.settle(0)
                continue
            state.wake = trio.Event()  # before reading: a hand-over during the read is not lost
            if state.caught_up:
                await state.wake.wait()
                continue
            # Marked before the read: a commit during it lands in the inbox, and what the read
            # also returned is skipped there by its id.
            state.caught_up = True
            batch = await trio.to_thread.run_sync(
                functools.partial(
                    self.router._store.pending_deliveries,
                    self.route.name,
                    self.key,
                    after_id=str(self.cursor) if self.cursor else None,
                    limit=FETCH_BATCH,
                )
            )
            if len(batch) == FETCH_BATCH:
                state.caught_up = False  # more where these came from
                state.inbox.clear()
            for pending in batch:
                await self.handle(pending)

    async def handle(self, pending: PendingDelivery) -> None:
        """One message, in order."""
        self.cursor = int(pending.message.id)
        router, state = self.router, self.state
        window = self.adapter.window(self.target)
        if window <= 1 or pending.attempts or pending.next_attempt_at:
            await self.settle(0)
            await router._deliver(self.route, self.key, self.target, self.adapter, state, pending)
            return
        await self.settle(window - 1)
        message = pending.message
        if message.expired(router._clock()):
            router._resolve(Resolution(message.id, self.route.name, self.key, "expired"), pending)
            return
        # What is on its way counts too: confirmed and then lost in a crash, it is repeated.
        budget = state.budget
        if budget.full:
            await self.settle(0)
            await router._wait_recorded(state)
        confirmation = await router._send(self.adapter, message, self.target)
        self.in_flight.append((pending, confirmation))
        budget.sending()

    async def settle(self, keep: int) -> None:
        """Take in confirmations, oldest first, until at most ``keep`` are on their way; the
        ones that ask for a retry are retried one by one, in order, once all are in."""
        retry: list[tuple[PendingDelivery, RetryLater]] = []
        router = self.router
        while len(self.in_flight) > (0 if retry else keep):
            pending, confirmation = self.in_flight.popleft()
            try:
                outcome = await router._confirmed(self.adapter, confirmation)
            finally:
                self.state.budget.landed()
            done = router._settled(self.route, self.key, self.target, self.state, pending, outcome)
            if not done:
                assert isinstance(outcome, RetryLater)
                retry.append((pending, outcome))
        # The first asked for a retry with its backoff; the others are tried at once after it
        # (what failed the first, a lost connection, is then mended or they fail on their own).
        for index, (pending, outcome) in enumerate(retry):
            await router._deliver(
                self.route,
                self.key,
                self.target,
                self.adapter,
                self.state,
                pending,
                outcome if index == 0 else None,
            )
