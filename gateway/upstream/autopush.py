"""One WebSocket connection to an autopush service (Mozilla's push service): socket, TLS, I/O
and keepalive.

The protocol is :class:`~gateway.webpush.autopush.AutopushProtocol` (sans-IO, on wsproto);
this module owns the socket and the tasks of one connection: a reader, a writer, the keepalive
(a WebSocket ping when the line has been quiet for ``keepalive``; no pong within the next
interval means a dead path — never the protocol ping ``{}``, which the service punishes when
sent more often than every 45 s), and the ``hello`` that identifies the gateway with its stored
uaid. One channel per route: its ``subscription_url`` in the journal is the channel id, its push
resource the ``pushEndpoint``.

What differs from RFC 8030 is said to the hub in its terms: a notification is a
:class:`~gateway.upstream.contract.Pushed` whose key is ``ap:<channel id>:<version>`` (the
dedupe key and what ``ack`` needs), an acknowledgement is done once the service answered a
WebSocket ping sent after it (autopush answers no ack, but reads a connection's frames in order:
the pong shows it has taken the acks before it, so the journal may start forgetting them), and a
new uaid means every channel is lost.
"""

from __future__ import annotations

import os
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from urllib.parse import urlsplit

import trio

from fieldgate_common.logs import get_logger
from gateway.config import PushConfig, RouteConfig
from gateway.http1 import open_service_stream
from gateway.store import Store, SubscriptionRecord
from gateway.upstream.contract import (
    UAID_KEY,
    UAID_SINCE_KEY,
    Ack,
    Ended,
    Hub,
    NewSubscription,
    Pushed,
    SubscribeFailed,
)
from gateway.upstream.feeding import feed_until_closed
from gateway.upstream.instruments import AutopushStats, UpstreamInstruments
from gateway.upstream.rfc8030 import describe
from gateway.webpush import autopush as ap

log = get_logger("autopush")

KEY_PREFIX = "ap:"
# How long a register or unregister may wait for its answer before the connection is deemed
# broken (the service answers in milliseconds).
REQUEST_TIMEOUT = 30.0


def ack_key(channel_id: str, version: str) -> str:
    """The journal's key of one notification (dedupe and acknowledgement)."""
    return f"{KEY_PREFIX}{channel_id}:{version}"


