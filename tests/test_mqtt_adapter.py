"""MqttAdapter against a real mosquitto, with a paho subscriber as the device side."""

# ruff: noqa: F811  (pytest fixtures are imported explicitly and then named as parameters)

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from random import Random
from typing import Any

import msgpack
import paho.mqtt.client as paho
import pytest
import trio
import trio.testing
import trustme
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.base import Delivered, Expired, Health, Message, Rejected, RetryLater
from adapters.mqtt import MqttAdapter
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.mqtt_policy import (
    Publication,
    encode_publish_properties,
    expiry_interval,
    plan_publication,
    reconnect_delay,
    render_topic,
    topic_problem,
    variable_byte_integer,
)
from adapters.serial_config import SerialTarget
from fieldgate_common.metrics import Metrics
from tests.mosquitto import Mosquitto, MosquittoFactory, mosquitto, mosquitto_factory, tls_ca  # noqa: F401

# Generous bounds for a loaded 2-core machine; a healthy run needs milliseconds.
RECEIVE_TIMEOUT = 10.0


# -- helpers -----------------------------------------------------------------------------------


def make_message(
    n: int = 0,
    *,
    route: str = "kitchen",
    body: bytes = b"hello",
    ttl: float | None = 600.0,
    content_type: str | None = None,
) -> Message:
    now = time.time()
    return Message(
        id=f"msg-{n}",
        route=route,
        body=body,
        received_at=now,
        expires_at=None if ttl is None else now + ttl,
        content_type=content_type,
    )


def config_for(broker: Mosquitto, name: str = "mq", **overrides: Any) -> MqttAdapterConfig:
    base = MqttAdapterConfig(
        name=name,
        host=broker.host,
        port=broker.port,
        keepalive=30.0,
        reconnect_base=0.05,
        reconnect_cap=0.2,
    )
    return replace(base, **overrides)


