"""The floor of the agent benchmark (a child process): a bare ``h2`` client, no agent, no store.

``python -m bench.agent_floor MODE KEYS_FILE EXPECT`` with MODE ``drain`` or ``live``.

It does the least any user agent must do with the same service and messages: monitor the set
(``Prefer: wait=0`` first, then a plain monitor, like the agent), take every pushed message,
decrypt it with bare ``cryptography`` calls (``decrypt_direct``, reference/perf-limits.md §1)
and DELETE it, pipelined up to the service's stream limit. It ends when the service has
answered 204 to EXPECT DELETEs. Same JSON reports as ``bench.agent_gateway``.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from bench.agent_common import CORE_UNDER_TEST, cpu_seconds_self, emit, pin, read_keys, rss_kib
from bench.bench_crypto import _floor
from gateway.webpush.crypto import SubscriptionKeys

READ_CHUNK = 64 * 1024
# The agent's own settings (gateway/webpush/useragent.py), so both see the same flow of pushes.
CONNECTION_WINDOW = 1024 * 1024
STREAM_WINDOW = 256 * 1024
MAX_PUSHED_STREAMS = 128
RSS_SAMPLES = 10


class FloorClient:
    """The client logic of reference/perf-limits.md §2a, plus decryption and monitoring."""

    def __init__(
        self, authority: bytes, set_path: bytes, decrypt: dict[bytes, Callable[[bytes], bytes]]
    ) -> None:
        self.authority = authority
        self.set_path = set_path
        self.decrypt = decrypt  # push resource URL -> decrypt_direct with its keys
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.paths: dict[int, bytes] = {}
        self.links: dict[int, bytes] = {}
        self.bodies: dict[int, list[bytes]] = {}
        self.deletes: deque[bytes] = deque()
        self.in_flight = 0
        self.monitor_stream = 0
        self.acked = 0  # 204s
        self.gone = 0  # 404s: a message pushed twice (again on the next monitor)
        self.decrypted_bytes = 0
        self.first_decrypted_at = 0.0  # time.monotonic() of the first and the last decryption
        self.last_decrypted_at = 0.0

    def start(self, wait0: bool) -> None:
        """Queue the preface, our settings and the first monitor."""
        c = self.conn
        c.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 1,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_PUSHED_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        c.initiate_connection()
        c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.monitor(wait0)

    def monitor(self, wait0: bool) -> None:
        """GET the set (RFC 8030 §6); pushed messages arrive on it."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", self.authority),
            (b":path", self.set_path),
        ]
        if wait0:
            headers.append((b"prefer", b"wait=0"))
        self.conn.send_headers(sid, headers, end_stream=True)
        self.monitor_stream = sid

    def receive(self, data: bytes) -> None:
        """Feed bytes read from the socket; queue DELETEs; count their 204s and 404s."""
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.PushedStreamReceived):
                promise = cast("list[tuple[bytes, bytes]]", ev.headers)
                self.paths[cast(int, ev.pushed_stream_id)] = dict(promise)[b":path"]
            elif isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)
                if ev.stream_id in self.paths:
                    link = headers.get(b"link", b"")
                    self.links[ev.stream_id] = link[link.find(b"<") + 1 : link.find(b">")]
                elif ev.stream_id != self.monitor_stream:
                    if headers.get(b":status") == b"204":
                        self.acked += 1
                    else:
                        self.gone += 1
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies.setdefault(ev.stream_id, []).append(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self._ended(ev.stream_id)
        self._send_deletes()

    def _ended(self, sid: int) -> None:
        path = self.paths.pop(sid, None)
        if path is not None:  # a pushed message is complete
            body = b"".join(self.bodies.pop(sid, ()))
            plaintext = self.decrypt[self.links.pop(sid)](body)
            self.decrypted_bytes += len(plaintext)
            self.last_decrypted_at = time.monotonic()
            self.first_decrypted_at = self.first_decrypted_at or self.last_decrypted_at
            self.deletes.append(path)
        elif sid == self.monitor_stream:
            self.monitor(wait0=False)  # RFC 8030 §6: monitor again
        else:
            self.in_flight -= 1

    def _send_deletes(self) -> None:
        # The service allows max_concurrent_streams requests; one of them is the monitor.
        limit = self.conn.remote_settings.max_concurrent_streams - 1
        while self.deletes and self.in_flight < limit:
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                sid,
                [
                    (b":method", b"DELETE"),
                    (b":scheme", b"http"),
                    (b":authority", self.authority),
                    (b":path", self.deletes.popleft()),
                ],
                end_stream=True,
            )
            self.in_flight += 1


async def run(mode: str, keys_file: Path, expect: int) -> None:
    routes = read_keys(keys_file)
    decrypt = {
        r.push_url.encode(): _floor(
            SubscriptionKeys.from_private_bytes(
                bytes.fromhex(r.private_key_der_hex), bytes.fromhex(r.auth_secret_hex)
            )
        )
        for r in routes
    }
    url = urlsplit(routes[0].set_url)
    assert url.hostname is not None and url.port is not None
    client = FloorClient(url.netloc.encode(), url.path.encode(), decrypt)
    rss_start = rss_kib()
    t0, cpu0 = time.monotonic(), cpu_seconds_self()
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    client.start(wait0=True)
    await stream.send_all(client.conn.data_to_send())
    if mode == "live":
        rss_start = rss_kib()
        emit("ready", rss_kib=rss_start)
        t0, cpu0 = time.monotonic(), cpu_seconds_self()
    samples: list[tuple[int, int]] = []
    step = max(1, expect // RSS_SAMPLES)
    next_sample = step
    while client.acked < expect:
        data = await stream.receive_some(READ_CHUNK)
        if not data:
            raise ConnectionError("the push service closed the connection")
        client.receive(data)
        out = client.conn.data_to_send()
        if out:
            await stream.send_all(out)
        if client.acked >= next_sample:
            samples.append((client.acked, rss_kib()))
            next_sample += step
    t1, cpu1 = time.monotonic(), cpu_seconds_self()
    emit(
        "result",
        t_start=t0,
        t_end=t1,
        messages=expect,
        acked=client.acked,
        journalled=0,
        duplicates=client.gone,
        dead_letters=0,
        commits=0,
        cpu_seconds=cpu1 - cpu0,
        rss_start_kib=rss_start,
        rss_end_kib=rss_kib(),
        rss_samples=samples,
        plaintext_bytes=client.decrypted_bytes,
    )
    await stream.aclose()


def main() -> None:
    pin(CORE_UNDER_TEST)
    trio.run(run, sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
