"""The durable store on a real SQLite file: modes, ingest, dedupe, acks, queues, dead letters."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from adapters.log_config import LogTarget
from gateway import policy
from gateway.config import JournalConfig, RouteConfig
from gateway.routes import RouteTable
from gateway.store import (
    DB_NAME,
    PRUNE_BATCH,
    Incoming,
    IngestResult,
    Resolution,
    Store,
    StoreError,
    SubscriptionRecord,
    target_key,
)


class Clock:
    """A settable clock for expiry and retention."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def route(name: str = "r", **kw: object) -> RouteConfig:
    targets = kw.pop("deliver", (LogTarget("a"),))
    return RouteConfig(name=name, deliver=targets, **kw)  # type: ignore[arg-type]


def incoming(
    url: str, body: bytes = b"x" * 100, route_name: str | None = "r", **kw: object
) -> Incoming:
    fields: dict[str, object] = {
        "push_message_url": url,
        "route": route_name,
        "plaintext": body,
        "raw_body": b"\x00cipher",
        "headers": (("content-encoding", "aes128gcm"),),
        "received_at": 1_700_000_000.0,
    }
    fields.update(kw)
    return Incoming(**fields)  # type: ignore[arg-type]


class JournalUnderTest(Store):
    """The store with the routes of one test: :meth:`admit` runs the real policy first."""

    routes = RouteTable()

    def admit(self, batch: list[Incoming]) -> list[IngestResult]:
        now = self._clock()
        return self.ingest([policy.admit(i, self.routes, now) for i in batch])


def open_store(
    tmp_path: Path, *routes: RouteConfig, clock: Clock | None = None, **journal: object
) -> JournalUnderTest:
    store = JournalUnderTest.open(
        tmp_path / "state",
        journal=JournalConfig(**journal),  # type: ignore[arg-type]
        clock=clock or Clock(),
    )
    assert isinstance(store, JournalUnderTest)
    store.routes = RouteTable(routes or (route(),))
    return store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files ------------------------------------------------------------------------------------


