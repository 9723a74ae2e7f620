"""The router over a real on-disk store, with in-process adapters and trio's virtual clock.

Tests that need time use pytest-trio's ``autojump_clock`` (or ``mock_clock``, jumped by hand):
the router's clock is ``EPOCH + trio.current_time()``, so backoff and expiry run in virtual time.
Virtual time may also jump while a store call runs in a thread (to the next timer), so these
tests never count on how many attempts fit in an interval.
Counters are asserted after the router stopped (a stop commits everything confirmed).
"""

from __future__ import annotations

import json
import random
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from adapters.base import Adapter, Message, Outcome, RetryLater, TargetConfig
from adapters.log import LogAdapter
from adapters.log_config import LogAdapterConfig, LogTarget
from fieldgate_common.metrics import Counter, Metrics
from gateway import policy
from gateway.config import JournalConfig, RouteConfig
from gateway.router import RESOLVE_DEFER, RESOLVE_GATHER, RESOLVE_NOTICE, Router, retry_delay
from gateway.routes import RouteTable
from gateway.store import COMMIT_RETRY_CAP, CarriedAcks, Incoming, IngestResult, Resolution, Store
from tests.agent_harness import wait_until
from tests.fake_adapters import FakeAdapter, PipelinedAdapter

EPOCH = 1_700_000_000.0


def clock() -> float:
    return EPOCH + trio.current_time()


def route(name: str = "r", targets: Sequence[str] = ("a",), **kw: object) -> RouteConfig:
    fields: dict[str, object] = {"retry_base": 0.05, "retry_cap": 1.0}
    fields.update(kw)
    return RouteConfig(
        name=name,
        deliver=tuple(LogTarget(t) for t in targets),
        **fields,  # type: ignore[arg-type]
    )


def push(url: str, body: bytes, route_name: str = "r", expires_in: float | None = None) -> Incoming:
    now = clock()
    return Incoming(
        push_message_url=url,
        route=route_name,
        plaintext=body,
        raw_body=b"",
        headers=() if expires_in is None else (("ttl", str(int(expires_in))),),
        received_at=now,
    )


@dataclass
class Harness:
    store: Store
    routes: RouteTable
    router: Router
    metrics: Metrics
    acks: list[str] = field(default_factory=list)
    acked: trio.Event = field(default_factory=trio.Event)
    commits_told: int = 0  # how often the router said it committed (on_committed)

    def admit(self, *batch: Incoming) -> list[IngestResult]:
        """Journal as the agent does: the real policy decides, the store carries it out."""
        return self.store.ingest([policy.admit(i, self.routes, clock()) for i in batch])

    def ingest(self, *batch: Incoming) -> None:
        self.admit(*batch)
        self.router.notify()

    async def wait_acks(self, n: int) -> None:
        while len(self.acks) < n:
            acked = self.acked
            await acked.wait()

    def count(self, name: str, **labels: str) -> float:
        metric = self.metrics.get(name)
        assert isinstance(metric, Counter)
        return metric.get(**labels)


def open_store(tmp_path: Path, routes: Sequence[RouteConfig], **journal: object) -> Store:
    # The store reads its clock in worker threads, where trio.current_time() is unavailable;
    # the run's clock object itself can be read from any thread.
    run_clock = trio.lowlevel.current_clock()
    return Store.open(
        tmp_path / "state",
        journal=JournalConfig(**journal),  # type: ignore[arg-type]
        clock=lambda: EPOCH + run_clock.current_time(),
    )


