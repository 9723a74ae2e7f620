"""End to end to MQTT: pywebpush -> push service -> whole gateway -> mosquitto -> a subscriber.

Everything is real: the reference push service over loopback HTTP/2, the gateway's store, router,
agent and MQTT adapter, a mosquitto broker on a free port, and a paho MQTT 5 client as the device.
"""

# ruff: noqa: F811  (pytest fixtures are imported explicitly and then named as parameters)

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from gateway import router as router_module
from gateway.store import target_key
from tests.agent_harness import wait_until
from tests.mosquitto import Mosquitto, MosquittoFactory, mosquitto, mosquitto_factory  # noqa: F401
from tests.pipeline import (
    MqttSubscriber,
    Pipeline,
    has_mqtt_property,
    mqtt_property,
    route,
    running_gateway,
    user_properties,
)

TTL = 600
# The broker counts the expiry interval down while it holds a message; on loopback it forwards
# at once, so the subscriber sees at most a few seconds less than the gateway published.
EXPIRY_SLACK = 5


def broker_adapter(broker: Mosquitto, **options: object) -> MqttAdapterConfig:
    return MqttAdapterConfig(
        name="site-broker",
        host=broker.host,
        port=broker.port,
        keepalive=30.0,
        reconnect_base=0.05,
        reconnect_cap=0.2,
        **options,  # type: ignore[arg-type]
    )


