"""The push service at scale: 2,000 HTTP/2 user agents, each monitoring a set, on one SQLite node
(the baseline), one PostgreSQL node and three PostgreSQL nodes, in the same run.

Per scenario: messages/s accepted (HTTP/1.1 senders, POSTs spread over the nodes) and delivered
(pushed and DELETE-acknowledged), p50/p99 from POST to push, resident memory per connection
(node RSS with the user agents connected, minus an idle node's), and database round trips per
message (statements the nodes sent, from their ``fieldgate_push_store_round_trips`` gauge).
The user agents are one lightweight trio process of raw h2 connections; the senders two
processes of keep-alive HTTP/1.1. Everything shares this machine's cores, so the figures are
a floor of what separate machines would do; the ratios between scenarios are the point.

``python -m bench pushservice_scale`` (``CONNECTIONS=... MESSAGES=...`` to change the size).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from pushservice.h1client import HttpConnection
from tests.postgres import Postgres
from tests.pushservice_nodes import NodeProcess

CONNECTIONS = int(os.environ.get("CONNECTIONS", "2000"))
MESSAGES = int(os.environ.get("MESSAGES", "4000"))
SENDERS = 2
BODY_BYTES = 186  # a 100-byte message once encrypted (aes128gcm adds 86 bytes)
# Time allowed for the user agents to connect, and for every message to be delivered.
CONNECT_LIMIT = 300.0
DELIVER_LIMIT = 300.0


# -- the user agents (child process) -------------------------------------------------------------
class _Agent:
    """One raw h2 connection that subscribes, monitors its set and acknowledges each push."""

    def __init__(self, origin: str, expect: int, done: trio.Event) -> None:
        self.expect = expect
        self.done = done
        parts = urlsplit(origin)
        self.host, self.port = str(parts.hostname), int(parts.port or 80)
        self.authority = parts.netloc
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.paths: dict[int, str] = {}
        self.stream: trio.SocketStream | None = None

    def _headers(self, method: str, path: str) -> list[tuple[str, str]]:
        return [
            (":method", method),
            (":path", path),
            (":authority", self.authority),
            (":scheme", "http"),
        ]

    async def run(self, push_urls: list[str], ready: trio.Event, stats: dict[str, object]) -> None:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 128}
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 20)
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self._headers("POST", "/subscribe"), end_stream=True)
        await self.stream.send_all(self.conn.data_to_send())
        latencies: list[float] = stats["latencies"]  # type: ignore[assignment]
        pushed_bodies: dict[int, bytes] = {}
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    headers = dict(event.headers)
                    links = [v.decode() for k, v in event.headers if k == b"link"]
                    push = next(link for link in links if link.endswith('push"'))
                    set_url = next(link for link in links if 'push:set"' in link)
                    push_urls.append(push[1 : push.index(">")])
                    set_path = urlsplit(set_url[1 : set_url.index(">")]).path
                    held = self.conn.get_next_available_stream_id()  # the monitor, held open
                    self.conn.send_headers(held, self._headers("GET", set_path), end_stream=True)
                    assert headers[b":status"] == b"201"
                    ready.set()
                elif isinstance(event, h2.events.PushedStreamReceived):
                    promise = dict(event.headers)
                    self.paths[event.pushed_stream_id] = promise[b":path"].decode()
                    pushed_bodies[event.pushed_stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    if event.stream_id in pushed_bodies:
                        pushed_bodies[event.stream_id] += event.data
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.paths:
                    path = self.paths.pop(event.stream_id)
                    body = pushed_bodies.pop(event.stream_id)
                    latencies.append(time.time() - struct.unpack("!d", body[:8])[0])
                    ack = self.conn.get_next_available_stream_id()
                    self.conn.send_headers(ack, self._headers("DELETE", path), end_stream=True)
                    stats["delivered"] = int(stats["delivered"]) + 1  # type: ignore[call-overload]
                    stats["last"] = time.time()
                    if stats["delivered"] == self.expect:
                        self.done.set()
            await self.stream.send_all(self.conn.data_to_send())


async def _swarm(
    origins: list[str], count: int, urls_file: Path, stats_file: Path, expect: int
) -> None:
    done = trio.Event()
    stats: dict[str, object] = {"latencies": [], "delivered": 0, "last": 0.0}
    push_urls: list[str] = []
    async with trio.open_nursery() as nursery:
        for n in range(count):
            ready = trio.Event()
            agent = _Agent(origins[n % len(origins)], expect, done)
            nursery.start_soon(agent.run, push_urls, ready, stats)
            await ready.wait()  # one subscribe at a time keeps the connect phase orderly
        urls_file.write_text(json.dumps(push_urls))  # noqa: ASYNC240 - once, small
        with trio.move_on_after(DELIVER_LIMIT):
            await done.wait()
        stats_file.write_text(json.dumps(stats))  # noqa: ASYNC240 - once, small
        nursery.cancel_scope.cancel()


def _sender(origins: list[str], urls: list[str], count: int, seed: int) -> None:
    """POST ``count`` messages to random push resources, through random nodes."""
    rng = random.Random(seed)
    conns = {o: HttpConnection(o) for o in origins}
    headers = [("ttl", "600"), ("content-encoding", "aes128gcm")]
    for _ in range(count):
        path = urlsplit(rng.choice(urls)).path
        body = struct.pack("!d", time.time()) + bytes(BODY_BYTES - 8)
        while True:
            reply = conns[rng.choice(origins)].request("POST", path, headers, body)
            if reply.status in (201, 202):
                break
            time.sleep(0.01)  # 503/429: try again


# -- the orchestration -----------------------------------------------------------------------------
def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _wait(predicate: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.bench_pushservice_scale", *args])


def _scenario(name: str, storage: str, node_count: int, work: Path) -> dict[str, float]:
    nodes = [
        NodeProcess(
            work / f"{name}-node{i}",
            storage=storage,
            public_url="http://127.0.0.1:1",  # senders use the paths, on the node they choose
            redelivery_after="60s",
            proxy_protocol=False,
        )
        for i in range(node_count)
    ]
    try:
        for node in nodes:
            trio.run(node.start)
        origins = ",".join(n.origin for n in nodes)
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        idle = sum(_rss(pid) for pid in pids)
        urls_file, stats_file = work / f"{name}-urls.json", work / f"{name}-stats.json"
        swarm = _child(
            "swarm", origins, str(CONNECTIONS), str(urls_file), str(stats_file), str(MESSAGES)
        )
        _wait(urls_file.exists, CONNECT_LIMIT, "the user agents to connect")
        time.sleep(1.0)  # the last monitors are held
        connected = sum(_rss(pid) for pid in pids)
        trips_before = sum(n.metric("fieldgate_push_store_round_trips") for n in nodes)
        started = time.time()
        count = str(MESSAGES // SENDERS)
        senders = [_child("sender", origins, str(urls_file), count, str(i)) for i in range(SENDERS)]
        for sender in senders:
            sender.wait()
        accepted_in = time.time() - started
        swarm.wait()
        stats = json.loads(stats_file.read_text())
        trips = sum(n.metric("fieldgate_push_store_round_trips") for n in nodes) - trips_before
        latencies = sorted(stats["latencies"])
        delivered = int(stats["delivered"])
        return {
            "accepted": MESSAGES / accepted_in,
            "delivered": delivered / max(1e-9, stats["last"] - started),
            "delivered_count": delivered,
            "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
            "memory": (connected - idle) / CONNECTIONS,
            "trips": trips / max(1, delivered),
        }
    finally:
        for node in nodes:
            node.__exit__()


def _run(work: Path) -> dict[str, dict[str, float]]:
    server = Postgres()
    server.start()
    try:
        sqlite = f"sqlite://{work / 'push.sqlite3'}"
        return {
            "SQLite, 1 node": _scenario("sqlite", sqlite, 1, work),
            "PostgreSQL, 1 node": _scenario("pg1", server.new_database(), 1, work),
            "PostgreSQL, 3 nodes": _scenario("pg3", server.new_database(), 3, work),
        }
    finally:
        server.close()


def main() -> None:
    """Print the table."""
    with tempfile.TemporaryDirectory() as tmp:
        results = _run(Path(tmp))
    base = results["SQLite, 1 node"]
    print(f"{CONNECTIONS:,} HTTP/2 user agents each monitoring a set; {MESSAGES:,} messages\n")
    print(
        "| scenario | accepted msg/s | delivered msg/s | POST→push p50 / p99 "
        "| memory per connection | DB round trips per message |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = "" if r is base else f" ({r['delivered'] / base['delivered']:.2f} of SQLite)"
        print(
            f"| {name} | {r['accepted']:,.0f} | {r['delivered']:,.0f}{ratio} | "
            f"{r['p50']:.0f} / {r['p99']:.0f} ms | {r['memory'] / 1024:.1f} KiB "
            f"| {r['trips']:.2f} |"
        )
    short = {n: MESSAGES - int(r["delivered_count"]) for n, r in results.items()}
    if any(short.values()):
        print(f"\nnot delivered within {DELIVER_LIMIT:.0f} s: {short}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "swarm":
        origins = sys.argv[2].split(",")
        trio.run(
            _swarm,
            origins,
            int(sys.argv[3]),
            Path(sys.argv[4]),
            Path(sys.argv[5]),
            int(sys.argv[6]),
        )
    elif mode == "sender":
        _sender(
            sys.argv[2].split(","),
            json.loads(Path(sys.argv[3]).read_text()),
            int(sys.argv[4]),
            int(sys.argv[5]),
        )