class Subscriber:
    """A paho client on its own thread that records every message on ``topic``."""

    def __init__(
        self, broker: Mosquitto, topic: str = "#", *, protocol: MQTTProtocolVersion = paho.MQTTv5
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(RECEIVE_TIMEOUT):
            raise RuntimeError("subscriber got no SUBACK")

    async def get(self) -> paho.MQTTMessage:
        return await trio.to_thread.run_sync(self.messages.get, True, RECEIVE_TIMEOUT)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscribed(broker: Mosquitto, topic: str = "#", **kwargs: Any) -> Iterator[Subscriber]:
    subscriber = Subscriber(broker, topic, **kwargs)
    try:
        yield subscriber
    finally:
        subscriber.stop()


@asynccontextmanager
async def running(adapter: MqttAdapter, *, connected: bool = True) -> AsyncIterator[MqttAdapter]:
    async with trio.open_nursery() as nursery:
        await nursery.start(adapter.run)
        if connected:
            await adapter.wait_health(lambda h: h.state == "connected")
        yield adapter
        nursery.cancel_scope.cancel()


def user_properties(received: paho.MQTTMessage) -> dict[str, str]:
    return dict(getattr(received.properties, "UserProperty", []))


def prop(received: paho.MQTTMessage, name: str) -> Any:
    return getattr(received.properties, name)


def has_prop(received: paho.MQTTMessage, name: str) -> bool:
    return hasattr(received.properties, name)


def is_connected(health: Health) -> bool:
    return health.state == "connected"


# -- pure policy (no sockets) ------------------------------------------------------------------


def test_topic_placeholders_are_replaced() -> None:
    message = make_message(7, route="garden")
    assert render_topic("dev/{route}/{id}/{other}", message) == "dev/garden/msg-7/{other}"


@pytest.mark.parametrize(
    ("topic", "problem"),
    [("", "empty"), ("a/+/b", "wildcard"), ("a/#", "wildcard"), ("a\x00b", "NUL")],
)
def test_bad_topics_are_named(topic: str, problem: str) -> None:
    found = topic_problem(topic)
    assert found is not None and problem in found


def test_overlong_topic_is_refused() -> None:
    assert topic_problem("a" * 65536) is not None
    assert topic_problem("a" * 65535) is None


def test_expiry_interval_rounds_down_and_never_means_none() -> None:
    assert expiry_interval(None) is None
    assert expiry_interval(59.99) == 59
    assert expiry_interval(1.0) == 1
    assert expiry_interval(1e12) == 2**32 - 1


def test_expired_message_is_never_planned_for_publishing() -> None:
    message = make_message(ttl=10.0)
    assert isinstance(plan_publication(message, "t", None, now=message.received_at + 11), Expired)
    # Under MQTT's one-second resolution the broker could keep it past its deadline.
    almost = plan_publication(message, "t", None, now=message.received_at + 9.5)
    assert isinstance(almost, Expired)
    assert isinstance(
        plan_publication(message, "t", None, now=message.received_at + 8.9), Publication
    )


def test_target_content_type_overrides_the_message() -> None:
    message = make_message(content_type="text/plain")
    plan = plan_publication(message, "t/{route}", "application/json", now=message.received_at)
    assert not isinstance(plan, Rejected)
    assert plan.content_type == "application/json"
    assert plan.topic == "t/kitchen"
    assert plan.user_properties == (("message-id", "msg-0"), ("route", "kitchen"))


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/ü"])
@pytest.mark.parametrize("expiry", [None, 0, 59, 2**32 - 1])
def test_property_encoding_matches_paho(content_type: str | None, expiry: int | None) -> None:
    publication = Publication(
        topic="t",
        expiry_interval=expiry,
        content_type=content_type,
        user_properties=(("message-id", "x" * 200), ("route", "r")),
    )
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        reference.MessageExpiryInterval = expiry
    if content_type is not None:
        reference.ContentType = content_type
    reference.UserProperty = list(publication.user_properties)
    assert encode_publish_properties(publication) == bytes(reference.pack())  # type: ignore[no-untyped-call]


def test_variable_byte_integer_boundaries() -> None:
    assert variable_byte_integer(0) == b"\x00"
    assert variable_byte_integer(127) == b"\x7f"
    assert variable_byte_integer(128) == b"\x80\x01"
    assert variable_byte_integer(16_383) == b"\xff\x7f"
    assert variable_byte_integer(268_435_455) == b"\xff\xff\xff\x7f"


def test_reconnect_delay_is_full_jitter_under_the_cap() -> None:
    rng = Random(1)
    delays = [reconnect_delay(attempt, 1.0, 30.0, rng) for attempt in range(200)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    assert all(d <= 2.0**a for a, d in enumerate(delays[:4]))
    assert max(delays[10:]) > 15.0  # jitter spreads over the whole capped range
    assert reconnect_delay(10_000, 1.0, 30.0, rng) <= 30.0  # no overflow on long outages


# -- a real broker -----------------------------------------------------------------------------


async def test_delivered_message_carries_mqtt5_properties(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="dev/{route}/{id}", qos=1, content_type="text/plain")
    message = make_message(1, ttl=300.0)
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            outcome = await adapter.deliver(message, target)
            received = await subscriber.get()
    assert isinstance(outcome, Delivered)
    assert received.topic == "dev/kitchen/msg-1"
    assert received.payload == b"hello"
    assert received.qos == 1
    assert 290 <= prop(received, "MessageExpiryInterval") <= 300
    assert prop(received, "ContentType") == "text/plain"
    assert user_properties(received) == {"message-id": "msg-1", "route": "kitchen"}


async def test_message_without_expiry_or_type_has_neither(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            await adapter.deliver(make_message(ttl=None), MqttTarget(adapter="mq", topic="t"))
            received = await subscriber.get()
    assert not has_prop(received, "MessageExpiryInterval")
    assert not has_prop(received, "ContentType")


async def test_content_type_comes_from_the_message(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            message = make_message(content_type="application/cbor")
            await adapter.deliver(message, MqttTarget(adapter="mq", topic="t"))
            received = await subscriber.get()
    assert prop(received, "ContentType") == "application/cbor"


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_each_qos_is_confirmed_and_arrives(mosquitto: Mosquitto, qos: int) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="q/{id}", qos=qos)  # type: ignore[arg-type]
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            outcomes = [await adapter.deliver(make_message(n), target) for n in range(5)]
            received = [await subscriber.get() for _ in range(5)]
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert [m.topic for m in received] == [f"q/msg-{n}" for n in range(5)]
    assert {m.qos for m in received} == {qos}


async def test_concurrent_deliveries_all_confirmed(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="c/{id}", qos=1)
    outcomes: list[object] = []

    async def one(n: int) -> None:
        outcomes.append(await adapter.deliver(make_message(n), target))

    with subscribed(mosquitto) as subscriber:
        async with running(adapter), trio.open_nursery() as nursery:
            for n in range(200):  # beyond mosquitto's Receive Maximum of 20
                nursery.start_soon(one, n)
        topics = {(await subscriber.get()).topic for _ in range(200)}
    assert len(outcomes) == 200 and all(isinstance(o, Delivered) for o in outcomes)
    assert topics == {f"c/msg-{n}" for n in range(200)}
    assert adapter.health().counters["in_flight"] == 0


async def test_a_free_slot_and_an_answered_publish_cost_no_scheduling_round(
    mosquitto: Mosquitto,
) -> None:
    """A publish with a free slot in the broker's Receive Maximum goes out without a
    checkpoint, and the outcome of one whose PUBACK was already read is taken without one:
    with a checkpoint each, the router sent one message per scheduling round while an upstream
    connection took in a backlog (bench e2e drain: ~100 publishes/s meanwhile)."""
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="f/{id}", qos=1)
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            with trio.testing.assert_no_checkpoints():
                confirmations = [await adapter.send(make_message(n), target) for n in range(5)]
            # PUBACKs come in order: once the last one is in, the others were read before it.
            last = await confirmations[-1].outcome()
            with trio.testing.assert_no_checkpoints():
                outcomes = [await c.outcome() for c in confirmations[:-1]]
            received = [await subscriber.get() for _ in range(5)]
            # One not answered yet is waited for (a checkpoint, which the check notices).
            waiting = await adapter.send(make_message(5), target)
            with pytest.raises(AssertionError), trio.testing.assert_no_checkpoints():
                later = await waiting.outcome()
            received = [*received, await subscriber.get()]
    assert all(isinstance(o, Delivered) for o in [*outcomes, last, later])
    assert [m.topic for m in received] == [f"f/msg-{n}" for n in range(6)]


def tcp_options(port: int) -> dict[int, tuple[int, int]]:
    """Local port -> (TCP_NODELAY, TCP_QUICKACK) of each of this process's TCP connections to
    ``port``: what the kernel holds, not what the code meant."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket (or gone meanwhile)
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer, local = sock.getpeername(), sock.getsockname()
            except OSError:
                continue  # a listening or unconnected socket
            if peer[1] == port:
                found[local[1]] = (
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK),
                )
    return found


def new_connections(port: int, before: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """The options of the connections to ``port`` that were not there ``before``."""
    return [options for local, options in tcp_options(port).items() if local not in before]


async def test_publishes_go_out_at_once_and_pubacks_are_acked_at_once(
    mosquitto: Mosquitto,
) -> None:
    """Nagle's algorithm off, and quick-ACK mode after each read. mosquitto leaves Nagle on
    (set_tcp_nodelay false): it holds a PUBACK until we ACK the one before, so a pipeline that
    waits for its last PUBACKs stopped for our delayed-ACK timer (40 ms) every time."""
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="n/{id}", qos=1)
    with subscribed(mosquitto):
        before = tcp_options(mosquitto.port)  # the subscriber's, and any other test's
        async with running(adapter):
            # One at a time: each publish follows a read closely, which is what makes Linux
            # delay its ACKs (the interactive "pingpong" mode) unless told otherwise.
            for n in range(5):
                assert isinstance(await adapter.deliver(make_message(n), target), Delivered)
            options = new_connections(mosquitto.port, before)
    assert options == [(1, 1)]


async def test_retained_message_reaches_a_later_subscriber(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="state/{route}", retain=True)
    async with running(adapter):
        assert isinstance(await adapter.deliver(make_message(), target), Delivered)
    with subscribed(mosquitto, "state/#") as late:
        received = await late.get()
    assert received.retain and received.payload == b"hello"


async def test_envelope_payload(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="e", payload="envelope")
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            await adapter.deliver(make_message(3, body=b"\x00\x01"), target)
            received = await subscriber.get()
    envelope = msgpack.unpackb(received.payload)
    assert envelope["id"] == "msg-3" and envelope["body"] == b"\x00\x01"


async def test_expired_and_bad_topic_are_rejected_and_never_published(
    mosquitto: Mosquitto,
) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    with subscribed(mosquitto) as subscriber:
        async with running(adapter):
            # Expired (or under MQTT's one-second resolution): never published, and handed
            # back as Expired so that the router counts it expired, not dead.
            expired = make_message(1, ttl=-1.0)
            outcome = await adapter.deliver(expired, MqttTarget(adapter="mq"))
            assert isinstance(outcome, Expired)
            almost = make_message(2, ttl=0.5)  # MQTT expiry is whole seconds
            outcome = await adapter.deliver(almost, MqttTarget(adapter="mq"))
            assert isinstance(outcome, Expired)
            wild = make_message(3, route="a/+")
            outcome = await adapter.deliver(wild, MqttTarget(adapter="mq", topic="x/{route}"))
            assert isinstance(outcome, Rejected) and "wildcard" in outcome.reason
            wrong = await adapter.deliver(make_message(4), SerialTarget(adapter="mq"))
            assert isinstance(wrong, Rejected)
            await adapter.deliver(make_message(5), MqttTarget(adapter="mq", topic="sentinel"))
            first = await subscriber.get()
    assert first.topic == "sentinel"  # nothing was published before it
    assert adapter.health().counters["rejected"] == 2


async def test_broker_down_then_back_no_duplicates(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto))
    target = MqttTarget(adapter="mq", topic="r/{id}", qos=1)
    async with running(adapter):
        assert isinstance(await adapter.deliver(make_message(0), target), Delivered)
        # A publish outstanding when the broker dies is resolved RetryLater, not left in paho.
        mosquitto.pause()
        outcomes: list[object] = []

        async def outstanding() -> None:
            outcomes.append(await adapter.deliver(make_message(1), target))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outstanding)
            await adapter.wait_health(lambda h: h.counters["in_flight"] == 1)
            mosquitto.kill()
        assert isinstance(outcomes[0], RetryLater)
        await adapter.wait_health(lambda h: not is_connected(h))
        # While down: RetryLater at once, for every QoS.
        for qos in (0, 1, 2):
            down = await adapter.deliver(make_message(2), replace(target, qos=qos))
            assert isinstance(down, RetryLater) and "broker" in down.reason
        await trio.to_thread.run_sync(mosquitto.start)
        await adapter.wait_health(is_connected)
        with subscribed(mosquitto) as subscriber:
            for n in (1, 2):  # the router retries
                assert isinstance(await adapter.deliver(make_message(n), target), Delivered)
            topics = [(await subscriber.get()).topic for _ in range(2)]
            await adapter.deliver(make_message(9), replace(target, topic="sentinel"))
            topics.append((await subscriber.get()).topic)
    # paho resent nothing by itself on reconnect: each message exactly once, in order.
    assert topics == ["r/msg-1", "r/msg-2", "sentinel"]
    counters = adapter.health().counters
    assert counters["disconnects"] >= 1 and counters["connects"] >= 2


async def test_tls_with_client_certificate(
    mosquitto_factory: MosquittoFactory, tls_ca: trustme.CA
) -> None:
    broker = mosquitto_factory(tls_ca=tls_ca, require_certificate=True)
    cert = broker.client_cert()
    config = config_for(
        broker,
        port=broker.tls_port,
        tls=True,
        ca_file=broker.ca_file,
        cert_file=cert.cert_file,
        key_file=cert.key_file,
    )
    adapter = MqttAdapter(config)
    with subscribed(broker) as subscriber:
        before = tcp_options(broker.tls_port)
        async with running(adapter):
            outcome = await adapter.deliver(make_message(), MqttTarget(adapter="mq", topic="tls"))
            received = await subscriber.get()
            options = new_connections(broker.tls_port, before)
    assert isinstance(outcome, Delivered)
    assert received.topic == "tls" and received.payload == b"hello"
    assert options == [(1, 1)]  # under TLS too: Nagle off, quick ACKs


async def test_tls_without_required_client_certificate_fails(
    mosquitto_factory: MosquittoFactory, tls_ca: trustme.CA
) -> None:
    broker = mosquitto_factory(tls_ca=tls_ca, require_certificate=True)
    config = config_for(broker, port=broker.tls_port, tls=True, ca_file=broker.ca_file)
    adapter = MqttAdapter(config)
    async with running(adapter, connected=False):
        health = await adapter.wait_health(lambda h: h.counters["connect_failures"] >= 1)
    assert not health.ok and health.state == "connecting"
    assert health.detail  # mosquitto's handshake alert or the closed connection, named


async def test_tls_with_wrong_ca_fails_clearly(
    mosquitto_factory: MosquittoFactory, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    broker = mosquitto_factory(tls_ca=tls_ca)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    adapter = MqttAdapter(config_for(broker, port=broker.tls_port, tls=True, ca_file=other_ca))
    async with running(adapter, connected=False):
        health = await adapter.wait_health(lambda h: h.counters["connect_failures"] >= 1)
        outcome = await adapter.deliver(make_message(), MqttTarget(adapter="mq"))
    assert not health.ok and health.state == "connecting"
    assert "certificate verify failed" in health.detail
    assert isinstance(outcome, RetryLater) and "certificate verify failed" in outcome.reason


ACL = "user gateway\ntopic write dev/#\ntopic read #\n"


async def test_acl_refusal_is_rejected_with_the_reason(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    broker = mosquitto_factory(users={"gateway": "s3cret"}, acl=ACL)
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("s3cret\n")
    password_file.chmod(0o600)
    config = config_for(broker, username="gateway", password_file=password_file)
    adapter = MqttAdapter(config)
    async with running(adapter):
        allowed = await adapter.deliver(make_message(), MqttTarget(adapter="mq", topic="dev/1"))
        denied = await adapter.deliver(make_message(), MqttTarget(adapter="mq", topic="other/1"))
        denied2 = await adapter.deliver(
            make_message(), MqttTarget(adapter="mq", topic="other/2", qos=2)
        )
    assert isinstance(allowed, Delivered)
    assert isinstance(denied, Rejected)
    assert "Not authorized" in denied.reason and "0x87" in denied.reason
    assert isinstance(denied2, Rejected)  # refused at PUBREC
    assert "Not authorized" in denied2.reason and "0x87" in denied2.reason


async def test_mqtt311_acl_refusal_is_silent(mosquitto_factory: MosquittoFactory) -> None:
    """Documents mosquitto's 3.1.1 behaviour: an ACL-denied publish is acknowledged and dropped."""
    broker = mosquitto_factory(users={"gateway": "s3cret"}, acl=ACL)
    config = config_for(broker, protocol="3.1.1", username="gateway", password="s3cret")
    adapter = MqttAdapter(config)
    async with running(adapter):
        denied = await adapter.deliver(make_message(), MqttTarget(adapter="mq", topic="other/1"))
    assert isinstance(denied, Delivered)


async def test_wrong_password_is_reported(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(users={"gateway": "s3cret"}, acl=ACL)
    adapter = MqttAdapter(config_for(broker, username="gateway", password="wrong"))
    async with running(adapter, connected=False):
        health = await adapter.wait_health(lambda h: h.counters["connect_failures"] >= 1)
    assert "refused the connection" in health.detail
    assert "wrong" not in health.detail


async def test_missing_password_file_is_misconfigured(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = config_for(mosquitto, username="u", password_file=tmp_path / "absent")
    adapter = MqttAdapter(config)
    async with running(adapter, connected=False):
        health = adapter.health()
        outcome = await adapter.deliver(make_message(), MqttTarget(adapter="mq"))
    assert health.state == "misconfigured" and "absent" in health.detail
    assert isinstance(outcome, RetryLater)


async def test_mqtt311_plain_publish(mosquitto: Mosquitto) -> None:
    adapter = MqttAdapter(config_for(mosquitto, protocol="3.1.1"))
    with subscribed(mosquitto, protocol=paho.MQTTv311) as subscriber:
        async with running(adapter):
            outcome = await adapter.deliver(make_message(), MqttTarget(adapter="mq", topic="v3"))
            received = await subscriber.get()
    assert isinstance(outcome, Delivered)
    assert received.topic == "v3" and received.payload == b"hello"


async def test_two_brokers_at_once_share_a_metrics_registry(
    mosquitto_factory: MosquittoFactory,
) -> None:
    first, second = mosquitto_factory(), mosquitto_factory()
    metrics = Metrics()
    a = MqttAdapter(config_for(first, name="a"), metrics=metrics)
    b = MqttAdapter(config_for(second, name="b"), metrics=metrics)
    results: dict[str, object] = {}

    async def send(adapter: MqttAdapter) -> None:
        target = MqttTarget(adapter=adapter.name, topic="to/{route}")
        results[adapter.name] = await adapter.deliver(make_message(), target)

    with subscribed(first) as on_first, subscribed(second) as on_second:
        async with running(a), running(b):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, a)
                nursery.start_soon(send, b)
            rendered = metrics.render()
        got = (await on_first.get(), await on_second.get())
    assert all(isinstance(r, Delivered) for r in results.values()) and len(results) == 2
    assert [m.topic for m in got] == ["to/kitchen", "to/kitchen"]
    assert 'fieldgate_mqtt_deliveries_total{adapter="a",outcome="delivered"} 1' in rendered
    assert 'fieldgate_mqtt_deliveries_total{adapter="b",outcome="delivered"} 1' in rendered
    assert 'fieldgate_mqtt_connected{adapter="a"} 1' in rendered


def test_quota_exceeded_and_server_busy_are_retried_not_rejected():
    from adapters.base import Rejected, RetryLater
    from adapters.mqtt_policy import ack_outcome

    assert isinstance(ack_outcome(0x97, "Quota exceeded", "PUBACK"), RetryLater)
    assert isinstance(ack_outcome(0x89, "Server busy", "PUBACK"), RetryLater)
    assert isinstance(ack_outcome(0x87, "Not authorized", "PUBACK"), Rejected)
