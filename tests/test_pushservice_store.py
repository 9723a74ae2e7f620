"""The storage contract, run against both stores: embedded SQLite and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushservice.model import NewMessage, Subscription, Urgency, new_token
from pushservice.store import (
    Accepted,
    Changes,
    DueQuery,
    InvalidSet,
    Store,
    decode_payload,
    encode_changes,
)
from pushservice.store_postgres import PostgresStore
from pushservice.store_sqlite import SqliteStore
from tests.postgres import Postgres, pg_url_fixture, postgres_fixture  # noqa: F401

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "push.sqlite3")
    else:
        made = PostgresStore(request.getfixturevalue("pg_url"), node="test", pool_size=4)
    yield made
    made.close()


def message(
    sub: Subscription, *, ttl: float = 60, topic: str | None = None, **kw: object
) -> NewMessage:
    fields: dict[str, object] = {
        "id": new_token(),
        "sub_id": sub.id,
        "push_id": sub.push_id,
        "set_id": sub.set_id,
        "body": b"body",
        "content_encoding": "aes128gcm",
        "urgency": Urgency.NORMAL,
        "topic": topic,
        "created": NOW,
        "expires": NOW + ttl,
        "receipt_id": None,
    }
    fields.update(kw)
    return NewMessage(**fields)  # type: ignore[arg-type]


def accept(
    store: Store, m: NewMessage, *, max_pending: int = 100, claimed: bool = False
) -> Accepted:
    result = store.accept(m, max_pending=max_pending, claimed=claimed)
    assert isinstance(result, Accepted), result
    return result


def test_subscribe_into_sets(store: Store) -> None:
    first = store.subscribe(None, None, NOW)
    second = store.subscribe(first.set_id, b"\x04" * 65, NOW)
    assert second.set_id == first.set_id and second.id != first.id
    assert store.subscription_by_push(second.push_id) == second
    assert store.exists("set", first.set_id) and store.exists("subscription", first.id)
    with pytest.raises(InvalidSet):
        store.subscribe("no-such-set", None, NOW)
    store.close_sets()
    with pytest.raises(InvalidSet):
        store.subscribe(first.set_id, None, NOW)


def test_claim_takes_due_messages_once_and_in_order(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    ids = [accept(store, message(sub)).message.id for _ in range(3)]
    query = DueQuery(sets=(sub.set_id,))
    claimed = store.claim(query, now=NOW, limit=2)
    assert [m.id for m in claimed] == ids[:2]
    assert [m.id for m in store.claim(query, now=NOW, limit=10)] == ids[2:]
    assert store.claim(query, now=NOW, limit=10) == []
    changes = store.release([ids[0]])
    assert changes == Changes(due=frozenset({(sub.set_id, sub.id)}))
    assert [m.id for m in store.claim(DueQuery(subscriptions=(sub.id,)), now=NOW, limit=9)] == [
        ids[0]
    ]


def test_claim_honours_the_urgency_floor_and_expiry(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    low = accept(store, message(sub, urgency=Urgency.LOW)).message
    high = accept(store, message(sub, urgency=Urgency.HIGH)).message
    accept(store, message(sub, ttl=1))
    query = DueQuery(sets=(sub.set_id,), min_urgency=Urgency.NORMAL)
    assert [m.id for m in store.claim(query, now=NOW + 2, limit=9)] == [high.id]
    assert [m.id for m in store.claim(DueQuery(sets=(sub.set_id,)), now=NOW + 2, limit=9)] == [
        low.id
    ]


def test_stored_pages_through_everything_unexpired(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    ids = [accept(store, message(sub)).message.id for _ in range(5)]
    first = store.stored(
        "set", sub.set_id, after_seq=0, min_urgency=Urgency.VERY_LOW, now=NOW, limit=3
    )
    rest = store.stored(
        "subscription",
        sub.id,
        after_seq=first[-1].seq,
        min_urgency=Urgency.VERY_LOW,
        now=NOW,
        limit=3,
    )
    assert [m.id for m in first + rest] == ids
    # stored() stamps them as pushed: not due any more.
    assert store.claim(DueQuery(sets=(sub.set_id,)), now=NOW, limit=9) == []


def test_ack_deletes_and_records_receipts(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    receipt = store.new_receipt(NOW)
    with_receipt = accept(store, message(sub, receipt_id=receipt)).message
    plain = accept(store, message(sub)).message
    assert store.pending(sub.push_id) == 2
    acked = store.ack([with_receipt.id, plain.id, "unknown"], NOW)
    assert acked.message_ids == {with_receipt.id, plain.id}
    assert acked.changes == Changes(receipts=frozenset({receipt}))
    assert store.pending(sub.push_id) == 0 and store.pending(None) == 0
    events = store.receipts(receipt)
    assert events is not None and [(e.message_id, e.status) for e in events] == [
        (with_receipt.id, 204)
    ]
    assert [e.message_id for e in store.claim_receipts([receipt])] == [with_receipt.id]
    assert store.claim_receipts([receipt]) == []
    store.unclaim_receipts([events[0].seq])
    assert len(store.claim_receipts([receipt])) == 1
    assert store.receipts("unknown") is None


def test_topic_replaces_and_the_limit_refuses(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    receipt = store.new_receipt(NOW)
    old = accept(store, message(sub, topic="t", receipt_id=receipt)).message
    new = accept(store, message(sub, topic="t"))
    assert new.changes.receipts == {receipt}  # the replaced message's 410
    assert store.message_ids() == [new.message.id]
    events = store.receipts(receipt) or []
    assert [(e.message_id, e.status) for e in events] == [(old.id, 410)]
    assert store.accept(message(sub), max_pending=1, claimed=False) == "full"
    # A topic message replacing the only one fits within the limit.
    accept(store, message(sub, topic="t"), max_pending=1)
    assert store.pending(sub.push_id) == 1
    gone = Subscription("nope", "nope", sub.set_id, None, NOW)
    assert store.accept(message(gone), max_pending=9, claimed=False) == "gone"


def test_sweep_expires_and_redelivers(store: Store) -> None:
    sub = store.subscribe(None, None, NOW)
    receipt = store.new_receipt(NOW)
    accept(store, message(sub, ttl=10, receipt_id=receipt))
    pushed = accept(store, message(sub, ttl=10), claimed=True).message
    stale = accept(store, message(sub, ttl=100), claimed=True).message
    swept = store.sweep(NOW + 10, 30, 100)
    assert swept.expired == 1 and swept.redelivered == 0  # the pushed one gets its grace
    assert swept.changes.receipts == {receipt}
    swept = store.sweep(NOW + 40, 30, 100)
    assert (swept.expired, swept.redelivered) == (1, 1)
    assert swept.changes.due == {(sub.set_id, sub.id)}
    assert [m.id for m in store.claim(DueQuery(sets=(sub.set_id,)), now=NOW + 40, limit=9)] == [
        stale.id
    ]
    assert pushed.id not in store.message_ids()


def test_deleting_a_set_removes_members_with_410_receipts(store: Store) -> None:
    a = store.subscribe(None, None, NOW)
    b = store.subscribe(a.set_id, None, NOW)
    receipt = store.new_receipt(NOW)
    accept(store, message(b, receipt_id=receipt))
    changes = store.delete_set(a.set_id, NOW)
    assert changes is not None
    assert changes.gone == {("set", a.set_id), ("subscription", a.id), ("subscription", b.id)}
    assert changes.receipts == {receipt}
    assert store.subscriptions() == [] and store.pending(None) == 0
    assert store.delete_set(a.set_id, NOW) is None
    assert store.delete_subscription(a.id, NOW) is None


def test_notification_payloads_round_trip() -> None:
    changes = Changes(
        due=frozenset({("s", "u")}), receipts=frozenset({"r"}), gone=frozenset({("set", "s")})
    )
    decoded = [decode_payload(p) for p in encode_changes("node1", changes)]
    assert {node for node, _ in decoded} == {"node1"}
    merged = Changes()
    for _, change in decoded:
        merged = merged | change
    assert merged == changes
    with pytest.raises(ValueError):
        decode_payload("something else")


def test_an_old_state_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE sets (id TEXT PRIMARY KEY, joinable INTEGER NOT NULL);
        CREATE TABLE subscriptions (id TEXT PRIMARY KEY, push_id TEXT UNIQUE NOT NULL,
            set_id TEXT NOT NULL, vapid_key BLOB, created REAL NOT NULL);
        CREATE TABLE messages (id TEXT PRIMARY KEY, sub_id TEXT NOT NULL, body BLOB NOT NULL,
            content_encoding TEXT, urgency INTEGER NOT NULL, topic TEXT, created REAL NOT NULL,
            expires REAL NOT NULL, receipt_id TEXT);
        CREATE TABLE receipts (id TEXT PRIMARY KEY);
        CREATE TABLE receipt_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            receipt_id TEXT NOT NULL, message_id TEXT NOT NULL, status INTEGER NOT NULL,
            pushed INTEGER NOT NULL DEFAULT 0);
        INSERT INTO sets VALUES ('set1', 1);
        INSERT INTO subscriptions VALUES ('sub1', 'push1', 'set1', NULL, 1.0);
        INSERT INTO messages VALUES ('m1', 'sub1', x'00', 'aes128gcm', 2, NULL, 1.0, 9e9, NULL);
        """
    )
    db.close()
    store = SqliteStore(path)
    assert store.pending("push1") == 1
    (m,) = store.claim(DueQuery(sets=("set1",)), now=2.0, limit=9)
    assert (m.id, m.push_id, m.body) == ("m1", "push1", b"\x00")
    store.close()


