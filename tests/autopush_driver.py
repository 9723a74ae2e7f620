"""A small trio driver around the sans-IO autopush client core, and a raw WebSocket peer, for
the tests of the autopush double (``tests/test_autopush_service.py``)."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import trio
import wsproto
import wsproto.events as ws

from gateway.webpush.autopush import (
    Ack,
    AutopushProtocol,
    Connected,
    ConnectionClosed,
    Event,
    HelloAccepted,
    NotificationReceived,
    PongReceived,
    ProtocolViolation,
    Registered,
    ServerClosed,
)

# Generous bound for anything on loopback; a test that needs it has failed anyway.
WAIT = 10.0
E = TypeVar("E", bound=Event)


class Client:
    """One connection: events arrive on a channel; ``muted`` drops what the core would send."""

    def __init__(self, stream: trio.abc.Stream, core: AutopushProtocol) -> None:
        self.stream = stream
        self.core = core
        self.muted = False
        self._send, self._receive = trio.open_memory_channel[Event | ProtocolViolation](1000)

    async def flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self.muted:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(data)

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            try:
                events: list[Event] = self.core.receive_data(bytes(data))
            except ProtocolViolation as exc:
                await self._send.send(exc)
                return
            for event in events:
                await self._send.send(event)
            await self.flush()  # the core's pongs and close replies
            if not data:
                return

    async def next(self) -> Event:
        """The next event (within WAIT); a ProtocolViolation is raised here."""
        with trio.fail_after(WAIT):
            event = await self._receive.receive()
        if isinstance(event, ProtocolViolation):
            raise event
        return event

    async def expect(self, kind: type[E]) -> E:
        """The next event, which must be of ``kind``."""
        event = await self.next()
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    async def hello(self, uaid: str | None) -> HelloAccepted:
        self.core.hello(uaid)
        await self.flush()
        return await self.expect(HelloAccepted)

    async def register(self, channel_id: str, key: str | None = None) -> Registered:
        self.core.register(channel_id, key)
        await self.flush()
        return await self.expect(Registered)

    async def notifications(self, count: int) -> list[NotificationReceived]:
        return [await self.expect(NotificationReceived) for _ in range(count)]

    async def ack(self, *notes: NotificationReceived, code: int = 100) -> None:
        self.core.ack([Ack(n.channel_id, n.version, code) for n in notes])
        await self.flush()

    async def barrier(self) -> list[Event]:
        """Everything the service sent before answering a WebSocket ping sent now.

        The service handles its input in order, so whatever it would send in answer to what
        we sent before the ping comes before the pong.
        """
        payload = os.urandom(8)
        self.core.ping(payload)
        await self.flush()
        seen = []
        while True:
            event = await self.next()
            if event == PongReceived(payload):
                return seen
            seen.append(event)

    async def until_closed(self) -> tuple[ServerClosed | None, ConnectionClosed]:
        """Read to the end: the service's close frame (if any) and the end."""
        server: ServerClosed | None = None
        while True:
            event = await self.next()
            if isinstance(event, ServerClosed):
                server = event
            if isinstance(event, ConnectionClosed):
                return server, event


async def _open(url: str, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    tcp = await trio.open_tcp_stream(parts.hostname, parts.port)
    if parts.scheme == "wss":
        assert ssl_context is not None
        tls = trio.SSLStream(tcp, ssl_context, server_hostname=parts.hostname)
        await tls.do_handshake()
        return tls
    return tcp


@asynccontextmanager
async def autopush_client(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Client]:
    """Connect, run the WebSocket handshake (``Connected`` is consumed), yield the client."""
    stream = await _open(url, ssl_context)
    parts = urlsplit(url)
    core = AutopushProtocol(parts.netloc, parts.path or "/", max_message_bytes=64 * 1024)
    core.initiate()
    client = Client(stream, core)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._reader)
        await client.flush()
        await client.expect(Connected)
        try:
            yield client
        finally:
            # Close first, cancel last: an await in a cancelled scope would raise Cancelled,
            # which the nursery swallows together with the test's own failure.
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


class RawPeer:
    """A WebSocket client that sends whatever a test wants (wsproto, no autopush rules)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    async def send(self, event: ws.Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def events(self) -> AsyncIterator[ws.Event]:
        while True:
            for event in self.conn.events():
                yield event
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.conn.receive_data(data)

    async def close_frame(self) -> ws.CloseConnection:
        """Read until the service's close frame."""
        with trio.fail_after(WAIT):
            async for event in self.events():
                if isinstance(event, ws.CloseConnection):
                    return event
        raise AssertionError("the service closed without a close frame")


@asynccontextmanager
async def raw_peer(url: str) -> AsyncIterator[RawPeer]:
    """Connected and upgraded."""
    stream = await _open(url, None)
    peer = RawPeer(stream)
    parts = urlsplit(url)
    await peer.send(ws.Request(host=parts.netloc, target="/"))
    with trio.fail_after(WAIT):
        async for event in peer.events():
            if isinstance(event, ws.AcceptConnection):
                break
    try:
        yield peer
    finally:
        await trio.aclose_forcefully(stream)
