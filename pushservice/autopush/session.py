"""One user agent's WebSocket connection to the autopush double (wsproto over a trio stream).

The state machine is autoconnect-ws-sm's: ``hello`` first (within ``hello_timeout``), then
register / unregister / ack / nack / ``{}``; stored messages in batches, the next batch only once
every message sent is acknowledged; WebSocket pings every ``ping_interval`` and a pong within
``pong_timeout``. Close codes and reasons follow autoconnect-ws ``error.rs``: 1011 for state
machine and JSON errors (``SM: ...``, ``Json: ...``, ``HandshakeTimeout``, ``PongTimeout``),
1002 for a broken frame, 1003 for binary data, 1000 when the uaid was dropped.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid

import trio
import wsproto
import wsproto.events as ws
from wsproto.connection import ConnectionState
from wsproto.utilities import ProtocolError

from pushservice.autopush.host import SessionHost
from pushservice.autopush.http1 import RECEIVE_SIZE
from pushservice.autopush.messages import (
    Ack,
    BroadcastSubscribe,
    ClientMessage,
    Hello,
    MessageError,
    Nack,
    Ping,
    Register,
    Unregister,
    dumps,
    parse_client_message,
)
from pushservice.autopush.settings import (
    CLOSE_GRACE,
    MAX_CLIENT_MESSAGE,
    MAX_OUTBOX_BYTES,
    STORED_BATCH,
    TOPIC_BATCH,
)
from pushservice.autopush.state import StoredMessage, User

# The only WebSocket route of autoconnect (autoconnect-web/src/lib.rs).
WEBSOCKET_PATH = "/"
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_ERROR = 1011
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class Fail(Exception):
    """End the session with a close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _decode_key(key: str) -> bytes | None:
    """autopush's b64_decode_url: URL-safe base64 with the padding trimmed; None if invalid."""
    text = key.rstrip("=")
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # The base64 crate refuses stray bits in the last symbol; so does a round trip.
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


