"""The application server of the agent benchmark (a child process).

``python -m bench.agent_sender KEYS_FILE COUNT TTL``: encrypts COUNT messages ahead of time
(``gateway.webpush.crypto.encrypt``, a fresh sender key each, as pywebpush does), alternating
between the routes of KEYS_FILE, then waits for commands on stdin: ``send`` POSTs all of them
over one HTTP/1.1 keep-alive connection (h11) and reports the time taken; ``quit`` ends.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import h11

from bench.agent_common import CORE_PEERS, emit, pin, read_keys
from gateway.webpush.crypto import encrypt

PAYLOAD_BYTES = 100  # the payload size of reference/perf-limits.md §2b and §3b
RECEIVE_SIZE = 65536


class KeepAliveSender:
    """POSTs one request after the other on a single keep-alive connection."""

    def __init__(self, host: str, port: int, ttl: int) -> None:
        self.address = (host, port)
        self.netloc = f"{host}:{port}"
        self.ttl = str(ttl).encode()
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h11.Connection(h11.CLIENT)

    def post(self, path: str, body: bytes) -> int:
        """One POST; returns the status code."""
        headers = [
            (b"host", self.netloc.encode()),
            (b"content-length", b"%d" % len(body)),
            (b"content-encoding", b"aes128gcm"),
            (b"ttl", self.ttl),
        ]
        conn = self.conn
        out = conn.send(h11.Request(method="POST", target=path, headers=headers)) or b""
        out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out)
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(RECEIVE_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the push service closed the connection")
        conn.start_next_cycle()
        return status


def main() -> None:
    keys_file, count, ttl = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    pin(CORE_PEERS)
    routes = read_keys(keys_file)
    started = time.perf_counter()
    messages: list[tuple[str, bytes]] = []
    for i in range(count):
        route = routes[i % len(routes)]
        payload = (b"%08d " % i).ljust(PAYLOAD_BYTES, b"x")
        body = encrypt(
            payload,
            p256dh=bytes.fromhex(route.p256dh_hex),
            auth_secret=bytes.fromhex(route.auth_secret_hex),
        )
        messages.append((urlsplit(route.push_url).path, body))
    origin = urlsplit(routes[0].push_url)
    assert origin.hostname is not None and origin.port is not None
    sender = KeepAliveSender(origin.hostname, origin.port, ttl)
    emit("ready", encrypt_seconds=time.perf_counter() - started, body_bytes=len(messages[0][1]))
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "send":
            continue
        t_start = time.monotonic()
        refused = 0
        for path, body in messages:
            if sender.post(path, body) not in (201, 202):
                refused += 1
        emit("sent", t_start=t_start, t_end=time.monotonic(), count=count, refused=refused)


if __name__ == "__main__":
    main()
