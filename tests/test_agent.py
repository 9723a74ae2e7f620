"""The agent against the reference push service over real loopback sockets."""

from __future__ import annotations

import ssl
import time

import pytest
import requests
import trio
import trustme
from pywebpush import webpush

from gateway import policy
from gateway.routes import RouteTable
from gateway.store import Incoming, Store
from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionKeys
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import Running, running, wait_until


async def test_messages_arrive_decrypted_in_the_journal_and_are_acknowledged(tmp_path, monkeypatch):
    # Finished acks are recorded with the next commit of messages, or alone after a while.
    monkeypatch.setattr("gateway.upstream.journal.ACK_RECORD_DELAY", 0.2)
    async with running(tmp_path, routes=("valves", "pumps")) as run:
        for i in range(5):
            await run.send("valves", b"open %d" % i)
        await run.send("pumps", b"start")
        await wait_until(lambda: run.service.acked_count() == 6, "six acks")
        assert run.journal("valves") == [b"open %d" % i for i in range(5)]
        assert run.journal("pumps") == [b"start"]
        assert run.service.pending_messages() == 0
        await wait_until(lambda: run.store.pending_acks() == [], "the acks recorded")


async def test_a_clean_stop_records_the_confirmed_acknowledgements(tmp_path):
    # ACK_RECORD_DELAY (a minute) is left as it is: only the stop itself can record the last ones.
    async with running(tmp_path) as run:
        for i in range(3):
            await run.send("valves", b"close %d" % i)
        await wait_until(lambda: run.service.acked_count() == 3, "three acks")
        await wait_until(lambda: run.upstream.acks.answered != frozenset(), "an answer")
        # The last message's acknowledgement waits for a commit that does not come.
        assert run.store.pending_acks() != []
        config = run.config
    store = Store.open(config.push.state_dir, journal=config.journal)
    try:
        # What the next start would send again: nothing.
        assert store.pending_acks() == []
    finally:
        store.close()


async def test_confirmed_acknowledgements_carried_by_a_failed_commit_are_given_back(tmp_path):
    # What the router's record of deliveries takes along (carry_acks): handed out once; back
    # with the journal writer when that commit failed, so a later commit records them.
    async with running(tmp_path) as run:
        await run.send("valves", b"one")
        await wait_until(lambda: run.service.acked_count() == 1, "the ack")
        await wait_until(lambda: run.upstream.acks.answered != frozenset(), "its answer")
        [key] = run.store.pending_acks()  # confirmed, not recorded (ACK_RECORD_DELAY is a minute)
        carried = run.upstream.carry_acks()
        assert carried is not None and carried.keys == (key,)
        assert run.upstream.carry_acks() is None
        carried.done(False)
        again = run.upstream.carry_acks()
        assert again is not None and again.keys == (key,)
        run.store.resolve([], acked=again.keys)  # as the router's record does
        again.done(True)
        assert run.upstream.carry_acks() is None
        assert run.store.pending_acks() == []


async def test_routes_share_one_set_and_one_connection(tmp_path):
    async with running(tmp_path, routes=("a", "b", "c")) as run:
        records = run.store.subscriptions()
        assert len({r.set_url for r in records}) == 1 and records[0].set_url
        assert len({r.push_url for r in records}) == 3
        assert run.upstream.status.connections == 1


async def test_a_restart_reuses_the_subscriptions(tmp_path):
    async with running(tmp_path) as run:
        first = run.info("valves")
        service = run.service
        port = int(service.origin.rsplit(":", 1)[1])
    # Same state directory, a new agent, the same service (kept in memory).
    async with running(tmp_path, service=service, port=port) as run:
        assert run.info("valves") == first


async def test_dropped_connection_loses_nothing(tmp_path):
    async with running(tmp_path) as run:
        await run.send("valves", b"before")
        await wait_until(lambda: run.service.acked_count() == 1, "first ack")
        run.service.faults.drop_connections()
        await run.send("valves", b"during")
        await wait_until(lambda: run.upstream.status.connections >= 2, "a reconnect")
        await run.send("valves", b"after")
        await wait_until(lambda: run.service.acked_count() == 3, "all acks")
        assert run.journal("valves") == [b"before", b"during", b"after"]


