"""A journal on a disk smaller than its limit, or filled by something else.

The chaos run (seed 777) found it: on the 8 MiB state partition the journal's own database and
WAL filled the disk (delivered messages left one dedupe record per page), and from then on no
commit could go through -- no delivery recorded, no prune, no checkpoint, since each needs a
little room -- so nothing was delivered again. Now delivered messages leave compact records and
the journal refuses new messages (left with the push service) while it still has the room to
make progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import policy
from gateway.store import DB_NAME, DISK_RESERVE, Resolution
from gateway.store_types import QueueUsage
from tests.chaos_peers import fill_disk, tmpfs
from tests.test_store import Clock, JournalUnderTest, incoming, open_store, route

BODY = 470  # the chaos run's serial messages
BATCH = 10


def url(n: int) -> str:
    return f"http://127.0.0.1:41673/message/{n:08d}{'k' * 24}"


def fill(store: JournalUnderTest, start: int, count: int) -> dict[str, list[str]]:
    """Offer ``count`` messages from number ``start``, BATCH per commit; URLs by status."""
    by_status: dict[str, list[str]] = {}
    for first in range(start, start + count, BATCH):
        batch = [incoming(url(n), body=os.urandom(BODY)) for n in range(first, first + BATCH)]
        for result in store.admit(batch):
            by_status.setdefault(result.status, []).append(result.push_message_url)
    return by_status


def deliver_everything(store: JournalUnderTest) -> None:
    """Resolve every delivery in commits of 64, as the router's (a target pauses once its
    receiver's repeat window of confirmations waits), and confirm the acknowledgements."""
    pending = store.pending_deliveries("r", "0:a", limit=1_000_000)
    for start in range(0, len(pending), 64):
        chunk = pending[start : start + 64]
        store.resolve([Resolution(p.message.id, "r", "0:a", "delivered") for p in chunk])
        store.mark_acked([p.push_message_url for p in chunk])


def pages_in_use(store: JournalUnderTest) -> int:
    conn = store._conn
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return pages - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        yield disk


def test_delivered_messages_leave_compact_dedupe_records(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, 0, 2000)
    deliver_everything(store)
    # A record is ~130 bytes: several to a 1 KiB page (before: one per page, 2,000 pages).
    assert pages_in_use(store) < 2000 / 4
    assert store.dedupe_records() == 2000
    [again] = store.admit([incoming(url(5), body=b"redelivered")])
    assert again.status == "duplicate"  # still remembered
    store.close()


def test_messages_delivered_one_at_a_time_share_pages_too(tmp_path: Path) -> None:
    # The field's case: each message delivered before the next arrives (its row updated in
    # place, IN_PLACE_ROWS); the next inserts fill the page it left room in.
    store = open_store(tmp_path)
    for n in range(2000):
        [result] = store.admit([incoming(url(n), body=os.urandom(BODY))])
        assert result.message_id is not None
        store.resolve([Resolution(result.message_id, "r", "0:a", "delivered")])
        store.mark_acked([result.push_message_url])
    assert pages_in_use(store) < 2000 / 3
    store.close()


def test_a_disk_smaller_than_the_limit_refuses_and_recovers(small_disk: Path) -> None:
    # journal.max_bytes is the default 256 MiB; the disk holds 4 MiB.
    store = open_store(small_disk, route(queue_full="drop-oldest"))
    by_status = fill(store, 0, 12_000)
    refused, journalled = by_status.get("refused", []), by_status["journalled"]
    assert refused and len(journalled) > 2000, {k: len(v) for k, v in by_status.items()}
    counts = store.take_counts()
    assert counts.dropped == {}  # a full disk never drops what the journal holds
    assert counts.refused == {("r", "disk_full"): len(refused)}
    assert store.disk_full
    assert not set(store.pending_acks()) & set(refused)  # left with the service
    # Room is left to make progress: every delivery is recorded, acknowledgements confirmed,
    # dedupe records pruned (each of these commits once failed with "database or disk is full").
    deliver_everything(store)
    assert store.queue_usage()["r"].messages == 0
    clock = store._clock
    assert isinstance(clock, Clock)
    clock.now += policy.DEDUPE_GRACE + 1
    assert store.prune() > 0
    # And the service's redeliveries are taken again.
    again = fill(store, len(journalled), 100)
    assert set(again) == {"journalled"}
    assert not store.disk_full
    store.close()


def test_a_disk_filled_by_something_else_refuses_until_it_is_freed(small_disk: Path) -> None:
    store = open_store(small_disk, route(queue_full="drop-oldest"))
    assert set(fill(store, 0, 200)) == {"journalled"}
    filler = small_disk / "filler"  # the state directory is on the same tmpfs
    fill_disk(filler)
    try:
        by_status = fill(store, 200, 50)
        assert set(by_status) == {"refused"}
        assert store.disk_full
        counts = store.take_counts()
        assert counts.dropped == {} and set(counts.refused) == {("r", "disk_full")}
    finally:
        filler.unlink()
    assert set(fill(store, 200, 50)) == {"journalled"}
    assert not store.disk_full
    assert (store.path.parent / DB_NAME).exists()
    store.close()


def test_the_disk_room_decision() -> None:
    r = route(queue_full="drop-oldest")
    some = QueueUsage(10, 1000, None)
    roomy = policy.JournalSpace(0, 10**9, disk_room=10**6)
    assert policy.room_for(r, some, 100, roomy) == policy.Admit()
    tight = policy.JournalSpace(0, 10**9, disk_room=policy.disk_cost(100) - 1)
    assert policy.room_for(r, some, 100, tight) == policy.Refuse("disk_full")
    unknown = policy.JournalSpace(0, 10**9, disk_room=None)
    assert policy.room_for(r, some, 100, unknown) == policy.Admit()
    # Poison is still poison: a message larger than the queue is a dead letter, not refused.
    assert isinstance(policy.room_for(r, some, 10**8, tight), policy.NeverFits)
    assert DISK_RESERVE > 0
