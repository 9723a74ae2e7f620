"""The floor of the end-to-end benchmark (a child process): bare h2 + bare cryptography.

``python -m bench.e2e_floor drain KEYS_FILE EXPECT [MQTT_PORT TOPIC]`` or ``python -m
bench.e2e_floor live KEYS_FILE MQTT_PORT TOPIC``.

The client is ``bench.agent_floor.FloorClient`` (the logic of reference/perf-limits.md §2a:
monitor the set, DELETE every push pipelined, decrypt with ``decrypt_direct``); no agent, no
journal, no router.

* ``drain``: takes EXPECT messages already waiting at the push service and reports the time
  from the first to the last message taken in (decrypted) and from the first to the last
  acknowledgement answered, its CPU from before the connection to the end, and the same over
  the 10%-90% acknowledgements. With MQTT_PORT and TOPIC it also publishes each decrypted payload
  as ``live`` does (the drain to MQTT of the bare parts: the benchmark times it to the
  subscriber's last receipt, as it times the gateway's);
* ``live``: also publishes each decrypted payload with a bare paho client (QoS 1, network
  thread) to TOPIC, so that the benchmark's subscriber measures the latency of the floor
  pipeline exactly as it does the gateway's; runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from bench.agent_floor import READ_CHUNK, FloorClient
from bench.bench_crypto import _floor
from bench.e2e_common import CORE_UNDER_TEST, cpu_seconds_self, emit, pin, read_keys, rss_kib_self
from gateway.webpush.crypto import SubscriptionKeys

WINDOW = (0.1, 0.9)  # the rate is timed between these fractions of the messages
MQTT_MAX_INFLIGHT = 100  # perf-limits.md §3a: paho's best QoS 1 rate with loop_start()
CONNECT_LIMIT = 10.0


def _decryptors(keys_file: Path) -> tuple[str, dict[bytes, Callable[[bytes], bytes]]]:
    routes = read_keys(keys_file)
    decrypt = {
        r.push_url.encode(): _floor(
            SubscriptionKeys.from_private_bytes(
                bytes.fromhex(r.private_key_der_hex), bytes.fromhex(r.auth_secret_hex)
            )
        )
        for r in routes.values()
    }
    return next(iter(routes.values())).set_url, decrypt


async def _connect(
    set_url: str, client_of: Callable[[bytes, bytes], FloorClient]
) -> tuple[trio.SocketStream, FloorClient]:
    url = urlsplit(set_url)
    assert url.hostname is not None and url.port is not None
    client = client_of(url.netloc.encode(), url.path.encode())
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    client.start(wait0=True)
    await stream.send_all(client.conn.data_to_send())
    return stream, client


async def _pump(stream: trio.SocketStream, client: FloorClient) -> None:
    data = await stream.receive_some(READ_CHUNK)
    if not data:
        raise ConnectionError("the push service closed the connection")
    client.receive(data)
    out = client.conn.data_to_send()
    if out:
        await stream.send_all(out)


def _publisher(mqtt_port: int) -> Any:
    """A bare paho QoS 1 publisher on its network thread (perf-limits.md §3a)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.max_inflight_messages_set(MQTT_MAX_INFLIGHT)
    publisher.connect("127.0.0.1", mqtt_port)
    publisher.loop_start()
    return publisher


async def _connected(publisher: Any) -> None:
    with trio.fail_after(CONNECT_LIMIT):
        while not publisher.is_connected():  # noqa: ASYNC110 - paho has no awaitable event
            await trio.sleep(0.01)


def _publishing(
    bare: dict[bytes, Callable[[bytes], bytes]], publisher: Any, topic: str, sent: list[Any]
) -> dict[bytes, Callable[[bytes], bytes]]:
    """``bare``'s decryptors, each also publishing what it decrypted (the last in ``sent``)."""

    def and_publish(fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def decrypt_and_publish(body: bytes) -> bytes:
            plaintext = fn(body)
            sent[:] = [publisher.publish(topic, plaintext, qos=1)]
            return plaintext

        return decrypt_and_publish

    return {url: and_publish(fn) for url, fn in bare.items()}


async def drain(
    keys_file: Path, expect: int, mqtt_port: int | None = None, topic: str = ""
) -> None:
    set_url, decrypt = _decryptors(keys_file)
    publisher = None
    sent: list[Any] = []
    if mqtt_port is not None:
        publisher = _publisher(mqtt_port)
        decrypt = _publishing(decrypt, publisher, topic, sent)
        await _connected(publisher)
    marks = [max(1, round(expect * f)) for f in WINDOW]
    seen: list[tuple[float, float]] = []
    t0, cpu0 = time.monotonic(), cpu_seconds_self()
    t_first = 0.0
    stream, client = await _connect(set_url, lambda a, p: FloorClient(a, p, decrypt))
    while client.acked < expect:
        await _pump(stream, client)
        if not t_first and client.acked:
            t_first = time.monotonic()
        while len(seen) < len(marks) and client.acked >= marks[len(seen)]:
            seen.append((time.monotonic(), cpu_seconds_self()))
    t_end = time.monotonic()
    if sent:  # publishing: its CPU runs to the last PUBACK
        await trio.to_thread.run_sync(sent[0].wait_for_publish, CONNECT_LIMIT)
    cpu_end = cpu_seconds_self()
    (t_lo, cpu_lo), (t_hi, cpu_hi) = seen
    emit(
        "result",
        messages=expect,
        window=marks[1] - marks[0],
        window_seconds=t_hi - t_lo,
        window_cpu=cpu_hi - cpu_lo,
        first_to_last_seconds=t_end - t_first,  # first to last acknowledgement answered
        # First to last message taken in (decrypted, its DELETE queued): the gateway's drain is
        # timed from its first message taken in, too.
        taken_seconds=client.last_decrypted_at - client.first_decrypted_at,
        first_decrypted_at=client.first_decrypted_at,  # time.monotonic(): the subscriber's clock
        total_seconds=t_end - t0,  # from before the connection
        cpu_seconds=cpu_end - cpu0,
        duplicates=client.gone,
        rss_kib=rss_kib_self(),
    )
    await stream.aclose()
    if publisher is not None:
        publisher.disconnect()
        publisher.loop_stop()


async def live(keys_file: Path, mqtt_port: int, topic: str) -> None:
    publisher = _publisher(mqtt_port)
    set_url, bare = _decryptors(keys_file)
    decrypt = _publishing(bare, publisher, topic, [])
    await _connected(publisher)
    stream, client = await _connect(set_url, lambda a, p: FloorClient(a, p, decrypt))
    emit("ready", rss_kib=rss_kib_self())

    async def pump_forever() -> None:
        while True:
            await _pump(stream, client)

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_forever)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    publisher.disconnect()
    publisher.loop_stop()


def main() -> None:
    pin(CORE_UNDER_TEST)
    mode, keys_file = sys.argv[1], Path(sys.argv[2])
    if mode == "drain":
        publish_to = (int(sys.argv[4]), sys.argv[5]) if len(sys.argv) > 4 else ()
        trio.run(drain, keys_file, int(sys.argv[3]), *publish_to)
    else:
        trio.run(live, keys_file, int(sys.argv[3]), sys.argv[4])


if __name__ == "__main__":
    main()