class WebSocketSession:
    """Serves one connection; the service calls :meth:`deliver`, :meth:`close`, :meth:`abort`."""

    def __init__(
        self, service: SessionHost[WebSocketSession], stream: trio.abc.Stream, initial: bytes
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.state = service.state
        self.stream = stream
        self._initial = initial
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.uaid: str | None = None
        self._new_user = False  # the user record is written at the first register
        self.unacked_direct: dict[str, StoredMessage] = {}
        self.unacked_stored: dict[str, StoredMessage] = {}
        self._check_storage = False
        self._sent_from_storage = 0
        self._last_ping = -math.inf
        self._pong: trio.Event | None = None
        self._out = bytearray()
        self._wake = trio.Event()
        self.closing = False
        self.close_code: int | None = None
        self._peer_closed = trio.Event()
        self._scope = trio.CancelScope()
        self._text: list[str] = []
        self._text_bytes = 0

    # -- called by the service ---------------------------------------------------------------
    def accepting(self) -> bool:
        """Whether a notification for this session's uaid can be sent to it now."""
        return self.uaid is not None and not self.closing

    def deliver(self, m: StoredMessage) -> bool:
        """Send a notification directly; it is redelivered later unless acknowledged."""
        if not self.accepting() or m.uaid != self.uaid:
            return False
        self._send_json(m.notification())
        if m.ttl != 0:  # TTL 0 is fire-and-forget (on_server_notif.rs notif())
            self.unacked_direct[m.version] = m
        self.service.counters.delivered_direct += 1
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame, then drop the connection once the client answered (or not)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._queue(self.ws.send(ws.CloseConnection(code=code, reason=reason[:120])))
        else:
            self._scope.cancel()
        self._wake.set()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.closing = True
        self._scope.cancel()

    # -- I/O ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until it ends."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                try:
                    await self._serve(nursery)
                except Fail as fail:
                    self.close(fail.code, fail.reason)
                self.close(CLOSE_NORMAL)  # a no-op when already closing
                await self._drain()

    def _queue(self, data: bytes) -> None:
        self._out += data
        if len(self._out) > MAX_OUTBOX_BYTES:
            self.abort()  # the client does not read
        self._wake.set()

    def _send_json(self, message: dict[str, object]) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self._queue(self.ws.send(ws.TextMessage(data=dumps(message))))

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._out:
                data = bytes(self._out)
                self._out.clear()
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.abort()  # the client went away
                    return
            if self.closing:
                with trio.move_on_after(CLOSE_GRACE):
                    await self._peer_closed.wait()
                self._scope.cancel()
                return

    async def _drain(self) -> None:
        """After our close frame: read (and drop) until the client's, then the writer ends us."""
        try:
            while await self._next_message() is not None:
                pass
        except Fail:
            pass
        await trio.sleep_forever()

    async def _next_message(self) -> str | None:
        """The next complete text message, or None when the client closed."""
        while True:
            for event in self.ws.events():
                text = self._on_ws_event(event)
                if text is not None or self._peer_closed.is_set():
                    return text
            if self._peer_closed.is_set():
                return None
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._peer_closed.set()
                self.abort()
                return None
            try:
                self.ws.receive_data(bytes(data))
            except ProtocolError as exc:
                raise Fail(CLOSE_PROTOCOL, f"Protocol: {exc}") from None

    def _on_ws_event(self, event: ws.Event) -> str | None:
        if isinstance(event, ws.TextMessage):
            self._text_bytes += len(event.data.encode("utf-8", "surrogatepass"))
            if self._text_bytes > MAX_CLIENT_MESSAGE:
                raise Fail(CLOSE_PROTOCOL, "Protocol: message over the frame limit")
            self._text.append(event.data)
            if not event.message_finished:
                return None
            text = "".join(self._text)
            self._text.clear()
            self._text_bytes = 0
            return text
        if isinstance(event, ws.BytesMessage):
            raise Fail(CLOSE_UNSUPPORTED, "UnsupportedMessage: Expected Text")
        if isinstance(event, ws.Ping):
            if self.ws.state is ConnectionState.OPEN:
                self._queue(self.ws.send(event.response()))
        elif isinstance(event, ws.Pong):
            if self._pong is not None:
                self._pong.set()
        elif isinstance(event, ws.CloseConnection):
            state = self.ws.state
            if state is ConnectionState.REMOTE_CLOSING:
                self._queue(self.ws.send(event.response()))
                self.closing = True
            elif state is not ConnectionState.CLOSED:  # wsproto's report of a broken frame
                raise Fail(event.code, f"Protocol: {event.reason}")
            self._peer_closed.set()
            self._wake.set()
        return None

    async def _handshake(self) -> bool:
        try:
            self.ws.receive_data(self._initial)
            request = next((e for e in self.ws.events() if isinstance(e, ws.Request)), None)
        except ProtocolError:
            request = None
        if request is None:
            self._queue(self.ws.send(ws.RejectConnection(status_code=400)))
            return False
        if request.target.split("?", 1)[0] != WEBSOCKET_PATH:
            self._queue(self.ws.send(ws.RejectConnection(status_code=404)))
            return False
        # autoconnect selects no subprotocol (Firefox asks for push-notification).
        self._queue(self.ws.send(ws.AcceptConnection()))
        return True

    async def _serve(self, nursery: trio.Nursery) -> None:
        if not await self._handshake():
            self.closing = True
            self._peer_closed.set()  # nothing to wait for: the writer flushes and ends us
            self._wake.set()
            await trio.sleep_forever()
        with trio.move_on_after(self.settings.hello_timeout) as scope:
            text = await self._next_message()
        if scope.cancelled_caught:
            raise Fail(CLOSE_ERROR, "HandshakeTimeout")
        if text is None:
            return
        first = self._parse(text)
        if not isinstance(first, Hello):
            raise Fail(CLOSE_ERROR, 'SM: Expected messageType="hello"')
        self._on_hello(first)
        nursery.start_soon(self._pinger)
        while True:
            text = await self._next_message()
            if text is None:
                return
            if not self.closing:
                self._on_message(self._parse(text))

    async def _pinger(self) -> None:
        """WebSocket pings (autoconnect-ws ping.rs); no pong in time drops the client."""
        while not self.closing:
            await trio.sleep(self.settings.ping_interval)
            if self.closing or self.ws.state is not ConnectionState.OPEN:
                return
            self._pong = pong = trio.Event()
            self._queue(self.ws.send(ws.Ping(payload=b"")))
            with trio.move_on_after(self.settings.pong_timeout):
                await pong.wait()
            self._pong = None
            if not pong.is_set():
                self.service.counters.pong_timeouts += 1
                self.close(CLOSE_ERROR, "PongTimeout")
                return

    # -- the state machine -------------------------------------------------------------------
    @staticmethod
    def _parse(text: str) -> ClientMessage:
        try:
            return parse_client_message(text)
        except MessageError as exc:
            raise Fail(CLOSE_ERROR, f"Json: {exc}") from None

    def _on_hello(self, hello: Hello) -> None:
        service = self.service
        now = service.clock()
        requested: str | None = None
        if hello.uaid:
            try:  # an invalid uaid is taken as none (unidentified.rs)
                requested = uuid.UUID(hello.uaid).hex
            except ValueError:
                requested = None
        user = service.lookup_user(requested, now) if requested else None
        if user is not None:
            old = service.sessions.get(user.uaid)
            if old is not None and old is not self:
                # "New Client with the same UAID has connected to this node"
                old.close(CLOSE_ERROR, "SM: Ghost")
            user.connected_at = now
            self.state.put_user(user)
            self.uaid = user.uaid
            self._check_storage = True
        else:
            self.uaid = uuid.uuid4().hex
            self._new_user = True
            service.counters.new_uaids += 1
            if requested is not None:
                service.counters.uaid_resets += 1
        service.counters.hellos += 1
        service.sessions[self.uaid] = self
        self._send_json(
            {
                "messageType": "hello",
                "uaid": self.uaid,
                "status": 200,
                "use_webpush": True,
                "broadcasts": {},
            }
        )
        if self._check_storage:
            self._send_batch(self._check_storage_loop())

    def _on_message(self, message: ClientMessage) -> None:
        counters = self.service.counters
        if isinstance(message, Hello):
            raise Fail(CLOSE_ERROR, "SM: Already Hello'd")
        if isinstance(message, Register):
            self._on_register(message)
        elif isinstance(message, Unregister):
            user = self.state.users.get(self.uaid or "")
            if user is not None:
                self.state.remove_channel(user, message.channel_id)
            counters.unregisters += 1
            reply = {"messageType": "unregister", "channelID": message.channel_id, "status": 200}
            self._send_json(reply)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Nack):
            counters.nacks += 1
        elif isinstance(message, Ping):
            now = trio.current_time()
            if now - self._last_ping < self.settings.min_protocol_ping_interval:
                counters.excessive_pings += 1
                raise Fail(CLOSE_ERROR, "SM: Client sent too many pings too often")
            self._last_ping = now
            self._queue(self.ws.send(ws.TextMessage(data="{}")))
        elif isinstance(message, BroadcastSubscribe):
            pass  # no broadcasts here: nothing to answer

    def _on_register(self, message: Register) -> None:
        assert self.uaid is not None
        try:
            channel = uuid.UUID(message.channel_id)
        except ValueError:
            raise Fail(CLOSE_ERROR, "SM: Invalid channelID") from None
        channel_id = str(channel)
        if channel_id != message.channel_id:
            raise Fail(CLOSE_ERROR, "SM: Invalid UUID format, not lower-case/dashed")
        raw_key = None
        if message.key is not None:
            raw_key = _decode_key(message.key)
            if raw_key is None:
                self._send_json(
                    {
                        "messageType": "register",
                        "channelID": channel_id,
                        "status": 400,
                        "pushEndpoint": "Failed to generate endpoint",
                    }
                )
                return
        now = self.service.clock()
        user = self.state.users.get(self.uaid)
        if user is None or self._new_user:
            user = User(self.uaid, now)
            self.state.put_user(user)
            self._new_user = False
        self.state.add_channel(user, channel_id)
        endpoint = self.service.mint_endpoint(self.uaid, channel_id, raw_key)
        self.service.counters.registers += 1
        self._send_json(
            {
                "messageType": "register",
                "channelID": channel_id,
                "status": 200,
                "pushEndpoint": endpoint,
            }
        )

    def _on_ack(self, message: Ack) -> None:
        assert self.uaid is not None
        counters = self.service.counters
        if self.service.ignore_acks:
            counters.acks_ignored += len(message.updates)
            return
        for update in message.updates:
            m = self.unacked_direct.pop(update.version, None) or self.unacked_stored.pop(
                update.version, None
            )
            if m is None:
                continue  # unknown versions are ignored (on_client_msg.rs ack())
            self.state.delete(self.uaid, update.version)
            counters.acked += 1
            if update.code not in (None, 100):
                counters.acked_with_error += 1
        if not self.unacked_direct and not self.unacked_stored and self._check_storage:
            self._send_batch(self._check_storage_loop())

    def _check_storage_loop(self) -> list[StoredMessage]:
        """The next batch from storage; dropping the uaid once too many came in one session."""
        assert self.uaid is not None
        batch = self._next_batch()
        if batch:
            self._sent_from_storage += len(batch)
            if self._sent_from_storage > self.settings.msg_limit:
                # check_msg_limit(): the user may have been offline way too long.
                self.service.drop_user(self.uaid)
                self.service.counters.msg_limit_resets += 1
                raise Fail(CLOSE_NORMAL, "SM: UAID dropped")
        return batch

    def _next_batch(self) -> list[StoredMessage]:
        assert self.uaid is not None
        now = self.service.clock()
        live = []
        for m in self.state.stored_for(self.uaid):
            if m.version in self.unacked_direct or m.version in self.unacked_stored:
                continue
            if m.expired(now):
                self.state.delete(self.uaid, m.version)
                self.service.counters.expired += 1
                continue
            live.append(m)
        topics = [m for m in live if m.topic]
        if topics:  # topic messages first, newest first (fetch_topic_messages)
            return sorted(topics, key=lambda m: -m.seq)[:TOPIC_BATCH]
        if not live:
            self._check_storage = False
            self._sent_from_storage = 0
            return []
        return live[:STORED_BATCH]

    def _send_batch(self, batch: list[StoredMessage]) -> None:
        for m in batch:
            self.unacked_stored[m.version] = m
            self._send_json(m.notification())
        self.service.counters.delivered_stored += len(batch)