@asynccontextmanager
async def running(
    store: Store,
    routes: Sequence[RouteConfig],
    adapters: Sequence[Adapter],
    carry_acks: Callable[[], CarriedAcks | None] = lambda: None,
) -> AsyncIterator[Harness]:
    metrics = Metrics()
    harness: Harness

    def on_ack(urls: Sequence[str]) -> None:
        harness.acks.extend(urls)
        harness.acked.set()
        harness.acked = trio.Event()

    def on_committed() -> None:
        harness.commits_told += 1

    table = RouteTable(tuple(routes))
    router = Router(
        store,
        table,
        {a.name: a for a in adapters},
        metrics,
        on_ack=on_ack,
        on_committed=on_committed,
        carry_acks=carry_acks,
        clock=clock,
        retry_floor=0.01,
        rng=random.Random(7),
    )
    harness = Harness(store, table, router, metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        yield harness
        nursery.cancel_scope.cancel()


# -- backoff (pure) ---------------------------------------------------------------------------


def test_retry_delay_grows_caps_and_respects_the_floor():
    top = [retry_delay(n, 1.0, 60.0, 0.1, lambda: 0.999999) for n in range(1, 10)]
    assert top[:6] == pytest.approx([1, 2, 4, 8, 16, 32], rel=1e-5)
    assert max(top) == pytest.approx(60.0, rel=1e-5)
    assert retry_delay(3, 1.0, 60.0, 0.1, lambda: 0.0) == 0.1
    assert retry_delay(10_000, 1.0, 60.0, 0.1, lambda: 0.5) == 30.0  # no overflow


async def test_unknown_adapter_is_refused(tmp_path):
    store = open_store(tmp_path, [route(targets=("nope",))])
    with pytest.raises(ValueError, match="'nope' is not configured"):
        Router(store, RouteTable((route(targets=("nope",)),)), {}, Metrics(), on_ack=print)
    store.close()


# -- delivery semantics -----------------------------------------------------------------------


async def test_in_order_per_target_under_retries(tmp_path, autojump_clock):
    routes = [route()]
    a = FakeAdapter("a")
    a.fail_next = 3
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a]) as h:
        h.ingest(*(push(f"u{i}", b"m%d" % i) for i in range(3)))
        h.ingest(*(push(f"u{i}", b"m%d" % i) for i in range(3, 6)))
        await a.wait_until(lambda: len(a.delivered) == 6)
        assert a.running
    assert a.bodies() == [b"m%d" % i for i in range(6)]
    assert [m.body for m in a.attempts[:4]] == [b"m0"] * 4
    assert h.count("fieldgate_deliveries_retried_total", route="r", adapter="a") == 3
    assert h.count("fieldgate_deliveries_total", route="r", adapter="a", outcome="delivered") == 6
    assert h.count("fieldgate_messages_journalled_total", route="r") == 6
    assert store.queue_usage()["r"].messages == 0
    assert not a.running
    store.close()


async def test_a_hung_target_does_not_block_another(tmp_path):
    routes = [route(targets=("slow", "fast"))]
    slow, fast = FakeAdapter("slow"), FakeAdapter("fast")
    slow.hanging = True
    store = open_store(tmp_path, routes)
    async with running(store, routes, [slow, fast]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(3)))
        await fast.wait_until(lambda: len(fast.delivered) == 3)
        await slow.wait_until(lambda: len(slow.attempts) == 1)
        assert [m.body for m in slow.attempts] == [b"0"]  # still stuck on the first
        assert slow.delivered == []
        snapshot = h.router.snapshot()["r"]
        assert snapshot.queue_messages == 3
        assert snapshot.last_delivery_at is not None  # the fast target delivered
        [stuck] = [t for t in snapshot.targets if t.adapter == "slow"]
        assert stuck.last_delivery_at is None
        slow.release()
        await slow.wait_until(lambda: len(slow.delivered) == 3)
    assert slow.bodies() == fast.bodies() == [b"0", b"1", b"2"]
    store.close()


async def test_expired_while_target_broken_is_never_delivered(tmp_path, mock_clock):
    routes = [route(retry_base=0.2, retry_cap=0.2)]
    a = FakeAdapter("a")
    a.failing = True
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a]) as h:
        h.ingest(push("old", b"stale", expires_in=1.0))
        await a.wait_until(lambda: len(a.attempts) >= 1)
        mock_clock.jump(2.0)  # the message expires while the target is broken
        a.failing = False
        h.ingest(push("new", b"fresh"))
        await a.wait_until(lambda: len(a.delivered) == 1)
    assert a.bodies() == [b"fresh"]
    assert h.count("fieldgate_messages_expired_total", route="r") == 1
    assert store.queue_usage()["r"].messages == 0
    store.close()


async def test_restart_in_the_middle_of_retries(tmp_path, autojump_clock):
    routes = [route(retry_base=100.0, retry_cap=100.0)]
    store = open_store(tmp_path, routes)
    a = FakeAdapter("a")
    async with running(store, routes, [a]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(2)))
        await a.wait_until(lambda: len(a.delivered) == 2)
        a.failing = True
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(2, 5)))
        await a.wait_until(lambda: len(a.attempts) >= 3)  # message 2 failed
    store.close()

    store = open_store(tmp_path, routes)
    [head, *_] = store.pending_deliveries("r", "0:a")
    assert head.message.body == b"2"
    assert head.attempts >= 1 and head.next_attempt_at > EPOCH  # the schedule was persisted
    b = FakeAdapter("a")
    async with running(store, routes, [b]):
        await b.wait_until(lambda: len(b.delivered) == 3)
    assert b.bodies() == [b"2", b"3", b"4"]  # nothing confirmed is delivered again, none lost
    assert EPOCH + b.delivered_at[0] >= head.next_attempt_at  # the schedule was honoured
    store.close()


