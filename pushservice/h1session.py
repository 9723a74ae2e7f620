"""One HTTP/1.1 connection (application servers, receipt polling, the control API) with h11."""

from __future__ import annotations

import h11
import trio

from pushservice.http import ConnectionInfo, Request, Response, text_response
from pushservice.session_api import SessionHost

RECEIVE_SIZE = 65536
# How long an idle keep-alive connection may wait for its next request (seconds).
KEEPALIVE_TIMEOUT = 300.0


class _Close(Exception):
    """The connection is finished."""


class H1Session:
    """Serves requests one after another until the peer closes or an error."""

    def __init__(
        self, host: SessionHost, stream: trio.abc.Stream, info: ConnectionInfo, initial: bytes
    ) -> None:
        self.host = host
        self.stream = stream
        self.info = info
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=host.settings.max_header_bytes
        )
        if initial:
            self.conn.receive_data(initial)

    async def run(self) -> None:
        """Serve until close."""
        try:
            while True:
                await self._serve_one()
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except _Close:
            return
        except h11.RemoteProtocolError as exc:
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._send(text_response(exc.error_status_hint, "malformed request"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

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
        if isinstance(event, h11.ConnectionClosed):
            raise _Close
        if not isinstance(event, h11.Request):
            raise _Close
        header_bytes = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if header_bytes > self.host.settings.max_header_bytes:
            # h11 bounds only a head still arriving; one that came in a single read is checked here.
            await self._send(text_response(431, "request header fields too large"), close=True)
            raise _Close
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers]
        limit = self.host.settings.max_body
        declared = next((v for k, v in headers if k == "content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._send(text_response(413, f"body over {limit} bytes"), close=True)
            raise _Close
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > limit:
                    await self._send(text_response(413, f"body over {limit} bytes"), close=True)
                    raise _Close
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Close
        authority = next((v for k, v in headers if k == "host"), "")
        req = Request(
            method=event.method.decode("ascii", "replace").upper(),
            path=event.target.decode("ascii", "replace"),
            authority=authority,
            headers=headers,
            body=bytes(body),
            conn=self.info,
        )
        result = await self.host.request(None, 0, req)
        assert result is not None  # over HTTP/1.1 nothing becomes a held monitor
        await self._send(result, close=self.host.draining)
        if self.host.draining:
            raise _Close

    async def _send(self, response: Response, *, close: bool = False) -> None:
        headers = [(k, v) for k, v in response.headers if k != "content-length"]
        headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        out = self.conn.send(h11.Response(status_code=response.status, headers=headers))
        assert out is not None
        if response.body:
            data = self.conn.send(h11.Data(data=response.body))
            assert data is not None
            out += data
        end = self.conn.send(h11.EndOfMessage())
        assert end is not None
        await self.stream.send_all(out + end)