def parse_ack_key(key: str) -> tuple[str, str] | None:
    """``(channel id, version)`` of a key made by :func:`ack_key`, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    channel_id, sep, version = key[len(KEY_PREFIX) :].partition(":")
    return (channel_id, version) if sep and ap.is_channel_id(channel_id) and version else None


class WebSocketConnection:
    """One autopush connection and the tasks that serve it (see the module docstring)."""

    def __init__(
        self,
        push: PushConfig,
        hub: Hub,
        instruments: UpstreamInstruments,
        store: Store,
        stats: AutopushStats,
        *,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(push.service)
        self.push = push
        self.hub = hub
        self._m = instruments
        self._store = store
        self._stats = stats
        self._rng = rng or random.Random()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.proto = ap.AutopushProtocol(
            parts.netloc,
            path,
            max_message_bytes=ap.DEFAULT_MAX_MESSAGE_BYTES,
            max_body=push.max_message_bytes,
            user_agent="fieldgate",
        )
        self.replace_wanted = trio.Event()
        self.ended: Ended | None = None
        self._closed = False
        self._set_up = False
        self._do_not_reconnect = False
        self._wake_writer = trio.Event()
        self._written_acks: list[str] = []  # acks in data not yet on the wire
        self._acks_awaiting_pong: dict[bytes, list[str]] = {}  # ping payload -> acks before it
        self._last_received = time.monotonic()
        self._pong = trio.Event()
        self._connected = trio.Event()
        self._hello: trio.Event = trio.Event()
        self._hello_reply: ap.HelloAccepted | None = None
        self._answers: dict[str, trio.Event] = {}  # channel id -> its register/unregister
        self._results: dict[str, ap.Event] = {}
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ Connection protocol

    @property
    def usable(self) -> bool:
        """True once the hello was answered and while the connection is open."""
        return not self._closed and self.proto.ready

    def send_acks(self, acks: Sequence[Ack]) -> None:
        """One ``ack`` message for the batch (the service sends the next stored batch only
        when every message of this one is acknowledged)."""
        updates = []
        for ack in acks:
            parsed = parse_ack_key(ack.key)
            if parsed is None:
                # Owed to another service (the URL changed): nobody here can take it.
                self.hub.acked(ack.key, False)
                continue
            updates.append(ap.Ack(parsed[0], parsed[1], int(ack.code)))
            self._written_acks.append(ack.key)
        if updates:
            self.proto.ack(updates)
            self._flush()

    async def subscribe(
        self, route: RouteConfig, known: Sequence[SubscriptionRecord]
    ) -> NewSubscription | SubscribeFailed:
        """Register a new channel; the service then demands VAPID if the route has a key."""
        channel_id = str(uuid.uuid4())
        result = await self._exchange(
            channel_id, partial(self.proto.register, channel_id, route.vapid_public_key)
        )
        if isinstance(result, ap.Registered):
            return NewSubscription(channel_id, result.push_endpoint, None)
        if isinstance(result, ap.RegisterFailed):
            return SubscribeFailed(f"register answered {result.status}: {result.reason}")
        return SubscribeFailed("connection lost")

    async def unsubscribe(self, record: SubscriptionRecord) -> bool:
        """Unregister the route's channel."""
        channel_id = record.subscription_url
        if not ap.is_channel_id(channel_id):
            return True  # not a channel of this protocol: nothing to remove here
        result = await self._exchange(channel_id, partial(self.proto.unregister, channel_id))
        return isinstance(result, ap.Unregistered)

    async def _exchange(self, channel_id: str, send: Callable[[], None]) -> ap.Event | None:
        done = self._answers[channel_id] = trio.Event()
        try:
            send()
        except (ap.ConnectionGone, ValueError) as exc:
            log.warning("autopush request not sent: %s", exc)
            return None
        self._flush()
        with trio.move_on_after(REQUEST_TIMEOUT):
            await done.wait()
        self._answers.pop(channel_id, None)
        if not done.is_set():
            self._end(f"no answer to a register/unregister within {REQUEST_TIMEOUT:g} s")
        return self._results.pop(channel_id, None)

    # ---------------------------------------------------------------------------- running

    async def run(self) -> None:
        """Connect, serve until the connection ends; never raises for network trouble."""
        try:
            with trio.CancelScope() as scope:
                self._cancel = scope
                try:
                    with trio.fail_after(self.push.connect_timeout):
                        stream = await self._open()
                except trio.TooSlowError:
                    self._end(f"connecting took over {self.push.connect_timeout:g} s")
                    return
                async with stream:
                    await self._serve(stream)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(describe(exc))
        except ap.ProtocolViolation as exc:
            self._end(f"protocol error from the push service: {exc}")
        finally:
            self._closed = True
            self._end("connection closed")
            for event in self._answers.values():
                event.set()
            self.hub.closed(self)

    def _end(self, error: str) -> None:
        if self.ended is None:
            self.ended = Ended(
                error, established=self._set_up, do_not_reconnect=self._do_not_reconnect
            )
        self._closed = True
        self.replace_wanted.set()
        if self._cancel is not None:
            self._cancel.cancel()

    def _flush(self) -> None:
        self._wake_writer.set()

    async def _open(self) -> trio.abc.Stream:
        return await open_service_stream(
            self.push.service, self.push.ca_file, secure="wss", plain="ws", alpn=["http/1.1"],
            refuse=OSError,
        )  # fmt: skip

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(describe(exc))
        except ap.ProtocolViolation as exc:
            self._end(f"protocol error from the push service: {exc}")
        except Exception as exc:  # a bug must not take the gateway down: log it fully
            log.exception("unexpected error on the push service connection")
            self._end(f"internal error: {type(exc).__name__}: {exc}")

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.proto.initiate()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._guarded, partial(self._writer, stream))
            nursery.start_soon(self._guarded, partial(self._reader, stream))
            nursery.start_soon(self._guarded, self._keepalive)
            nursery.start_soon(self._guarded, self._setup)
            self._flush()

    async def _writer(self, stream: trio.abc.Stream) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            written, self._written_acks = self._written_acks, []
            if written:
                # autopush answers no ack: a ping right behind them is answered once they are
                # read (if the connection dies first, they are owed again and sent on the next).
                token = os.urandom(8)
                try:
                    self.proto.ping(token)
                except ap.ConnectionGone:
                    pass  # the connection is going: Acknowledgements.ended owes them again
                else:
                    self._acks_awaiting_pong[token] = written
            data = self.proto.data_to_send()
            if data:
                await stream.send_all(data)

    async def _reader(self, stream: trio.abc.Stream) -> None:
        await feed_until_closed(stream, self._received)

    def _received(self, data: bytes) -> None:
        before = self.proto.messages_received
        events = self.proto.receive_data(data)
        if events or self.proto.messages_received != before:
            self._last_received = time.monotonic()
        for event in events:
            self._dispatch(event)
        self._flush()  # the core's pongs, and anything the events queued

    async def _keepalive(self) -> None:
        # A WebSocket ping only when the line was quiet for an interval (an idle gateway wakes
        # once per interval); no pong within the next one: the path is dead.
        interval = self.push.keepalive
        while True:
            await trio.sleep(interval)
            if time.monotonic() - self._last_received < interval:
                continue
            self._pong = trio.Event()
            self.proto.ping(os.urandom(8))
            self._flush()
            with trio.move_on_after(interval):
                await self._pong.wait()
                continue
            self._end(f"no answer to a WebSocket ping within {interval:g} s")

    # -------------------------------------------------------------------------- dispatch

    def _dispatch(self, event: ap.Event) -> None:
        if isinstance(event, ap.NotificationReceived):
            self._stats.notifications += 1
            self.hub.pushed(
                Pushed(
                    ack_key(event.channel_id, event.version),
                    self._endpoint(event.channel_id),
                    None,
                    self._headers(event),
                    event.body,
                    event.encoding,
                )
            )
        elif isinstance(event, ap.NotificationRefused):
            if event.ackable:
                self._stats.notifications += 1
                self.hub.pushed(
                    Pushed(
                        ack_key(event.channel_id, event.version),
                        self._endpoint(event.channel_id),
                        None,
                        (),
                        b"",
                        None,
                        refused=event.reason,
                        detail=event.detail,
                    )
                )
            else:
                log.warning("a notification without channel or version: %s", event.reason)
        elif isinstance(event, ap.Connected):
            self._connected.set()
        elif isinstance(event, ap.HandshakeRejected):
            retry = f", retry after {event.retry_after:g} s" if event.retry_after else ""
            self._end(f"the push service refused the WebSocket (HTTP {event.status}){retry}")
        elif isinstance(event, ap.HelloAccepted):
            self._hello_reply = event
            self._hello.set()
        elif isinstance(event, ap.Registered | ap.RegisterFailed | ap.Unregistered):
            self._results[event.channel_id] = event
            done = self._answers.get(event.channel_id)
            if done is not None:
                done.set()
        elif isinstance(event, ap.PongReceived):
            self._pong.set()
            for key in self._acks_awaiting_pong.pop(event.payload, ()):
                self.hub.acked(key, True)
        elif isinstance(event, ap.ServerClosed):
            if event.do_not_reconnect:
                self._do_not_reconnect = True
                self._end(
                    f"the push service asked not to reconnect automatically (close "
                    f"{event.code}{': ' + event.reason if event.reason else ''})"
                )
            else:
                self._end(f"the push service closed the WebSocket ({event.code})")
        elif isinstance(event, ap.ConnectionClosed):
            self._end(event.reason)

    def _endpoint(self, channel_id: str) -> str | None:
        for record in self.hub.records():
            if record.subscription_url == channel_id:
                return record.push_url
        return None  # a channel we do not know (unregistered): a dead letter

    @staticmethod
    def _headers(event: ap.NotificationReceived) -> tuple[tuple[str, str], ...]:
        headers = tuple((k.lower(), v) for k, v in event.headers)
        if event.ttl is not None and not any(k == "ttl" for k, _ in headers):
            headers += (("ttl", str(event.ttl)),)
        return headers

    # ----------------------------------------------------------------------------- setup

    async def _setup(self) -> None:
        with trio.move_on_after(self.push.connect_timeout):
            await self._connected.wait()
        if not self._connected.is_set():
            self._end(f"no WebSocket handshake within {self.push.connect_timeout:g} s")
            return
        stored = self._store.upstream_value(UAID_KEY)
        self.proto.hello(stored)  # within the service's 5 s: right after the handshake
        self._flush()
        with trio.move_on_after(ap.HELLO_TIMEOUT + self.push.connect_timeout):
            await self._hello.wait()
        reply = self._hello_reply
        if reply is None:
            self._end("no answer to hello")
            return
        self._stats.last_hello_at = time.time()
        if reply.uaid != stored:
            # A new uaid (the first connect, or the service dropped the old one): every channel
            # registered under the old one is gone.
            values: dict[str, str | None] = {UAID_KEY: reply.uaid, UAID_SINCE_KEY: str(time.time())}
            await trio.to_thread.run_sync(self._store.set_upstream_values, values)
            if stored is not None:
                self._stats.uaid_resets += 1
                log.warning("the push service assigned a new uaid: registering every route again")
                await self.hub.lost(
                    lambda record: True, "the push service dropped the previous uaid"
                )
        await self.hub.attach(self)  # owed acks go out, channels are registered
        self._set_up = True
        channels = len(self.hub.records())
        self.hub.connected(self, f"{channels} channel(s)")