def test_creates_private_state_dir_and_files(tmp_path):
    store = open_store(tmp_path)
    store.admit([incoming("u1")])
    state = tmp_path / "state"
    assert mode(state) == 0o700
    assert mode(state / DB_NAME) == 0o600
    assert mode(state / (DB_NAME + "-wal")) == 0o600
    conn = sqlite3.connect(state / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_refuses_group_readable_state_dir(tmp_path):
    (tmp_path / "state").mkdir(mode=0o755)
    (tmp_path / "state").chmod(0o755)
    with pytest.raises(StoreError, match="chmod 700"):
        open_store(tmp_path)


def test_refuses_group_readable_db_file(tmp_path):
    open_store(tmp_path).close()
    (tmp_path / "state" / DB_NAME).chmod(0o640)
    with pytest.raises(StoreError, match="chmod 600"):
        open_store(tmp_path)


def test_refuses_a_file_as_state_dir(tmp_path):
    (tmp_path / "state").write_text("not a dir")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(tmp_path)


def test_refuses_a_db_that_is_not_sqlite(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = state / DB_NAME
    db.write_bytes(b"this is not a database" * 100)
    db.chmod(0o600)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        open_store(tmp_path)


def test_refuses_a_newer_schema(tmp_path):
    open_store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this fieldgate"):
        open_store(tmp_path)


def test_reopen_keeps_schema_and_data(tmp_path):
    store = open_store(tmp_path)
    store.admit([incoming("u1")])
    store.close()
    store = open_store(tmp_path)
    assert store.queue_usage()["r"].messages == 1
    assert store.pending_acks() == ["u1"]
    store.close()


# -- subscriptions ----------------------------------------------------------------------------


def test_subscriptions_upsert_delete_and_survive_reopen(tmp_path):
    store = open_store(tmp_path)
    record = SubscriptionRecord("r", "https://p/s/1", "https://p/push/1", None, b"k", b"a", 1.0)
    store.save_subscription(record)
    renewed = SubscriptionRecord(
        "r", "https://p/s/2", "https://p/push/2", "https://p/set/1", b"k2", b"a2", 2.0, 3.0
    )
    store.save_subscription(renewed)
    store.save_subscription(SubscriptionRecord("q", "s", "p", None, b"k", b"a", 1.0))
    store.close()
    store = open_store(tmp_path)
    assert store.subscriptions()[1] == renewed
    store.delete_subscription("q")
    store.delete_subscription("absent")
    assert [s.route for s in store.subscriptions()] == ["r"]
    store.close()


# -- ingest, dedupe, acks ---------------------------------------------------------------------


def test_batch_is_one_transaction_and_acked_after_commit(tmp_path):
    store = open_store(tmp_path)
    before = store.transactions
    results = store.admit([incoming(f"u{i}") for i in range(50)])
    assert store.transactions == before + 1
    assert {r.status for r in results} == {"journalled"}
    assert all(r.ack_now for r in results)
    assert len({r.message_id for r in results}) == 50
    assert len(store.pending_acks()) == 50
    store.mark_acked([f"u{i}" for i in range(50)])
    assert store.pending_acks() == []
    assert store.take_counts().journalled == {"r": 50}
    store.close()


def test_duplicates_in_a_batch_across_batches_and_restarts(tmp_path):
    store = open_store(tmp_path)
    first = store.admit([incoming("u1"), incoming("u1")])
    assert [r.status for r in first] == ["journalled", "duplicate"]
    store.mark_acked(["u1"])
    store.close()
    store = open_store(tmp_path)
    again = store.admit([incoming("u1")])
    assert again[0].status == "duplicate"
    assert again[0].ack_now  # our DELETE was lost: owe it again
    assert store.pending_acks() == ["u1"]
    assert store.queue_usage()["r"].messages == 1
    assert store.take_counts().duplicates == 1
    store.close()


def test_delivered_policy_holds_the_ack_until_every_target_resolved(tmp_path):
    r = route(ack="delivered", deliver=(LogTarget("a"), LogTarget("b")))
    store = open_store(tmp_path, r)
    [result] = store.admit([incoming("u1")])
    assert (result.status, result.ack_now) == ("journalled", False)
    assert store.pending_acks() == []
    assert store.admit([incoming("u1")])[0].ack_now is False  # redelivery absorbed
    mid = result.message_id
    assert mid is not None
    assert store.resolve([Resolution(mid, "r", target_key(0, LogTarget("a")), "delivered")]) == []
    released = store.resolve([Resolution(mid, "r", target_key(1, LogTarget("b")), "delivered")])
    assert released == ["u1"]
    assert store.pending_acks() == ["u1"]
    assert store.queue_usage()["r"].messages == 0  # pruned
    assert store.admit([incoming("u1")])[0].ack_now is True
    store.close()


def test_finished_deliveries_ride_on_the_next_ingest_commit(tmp_path):
    """In the field a message comes alone: its ingest commit records the deliveries finished
    since the last one (and the confirmed acknowledgements), in the same transaction."""
    r = route(ack="delivered", deliver=(LogTarget("a"), LogTarget("b")))
    store = open_store(tmp_path, r)
    [first] = store.admit([incoming("u1")])
    assert first.message_id is not None
    store.take_counts()
    before = store.transactions
    resolved = [
        Resolution(first.message_id, "r", target_key(i, LogTarget(t)), "delivered")
        for i, t in enumerate("ab")
    ]
    admission = policy.admit(incoming("u2"), store.routes, store._clock())
    [second] = store.ingest([admission], resolved=resolved)
    assert store.transactions == before + 1
    assert second.status == "journalled"
    assert store.queue_usage()["r"].messages == 1  # u1 delivered, u2 waiting
    assert store.take_counts().released_acks == ["u1"]  # every target done: its ack is owed
    assert store.pending_acks() == ["u1"]
    store.close()


def test_a_failed_ingest_records_none_of_the_deliveries_it_carried(tmp_path):
    store = open_store(tmp_path)
    [first] = store.admit([incoming("u1")])
    assert first.message_id is not None
    store.take_counts()
    resolved = [Resolution(first.message_id, "r", "0:a", "delivered")]
    broken = incoming("u2")
    admission = policy.admit(broken, store.routes, store._clock())
    real_ingest_one = store._ingest_one

    def full_disk(*args: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    store._ingest_one = full_disk  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.ingest([admission], resolved=resolved)
    store._ingest_one = real_ingest_one  # type: ignore[method-assign]
    assert [p.message.id for p in store.pending_deliveries("r", "0:a")] == [first.message_id]
    assert store.queue_usage()["r"].messages == 1
    assert store.take_counts().empty()
    store.close()


def test_a_finished_message_stops_waiting_before_its_record_and_is_counted_out_once(tmp_path):
    """note_finished: the queue counts leave the message out at once; its record (here a failed
    one first, which must put the note back) takes it out of the journal, not out of the counts
    a second time."""
    store = open_store(tmp_path)
    [first, second] = store.admit([incoming("u1", b"a" * 10), incoming("u2", b"b" * 20)])
    assert first.message_id is not None
    store.note_finished(first.message_id, "r", 10)
    assert store.queue_usage()["r"].messages == 1
    assert store.queue_usage()["r"].bytes == 20
    resolved = [Resolution(first.message_id, "r", "0:a", "delivered")]
    admission = policy.admit(incoming("u3", b"c" * 30), store.routes, store._clock())
    real_ingest_one = store._ingest_one

    def full_disk(*args: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    store._ingest_one = full_disk  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.ingest([admission], resolved=resolved)  # rolled back: u1 back in the journal
    store._ingest_one = real_ingest_one  # type: ignore[method-assign]
    assert (store.queue_usage()["r"].messages, store.queue_usage()["r"].bytes) == (1, 20)
    store.ingest([admission], resolved=resolved)
    assert (store.queue_usage()["r"].messages, store.queue_usage()["r"].bytes) == (2, 50)
    assert [p.message.id for p in store.pending_deliveries("r", "0:a")] == [
        second.message_id,
        str(int(second.message_id or 0) + 1),
    ]
    store.close()


def test_a_message_dropped_for_room_before_its_delivery_finished_is_not_counted_out_twice(
    tmp_path,
):
    """Drop-oldest took the message the router was delivering; the router's note that its
    delivery finished comes after: the counts already left it out."""
    store = open_store(tmp_path, route(queue_max_messages=2))
    [first, _] = store.admit([incoming("u1"), incoming("u2")])
    assert first.message_id is not None
    pending = store.pending_deliveries("r", "0:a")
    assert pending[0].targets == ("0:a",)  # what the router needs to know it finished
    store.admit([incoming("u3")])  # drops u1
    assert store.queue_usage()["r"].messages == 2
    store.note_finished(first.message_id, "r", 100)
    assert store.queue_usage()["r"].messages == 2
    store.resolve([Resolution(first.message_id, "r", "0:a", "delivered")])
    assert store.queue_usage()["r"].messages == 2
    store.close()


def test_poison_messages_are_dead_lettered_and_acked(tmp_path):
    store = open_store(tmp_path)
    results = store.admit(
        [
            incoming("bad", plaintext=None, failure="auth_tag_mismatch"),
            incoming("nosub", route_name=None, plaintext=None),
            incoming("gone", route_name="removed-route"),
        ]
    )
    assert [r.status for r in results] == ["dead_lettered"] * 3
    assert all(r.ack_now for r in results)
    assert [d.reason for d in store.dead_letters()] == [
        "auth_tag_mismatch",
        "unknown_subscription",
        "unknown_route",
    ]
    dead = store.dead_letters()[0]
    assert dead.raw_body == b"\x00cipher"
    assert dead.headers == (("content-encoding", "aes128gcm"),)
    assert store.admit([incoming("bad", plaintext=None, failure="x")])[0].status == "duplicate"
    assert store.take_counts().dead_letters == {
        "auth_tag_mismatch": 1,
        "unknown_subscription": 1,
        "unknown_route": 1,
    }
    store.close()


def test_already_expired_message_is_not_journalled(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    [result] = store.admit([incoming("u1", received_at=clock.now - 2, headers=(("ttl", "1"),))])
    assert (result.status, result.ack_now) == ("expired", True)
    assert store.queue_usage().get("r") is None or store.queue_usage()["r"].messages == 0
    assert store.take_counts().expired == {"r": 1}
    store.close()


# -- bounded queue ----------------------------------------------------------------------------


def test_refuse_newest_neither_acknowledges_nor_remembers_the_refused(tmp_path):
    store = open_store(tmp_path, route(queue_max_messages=2, queue_full="refuse-newest"))
    results = store.admit([incoming(f"u{i}", body=bytes([i])) for i in range(4)])
    assert [r.status for r in results] == ["journalled", "journalled", "refused", "refused"]
    assert [r.ack_now for r in results] == [True, True, False, False]
    assert sorted(store.pending_acks()) == ["u0", "u1"]  # the refused are owed nothing
    pending = store.pending_deliveries("r", "0:a")
    assert [p.message.body for p in pending] == [b"\x00", b"\x01"]
    counts = store.take_counts()
    assert counts.refused == {("r", "queue_full"): 2} and counts.dropped == {}
    # Room again: the redelivery of a refused message is journalled, not taken for a duplicate.
    store.resolve([Resolution(pending[0].message.id, "r", "0:a", "delivered")])
    [again] = store.admit([incoming("u2", body=b"\x02")])
    assert (again.status, again.ack_now) == ("journalled", True)
    store.close()


def test_drop_oldest_by_count_and_bytes(tmp_path):
    store = open_store(tmp_path, route(queue_max_messages=3, queue_max_bytes=250))
    store.admit([incoming(f"u{i}", body=bytes([i]) * 100) for i in range(4)])
    pending = store.pending_deliveries("r", "0:a")
    assert [p.message.body[0] for p in pending] == [2, 3]  # 250 bytes hold two of them
    assert store.take_counts().dropped == {("r", "queue_full"): 2}
    assert store.queue_usage()["r"].bytes == 200
    store.close()


def test_a_full_delivered_queue_refuses_the_newest_even_with_drop_oldest(tmp_path):
    # Dropping the oldest would acknowledge a message no device has.
    store = open_store(tmp_path, route(ack="delivered", queue_max_messages=1))
    store.admit([incoming("u0")])
    [newest] = store.admit([incoming("u1")])
    assert (newest.status, newest.ack_now) == ("refused", False)
    counts = store.take_counts()
    assert counts.released_acks == [] and counts.dropped == {}
    assert counts.refused == {("r", "queue_full"): 1}
    assert store.pending_acks() == []  # u0's ack is still held for its delivery
    assert [p.push_message_url for p in store.pending_deliveries("r", "0:a")] == ["u0"]
    store.close()


def test_a_message_larger_than_the_queue_can_ever_hold_is_a_dead_letter(tmp_path):
    store = open_store(tmp_path, route(queue_max_bytes=50))
    store.admit([incoming("small", body=b"s")])
    [big] = store.admit([incoming("big", body=b"b" * 51)])
    assert (big.status, big.ack_now) == ("dead_lettered", True)  # poison, not a redelivery loop
    assert [d.reason for d in store.dead_letters()] == ["too_large_for_queue"]
    assert store.queue_usage()["r"].messages == 1  # nothing dropped for a hopeless case
    store.close()


# -- deliveries, retries, pruning -------------------------------------------------------------


def test_retry_state_survives_reopen_and_resolve_prunes(tmp_path):
    store = open_store(tmp_path)
    [r] = store.admit([incoming("u1")])
    assert r.message_id is not None
    store.schedule_retry(r.message_id, "r", "0:a", 3, 1_700_000_100.0, "broker down")
    store.close()
    store = open_store(tmp_path)
    [pending] = store.pending_deliveries("r", "0:a")
    assert (pending.attempts, pending.next_attempt_at) == (3, 1_700_000_100.0)
    assert store.pending_deliveries("r", "0:a", after_id=r.message_id) == []
    store.resolve([Resolution(r.message_id, "r", "0:a", "delivered")])
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    # The row stays as the dedupe record: no body, no targets, no retry state.
    assert conn.execute("SELECT body, targets FROM journal").fetchall() == [(None, "")]
    assert conn.execute("SELECT count(*) FROM retries").fetchone()[0] == 0
    store.close()


def test_message_ids_are_never_reused(tmp_path):
    store = open_store(tmp_path)
    [first] = store.admit([incoming("u1")])
    assert first.message_id is not None
    store.resolve([Resolution(first.message_id, "r", "0:a", "delivered")])
    [second] = store.admit([incoming("u2")])
    assert second.message_id is not None
    assert int(second.message_id) > int(first.message_id)
    store.close()


def test_expired_resolution_counts_once_per_message(tmp_path):
    store = open_store(tmp_path, route(deliver=(LogTarget("a"), LogTarget("b"))))
    [r] = store.admit([incoming("u1")])
    assert r.message_id is not None
    store.take_counts()
    store.resolve(
        [
            Resolution(r.message_id, "r", "0:a", "expired"),
            Resolution(r.message_id, "r", "1:b", "expired"),
        ]
    )
    assert store.take_counts().expired == {"r": 1}
    store.close()


def delivered(store: JournalUnderTest, url: str) -> None:
    [r] = store.admit([incoming(url)])
    assert r.message_id is not None
    store.resolve([Resolution(r.message_id, "r", "0:a", "delivered")])


def test_a_dedupe_record_goes_a_grace_period_after_its_ack_was_confirmed(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock, dedupe_retention=86400.0)
    delivered(store, "acked")
    delivered(store, "owed")
    delivered(store, "newest")
    assert store.next_forget_at() is None  # none confirmed: nothing is due
    store.mark_acked(["acked", "newest"])
    # When the router's housekeeping comes (the newest row never goes, whatever it says).
    assert store.next_forget_at() == clock.now + policy.DEDUPE_GRACE
    clock.now += policy.DEDUPE_GRACE - 1
    assert store.prune() == 0  # a redelivery may still be on its way
    clock.now += 2
    # "owed": the service has not confirmed its ack; "newest" keeps the id high-water mark.
    assert store.prune() == 1
    assert store.dedupe_records() == 2
    assert store.next_forget_at() is None
    assert [r.status for r in store.admit([incoming("owed"), incoming("acked")])] == [
        "duplicate",
        "journalled",
    ]
    store.close()
    store = open_store(tmp_path, clock=clock, dedupe_retention=86400.0)
    assert store.dedupe_records() == 3  # the index is rebuilt from the journal
    store.close()


def test_a_record_whose_ack_is_never_confirmed_goes_after_the_retention(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock, dedupe_retention=100.0)
    delivered(store, "owed")
    [held] = store.admit([incoming("newest")])
    clock.now = 1_700_000_000.0 + 101
    assert store.prune() == 1
    assert store.pending_acks() == ["newest"]  # "owed"'s went with its record
    # An undelivered message stays whatever its age.
    assert [p.message.id for p in store.pending_deliveries("r", "0:a")] == [held.message_id]
    store.close()


def test_a_prune_forgets_in_batches_and_one_that_fails_forgets_nothing(tmp_path, monkeypatch):
    clock = Clock()
    store = open_store(tmp_path, clock=clock, dedupe_retention=86400.0)
    urls = [f"u{n}" for n in range(2 * PRUNE_BATCH + 10)]
    results = store.admit([incoming(url) for url in urls])
    store.resolve([Resolution(r.message_id, "r", "0:a", "delivered") for r in results])
    store.mark_acked(urls)
    clock.now += policy.DEDUPE_GRACE + 1
    prunable, calls = store._prunable, []

    def failing_on_the_second_batch(*args: object) -> object:
        calls.append(args)
        if len(calls) == 3:  # the check, one batch forgotten, then the disk fails
            raise sqlite3.OperationalError("disk I/O error")
        return prunable(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_prunable", failing_on_the_second_batch)
    with pytest.raises(sqlite3.OperationalError):
        store.prune()
    assert store.dedupe_records() == len(urls)  # the first batch is back in the index
    assert store.admit([incoming(urls[0])])[0].status == "duplicate"  # (and owes its ack again)
    monkeypatch.undo()
    assert store.prune() == len(urls) - 2  # all but that one and the newest
    assert store.dedupe_records() == 2
    store.close()


def test_a_duplicate_after_a_confirmed_ack_owes_it_again(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    delivered(store, "u1")
    delivered(store, "u2")
    store.mark_acked(["u1"])
    assert store.pending_acks() == ["u2"]
    [again] = store.admit([incoming("u1")])
    assert (again.status, again.ack_now) == ("duplicate", True)
    assert store.pending_acks() == ["u1", "u2"]
    clock.now += policy.DEDUPE_GRACE + 1
    assert store.prune() == 0  # both owed: remembered until confirmed
    store.close()


def commit_modes(statements: list[str]) -> list[str]:
    """The ``synchronous`` mode each traced COMMIT ran under (FULL: fsynced)."""
    mode, modes = "FULL", []
    for statement in statements:
        if statement.startswith("PRAGMA synchronous = "):
            mode = statement.rsplit(" ", 1)[1]
        elif statement == "COMMIT":
            modes.append(mode)
    return modes


def test_one_fsync_per_ingest_and_at_most_8_deliveries_wait_for_one(tmp_path):
    store = open_store(tmp_path)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    results = store.admit([incoming(f"u{i}") for i in range(20)])
    assert commit_modes(statements) == ["FULL"]
    ids = [r.message_id for r in results]
    statements.clear()
    for message_id in ids[:5]:
        assert message_id is not None
        store.resolve([Resolution(message_id, "r", "0:a", "delivered")])
    store.mark_acked(["u0"])
    store.schedule_retry(str(ids[5]), "r", "0:a", 1, 0.0, "busy")
    assert commit_modes(statements) == ["NORMAL"] * 7
    statements.clear()
    [new] = store.admit([incoming("new")])  # durable: takes the five with it
    assert new.message_id is not None
    for message_id in ids[5:13]:
        assert message_id is not None
        store.resolve([Resolution(message_id, "r", "0:a", "delivered")])
    assert commit_modes(statements) == ["FULL"] + ["NORMAL"] * 7 + ["FULL"]
    statements.clear()
    store.resolve([Resolution(str(i), "r", "0:a", "delivered") for i in ids[13:]])  # 7 at once
    store.resolve([Resolution(new.message_id, "r", "0:a", "expired")])  # not a delivery
    assert commit_modes(statements) == ["NORMAL", "NORMAL"]
    store._conn.set_trace_callback(None)
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL between commits
    store.close()


def test_records_alone_ride_without_an_fsync_within_the_repeat_bound(tmp_path):
    """A commit without messages (what the journal writer records when none came to take it
    along: confirmed acknowledgements, finished deliveries) is not fsynced, as mark_acked and
    resolve are not, until the confirmed deliveries at stake reach the repeat bound."""
    store = open_store(tmp_path)
    ids = [r.message_id for r in store.admit([incoming(f"u{i}") for i in range(10)])]
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.ingest([], acked=["u0", "u1"])
    seven = [Resolution(str(i), "r", "0:a", "delivered") for i in ids[:7]]
    store.ingest([], acked=["u2"], resolved=seven)
    assert commit_modes(statements) == ["NORMAL", "NORMAL"]
    store.ingest([], resolved=[Resolution(str(ids[7]), "r", "0:a", "delivered")])  # the 8th
    assert commit_modes(statements) == ["NORMAL", "NORMAL", "FULL"]
    statements.clear()
    store.ingest([], resolved=[Resolution(str(ids[8]), "r", "0:a", "delivered")])
    assert commit_modes(statements) == ["NORMAL"]  # counted afresh after the fsync
    store._conn.set_trace_callback(None)
    assert store.pending_acks() == [f"u{i}" for i in range(3, 10)]
    assert [d.message.id for d in store.pending_deliveries("r", "0:a")] == [ids[9]]
    store.close()


def journal_at_version(tmp_path: Path, old: int) -> tuple[Path, sqlite3.Connection]:
    """A journal as schema version ``old`` made it (the caller fills it and closes it)."""
    from gateway.store_schema import MIGRATIONS

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = state / DB_NAME
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute(f"INSERT INTO schema_version VALUES ({old})")
    for script in MIGRATIONS[:old]:
        conn.executescript(script)
    return db, conn


def test_migrates_a_version_5_journal_into_one_row_per_message(tmp_path):
    db, conn = journal_at_version(tmp_path, 5)
    t = 1_700_000_000.0
    conn.executescript(
        f"""
        INSERT INTO messages (id, route, push_message_url, body, received_at, expires_at,
            ack_policy) VALUES (7, 'r', 'pending', x'68656c6c6f', {t}, NULL, 'delivered');
        INSERT INTO deliveries (route, target, message_id, attempts, next_attempt_at,
            last_error) VALUES ('r', '0:a', 7, 2, {t + 30}, 'broker down');
        INSERT INTO acks VALUES ('pending', 'held'), ('sent', 'owed');
        INSERT INTO dedupe_log (url, seen_at, forget_at) VALUES ('pending', {t}, NULL),
            ('sent', {t}, NULL), ('confirmed', {t}, {t + 10});
        UPDATE sqlite_sequence SET seq = 41 WHERE name = 'messages';
        """
    )
    conn.close()
    db.chmod(0o600)
    store = open_store(tmp_path)
    [pending] = store.pending_deliveries("r", "0:a")
    assert (pending.message.id, pending.message.body) == ("7", b"hello")
    assert (pending.attempts, pending.next_attempt_at) == (2, t + 30)
    assert store.pending_acks() == ["sent"]
    assert [r.status for r in store.admit([incoming(u) for u in ("pending", "sent")])] == [
        "duplicate",
        "duplicate",
    ]
    assert store.admit([incoming("confirmed")])[0].status == "duplicate"
    [new] = store.admit([incoming("new")])
    assert new.message_id is not None and int(new.message_id) > 41
    assert store.resolve([Resolution("7", "r", "0:a", "delivered")]) == ["pending"]
    store.close()


# -- dead letters -----------------------------------------------------------------------------


def test_rejected_delivery_becomes_a_replayable_dead_letter(tmp_path):
    store = open_store(tmp_path, route(deliver=(LogTarget("a"), LogTarget("b"))))
    [r] = store.admit([incoming("u1", body=b"hello")])
    assert r.message_id is not None
    store.resolve([Resolution(r.message_id, "r", "1:b", "rejected", "too big for device")])
    [dead] = store.dead_letters()
    assert (dead.reason, dead.target, dead.plaintext) == ("too big for device", "1:b", b"hello")
    new_id = store.replay_dead_letter(dead.id, store.routes)
    assert store.dead_letters() == []
    assert [p.message.id for p in store.pending_deliveries("r", "1:b")] == [new_id]
    assert [p.message.id for p in store.pending_deliveries("r", "0:a")] == [r.message_id]
    store.close()


def test_replay_refuses_what_cannot_be_delivered(tmp_path):
    store = open_store(tmp_path)
    store.admit([incoming("bad", plaintext=None, failure="auth_tag_mismatch")])
    [dead] = store.dead_letters()
    with pytest.raises(StoreError, match="no plaintext"):
        store.replay_dead_letter(dead.id, store.routes)
    with pytest.raises(StoreError, match="no dead letter 999"):
        store.replay_dead_letter(999, store.routes)
    assert store.purge_dead_letters([dead.id, 999]) == 1
    assert store.purge_dead_letters() == 0
    store.close()


def test_migrates_a_version_1_journal_keeping_its_dedupe_records(tmp_path):
    from gateway.store_schema import MIGRATIONS

    db, conn = journal_at_version(tmp_path, 1)
    conn.execute("INSERT INTO dedupe VALUES ('https://p/m/old', 1.0)")
    conn.close()
    db.chmod(0o600)
    store = open_store(tmp_path)
    assert store.admit([incoming("https://p/m/old")])[0].status == "duplicate"
    assert store.dedupe_records() == 1
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_a_failed_batch_is_forgotten_by_the_dedupe_index(tmp_path):
    store = open_store(tmp_path)
    bad = incoming("u2", plaintext=[1])  # the driver cannot bind a list: the batch fails
    with pytest.raises(sqlite3.Error):
        store.admit([incoming("u1"), bad])
    assert store.admit([incoming("u1")])[0].status == "journalled"
    store.close()