def test_postgres_claims_are_shared_not_duplicated(pg_url: str) -> None:
    """Two nodes claiming the same set at once never both take a message (SKIP LOCKED)."""
    a = PostgresStore(pg_url, node="a", pool_size=2)
    b = PostgresStore(pg_url, node="b", pool_size=2)
    sub = a.subscribe(None, None, NOW)
    for _ in range(400):
        accept(a, message(sub), max_pending=1000)
    taken: dict[str, list[str]] = {"a": [], "b": []}

    def claimer(name: str, store: Store) -> None:
        while batch := store.claim(DueQuery(sets=(sub.set_id,)), now=NOW, limit=20):
            taken[name].extend(m.id for m in batch)

    threads = [threading.Thread(target=claimer, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = taken["a"] + taken["b"]
    assert len(everything) == 400 and len(set(everything)) == 400
    a.close()
    b.close()


def test_postgres_reconnects_after_a_restart(tmp_path: Path) -> None:
    server = Postgres()
    server.start()
    try:
        store = PostgresStore(server.url(), node="n", pool_size=2)
        sub = store.subscribe(None, None, NOW)
        server.restart()
        from pushservice.store import StoreUnavailable

        with pytest.raises(StoreUnavailable):
            store.ping()  # the pooled connection died with the server: reported once
        accept(store, message(sub))  # the next call connects anew
        assert store.pending(sub.push_id) == 1
        store.close()
    finally:
        server.close()