async def test_rejected_goes_to_dead_letters_and_the_queue_moves_on(tmp_path):
    routes = [route()]
    a = FakeAdapter("a")
    a.reject_bodies = {b"poison"}
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a]) as h:
        h.ingest(push("u1", b"poison"), push("u2", b"fine"))
        await a.wait_until(lambda: len(a.delivered) == 1)
    assert h.count("fieldgate_dead_letters_total", reason="fake rejection") == 1
    [dead] = store.dead_letters()
    assert (dead.reason, dead.plaintext, dead.target) == ("fake rejection", b"poison", "0:a")
    store.close()


async def test_delivered_policy_acks_only_after_every_target(tmp_path):
    routes = [route(targets=("a", "b"), ack="delivered")]
    a, b = FakeAdapter("a"), FakeAdapter("b")
    a.hanging = True
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a, b]) as h:
        [result] = h.admit(push("u1", b"x"))
        assert not result.ack_now
        h.router.notify()
        await b.wait_until(lambda: len(b.delivered) == 1)
        await a.wait_until(lambda: len(a.attempts) == 1)
        assert h.admit(push("u1", b"x"))[0].ack_now is False  # redelivery absorbed
        assert h.acks == []
        assert store.pending_acks() == []
        a.release()
        await h.wait_acks(1)
        assert h.acks == ["u1"]
        assert store.pending_acks() == ["u1"]  # until the agent's DELETE succeeds
    store.close()


async def test_queue_full_policies_are_counted(tmp_path):
    routes = [
        route("drop", queue_max_messages=2),
        route("refuse", queue_max_messages=2, queue_full="refuse-newest"),
    ]
    a = FakeAdapter("a")
    a.hanging = True  # nothing leaves the queues
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a]) as h:
        for name in ("drop", "refuse"):
            h.ingest(*(push(f"{name}{i}", b"%d" % i, route_name=name) for i in range(5)))
        assert h.count("fieldgate_messages_dropped_total", route="drop", reason="queue_full") == 3
        assert h.count("fieldgate_messages_refused_total", route="refuse", reason="queue_full") == 3
        assert h.count("fieldgate_messages_dropped_total", route="refuse", reason="queue_full") == 0
        h.router.publish_gauges()  # as a scrape does
        depth = h.metrics.get("fieldgate_queue_depth")
        assert depth.get(route="drop") == depth.get(route="refuse") == 2  # type: ignore[union-attr]
        a.release()
        await a.wait_until(lambda: len(a.delivered) >= 4)
    bodies = {(m.route, m.body) for m in a.delivered}
    assert ("drop", b"3") in bodies and ("drop", b"4") in bodies  # the newest kept
    assert ("refuse", b"0") in bodies and ("refuse", b"1") in bodies  # the oldest kept
    store.close()


async def test_duplicates_are_counted_not_delivered_twice(tmp_path):
    routes = [route()]
    a = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a]) as h:
        h.ingest(push("u1", b"once"), push("u1", b"once"))
        h.ingest(push("u1", b"once"), push("u2", b"two"))
        await a.wait_until(lambda: len(a.delivered) == 2)
        assert h.count("fieldgate_messages_duplicate_total") == 2
    assert a.bodies() == [b"once", b"two"]
    store.close()


