"""A minimal HTTP/1.1 client (h11 on trio) for POSTing JSON: distributing push resources.

TLS is always verified (system trust store plus an optional CA file); plain ``http://`` is
accepted only for loopback hosts, the same rule as for the push service.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import h11
import trio

from fieldgate_common.logs import redact_url

# A response we read at most this much of: the receiving server's answer is only a status.
MAX_RESPONSE_BYTES = 64 * 1024
READ_CHUNK = 16 * 1024


class HttpError(Exception):
    """The request could not be made or the answer could not be read."""


@dataclass(frozen=True)
class Response:
    """Status, headers and (bounded) body of an answer."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_ssl_context(
    ca_file: Path | None = None, *, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """Verification on, hostname checked, TLS 1.2 at least; ``ca_file`` adds a trust anchor."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


async def open_service_stream(
    url: str,
    ca_file: Path | None,
    *,
    secure: str,
    plain: str,
    alpn: list[str],
    refuse: Callable[[str], Exception],
) -> trio.abc.Stream:
    """A connection to the push service at ``url``: TLS (verified, SNI, ``alpn``) for the
    ``secure`` scheme; cleartext only for the ``plain`` scheme to a loopback host (tests), any
    other is refused with ``refuse(reason)``. Never a downgrade."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == secure:
        context = client_ssl_context(ca_file, alpn=alpn)
        tcp = await trio.open_tcp_stream(host, parts.port or 443)
        stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
        await stream.do_handshake()
        return stream
    if parts.scheme == plain and is_loopback_host(host):
        return await trio.open_tcp_stream(host, parts.port or 80)
    raise refuse(f"refusing {parts.scheme}:// to {host}: only {secure}, or {plain} on loopback")


async def post_json(
    url: str,
    body: bytes,
    *,
    ca_file: Path | None = None,
    time_limit: float = 30.0,
    user_agent: str = "fieldgate",
) -> Response:
    """POST ``body`` as ``application/json`` and return the answer."""
    headers = [("content-type", "application/json"), ("user-agent", user_agent)]
    return await request("POST", url, body, headers=headers, ca_file=ca_file, time_limit=time_limit)


async def request(
    method: str,
    url: str,
    body: bytes = b"",
    *,
    headers: Sequence[tuple[str, str]] = (),
    ca_file: Path | None = None,
    time_limit: float = 30.0,
) -> Response:
    """One request on a fresh connection (``Connection: close``); returns the answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        port = parts.port or 443
    elif parts.scheme == "http" and is_loopback_host(host):
        port = parts.port or 80
    else:
        raise HttpError(f"refusing {parts.scheme}:// to {host}: only https, or http on loopback")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(time_limit):
        try:
            stream: trio.abc.Stream
            if parts.scheme == "https":
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=client_ssl_context(ca_file), https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
            async with stream:
                return await _exchange(stream, method, parts.netloc, target, body, headers)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise HttpError(f"{method} {redact_url(url)}: {exc}") from exc


async def _exchange(
    stream: trio.abc.Stream,
    method: str,
    authority: str,
    target: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
) -> Response:
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method=method,
        target=target,
        headers=[
            ("host", authority),
            *headers,
            ("content-length", str(len(body))),
            ("connection", "close"),
        ],
    )
    data = conn.send(head) + (conn.send(h11.Data(data=body)) if body else b"")
    await stream.send_all(data + conn.send(h11.EndOfMessage()))
    status = 0
    response_headers: tuple[tuple[str, str], ...] = ()
    chunks = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_CHUNK)))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            response_headers = tuple(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers
            )
        elif isinstance(event, h11.Data):
            if len(chunks) < MAX_RESPONSE_BYTES:
                chunks += event.data[: MAX_RESPONSE_BYTES - len(chunks)]
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return Response(status, response_headers, bytes(chunks))
