"""A blocking HTTP/1.1 client on h11 (``fieldgate send``, benchmarks): keep-alive, TLS verified."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

RECEIVE_SIZE = 65536


@dataclass
class HttpReply:
    """Status, headers (lower-case names) and body."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """First value of a header."""
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        """All values of a header."""
        return [v for k, v in self.headers if k == name]


class HttpConnection:
    """One keep-alive connection to an origin; reconnects when the server closes."""

    def __init__(self, origin: str, *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.timeout = timeout
        self._ctx: ssl.SSLContext | None = None
        if self.scheme == "https":
            self._ctx = ssl.create_default_context(cafile=ca_file)
            self._ctx.set_alpn_protocols(["http/1.1"])
        self._sock: socket.socket | None = None
        self._conn: h11.Connection | None = None

    def _connect(self) -> tuple[socket.socket, h11.Connection]:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ctx is not None:
            sock = self._ctx.wrap_socket(sock, server_hostname=self.host)
        self._sock, self._conn = sock, h11.Connection(h11.CLIENT)
        return sock, self._conn

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
        self._sock = self._conn = None

    def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> HttpReply:
        """Send one request and read the full reply."""
        if self._conn is None or self._conn.our_state is not h11.IDLE:
            self.close()
        sock, conn = (self._sock, self._conn) if self._sock and self._conn else self._connect()
        hdrs = [("host", self.netloc), ("content-length", str(len(body))), *headers]
        out = conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        sock.sendall(out)
        reply: HttpReply | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(RECEIVE_SIZE))
            elif isinstance(event, h11.Response):
                reply = HttpReply(
                    event.status_code,
                    event.reason.decode("latin-1"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                )
            elif isinstance(event, h11.Data):
                assert reply is not None
                reply.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("server closed the connection")
        assert reply is not None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            self.close()
        return reply