async def test_log_adapter_appends_private_json_lines(tmp_path):
    out = tmp_path / "deliveries.jsonl"
    routes = [route(targets=("file",), ack="delivered")]  # on_ack tells when it is written
    adapter = LogAdapter(LogAdapterConfig("file", path=out))
    store = open_store(tmp_path, routes)
    async with running(store, routes, [adapter]) as h:
        h.ingest(push("u1", "héllo".encode()), push("u2", b"\xff\x00"))
        await h.wait_acks(2)
        assert adapter.health().counters == {"delivered": 2}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["route"], x.get("body"), x.get("body_b64")) for x in lines] == [
        ("r", "héllo", None),
        ("r", None, "/wA="),
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    store.close()


async def test_a_full_disk_while_recording_deliveries_loses_no_confirmation(
    tmp_path, autojump_clock, monkeypatch
):
    import sqlite3

    r = route(ack="delivered")
    store = open_store(tmp_path, [r])
    real_resolve = store.resolve
    failures = {"left": 3}

    def resolve(batch, **kw):  # the disk is full for the first three commits
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_resolve(batch, **kw)

    monkeypatch.setattr(store, "resolve", resolve)
    device = FakeAdapter("a")
    async with running(store, [r], [device]) as h:
        h.ingest(push("u1", b"one"))
        await h.wait_acks(1)  # acknowledged upstream only once the confirmation is on disk
        assert failures["left"] == 0
        assert h.acks == ["u1"]
        assert [m.body for m in device.delivered] == [b"one"]
    store.close()


async def test_a_target_pauses_while_its_confirmations_cannot_be_recorded(
    tmp_path, autojump_clock, monkeypatch
):
    """A crash repeats the confirmed deliveries not yet recorded; a device recognises only its
    last few ids (MAX_UNRECORDED), so no more than that may wait while the disk is full."""
    import sqlite3

    from gateway.router import MAX_UNRECORDED

    r = route()
    store = open_store(tmp_path, [r])
    real_resolve = store.resolve
    disk_full = {"on": True}

    def resolve(batch, **kw):
        if disk_full["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_resolve(batch, **kw)

    monkeypatch.setattr(store, "resolve", resolve)
    device = FakeAdapter("a")
    async with running(store, [r], [device]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(20)))
        await device.wait_until(lambda: len(device.delivered) == MAX_UNRECORDED)
        await trio.sleep(60)  # retries of the record come and go: the target stays paused

        def paused_error() -> str:
            [target] = h.router.snapshot()["r"].targets
            return target.last_error or ""

        # In real time: the failing record runs in a worker thread, which the autojump clock
        # does not wait for (a virtual wait could time out while the thread is still running).
        await real_wait(lambda: "cannot record" in paused_error(), "the target reports its pause")
        assert len(device.delivered) == MAX_UNRECORDED
        disk_full["on"] = False
        await device.wait_until(lambda: len(device.delivered) == 20)
    assert [m.body for m in device.delivered] == [b"%d" % i for i in range(20)]
    assert store.pending_deliveries("r", "0:a") == []
    store.close()


def delivery_waits(store: Store, message_id: str) -> bool:
    return any(p.message.id == message_id for p in store.pending_deliveries("r", "0:a"))


async def real_wait(predicate: Callable[[], bool], what: str) -> None:
    """Under a clock that does not jump by itself: poll in real time (the store's commits run
    in worker threads) until ``predicate`` holds."""
    deadline = time.monotonic() + 10.0
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await trio.to_thread.run_sync(time.sleep, 0.005)


async def recorded(store: Store, message_id: str, what: str) -> None:
    """Until ``message_id`` has no delivery left in the journal (see real_wait)."""
    await real_wait(lambda: not delivery_waits(store, message_id), what)


async def deliver_one(h: Harness, device: FakeAdapter) -> str:
    """Journal one message and wait until ``device`` confirmed it; its journal id."""
    [first] = h.admit(push("u1", b"one"))
    assert first.message_id is not None
    h.router.notify()
    await device.wait_until(lambda: len(device.delivered) == 1)
    return first.message_id


async def test_finished_deliveries_ride_on_the_next_ingest_then_wait_no_more(tmp_path, mock_clock):
    """At field rates a delivery costs no transaction of its own: the next message's ingest
    commit takes it along (carry); the committer then finds nothing left to record."""
    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        first_id = await deliver_one(h, device)
        await trio.testing.wait_all_tasks_blocked()
        assert delivery_waits(store, first_id)  # confirmed, not yet recorded
        carried = h.router.carry()
        assert carried is not None
        assert carried.resolutions == (Resolution(first_id, "r", "0:a", "delivered"),)
        assert h.router.carry() is None  # handed over once
        before = store.transactions
        admission = policy.admit(push("u2", b"two"), h.routes, clock())
        store.ingest([admission], resolved=carried.resolutions)
        carried.done(True)
        assert store.transactions == before + 1
        assert not delivery_waits(store, first_id)
        mock_clock.jump(RESOLVE_DEFER + 1.0)  # the committer wakes: nothing is left for it
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(time.sleep, 0.05)
        assert store.transactions == before + 1
    store.close()


async def test_unclaimed_deliveries_are_recorded_alone_after_the_defer(tmp_path, mock_clock):
    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        first_id = await deliver_one(h, device)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(RESOLVE_DEFER - 0.1)
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(time.sleep, 0.05)
        assert delivery_waits(store, first_id)  # no ingest came: still waiting
        mock_clock.jump(0.2)
        await recorded(store, first_id, "the committer records it alone")
    store.close()


def waiting(h: Harness) -> tuple[int, int]:
    """What the status page and the queue gauges show for route "r": (messages, bytes)."""
    h.router.publish_gauges()
    snap = h.router.snapshot()["r"]
    gauge = h.metrics.get("fieldgate_queue_depth")
    assert gauge.get(route="r") == snap.queue_messages  # type: ignore[attr-defined]
    return snap.queue_messages, snap.queue_bytes


async def test_a_delivered_message_waits_no_more_though_its_record_is_deferred(
    tmp_path, mock_clock
):
    """Its record waits for the next message's commit (RESOLVE_DEFER, a minute), but the status
    page and the gauges leave it out as soon as its delivery is confirmed; the record then
    takes it out of the journal without counting it twice."""
    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        first_id = await deliver_one(h, device)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(30.0)  # a few messages a minute: the next one's commit comes first
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(time.sleep, 0.05)
        assert delivery_waits(store, first_id)  # in the journal, its record to come
        assert waiting(h) == (0, 0)
        device.failing = True
        h.ingest(push("u2", b"second"))
        await device.wait_until(lambda: len(device.attempts) == 2)
        assert waiting(h) == (1, len(b"second"))
        mock_clock.jump(RESOLVE_DEFER)
        await recorded(store, first_id, "the committer records it")
        assert waiting(h) == (1, len(b"second"))  # not counted out twice
    store.close()


async def test_a_message_of_two_targets_waits_until_both_finished(tmp_path, mock_clock):
    """One target's confirmation alone leaves the message waiting; the other's ends it, before
    either is recorded."""
    routes = [route(targets=("a", "b"))]
    a, b = FakeAdapter("a"), FakeAdapter("b")
    b.failing = True
    store = open_store(tmp_path, routes)
    async with running(store, routes, [a, b]) as h:
        h.ingest(push("u1", b"one"))
        await a.wait_until(lambda: len(a.delivered) == 1)
        await b.wait_until(lambda: len(b.attempts) >= 1)
        assert waiting(h) == (1, 3)
        b.failing = False
        mock_clock.jump(COMMIT_RETRY_CAP)  # b's retry
        await b.wait_until(lambda: len(b.delivered) == 1)
        await trio.testing.wait_all_tasks_blocked()
        assert store.pending_deliveries("r", "1:b")  # neither recorded yet
        assert waiting(h) == (0, 0)
    store.close()


async def test_a_new_router_counts_what_an_earlier_one_did_not_record_as_waiting(tmp_path):
    """A reload's new router delivers again what the old one confirmed but could not record (a
    full disk at its stop): the old one's note that it finished no longer holds."""
    routes = [route()]
    device = FakeAdapter("a")
    device.failing = True
    store = open_store(tmp_path, routes)
    [result] = store.ingest([policy.admit(push("u1", b"one"), RouteTable(routes), clock())])
    assert result.message_id is not None
    store.note_finished(result.message_id, "r", 3)  # the old router's, never recorded
    assert store.queue_usage()["r"].messages == 0
    async with running(store, routes, [device]) as h:
        h.router.notify()
        await device.wait_until(lambda: len(device.attempts) >= 1)
        assert waiting(h) == (1, 3)
    store.close()


async def test_an_expiry_or_a_rejection_is_recorded_soon(tmp_path, mock_clock):
    """What an operator looks for -- the dead letter, the expiry counter -- is recorded
    RESOLVE_NOTICE after, not a delivery's RESOLVE_DEFER."""
    routes = [route()]
    device = FakeAdapter("a")
    device.reject_bodies.add(b"bad")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        h.ingest(push("u1", b"bad"))
        await device.wait_until(lambda: len(device.attempts) == 1)
        await trio.testing.wait_all_tasks_blocked()
        assert waiting(h) == (0, 0)
        assert store.dead_letters() == []
        mock_clock.jump(RESOLVE_NOTICE)
        await real_wait(lambda: len(store.dead_letters()) == 1, "the dead letter")
        assert RESOLVE_NOTICE < RESOLVE_DEFER
    store.close()


class AckGiver:
    """The journal writer's side of carry_acks: confirmed acknowledgements handed out once,
    taken back when the commit that carried them failed."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.outcomes: list[bool] = []

    def __call__(self) -> CarriedAcks | None:
        if not self.keys:
            return None
        keys, self.keys = tuple(self.keys), []

        def done(recorded: bool) -> None:
            self.outcomes.append(recorded)
            if not recorded:
                self.keys[:0] = keys

        return CarriedAcks(keys, done)


@pytest.mark.parametrize("failures", [0, 1])
async def test_a_record_of_deliveries_takes_the_confirmed_acknowledgements_along(
    tmp_path, mock_clock, monkeypatch, failures
):
    """At a few messages a minute no ingest comes to take either along: the deliveries recorded
    alone take the acknowledgements the service confirmed meanwhile (one transaction, not two);
    a failed record gives them back to the journal writer, and the retry takes them again."""
    import sqlite3

    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    real_resolve = store.resolve
    left = {"failures": failures}

    def resolve(batch, **kw):
        if left["failures"]:
            left["failures"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real_resolve(batch, **kw)

    monkeypatch.setattr(store, "resolve", resolve)
    giver = AckGiver()
    async with running(store, routes, [device], carry_acks=giver) as h:
        first_id = await deliver_one(h, device)
        assert store.pending_acks() == ["u1"]
        giver.keys.append("u1")  # the service confirmed the DELETE
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(RESOLVE_DEFER)
        if failures:
            await real_wait(lambda: giver.outcomes == [False], "the failed record gives back")
            assert giver.keys == ["u1"]
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(COMMIT_RETRY_CAP)  # the committer's backoff
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(RESOLVE_GATHER)  # then it records soon
        await recorded(store, first_id, "the committer records the delivery")
        assert giver.outcomes == [False] * failures + [True]
        assert giver.keys == []
        assert store.pending_acks() == []  # recorded in the same transaction
    store.close()


async def test_the_router_says_when_it_committed_so_a_checkpoint_can_follow(tmp_path, mock_clock):
    """The router's own commits -- deliveries recorded alone, a prune -- are told (on_committed),
    so that the journal writer checkpoints what they wrote in a quiet moment, not the next
    message's commit."""
    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes, dedupe_retention=100.0)
    async with running(store, routes, [device]) as h:
        first_id = await deliver_one(h, device)
        h.ingest(push("u2", b"two"))  # the newest row always stays: a second one
        await device.wait_until(lambda: len(device.delivered) == 2)
        await trio.testing.wait_all_tasks_blocked()
        assert h.commits_told == 0  # confirmed, not recorded yet
        mock_clock.jump(RESOLVE_DEFER)
        await recorded(store, first_id, "the committer records them alone")
        await real_wait(lambda: h.commits_told == 1, "the record told")
        assert store.dedupe_records() == 2
        mock_clock.jump(200.0)  # past the retention of the record never acknowledged
        await real_wait(lambda: h.commits_told == 2, "the prune told")
        assert store.dedupe_records() == 1
    store.close()