async def test_goaway_opens_the_next_connection_and_loses_nothing(tmp_path):
    async with running(tmp_path) as run:
        await run.send("valves", b"one")
        await wait_until(lambda: run.service.acked_count() == 1, "first ack")
        run.service.faults.goaway()
        await wait_until(lambda: run.upstream.status.connections >= 2, "the next connection")
        await run.send("valves", b"two")
        await wait_until(lambda: run.service.acked_count() == 2, "second ack")
        assert run.journal("valves") == [b"one", b"two"]


async def test_subscribe_5xx_with_retry_after_is_retried(tmp_path):
    service = PushService(ServiceSettings())
    service.faults.fail_requests(503, count=2, retry_after=1)
    async with running(tmp_path, service=service) as run:
        assert run.info("valves").endpoint.startswith(run.service.origin)


async def test_expired_set_is_resubscribed_with_new_push_resources(tmp_path):
    async with running(tmp_path, routes=("a", "b")) as run:
        old = {r.route: r.push_url for r in run.store.subscriptions()}
        run.service.faults.expire_sets()
        await wait_until(
            lambda: (
                {r.route: r.push_url for r in run.store.subscriptions()}.keys() == {"a", "b"}
                and not set({r.push_url for r in run.store.subscriptions()}) & set(old.values())
            ),
            "new subscriptions",
        )
        await wait_until(lambda: run.upstream.status.state == "connected", "connected")
        await run.send("a", b"to the new resource")
        await wait_until(lambda: run.service.acked_count() == 1, "the ack")
        assert run.journal("a") == [b"to the new resource"]


async def test_invalid_set_leads_to_subscribing_without_it(tmp_path):
    async with running(tmp_path, routes=("a",)) as run:
        service = run.service
        port = int(service.origin.rsplit(":", 1)[1])
    service.faults.invalidate_set_links()
    # A new route: its subscribe carries the known set link, which is now refused.
    async with running(tmp_path, service=service, port=port, routes=("a", "b")) as run:
        await run.send("b", b"hello b")
        await wait_until(lambda: run.service.acked_count() >= 1, "the ack")
        assert run.journal("b") == [b"hello b"]


async def test_unanswered_pings_mean_a_dead_path(tmp_path):
    async with running(tmp_path, keepalive=0.3) as run:
        run.service.faults.freeze(True)
        # Two keepalive intervals and a little: the agent must have given up on the path.
        await wait_until(lambda: run.upstream.status.state != "connected", "the dead path found", 3)
        run.service.faults.freeze(False)
        await wait_until(lambda: run.upstream.status.state == "connected", "reconnected")
        await run.send("valves", b"after the thaw")
        await wait_until(lambda: run.journal("valves") == [b"after the thaw"], "the message")


async def test_undecryptable_message_is_dead_lettered_and_acknowledged(tmp_path):
    async with running(tmp_path) as run:
        info = run.info("valves")
        wrong = SubscriptionKeys.generate()
        forged = PushSubscriptionInfo(info.endpoint, wrong.p256dh, wrong.auth_secret)
        await trio.to_thread.run_sync(
            lambda: webpush(forged.to_json(), b"not for you", ttl=60)  # type: ignore[arg-type]
        )
        await wait_until(lambda: run.service.acked_count() == 1, "the ack")
        assert run.journal("valves") == []
        dead = run.store.dead_letters()
        assert len(dead) == 1 and dead[0].reason == "auth_tag_mismatch"


async def test_body_over_the_limit_is_dead_lettered_and_acknowledged(tmp_path):
    async with running(tmp_path, max_message_bytes=1000) as run:
        await run.send("valves", b"x" * 2000)
        await run.send("valves", b"small")
        await wait_until(lambda: run.service.acked_count() == 2, "both acks")
        assert run.journal("valves") == [b"small"]
        assert [d.reason for d in run.store.dead_letters()] == ["too_large"]


