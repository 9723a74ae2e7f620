"""HTTP/1.1 for the endpoint side and the control API (h11), and telling a WebSocket upgrade
from a plain request on a shared port."""

from __future__ import annotations

import re
from collections.abc import Callable

import h11
import trio

from pushservice.autopush.endpoint import HttpRequest, HttpResponse
from pushservice.autopush.settings import KEEPALIVE_TIMEOUT, MAX_HEAD_BYTES

RECEIVE_SIZE = 65536
_UPGRADE = re.compile(rb"^upgrade:[ \t]*websocket[ \t]*$", re.IGNORECASE | re.MULTILINE)


async def read_head(stream: trio.abc.Stream) -> bytes:
    """Read until the end of the first request head (or EOF, or MAX_HEAD_BYTES)."""
    data = bytearray()
    while b"\r\n\r\n" not in data and len(data) < MAX_HEAD_BYTES:
        chunk = await stream.receive_some(RECEIVE_SIZE)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def is_websocket_upgrade(head: bytes) -> bool:
    """Whether a request head asks for ``Upgrade: websocket``."""
    return _UPGRADE.search(head.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")) is not None


def text_response(status: int, reason: str) -> HttpResponse:
    """A small text/plain response."""
    return HttpResponse(
        status, (("content-type", "text/plain; charset=utf-8"),), (reason + "\n").encode()
    )


class _Close(Exception):
    """The connection is finished."""


class Http1Session:
    """Serve requests one after another until the peer closes, with bounded heads and bodies."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        initial: bytes,
        handler: Callable[[HttpRequest], HttpResponse],
        *,
        max_body: int,
        peer_is_loopback: bool,
        too_large: HttpResponse | None = None,
    ) -> None:
        self.stream = stream
        self.too_large = too_large or text_response(413, f"body over {max_body} bytes")
        self.handler = handler
        self.max_body = max_body
        self.loopback = peer_is_loopback
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if initial:
            self.conn.receive_data(initial)

    async def run(self) -> None:
        """Serve until close."""
        try:
            while True:
                await self._serve_one()
                if h11.MUST_CLOSE in (self.conn.our_state, self.conn.their_state):
                    return
                self.conn.start_next_cycle()
        except _Close:
            return
        except h11.RemoteProtocolError as exc:
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(text_response(exc.error_status_hint, "malformed request"), True)

    async def _next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(KEEPALIVE_TIMEOUT) as scope:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise _Close
            self.conn.receive_data(bytes(data))

    async def _serve_one(self) -> None:
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            raise _Close
        headers = tuple(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
        )
        declared = next((v for k, v in headers if k == "content-length"), None)
        too_large = self.too_large
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._send(too_large, True)
            raise _Close
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.max_body:
                    await self._send(too_large, True)
                    raise _Close
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Close
        request = HttpRequest(
            event.method.decode("ascii", "replace").upper(),
            event.target.decode("ascii", "replace"),
            headers,
            bytes(body),
            self.loopback,
        )
        await self._send(self.handler(request))

    async def _send(self, response: HttpResponse, close: bool = False) -> None:
        headers = [(k, v) for k, v in response.headers if k != "content-length"]
        headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        out = self.conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.body:
            out += self.conn.send(h11.Data(data=response.body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)