async def test_messages_arrive_with_their_mqtt5_properties(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    telemetry = MqttTarget(
        adapter="site-broker",
        topic="site/{route}/{id}",
        qos=1,
        retain=True,
        content_type="application/json",
    )
    commands = MqttTarget(adapter="site-broker", topic="cmd/{route}", qos=2)
    routes = [route("telemetry", telemetry), route("commands", commands)]
    subscriber = MqttSubscriber(mosquitto)
    try:
        async with running_gateway(
            tmp_path, routes, {"site-broker": broker_adapter(mosquitto)}
        ) as run:
            sent = {}
            for i in range(3):
                body = b'{"interval_s": %d}' % i
                sent[body] = ("telemetry", await run.send("telemetry", body, ttl=TTL))
                body = b"open valve %d" % i
                sent[body] = (
                    "commands",
                    await run.send("commands", body, ttl=TTL, topic=f"v{i}"),
                )
            await wait_until(lambda: len(subscriber.messages) >= len(sent), "every message")
            received = subscriber.messages
            dead = run.gateway.store.dead_letters()
    finally:
        subscriber.stop()

    assert sorted(m.payload for m in received) == sorted(sent)
    for route_name in ("telemetry", "commands"):
        order = [body for body, (name, _) in sent.items() if name == route_name]
        assert [m.payload for m in received if m.payload in order] == order, route_name
    for message in received:
        route_name, answer = sent[bytes(message.payload)]
        journal_id = run.journal_ids[answer.message_url]
        assert user_properties(message) == {"message-id": journal_id, "route": route_name}
        expiry = mqtt_property(message, "MessageExpiryInterval")
        assert TTL - EXPIRY_SLACK <= expiry <= TTL
        if route_name == "telemetry":
            assert message.topic == f"site/telemetry/{journal_id}"
            assert message.qos == 1
            assert message.retain
            assert mqtt_property(message, "ContentType") == "application/json"
        else:
            assert message.topic == "cmd/commands"
            assert message.qos == 2
            assert not message.retain
            assert not has_mqtt_property(message, "ContentType")
    assert dead == []


def persistent_broker(factory: MosquittoFactory, tmp_path: Path) -> Mosquitto:
    """A broker that saves its sessions on stop, so the subscriber's queue survives a restart."""
    data = tmp_path / "mosquitto-data"
    data.mkdir()
    return factory(extra_config=f"persistence true\npersistence_location {data}/\n")


async def test_broker_down_and_back_loses_nothing_and_drops_what_expired(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = persistent_broker(mosquitto_factory, tmp_path)
    routes = [
        route("telemetry", MqttTarget(adapter="site-broker", topic="site/{route}")),
        route("short", MqttTarget(adapter="site-broker", topic="short/{route}"), max_age=2.0),
    ]
    subscriber = MqttSubscriber(broker, session_expiry=300)
    before = [b"before %d" % i for i in range(5)]
    during = [b"during %d" % i for i in range(5)]
    try:
        async with running_gateway(
            tmp_path, routes, {"site-broker": broker_adapter(broker)}
        ) as run:
            adapter = run.gateway.adapters["site-broker"]
            await run.send_all("telemetry", before)
            await wait_until(lambda: len(subscriber.messages) == len(before), "the first batch")

            # The subscriber's PUBACKs must reach the broker first, or a restarted broker
            # rightly redelivers to its session what it never saw acknowledged.
            await trio.to_thread.run_sync(subscriber.settle)
            broker.stop()
            await wait_until(lambda: not adapter.health().ok, "the adapter to see the broker go")
            await run.send_all("telemetry", during)
            short = await run.send("short", b"stale soon")
            await wait_until(lambda: short.message_url in run.journal_ids, "the short one stored")
            # Its max_age passes while the broker is down: counted as expired, never published,
            # and not a dead letter (nothing refused it).
            store = run.gateway.store
            await wait_until(
                lambda: (
                    run.counter("fieldgate_messages_expired_total", route="short") == 1
                    or bool(store.dead_letters())
                ),
                "the short-lived message to expire",
            )
            assert [(d.route, d.reason) for d in store.dead_letters()] == []
            assert len(subscriber.messages) == len(before)
            assert run.queue_depth() == len(during)

            broker.start()
            await wait_until(
                lambda: len(subscriber.messages) >= len(before) + len(during), "the backlog"
            )
            await wait_until(lambda: run.queue_depth() == 0, "the journal to drain")
            metrics_line = run.metrics_line("fieldgate_messages_expired_total", route="short")
            dead = run.gateway.store.dead_letters()
    finally:
        subscriber.stop()

    assert subscriber.payloads() == before + during  # every one, once, in order
    assert metrics_line == 'fieldgate_messages_expired_total{route="short"} 1'
    assert [(d.route, d.reason) for d in dead] == []


ACL = """user gateway
topic write site/#
user watcher
topic read #
"""


async def test_broker_acl_refusal_is_a_dead_letter_and_others_still_flow(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(users={"gateway": "gw-secret", "watcher": "w-secret"}, acl=ACL)
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("gw-secret\n")
    password_file.chmod(0o600)
    adapter = broker_adapter(broker, username="gateway", password_file=password_file)
    routes = [
        route("telemetry", MqttTarget(adapter="site-broker", topic="site/{route}")),
        route("forbidden", MqttTarget(adapter="site-broker", topic="elsewhere/{route}", qos=2)),
    ]
    subscriber = MqttSubscriber(broker, username="watcher", password="w-secret")
    allowed = [b"allowed %d" % i for i in range(4)]
    try:
        async with running_gateway(tmp_path, routes, {"site-broker": adapter}) as run:
            await run.send("telemetry", allowed[0])
            refused = await run.send("forbidden", b"not for this topic")
            await run.send_all("telemetry", allowed[1:])
            store = run.gateway.store
            await wait_until(lambda: len(store.dead_letters()) == 1, "the refusal")
            # The metric follows the store's commit (the router counts what it committed).
            await wait_until(
                lambda: run.counter("fieldgate_dead_letters_total") == 1, "the dead letter counted"
            )
            await wait_until(lambda: len(subscriber.messages) == len(allowed), "the others")
            await wait_until(lambda: run.queue_depth() == 0, "the journal to drain")
            healthy = run.gateway.health()
            dead = store.dead_letters()
            journal_id = run.journal_ids[refused.message_url]
    finally:
        subscriber.stop()

    assert subscriber.payloads() == allowed
    assert healthy == (True, "ok")
    (letter,) = dead
    assert letter.route == "forbidden"
    assert letter.plaintext == b"not for this topic"
    assert "Not authorized" in letter.reason and "0x87" in letter.reason
    assert journal_id  # it was journalled before it was refused


async def test_in_the_field_each_message_costs_one_transaction(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages one at a time (the field's case): each costs its ingest commit only, which also
    records the previous message's delivery and acknowledgement. The committer's own commit is
    kept out of the way (RESOLVE_DEFER ten minutes), so only the carry can have recorded them."""
    monkeypatch.setattr(router_module, "RESOLVE_DEFER", 600.0)
    routes = [route("telemetry", MqttTarget(adapter="site-broker", topic="site/{route}", qos=1))]
    subscriber = MqttSubscriber(mosquitto)
    bodies = [b"reading %d" % i for i in range(8)]
    try:
        async with running_gateway(
            tmp_path, routes, {"site-broker": broker_adapter(mosquitto)}
        ) as run:
            store = run.gateway.store
            await run.send("telemetry", b"first")
            await wait_until(lambda: len(subscriber.messages) == 1, "the first message")
            before = store.transactions
            for n, body in enumerate(bodies, start=2):
                await run.send("telemetry", body)
                await wait_until(lambda n=n: len(subscriber.messages) == n, "the next message")
            during = store.transactions - before
            pending = store.pending_deliveries("telemetry", target_key(0, routes[0].deliver[0]))
            waiting = [p.message.body for p in pending]
    finally:
        subscriber.stop()
    assert subscriber.payloads() == [b"first", *bodies]
    assert during == len(bodies)  # before: two per message (ingest, then the delivery)
    # Each ingest recorded the delivery before it; the last one's waits for the next message
    # (or the committer; a graceful stop records it).
    assert waiting == [bodies[-1]]


async def test_a_message_alone_costs_one_fsynced_commit_and_waits_no_more_at_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The field's usual case, a message now and then: its ingest is its one commit, fsynced.
    The record of its delivery and of the service's confirmation of its acknowledgement waits
    for the next message's commit (policy.RECORD_DEFER), yet /status and /metrics show nothing
    waiting as soon as the device has it; the next message's ingest records both; a graceful
    stop records the last one's, not fsynced."""
    from tests.test_store import commit_modes

    routes = [route("telemetry", MqttTarget(adapter="site-broker", topic="site/{route}", qos=1))]
    key = target_key(0, routes[0].deliver[0])
    subscriber = MqttSubscriber(mosquitto)
    statements: list[str] = []
    seen: list[tuple[int, int, str | None, list[bytes], int, list[str]]] = []

    async def shown(run: Pipeline) -> None:
        """What /status and /metrics say beside what the journal holds, now."""
        store = run.gateway.store
        document = await run.status()
        [telemetry] = [r for r in document["routes"] if r["name"] == "telemetry"]
        metrics = run.gateway.metrics()
        depth = next(
            line for line in metrics.splitlines() if line.startswith("fieldgate_queue_depth{")
        )
        seen.append(
            (
                telemetry["queue_depth"],
                telemetry["queue_bytes"],
                depth.rsplit(" ", 1)[1],
                [p.message.body for p in store.pending_deliveries("telemetry", key)],
                len(store.pending_acks()),
                commit_modes(statements),
            )
        )

    try:
        async with running_gateway(
            tmp_path, routes, {"site-broker": broker_adapter(mosquitto)}
        ) as run:
            run.gateway.store._conn.set_trace_callback(statements.append)
            for n, body in enumerate([b"alone", b"next"], start=1):
                await run.send("telemetry", body, ttl=TTL)
                await wait_until(lambda n=n: len(subscriber.messages) == n, "the message")
                await wait_until(lambda n=n: run.service.acked_count() == n, "its ack")
                await shown(run)
    finally:
        subscriber.stop()
    assert seen == [
        # Delivered and acknowledged: nothing waits, its record is still to come.
        (0, 0, "0", [b"alone"], 1, ["FULL"]),
        # The next one's ingest recorded the first's delivery and acknowledgement.
        (0, 0, "0", [b"next"], 1, ["FULL", "FULL"]),
    ]
    stop_modes = commit_modes(statements)[2:]
    assert stop_modes and set(stop_modes) == {"NORMAL"}
    journal = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    try:
        left = journal.execute(
            "SELECT count(*) FROM journal WHERE body IS NOT NULL OR ack = 'owed'"
        ).fetchone()[0]
    finally:
        journal.close()
    assert left == 0  # the stop recorded the last delivery and its acknowledgement