def _tls(tmp_path, name="127.0.0.1"):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def test_tls_with_the_service_ca(tmp_path):
    server_context, ca_file = _tls(tmp_path)
    async with running(tmp_path, ssl_context=server_context, ca_file=ca_file) as run:
        assert run.service.subscribe_url.startswith("https://")
        info = run.info("valves")
        assert info.endpoint.startswith("https://")
        # pywebpush verifies TLS too: its requests session trusts the test CA.
        session = requests.Session()
        session.verify = str(ca_file)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment wins
        await run.send("valves", b"over tls", requests_session=session)
        await wait_until(lambda: run.service.acked_count() == 1, "the ack")
        assert run.journal("valves") == [b"over tls"]


async def test_tls_with_an_unknown_ca_fails_clearly(tmp_path):
    server_context, _ca_file = _tls(tmp_path)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    async with running(
        tmp_path, ssl_context=server_context, ca_file=other_ca, connected=False
    ) as run:
        await wait_until(lambda: run.upstream.status.last_error is not None, "an error")
        assert "CERTIFICATE_VERIFY_FAILED" in run.upstream.status.last_error
        assert run.upstream.subscription_infos() == {}


def spy_on_checkpoints(run: Running, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The checkpoints the store takes from now on: the database file's mtime before, after.
    Thresholds low enough for a test: 10 row changes, quiet for 0.2 s."""
    monkeypatch.setattr("gateway.store.IDLE_CHECKPOINT_CHANGES", 10)
    monkeypatch.setattr("gateway.upstream.journal.IDLE_CHECKPOINT_AFTER", 0.2)
    checkpoints: list[tuple[int, int]] = []
    real_checkpoint = run.store.checkpoint
    database = run.store.path

    def checkpoint() -> None:
        before = database.stat().st_mtime_ns
        real_checkpoint()
        checkpoints.append((before, database.stat().st_mtime_ns))

    monkeypatch.setattr(run.store, "checkpoint", checkpoint)
    return checkpoints


async def test_after_a_burst_the_journal_is_checkpointed_in_the_first_quiet_moment(
    tmp_path, monkeypatch
):
    """A burst leaves the WAL full of pages that the next message's commit would copy back
    into the database; the journal writer checkpoints once things are quiet instead, and a
    trickle after that does not trigger another."""
    async with running(tmp_path) as run:
        checkpoints = spy_on_checkpoints(run, monkeypatch)
        for i in range(6):  # ~3 row changes each: past the threshold
            await run.send("valves", b"burst %d" % i)
        await wait_until(lambda: bool(checkpoints), "a checkpoint once quiet")
        [(before, after)] = checkpoints
        assert after > before  # the burst's pages were copied into the database file
        assert not run.store.checkpoint_due
        await run.send("valves", b"one more")
        await wait_until(lambda: run.service.acked_count() == 7, "its ack")
        await trio.sleep(0.5)  # quiet for longer than IDLE_CHECKPOINT_AFTER
        assert len(checkpoints) == 1  # a single message is no burst


async def test_a_burst_another_part_committed_is_checkpointed_once_quiet_too(tmp_path, monkeypatch):
    """The router's own commits (a prune of a drain's dedupe records, deliveries recorded
    alone) tell the journal writer, which checkpoints what they left in the WAL once quiet --
    not the next message's commit, and not never."""
    async with running(tmp_path) as run:
        checkpoints = spy_on_checkpoints(run, monkeypatch)
        table = RouteTable(run.config.routes)
        now = time.time()
        burst = [Incoming(f"urn:test:{i}", "valves", b"burst", b"", (), now) for i in range(6)]
        # A commit the journal writer did not make (as the router's are).
        await trio.to_thread.run_sync(
            run.store.ingest, [policy.admit(i, table, now) for i in burst]
        )
        assert run.store.checkpoint_due
        await trio.sleep(0.5)
        assert not checkpoints  # nobody told the journal writer
        run.upstream.committed_elsewhere()
        await wait_until(lambda: bool(checkpoints), "a checkpoint once quiet")
        [(before, after)] = checkpoints
        assert after > before
        assert not run.store.checkpoint_due