async def test_a_failed_carry_gives_the_deliveries_back_to_the_committer(tmp_path, mock_clock):
    routes = [route()]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        first_id = await deliver_one(h, device)
        carried = h.router.carry()
        assert carried is not None
        carried.done(False)  # the ingest commit that took them failed
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(RESOLVE_DEFER)
        await recorded(store, first_id, "the committer records what came back")
    store.close()


async def test_an_acknowledgement_waiting_for_the_record_is_not_deferred(tmp_path, mock_clock):
    """A `delivered`-policy message is acknowledged upstream only once its deliveries are
    recorded: those are gathered RESOLVE_GATHER, not RESOLVE_DEFER."""
    routes = [route(ack="delivered")]
    device = FakeAdapter("a")
    store = open_store(tmp_path, routes)
    async with running(store, routes, [device]) as h:
        h.ingest(push("u1", b"one"))
        await device.wait_until(lambda: len(device.delivered) == 1)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(RESOLVE_GATHER)
        with trio.fail_after(10):  # real time: the clock is not jumped again
            await h.wait_acks(1)
        assert h.acks == ["u1"]
    store.close()


class _OwnReceivers(FakeAdapter):
    """Each target its own receiver (as MQTT topics): a repeat window each."""

    def repeat_scope(self, target: TargetConfig) -> str | None:
        return None


