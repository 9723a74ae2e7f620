"""A tiny blocking HTTP/1.1 client (h11) for the local status endpoint, over TCP or a Unix socket.

Used by ``fieldgate status``; not a general HTTP client (no TLS, no redirects, one request per
connection, the response body bounded by :data:`MAX_RESPONSE_BYTES`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import h11

from fieldgate_common.status_http import TcpAddress, UnixAddress, format_tcp_address, parse_listen

# The endpoint answers in milliseconds; a gateway that takes longer is stuck and worth reporting.
FETCH_TIMEOUT = 5.0
# /status for hundreds of routes is well under 1 MiB; anything larger is not our endpoint.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
RECEIVE_CHUNK = 65536

# A wildcard bind is reached through the loopback of the same family.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class FetchError(Exception):
    """The endpoint could not be reached or answered something that is not HTTP."""


@dataclass(frozen=True)
class FetchResult:
    status: int
    content_type: str
    body: bytes


def endpoint_from_url(url: str) -> TcpAddress | UnixAddress:
    """``http://HOST:PORT[/]``, ``HOST:PORT`` or ``unix:/path`` as an address to connect to."""
    text = url.strip()
    if text.startswith("http://"):
        text = text.removeprefix("http://").split("/", 1)[0]
        if ":" not in text.rsplit("]", 1)[-1]:
            text += ":80"
    elif "://" in text:
        raise ValueError(f"{url!r}: only http:// and unix: status URLs are supported")
    address = parse_listen(text)
    if isinstance(address, TcpAddress):
        address = TcpAddress(_WILDCARD_TO_LOOPBACK.get(address.host, address.host), address.port)
    return address


def _connect(address: TcpAddress | UnixAddress, timeout: float) -> socket.socket:
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(address.path))
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((address.host, address.port), timeout=timeout)


def fetch(
    address: TcpAddress | UnixAddress, path: str, timeout: float = FETCH_TIMEOUT
) -> FetchResult:
    """GET ``path`` and return the whole response; FetchError on any failure."""
    if isinstance(address, UnixAddress):
        host = "localhost"
    else:
        host = format_tcp_address(address.host, address.port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=path,
        headers=[("Host", host), ("Connection", "close"), ("User-Agent", "fieldgate-status")],
    )
    try:
        with _connect(address, timeout) as sock:
            sock.sendall((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            status, content_type, body = 0, "", bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(RECEIVE_CHUNK))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"content-type":
                            content_type = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise FetchError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    except (OSError, h11.ProtocolError) as exc:
        raise FetchError(str(exc) or type(exc).__name__) from exc
    if status == 0:
        raise FetchError("the connection closed before a response")
    return FetchResult(status, content_type, bytes(body))
