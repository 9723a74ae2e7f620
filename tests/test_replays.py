"""Replays: the same aes128gcm ciphertext POSTed again is a new push message with the same record
salt (RFC 8188 §2.1). It is dropped, counted and acknowledged, never delivered twice."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from gateway.salt_memory import RecentSalts, salt_key
from gateway.store import Resolution
from gateway.webpush.crypto import encrypt
from pushservice.h1client import HttpConnection
from tests.agent_harness import running, wait_until
from tests.test_store import incoming, open_store, route

SALT_A = b"A" * 16
SALT_B = b"B" * 16


def body(salt: bytes) -> bytes:
    """An aes128gcm body: salt, rs, idlen 0, then the (here fake) records."""
    return salt + (4096).to_bytes(4, "big") + b"\x00" + os.urandom(40)


def test_a_repeated_salt_is_a_replay_acknowledged_and_counted(tmp_path: Path) -> None:
    store = open_store(tmp_path, route("r"), route("s"))
    same = body(SALT_A)
    results = store.admit(
        [
            incoming("m1", raw_body=same),
            incoming("m2", raw_body=same),  # the same ciphertext under a new message URL
            incoming("m3", raw_body=body(SALT_B)),
            incoming("m4", raw_body=same, route_name="s"),  # another subscription's salts
        ]
    )
    assert [(r.status, r.ack_now) for r in results] == [
        ("journalled", True),
        ("replayed", True),
        ("journalled", True),
        ("journalled", True),
    ]
    assert store.take_counts().replays == {"r": 1}
    assert "m2" in store.pending_acks()  # acknowledged: a duplicate, not poison
    [again] = store.admit([incoming("m2", raw_body=same)])
    assert again.status == "duplicate"  # its redelivery is an ordinary duplicate
    store.close()


def test_salts_survive_a_restart_and_are_bounded(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.admit([incoming("m1", raw_body=body(SALT_A))])
    store.close()
    store = open_store(tmp_path)
    [replay] = store.admit([incoming("m2", raw_body=body(SALT_A))])
    assert replay.status == "replayed"
    store.close()
    recent = RecentSalts(range(5), limit=3)
    assert len(recent) == 3 and 0 not in recent and 4 in recent
    recent.add(9)
    recent.forget_newest([9])
    assert 9 not in recent and len(recent) == 2
    assert salt_key("r", SALT_A) != salt_key("s", SALT_A)


def test_a_salt_rides_in_its_row_and_outlives_it(tmp_path: Path) -> None:
    """A journalled message's salt is written in its own journal row (no page of another table
    per commit); forgotten with the row's dedupe record, it stays in ``salts``: a replay after
    that, and after a restart, is still recognised."""
    from gateway import policy
    from tests.test_store import Clock

    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    [first] = store.admit([incoming("m1", raw_body=body(SALT_A))])
    assert store._conn.execute("SELECT count(*) FROM salts").fetchone()[0] == 0
    assert first.message_id is not None
    store.admit([incoming("m2", raw_body=body(SALT_B))])  # the newest row always stays
    store.resolve([Resolution(first.message_id, "r", "0:a", "delivered")])
    store.mark_acked(["m1"])
    clock.now += policy.DEDUPE_GRACE + 1
    assert store.prune() == 1  # m1's dedupe record is gone ...
    [[moved]] = store._conn.execute("SELECT digest FROM salts").fetchall()
    assert moved == salt_key("r", SALT_A)  # ... its salt is not
    [replay] = store.admit([incoming("m3", raw_body=body(SALT_A))])
    assert replay.status == "replayed"
    store.close()
    store = open_store(tmp_path, clock=clock)
    statuses = [
        r.status
        for r in store.admit(
            [
                incoming(f"m{i}", raw_body=body(s))
                for i, s in ((4, SALT_A), (5, SALT_B), (6, b"C" * 16))
            ]
        )
    ]
    assert statuses == ["replayed", "replayed", "journalled"]
    store.close()


def test_salts_of_a_version_6_journal_are_still_recognised(tmp_path: Path) -> None:
    from tests.test_store import journal_at_version

    db, conn = journal_at_version(tmp_path, 6)
    conn.execute(
        "INSERT INTO salts (digest, seen_at) VALUES (?, ?)", (salt_key("r", SALT_A), 1.7e9)
    )
    conn.close()
    db.chmod(0o600)
    store = open_store(tmp_path)
    statuses = [r.status for r in store.admit([incoming("m1", raw_body=body(SALT_A))])]
    assert statuses == ["replayed"]
    store.close()


def test_a_refused_message_leaves_no_salt_behind(tmp_path: Path) -> None:
    store = open_store(tmp_path, route(queue_max_messages=1, queue_full="refuse-newest"))
    store.admit([incoming("m1", raw_body=body(SALT_B))])
    [refused] = store.admit([incoming("m2", raw_body=body(SALT_A))])
    assert refused.status == "refused"
    [pending] = store.pending_deliveries("r", "0:a")
    store.resolve([Resolution(pending.message.id, "r", "0:a", "delivered")])
    [later] = store.admit([incoming("m2", raw_body=body(SALT_A))])  # the redelivery
    assert later.status == "journalled"
    store.close()


async def test_the_same_ciphertext_posted_three_times_is_delivered_once(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        info = run.info("valves")
        ciphertext = encrypt(b"open valve 3", p256dh=info.p256dh, auth_secret=info.auth)
        statuses: list[str] = []
        run.upstream.observer = lambda status, _url, _id: statuses.append(status)

        def post_three_times() -> None:
            connection = HttpConnection(run.service.origin)
            try:
                for _ in range(3):
                    reply = connection.request(
                        "POST",
                        info.endpoint.removeprefix(run.service.origin),
                        [("ttl", "600"), ("content-encoding", "aes128gcm")],
                        ciphertext,
                    )
                    assert reply.status == 201
            finally:
                connection.close()

        await trio.to_thread.run_sync(post_three_times)
        await wait_until(
            lambda: statuses.count("journalled") + statuses.count("replayed") == 3, "all three"
        )
        assert statuses.count("journalled") == 1 and statuses.count("replayed") == 2
        assert run.journal("valves") == [b"open valve 3"]
        await wait_until(lambda: run.service.pending_messages() == 0, "all three acknowledged")
