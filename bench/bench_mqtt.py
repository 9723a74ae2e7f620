"""``python -m bench mqtt``: MqttAdapter.deliver beside a bare paho publisher on the same broker.

Rates: messages per second at QoS 0 (written) and QoS 1 (PUBACKed), through ``deliver`` with one
delivery in flight (the router's one-per-target model) and with many in flight, beside a bare
paho ``loop_start()`` publisher that publishes a burst and waits for the last confirmation (the
floor, as in perf-limits.md §3a). Latency: deliver() -> PUBACK, one at a time at a moderate
paced rate, beside bare paho publish() -> wait_for_publish() paced the same way.

A local mosquitto (no subscribers, persistence off) is started on a free loopback port.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from adapters.base import Delivered, Message
from adapters.mqtt import MqttAdapter
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from tests.mosquitto import Mosquitto

PAYLOAD = b"x" * 100  # perf-limits.md uses 100-byte payloads
RATE_MESSAGES = 10_000  # per rate run: ~1-2 s each here
ROUNDS = 3  # median of 3 interleaved rounds (this VM drifts 20-30 % between minutes)
MANY_IN_FLIGHT = 64
LATENCY_SAMPLES = 1500
LATENCY_RATE = 500.0  # messages/s: "moderate", well under every ceiling measured here
TOPIC = "bench/push"


def _messages(n: int) -> list[Message]:
    now = time.time()
    return [
        Message(id=f"m{i}", route="bench", body=PAYLOAD, received_at=now, expires_at=now + 3600.0)
        for i in range(n)
    ]


def _bare_client(broker: Mosquitto) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages = 20  # paho's default, mosquitto's Receive Maximum
    client.connect(broker.host, broker.port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)  # bench setup only: paho offers no connected event to wait on
    return client


def bare_rate(broker: Mosquitto, qos: int, n: int) -> float:
    """Burst of n publishes through paho's loop_start() thread, until the last completes."""
    client = _bare_client(broker)
    try:
        started = time.perf_counter()
        info = None
        for _ in range(n):
            info = client.publish(TOPIC, PAYLOAD, qos=qos)
        assert info is not None
        info.wait_for_publish(60)
        return n / (time.perf_counter() - started)
    finally:
        client.disconnect()
        client.loop_stop()


def bare_latency(broker: Mosquitto, samples: int, rate: float) -> list[float]:
    """publish() -> wait_for_publish() at QoS 1, paced at ``rate``."""
    client = _bare_client(broker)
    latencies: list[float] = []
    try:
        start = time.perf_counter()
        for i in range(samples):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            client.publish(TOPIC, PAYLOAD, qos=1).wait_for_publish(5)
            latencies.append(time.perf_counter() - t0)
        return latencies
    finally:
        client.disconnect()
        client.loop_stop()


async def _with_adapter(broker: Mosquitto, work: Callable[[MqttAdapter], object]) -> object:
    config = MqttAdapterConfig(name="bench", host=broker.host, port=broker.port)
    adapter = MqttAdapter(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(adapter.run)
        await adapter.wait_health(lambda h: h.state == "connected")
        result = await work(adapter)  # type: ignore[misc]
        nursery.cancel_scope.cancel()
    return result


def adapter_rate(broker: Mosquitto, qos: int, n: int, in_flight: int) -> float:
    """n deliveries through MqttAdapter.deliver with ``in_flight`` concurrent deliverers."""
    target = MqttTarget(adapter="bench", topic=TOPIC, qos=qos)  # type: ignore[arg-type]
    messages = _messages(n)

    async def work(adapter: MqttAdapter) -> float:
        todo = iter(messages)
        failures = 0

        async def deliverer() -> None:
            nonlocal failures
            for message in todo:
                if not isinstance(await adapter.deliver(message, target), Delivered):
                    failures += 1

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(deliverer)
        elapsed = trio.current_time() - started
        if failures:
            raise RuntimeError(f"{failures} deliveries not confirmed")
        return n / elapsed

    return float(trio.run(_with_adapter, broker, work))  # type: ignore[arg-type]


def adapter_latency(broker: Mosquitto, samples: int, rate: float) -> list[float]:
    """deliver() -> PUBACK at QoS 1, one at a time, paced at ``rate``."""
    target = MqttTarget(adapter="bench", topic=TOPIC, qos=1)
    messages = _messages(samples)

    async def work(adapter: MqttAdapter) -> list[float]:
        latencies: list[float] = []
        start = trio.current_time()
        for i, message in enumerate(messages):
            await trio.sleep_until(start + i / rate)
            t0 = time.perf_counter()
            await adapter.deliver(message, target)
            latencies.append(time.perf_counter() - t0)
        return latencies

    result = trio.run(_with_adapter, broker, work)
    assert isinstance(result, list)
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    with TemporaryDirectory() as directory:
        broker = Mosquitto(Path(directory) / "broker", verbose=False)
        broker.start()
        try:
            _run(broker)
        finally:
            broker.stop()


def _run(broker: Mosquitto) -> None:
    rows: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for _ in range(ROUNDS):  # interleaved, so every row shares the same drift
        for qos in (0, 1):
            record(f"bare paho q{qos}", bare_rate(broker, qos, RATE_MESSAGES))
            record(f"adapter q{qos} x1", adapter_rate(broker, qos, RATE_MESSAGES, 1))
            record(
                f"adapter q{qos} x{MANY_IN_FLIGHT}",
                adapter_rate(broker, qos, RATE_MESSAGES, MANY_IN_FLIGHT),
            )
    rate = {name: statistics.median(values) for name, values in rows.items()}

    print(f"{RATE_MESSAGES} x {len(PAYLOAD)} B per run, median of {ROUNDS} interleaved rounds")
    print(f"{'publishes/s':<34}{'rate':>10}{'floor (bare paho)':>20}{'ratio':>8}")
    for qos in (0, 1):
        floor = rate[f"bare paho q{qos}"]
        label = "written" if qos == 0 else "PUBACKed"
        for in_flight in (1, MANY_IN_FLIGHT):
            value = rate[f"adapter q{qos} x{in_flight}"]
            name = f"deliver() QoS {qos} ({label}), {in_flight} in flight"
            print(f"{name:<34}{value:>10,.0f}{floor:>20,.0f}{value / floor:>8.2f}")

    ours = adapter_latency(broker, LATENCY_SAMPLES, LATENCY_RATE)
    bare = bare_latency(broker, LATENCY_SAMPLES, LATENCY_RATE)
    print(
        f"\nQoS 1 latency, {LATENCY_SAMPLES} samples paced at {LATENCY_RATE:.0f}/s, one at a time"
    )
    print(f"{'':<34}{'deliver()':>10}{'bare paho':>20}{'ratio':>8}")
    for q, name in ((0.5, "p50 to PUBACK (us)"), (0.99, "p99 to PUBACK (us)")):
        a, b = _percentile(ours, q) * 1e6, _percentile(bare, q) * 1e6
        print(f"{name:<34}{a:>10,.0f}{b:>20,.0f}{a / b:>8.2f}")