@pytest.mark.parametrize(("adapter", "paused_at"), [(FakeAdapter, 1), (_OwnReceivers, 2)])
async def test_routes_to_one_device_share_its_repeat_window(
    tmp_path, monkeypatch, adapter, paused_at
):
    """Two routes to one serial device: the device remembers its last MAX_UNRECORDED ids
    whichever route they came by, so that many confirmations may wait in all, not per route
    (the chaos run, seed 777, saw 16 repeats after a crash with two routes of 8 each)."""
    import sqlite3

    from gateway.router import MAX_UNRECORDED, PAUSED_UNRECORDED

    routes = [route("one"), route("two")]
    store = open_store(tmp_path, routes)
    monkeypatch.setattr(
        store,
        "resolve",
        lambda batch, **kw: (_ for _ in ()).throw(sqlite3.OperationalError("full")),
    )
    device = adapter("a")
    async with running(store, routes, [device]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i, "one" if i % 2 else "two") for i in range(40)))

        def paused() -> bool:
            targets = [t for r in h.router.snapshot().values() for t in r.targets]
            return all(t.last_error == PAUSED_UNRECORDED for t in targets)

        # (Real time: on a virtual clock the store's threads would let it run far ahead.)
        await wait_until(paused, "both routes pause, waiting for the journal")
        assert len(device.delivered) == MAX_UNRECORDED * paused_at
    store.close()


