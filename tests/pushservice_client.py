"""A small HTTP/2 (h2) and HTTP/1.1 (h11) test client for the reference push service."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import h11
import trio


@dataclass
class Reply:
    """A response, or a pushed exchange (``promise`` holds the PUSH_PROMISE request headers)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    promise: list[tuple[str, str]] = field(default_factory=list)
    stream_id: int = 0
    parent: int = 0
    reset: bool = False

    def header(self, name: str) -> str | None:
        """First value of a header."""
        return next((v for k, v in self.headers if k == name), None)

    def header_values(self, name: str) -> list[str]:
        """All values of a header."""
        return [v for k, v in self.headers if k == name]

    def pseudo(self, name: str) -> str | None:
        """A pseudo-header of the promise."""
        return next((v for k, v in self.promise if k == name), None)


class H2Client:
    """One HTTP/2 connection; pushes arrive on ``pushes`` (a trio receive channel)."""

    def __init__(self, stream: trio.abc.Stream, authority: str, scheme: str) -> None:
        self.stream = stream
        self.authority = authority
        self.scheme = scheme
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._replies: dict[int, Reply] = {}
        self._done: dict[int, trio.Event] = {}
        self._push_send, self.pushes = trio.open_memory_channel[Reply](1000)
        self.closed = trio.Event()
        self._send_lock = trio.Lock()
        self.goaway_received = False
        self.auto_ack_window = True

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def _reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._on_event(event)
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            for ev in self._done.values():
                ev.set()

    def _on_event(self, event: Any) -> None:
        # ev is Any: with header_encoding set h2 yields str headers, which its annotations do not
        # say, so attribute access goes through an untyped alias.
        ev: Any = event
        if isinstance(event, h2.events.PushedStreamReceived):
            r = Reply(promise=list(ev.headers), stream_id=ev.pushed_stream_id)
            r.parent = ev.parent_stream_id
            self._replies[ev.pushed_stream_id] = r
            self._done[ev.pushed_stream_id] = trio.Event()
        elif isinstance(event, h2.events.ResponseReceived):
            r = self._replies.setdefault(ev.stream_id, Reply(stream_id=ev.stream_id))
            for k, v in ev.headers:
                if k == ":status":
                    r.status = int(v)
                else:
                    r.headers.append((k, v))
        elif isinstance(event, h2.events.DataReceived):
            self._replies[ev.stream_id].body += ev.data
            if self.auto_ack_window:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            ended = self._replies.get(ev.stream_id)
            if ended is not None:
                ended.reset = isinstance(event, h2.events.StreamReset)
                if ended.promise:
                    self._push_send.send_nowait(ended)
            done = self._done.get(ev.stream_id)
            if done is not None:
                done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True

    async def start(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> int:
        """Send a request; returns its stream id (await ``wait(stream_id)`` for the reply)."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [
            (":method", method),
            (":path", path),
            (":authority", self.authority),
            (":scheme", self.scheme),
            *(headers or []),
        ]
        self._replies[sid] = Reply(stream_id=sid)
        self._done[sid] = trio.Event()
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            view = memoryview(body)
            while view:
                window = min(self.conn.local_flow_control_window(sid), 16384)
                if window <= 0:
                    await self._flush()
                    await trio.sleep(0.01)
                    continue
                self.conn.send_data(sid, bytes(view[:window]))
                view = view[window:]
            self.conn.end_stream(sid)
        await self._flush()
        return sid

    async def wait(self, sid: int) -> Reply:
        """The complete reply on a stream."""
        await self._done[sid].wait()
        return self._replies[sid]

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """Send a request and wait for the complete reply."""
        return await self.wait(await self.start(method, path, headers, body))

    async def next_push(self) -> Reply:
        """The next completed pushed exchange."""
        return await self.pushes.receive()

    async def ack(self, push: Reply) -> Reply:
        """DELETE the pushed message resource."""
        path = push.pseudo(":path")
        assert path is not None
        return await self.request("DELETE", path)


@asynccontextmanager
async def h2_client(
    origin: str, *, ssl_context: ssl.SSLContext | None = None, enable_push: bool = True
) -> AsyncIterator[H2Client]:
    """Connect (cleartext prior knowledge, or TLS with ALPN h2) and run the reader."""
    url = urlsplit(origin)
    assert url.hostname is not None and url.port is not None
    stream: trio.abc.Stream = await trio.open_tcp_stream(url.hostname, url.port)
    if url.scheme == "https":
        assert ssl_context is not None
        ssl_context.set_alpn_protocols(["h2"])
        stream = trio.SSLStream(stream, ssl_context, server_hostname=url.hostname)
        await stream.do_handshake()
    client = H2Client(stream, url.netloc, url.scheme)
    if not enable_push:
        client.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
    client.conn.initiate_connection()
    await client._flush()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)


async def h1_request(
    url: str,
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    if parts.scheme == "https":
        assert ssl_context is not None
        stream = trio.SSLStream(stream, ssl_context, server_hostname=parts.hostname)
    conn = h11.Connection(h11.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    hdrs = [("host", parts.netloc), ("content-length", str(len(body))), *(headers or [])]
    out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
    out += conn.send(h11.Data(data=body)) if body else b""
    out += conn.send(h11.EndOfMessage())
    reply = Reply()
    try:
        await stream.send_all(out)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                reply.status = event.status_code
                reply.headers = [(k.decode(), v.decode()) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                reply.body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    finally:
        await trio.aclose_forcefully(stream)
    return reply


# -- helpers shared by the push-service tests ----------------------------------------------------
REL_PUSH = "urn:ietf:params:push"
REL_SET = "urn:ietf:params:push:set"
REL_RECEIPT = "urn:ietf:params:push:receipt"


def link_of(reply: Reply, rel: str) -> str:
    """The single target of ``rel`` in a reply's Link headers."""
    from pushservice.links import links_with_rel

    targets = links_with_rel(reply.header_values("link"), rel)
    assert len(targets) == 1, reply
    return targets[0]


def path_of(url: str) -> str:
    """The path of an absolute URL."""
    return urlsplit(url).path


async def subscribe(ua: H2Client, set_url: str | None = None, **extra: str) -> Reply:
    """POST /subscribe (optionally into a set); asserts 201."""
    headers = [] if set_url is None else [("link", f'<{set_url}>; rel="{REL_SET}"')]
    headers += [(k.replace("_", "-"), v) for k, v in extra.items()]
    reply = await ua.request("POST", "/subscribe", headers)
    assert reply.status == 201, reply
    return reply


async def send(
    url: str,
    body: bytes = b"hello",
    ttl: str | None = "60",
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    """An application server's POST to a push resource over HTTP/1.1."""
    hdrs = [("content-encoding", "aes128gcm")]
    if ttl is not None:
        hdrs.append(("ttl", ttl))
    return await h1_request(url, "POST", hdrs + (headers or []), body)


class ManualClock:
    """A wall clock the test moves by hand (pass as PushService(clock=...))."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def sync(ua: H2Client) -> None:
    """Round trip on the connection: the service has processed everything sent before."""
    reply = await ua.request("DELETE", "/message/sync-marker")
    assert reply.status == 404
