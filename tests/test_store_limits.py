"""A full journal: what is refused stays with the push service, and the limit is what is on disk.

The reproduction of the field test: ``journal.max_bytes = "200KiB"`` and 1,000 messages, with
their deliveries held up (nothing is delivered while they arrive). Before, 591 of them were
acknowledged and lost, and the files on disk were a 376 KB database and a 4.1 MB WAL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import policy
from gateway.config import RouteConfig
from gateway.store import DB_NAME, Resolution, wal_budget
from gateway.store_types import QueueUsage
from tests.test_store import JournalUnderTest, incoming, open_store, route

LIMIT = 200 * 1024
MESSAGES = 1000
BATCH = 10  # the agent commits what arrived together: ten at a time here
PAYLOAD = 300
FREED_PAGES_SLACK = 1.05


def files_on_disk(store: JournalUnderTest) -> int:
    """The bytes of the journal's files as ``ls`` shows them (database, WAL)."""
    db = store.path
    wal = db.with_name(DB_NAME + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def url(n: int) -> str:
    return f"https://push.example/m/{n:06d}-{'k' * 60}"  # a push message URL's usual length


def push_all(store: JournalUnderTest, *, acked_upstream: bool = True) -> dict[str, list[str]]:
    """Ingest MESSAGES in batches as the agent does (recording the DELETEs of the acked ones);
    returns the URLs by status, and checks the files after every commit."""
    by_status: dict[str, list[str]] = {}
    acked: list[str] = []
    for start in range(0, MESSAGES, BATCH):
        batch = [incoming(url(n), body=os.urandom(PAYLOAD)) for n in range(start, start + BATCH)]
        now = store._clock()
        results = store.ingest([policy.admit(i, store.routes, now) for i in batch], acked=acked)
        acked = [r.push_message_url for r in results if r.ack_now] if acked_upstream else []
        for r in results:
            by_status.setdefault(r.status, []).append(r.push_message_url)
            assert r.ack_now == (r.status == "journalled" and not _held(store)), r
        assert store.disk_bytes() <= LIMIT, "pages in use + WAL over journal.max_bytes"
        # The database file also holds the pages that dropped messages freed (reused by the next
        # inserts; it never shrinks): a few percent.
        assert files_on_disk(store) <= LIMIT * FREED_PAGES_SLACK, "the files far over the limit"
    return by_status


def _held(store: JournalUnderTest) -> bool:
    (only,) = store.routes
    return only.ack == "delivered"


@pytest.mark.parametrize(
    ("queue_full", "ack"),
    [("refuse-newest", "stored"), ("refuse-newest", "delivered"), ("drop-oldest", "delivered")],
)
def test_a_full_journal_refuses_without_acknowledging(
    tmp_path: Path, queue_full: str, ack: str
) -> None:
    store = open_store(tmp_path, route(queue_full=queue_full, ack=ack), max_bytes=LIMIT)
    by_status = push_all(store)
    journalled, refused = by_status["journalled"], by_status["refused"]
    assert set(by_status) == {"journalled", "refused"}
    assert len(journalled) + len(refused) == MESSAGES
    assert len(journalled) > 100  # the limit holds a useful number of them
    # Nothing refused is owed an ack, remembered, or counted as dropped: the service keeps it.
    assert not set(store.pending_acks()) & set(refused)
    counts = store.take_counts()
    assert counts.dropped == {} and counts.released_acks == []
    assert sum(counts.refused.values()) == len(refused)
    # Every journalled message is still there for its device.
    pending = store.pending_deliveries("r", "0:a", limit=MESSAGES)
    assert [p.push_message_url for p in pending] == journalled
    # Deliveries make room once their acknowledgements are confirmed (the rows stay as dedupe
    # records until then); the service's redelivery of a refused message is then journalled.
    released = store.resolve([Resolution(p.message.id, "r", "0:a", "delivered") for p in pending])
    assert sorted(released) == (sorted(journalled) if ack == "delivered" else [])
    store.mark_acked(released)
    [again] = store.admit([incoming(refused[0], body=b"redelivered")])
    assert again.status == "journalled"
    store.close()


def test_drop_oldest_under_stored_drops_and_counts_the_oldest(tmp_path: Path) -> None:
    # The oldest were in our custody already: dropping them (counted, logged) keeps the newest.
    store = open_store(tmp_path, route(queue_full="drop-oldest"), max_bytes=LIMIT)
    by_status = push_all(store)
    counts = store.take_counts()
    dropped = sum(n for (_route, reason), n in counts.dropped.items() if reason == "journal_full")
    assert dropped > 0
    pending = store.pending_deliveries("r", "0:a", limit=MESSAGES)
    journalled = by_status["journalled"]
    assert pending and pending[-1].push_message_url == journalled[-1]  # the newest are kept
    assert len(journalled) == len(pending) + dropped
    # The dedupe records of dropped messages whose acknowledgements were confirmed go first.
    assert "refused" not in by_status
    store.close()


def test_drop_oldest_refuses_once_unconfirmed_dedupe_records_fill_the_journal(
    tmp_path: Path,
) -> None:
    # Acknowledgements never confirmed: each row must stay as the dedupe record (the service
    # may deliver its message again), and a small body frees no page, so dropping could not
    # make room: it refuses instead of dropping what it holds for nothing.
    store = open_store(tmp_path, route(queue_full="drop-oldest"), max_bytes=LIMIT)
    by_status = push_all(store, acked_upstream=False)
    counts = store.take_counts()
    assert counts.dropped == {}
    assert by_status.get("refused") and not set(by_status["refused"]) & set(store.pending_acks())
    store.close()


def test_the_wal_is_bounded_and_counted(tmp_path: Path) -> None:
    store = open_store(tmp_path, route(queue_full="refuse-newest"), max_bytes=LIMIT)
    wal = store.path.with_name(DB_NAME + "-wal")
    for start in range(0, 300, BATCH):
        store.admit([incoming(url(n), body=os.urandom(PAYLOAD)) for n in range(start, start + 10)])
        assert wal.stat().st_size <= wal_budget(LIMIT)
    store.close()


def test_the_room_decision() -> None:
    r = RouteConfig(name="r", deliver=(), queue_max_messages=2, queue_max_bytes=1000)
    space = policy.JournalSpace(used=0, limit=10_000)
    empty, full = QueueUsage(0, 0, None), QueueUsage(2, 200, None)
    assert policy.room_for(r, empty, 100, space) == policy.Admit()
    assert policy.room_for(r, full, 100, space) == policy.DropOldest("queue_full")
    delivered = RouteConfig(name="r", deliver=(), ack="delivered", queue_max_messages=2)
    # ack = "delivered" with no target acknowledges on commit: it holds nothing to lose.
    assert policy.room_for(delivered, full, 100, space) == policy.DropOldest("queue_full")
    delivered = RouteConfig(
        name="r", deliver=route().deliver, ack="delivered", queue_max_messages=2
    )
    assert policy.room_for(delivered, full, 100, space) == policy.Refuse("queue_full")
    refuse = RouteConfig(name="r", deliver=(), queue_full="refuse-newest", queue_max_messages=2)
    assert policy.room_for(refuse, full, 100, space) == policy.Refuse("queue_full")
    disk_full = policy.JournalSpace(used=9_900, limit=10_000)
    assert policy.room_for(r, QueueUsage(1, 100, None), 100, disk_full) == policy.DropOldest(
        "journal_full"
    )
    assert policy.room_for(r, empty, 100, disk_full) == policy.Refuse("journal_full")
    # Full of something else: dropping all the route holds would not make room.
    other = policy.JournalSpace(used=9_990, limit=10_000)
    assert policy.room_for(r, QueueUsage(1, 10, None), 600, other) == policy.Refuse("journal_full")
    assert policy.room_for(r, empty, 1001, space) == policy.NeverFits()
    assert (
        policy.room_for(r, empty, 100, policy.JournalSpace(0, policy.disk_cost(100) - 1))
        == policy.NeverFits()
    )