class _SlowDevice(FakeAdapter):
    """Answers after a moment, so that two routes' attempts overlap; keeps the most
    confirmations it was owed at once (delivered, unrecorded, plus attempts on the line)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.on_the_line = 0
        self.most_owed = 0

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        self.on_the_line += 1
        self.most_owed = max(self.most_owed, len(self.delivered) + self.on_the_line)
        try:
            await trio.sleep(0.002)
            return await super().deliver(message, target)
        finally:
            self.on_the_line -= 1


async def test_routes_to_one_device_count_what_is_on_the_line_too(tmp_path, monkeypatch):
    """A crash repeats the unrecorded confirmations and the message on the line; with two
    routes to one device each had one on the line, so the device could be owed 9 repeats while
    it remembers 8 (the chaos run, seed 777, once)."""
    import sqlite3

    from gateway.router import MAX_UNRECORDED, PAUSED_UNRECORDED

    routes = [route("one"), route("two")]
    store = open_store(tmp_path, routes)
    monkeypatch.setattr(
        store,
        "resolve",
        lambda batch, **kw: (_ for _ in ()).throw(sqlite3.OperationalError("full")),
    )
    device = _SlowDevice("a")
    async with running(store, routes, [device]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i, "one" if i % 2 else "two") for i in range(40)))

        def paused() -> bool:
            targets = [t for r in h.router.snapshot().values() for t in r.targets]
            return all(t.last_error == PAUSED_UNRECORDED for t in targets)

        await wait_until(paused, "both routes pause, waiting for the journal")
        assert len(device.delivered) == MAX_UNRECORDED
        assert device.most_owed == MAX_UNRECORDED
    store.close()


class _AnswerLost(FakeAdapter):
    """Processes the message ``b"m"`` but its first answer is lost (a port closed before it
    came back): the router can only retry it, and the device must still recognise the retry."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.lost = False

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        if message.body == b"m" and not self.lost:
            self.lost = True
            self.delivered.append(message)  # processed
            return RetryLater("port closed", 100.0)
        return await super().deliver(message, target)


async def test_a_message_in_doubt_is_retried_while_its_device_still_remembers_it(
    tmp_path, mock_clock
):
    """Two routes to one serial device; one route's answer is lost and its retry waits 100 s.
    The other route sends no more than leaves the message among the device's last
    MAX_UNRECORDED ids (the chaos run, seed 4: 23 of the other route's came in between and the
    retry was processed again)."""
    from gateway.router import MAX_UNRECORDED, PAUSED_DOUBT

    routes = [route("one"), route("two")]
    store = open_store(tmp_path, routes)
    device = _AnswerLost("a")
    async with running(store, routes, [device]) as h:
        h.ingest(push("m", b"m", "one"))
        await real_wait(lambda: device.lost, "the answer lost")
        h.ingest(*(push(f"u{i}", b"%d" % i, "two") for i in range(20)))

        def two_paused() -> bool:
            [target] = h.router.snapshot()["two"].targets
            return target.last_error == PAUSED_DOUBT

        await real_wait(two_paused, "route two pauses for the retry of route one's message")
        assert 1 < len(device.delivered) <= MAX_UNRECORDED
        mock_clock.jump(100.0)  # the retry is due
        await real_wait(lambda: len(device.delivered) == 22, "everything delivered")
        bodies = [m.body for m in device.delivered]
        retried = bodies.index(b"m", 1)
        assert retried <= MAX_UNRECORDED  # the device's last MAX_UNRECORDED ids still had it
        assert sorted(bodies) == sorted([b"m", b"m", *(b"%d" % i for i in range(20))])
    store.close()


