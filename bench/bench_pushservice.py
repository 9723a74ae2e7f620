"""Reference push service: messages/s accepted from an HTTP/1.1 sender, messages/s delivered to one
monitoring HTTP/2 connection that acknowledges each, and memory per 10,000 stored messages.

Baselines measured in the same run: the same sender against a bare h11 server that answers 201
without doing anything (the floor of HTTP/1.1 + Python on this machine), and the raw size of the
stored bodies.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import h2.connection
import h2.events
import h11

from pushservice.h1client import HttpConnection
from pushservice.links import links_with_rel
from pushservice.model import NewMessage, Urgency, new_token
from pushservice.store_sqlite import SqliteStore

MESSAGES = 3000
BODY = b"\x00" * 100 + b"x" * 86  # ~ an aes128gcm body of a 100-byte plaintext
STORED = 10_000


def _sender(url: str, count: int) -> None:
    """Child process: POST ``count`` messages over one keep-alive connection."""
    conn = HttpConnection(url)
    path = urlsplit(url).path
    headers = [("ttl", "600"), ("content-encoding", "aes128gcm")]
    for _ in range(count):
        reply = conn.request("POST", path, headers, BODY)
        assert reply.status in (201, 202), reply.status


def _floor_server(port_file: str) -> None:
    """Child process: a bare h11 server answering every request 201, one connection at a time."""
    srv = socket.create_server(("127.0.0.1", 0))
    with open(port_file, "w") as f:
        f.write(str(srv.getsockname()[1]))
    while True:
        sock, _ = srv.accept()
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    break
                conn.receive_data(data)
            elif isinstance(event, h11.EndOfMessage):
                out = conn.send(h11.Response(status_code=201, headers=[("content-length", "0")]))
                sock.sendall((out or b"") + (conn.send(h11.EndOfMessage()) or b""))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
        sock.close()


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_pushservice", *args], stdout=subprocess.PIPE
    )


def _time_sender(url: str, count: int) -> float:
    started = time.perf_counter()
    proc = _spawn("sender", url, str(count))
    assert proc.wait() == 0
    return count / (time.perf_counter() - started)


def _subscribe(origin: str) -> tuple[str, str]:
    reply = HttpConnection(origin).request("POST", "/subscribe", [])
    push = links_with_rel(reply.header_values("link"), "urn:ietf:params:push")[0]
    set_url = links_with_rel(reply.header_values("link"), "urn:ietf:params:push:set")[0]
    return push, set_url


def _monitor_and_ack(set_url: str, count: int, sender_args: tuple[str, int]) -> float:
    """Monitor a set over h2, DELETE every pushed message; returns delivered+acked msgs/s."""
    parts = urlsplit(set_url)
    assert parts.hostname and parts.port
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 24)
    base = [(":authority", parts.netloc), (":scheme", "http")]
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":path", parts.path), *base], end_stream=True)
    sock.sendall(conn.data_to_send())
    started = time.perf_counter()
    sender = _spawn("sender", *map(str, sender_args))
    paths: dict[int, str] = {}
    to_ack: list[str] = []
    acked = 0
    while acked < count:
        data = sock.recv(1 << 20)
        assert data, "service closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.PushedStreamReceived):
                promise = {bytes(k): bytes(v) for k, v in event.headers or []}
                assert event.pushed_stream_id is not None
                paths[event.pushed_stream_id] = promise[b":path"].decode()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                path = paths.pop(event.stream_id, None)
                if path is not None:
                    to_ack.append(path)
                elif event.stream_id != sid:
                    acked += 1
        # Pipeline DELETEs up to the service's SETTINGS_MAX_CONCURRENT_STREAMS.
        while to_ack and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
            ack = conn.get_next_available_stream_id()
            headers = [(":method", "DELETE"), (":path", to_ack.pop()), *base]
            conn.send_headers(ack, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
    rate = count / (time.perf_counter() - started)
    assert sender.wait() == 0
    sock.close()
    return rate


def _memory_per_10k() -> tuple[float, float]:
    """Bytes the (in-memory SQLite) store holds for STORED messages, and the raw body bytes."""
    store = SqliteStore(None)
    sub = store.subscribe(None, None, 0.0)
    db = store._db  # the page count is the figure: read it straight from the database

    def size() -> int:
        return int(db.execute("PRAGMA page_count").fetchone()[0]) * int(
            db.execute("PRAGMA page_size").fetchone()[0]
        )

    before = size()
    for i in range(STORED):
        body = bytes(BODY[:-8]) + i.to_bytes(8, "big")
        message = NewMessage(
            new_token(), sub.id, sub.push_id, sub.set_id, body, "aes128gcm", Urgency.NORMAL,
            None, float(i), float(i) + 600, None,
        )  # fmt: skip
        store.accept(message, max_pending=STORED, claimed=False)
    used = size() - before
    store.close()
    return used, STORED * len(BODY)


def main() -> None:
    """Print the table."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        floor = _spawn("floor", str(port_file))
        ready = Path(tmp) / "ready"
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "push-service",
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                str(ready),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not (ready.exists() and port_file.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)  # processes signal readiness through these files
            floor_url = f"http://127.0.0.1:{port_file.read_text()}/push/x"
            origin = ready.read_text().strip().rsplit("/", 1)[0]
            floor_rate = _time_sender(floor_url, MESSAGES)
            push, _ = _subscribe(origin)
            accept_rate = _time_sender(push, MESSAGES)
            push2, set2 = _subscribe(origin)
            deliver_rate = _monitor_and_ack(set2, MESSAGES, (push2, MESSAGES))
        finally:
            service.terminate()
            floor.terminate()
            service.wait()
            floor.wait()
    used, raw = _memory_per_10k()
    print("| figure | value | baseline | ratio |\n|---|---|---|---|")
    print(
        f"| accepted from one HTTP/1.1 sender (msg/s) | {accept_rate:,.0f} | "
        f"{floor_rate:,.0f} (bare h11 201 server) | {accept_rate / floor_rate:.2f} |"
    )
    print(
        f"| sent + pushed + DELETE-acked on one h2 monitor (msg/s) | {deliver_rate:,.0f} | "
        f"{floor_rate:,.0f} (bare h11 201 server) | {deliver_rate / floor_rate:.2f} |"
    )
    print(
        f"| memory per {STORED:,} stored {len(BODY)}-byte messages | {used / 1e6:.2f} MB | "
        f"{raw / 1e6:.2f} MB (raw bodies) | {used / raw:.2f} |"
    )


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sender":
        _sender(sys.argv[2], int(sys.argv[3]))
    elif mode == "floor":
        _floor_server(sys.argv[2])