async def test_a_pipelined_target_sends_in_order_without_waiting_for_each_confirmation(tmp_path):
    r = route()
    store = open_store(tmp_path, [r])
    device = PipelinedAdapter("a", window=4)
    async with running(store, [r], [device]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(6)))
        await device.wait_until(lambda: len(device.sent) == 4)  # the window, none confirmed
        assert [m.body for m in device.sent] == [b"0", b"1", b"2", b"3"]
        device.answer(2)  # confirmations come in any order; they are taken in oldest first
        device.answer(0)
        await device.wait_until(lambda: len(device.sent) == 5)  # 0 settled: 4 is sent
        assert [m.body for m in device.delivered] == [b"0"]  # 2's waits behind 1's
        while len(device.delivered) < 6:
            await device.wait_until(lambda: device.waiting or len(device.delivered) == 6)
            if device.waiting:
                device.answer()
        assert [m.body for m in device.sent] == [b"%d" % i for i in range(6)]
    assert device.max_waiting == 4  # never more than the window on its way
    assert store.pending_deliveries("r", "0:a") == []
    store.close()


async def test_a_pipelined_retry_settles_the_window_then_retries_in_order(tmp_path, autojump_clock):
    r = route()
    store = open_store(tmp_path, [r])
    device = PipelinedAdapter("a", window=3)
    async with running(store, [r], [device]) as h:
        h.ingest(*(push(f"u{i}", b"%d" % i) for i in range(5)))
        await device.wait_until(lambda: len(device.sent) == 3)
        device.answer(0, RetryLater("connection lost"))  # 0 fails, then 1 and 2 too
        device.answer(0, RetryLater("connection lost"))
        device.answer(0, RetryLater("connection lost"))
        # Retried one by one, in order (each waits for its own answer).
        for expected in (b"0", b"1", b"2", b"3", b"4"):
            await device.wait_until(lambda: device.waiting)
            assert device.waiting[0].message.body == expected
            device.answer()
        await device.wait_until(lambda: len(device.delivered) == 5)
    assert [m.body for m in device.delivered] == [b"0", b"1", b"2", b"3", b"4"]
    store.close()


def test_prune_waits_for_the_earliest_confirmed_record_then_sleeps():
    """After the last message of a while one prune forgets the rest (when the earliest
    confirmed record is due, not on a fixed beat; with few records, a while after, so that one
    prune takes several), then the journal sleeps."""
    from gateway.router import (
        PRUNE_BUSY_INTERVAL,
        PRUNE_DUE_SLACK,
        PRUNE_IDLE_INTERVAL,
        PRUNE_LAZY_DELAY,
        PRUNE_LAZY_RECORDS,
    )
    from gateway.router import prune_interval as interval

    day, many = 86400.0, PRUNE_LAZY_RECORDS
    assert interval(1, None, 0.0, 28 * day) == PRUNE_IDLE_INTERVAL  # only the newest row
    assert interval(1, 50.0, 0.0, 28 * day) == PRUNE_IDLE_INTERVAL
    assert interval(5, None, 0.0, 28 * day) == PRUNE_LAZY_DELAY  # nothing confirmed yet
    assert interval(many, None, 0.0, 28 * day) == PRUNE_BUSY_INTERVAL
    assert interval(many, 1000.0 + 60, 1000.0, 28 * day) == 60 + PRUNE_DUE_SLACK  # due in 60 s
    assert interval(many, 1000.0 + 1, 1000.0, 28 * day) == PRUNE_BUSY_INTERVAL  # never closer
    assert interval(many, 900.0, 1000.0, 28 * day) == PRUNE_BUSY_INTERVAL  # overdue: soon
    assert interval(many, 1000.0 + day, 1000.0, 28 * day) == day + PRUNE_DUE_SLACK
    # A few messages a minute: the earliest record waits PRUNE_LAZY_DELAY past its due time.
    assert interval(many - 1, 1000.0 + 60, 1000.0, 28 * day) == 60 + PRUNE_LAZY_DELAY
    assert interval(5, 900.0, 1000.0, 28 * day) == PRUNE_LAZY_DELAY - 100
    assert interval(5, 1000.0 - PRUNE_LAZY_DELAY, 1000.0, 28 * day) == PRUNE_BUSY_INTERVAL
    assert interval(5, 1000.0 + day, 1000.0, 600.0) == 60.0  # ten times per retention
    assert interval(1, None, 0.0, 5.0) == 1.0  # and never a busy loop
