"""Mozilla's autopush WebSocket protocol, user-agent side, sans-IO (on ``wsproto``).

:class:`AutopushProtocol` is one WebSocket connection to an autopush service
(``wss://push.services.mozilla.com/``): the caller writes what
:meth:`~AutopushProtocol.data_to_send` returns to the socket and feeds what it reads to
:meth:`~AutopushProtocol.receive_data`, which returns :class:`Event` objects. Requests
(``hello``, ``register``, ``unregister``, ``ack``) are queued: ``hello`` goes out once the
WebSocket handshake is accepted, everything else once the service answered the ``hello``
(autopush refuses any other first message). The core answers the service's WebSocket pings
itself. There are no sockets, clocks or threads in here: timers (the 5 s the service allows
for ``hello``, the 45 s between protocol pings) are the caller's, with the numbers below.

The protocol's sources: autopush-rs ``autoconnect/autoconnect-common/src/protocol.rs`` (the
messages), ``autoconnect-ws/autoconnect-ws-sm`` (the rules), gecko-dev
``dom/push/PushServiceWebSocket.sys.mjs`` (Firefox, the reference client).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import wsproto
import wsproto.events as ws
from wsproto.connection import ConnectionState
from wsproto.utilities import ProtocolError

from gateway.webpush.b64 import B64DecodeError, b64url_decode

# --------------------------------------------------------------------------------- constants

# Firefox opens the socket with this subprotocol; autopush-rs neither checks nor echoes it
# (autoconnect-ws/src/lib.rs), so asking for it only makes us look like the usual client.
SUBPROTOCOL = "push-notification"
# Close code with which the service asks the client not to reconnect automatically
# (kBACKOFF_WS_STATUS_CODE in PushServiceWebSocket.sys.mjs).
BACKOFF_CLOSE_CODE = 4774
# The service closes a connection that has not sent ``hello`` within this many seconds
# (autoconnect-settings ``open_handshake_timeout``).
HELLO_TIMEOUT = 5.0
# A protocol ping ``{}`` sooner than this after the previous one closes the connection
# (ExcessivePing, autoconnect-ws-sm identified/on_client_msg.rs).
MIN_PROTOCOL_PING_INTERVAL = 45.0
# The service pings with WebSocket ping frames this often and drops a client whose pong is
# later than the timeout (autoconnect-settings ``auto_ping_interval`` / ``auto_ping_timeout``).
SERVICE_PING_INTERVAL = 300.0
SERVICE_PONG_TIMEOUT = 4.0
# The largest request body autoendpoint accepts by default (``max_data_bytes``): the largest
# notification body the service can ever hand us. RFC 8030 §7.2 only promises 4096.
MAX_NOTIFICATION_BODY = 5630
# A sensible ``max_message_bytes``: a notification of MAX_NOTIFICATION_BODY is ~7.6 KB of
# base64 plus its version and headers; hello replies with broadcasts stay far below this.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# Anything smaller could not carry a notification of 4096 bytes (base64, version, JSON).
MIN_MAX_MESSAGE_BYTES = 8 * 1024
# Firefox refuses a longer uaid ("to avoid sticking extra large values ... into prefs").
MAX_UAID_LENGTH = 128
# Our bounds on strings the service hands us: autopush versions are Fernet tokens of ~250
# characters, endpoints ~300; four times that is still sane, and nothing bigger is stored.
MAX_VERSION_LENGTH = 1024
MAX_ENDPOINT_LENGTH = 2048
MAX_CHANNEL_ID_LENGTH = 64
MAX_NOTIFICATION_HEADERS = 16
# RFC 6455 §5.5: control frame payloads are at most 125 bytes.
MAX_PING_PAYLOAD = 125
# Updates per ``ack`` message: keeps each frame far below actix-ws's default 64 KiB frame
# limit on the service side (an update is ~300 bytes with an autopush version).
MAX_ACKS_PER_MESSAGE = 100
# Requests waiting for the hello reply before we refuse more (bounds memory if it never comes).
MAX_QUEUED_REQUESTS = 100_000

# Acknowledgement codes (kACK_STATUS_TO_CODE; autopush-rs ClientAck::reliability_state).
ACK_DELIVERED = 100
ACK_DECRYPTION_ERROR = 101
ACK_NOT_DELIVERED = 102
ACK_CODES = frozenset({ACK_DELIVERED, ACK_DECRYPTION_ERROR, ACK_NOT_DELIVERED})
# Unregister reasons (kUNREGISTER_REASON_TO_CODE): manual, quota exceeded, permission revoked.
UNREGISTER_MANUAL = 200
UNREGISTER_CODES = frozenset({200, 201, 202})
# Delivery error codes of a ``nack`` (kDELIVERY_REASON_TO_CODE); the service only counts them.
NACK_CODES = frozenset({301, 302, 303})

# WebSocket close codes we send (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_MESSAGE_TOO_BIG = 1009

# autopush-rs validates channel ids as lowercase dashed UUIDs (identified/on_client_msg.rs).
_CHANNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# uaids are 32 hex digits today (``uaid.as_simple()``); accept what a UUID-ish id may contain.
_UAID = re.compile(rf"[0-9A-Za-z_-]{{1,{MAX_UAID_LENGTH}}}")

Headers = tuple[tuple[str, str], ...]


class ProtocolViolation(Exception):
    """The service broke the WebSocket or autopush protocol: drop the connection.

    A close frame explaining why may be waiting in :meth:`AutopushProtocol.data_to_send`.
    """


class ConnectionGone(RuntimeError):
    """A request was made on a connection that is closed (or closing)."""


def is_channel_id(text: str) -> bool:
    """True for a lowercase dashed UUID, the only channel id autopush accepts."""
    return _CHANNEL_ID.fullmatch(text) is not None


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Event:
    """Base class of everything :meth:`AutopushProtocol.receive_data` returns."""


@dataclass(frozen=True)
class Connected(Event):
    """The service accepted the WebSocket handshake."""

    subprotocol: str | None


@dataclass(frozen=True)
class HandshakeRejected(Event):
    """The service answered the upgrade with an HTTP status instead of 101."""

    status: int
    retry_after: float | None


@dataclass(frozen=True)
class HelloAccepted(Event):
    """The ``hello`` reply. Persist ``uaid``."""

    uaid: str
    requested_uaid: str | None
    status: int
    broadcasts: tuple[tuple[str, str], ...]

    @property
    def reset(self) -> bool:
        """The service answered another uaid than we asked for: every channel is gone."""
        return self.requested_uaid is not None and self.uaid != self.requested_uaid


@dataclass(frozen=True)
class Registered(Event):
    """A channel exists; application servers send to ``push_endpoint``."""

    channel_id: str
    push_endpoint: str
    status: int


@dataclass(frozen=True)
class RegisterFailed(Event):
    """A register request was answered with an error (autopush: 400 bad key, 500 internal)."""

    channel_id: str
    status: int
    reason: str


@dataclass(frozen=True)
class Unregistered(Event):
    """The reply to an unregister request (200, or 500 when the service failed)."""

    channel_id: str
    status: int


@dataclass(frozen=True)
class NotificationReceived(Event):
    """A push message. Acknowledge it (``ack``) once it is safe; ``version`` identifies it."""

    channel_id: str
    version: str
    body: bytes
    encoding: str | None
    headers: Headers
    ttl: int | None


@dataclass(frozen=True)
class NotificationRefused(Event):
    """A notification the core could not take (``too_large``, ``bad_base64``, ``bad_headers``,
    ``missing_fields``). Dead-letter it, then acknowledge it with an error code when
    :attr:`ackable`, or the service sends it again on every connection."""

    channel_id: str
    version: str
    reason: str
    detail: str

    @property
    def ackable(self) -> bool:
        """Whether it has the channel id and version an ``ack`` needs."""
        return bool(self.channel_id and self.version)


@dataclass(frozen=True)
class BroadcastReceived(Event):
    """A ``broadcast`` message (we subscribe to none; reported for completeness)."""

    broadcasts: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UnknownMessage(Event):
    """A message of a type this core does not know (Firefox ignores those too)."""

    message_type: str


@dataclass(frozen=True)
class PongReceived(Event):
    """The answer to our WebSocket :meth:`~AutopushProtocol.ping`."""

    payload: bytes


@dataclass(frozen=True)
class ProtocolPong(Event):
    """The answer to a protocol ping ``{}`` (also any message without a ``messageType``)."""


@dataclass(frozen=True)
class ServerClosed(Event):
    """The service sent a close frame (our reply is queued). Mind :attr:`do_not_reconnect`."""

    code: int
    reason: str

    @property
    def do_not_reconnect(self) -> bool:
        """Close code 4774: the service asks not to reconnect automatically."""
        return self.code == BACKOFF_CLOSE_CODE


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """Nothing more will come on this connection."""

    reason: str


@dataclass(frozen=True)
class Ack:
    """One update of an ``ack`` message."""

    channel_id: str
    version: str
    code: int = ACK_DELIVERED


# --------------------------------------------------------------------------------- protocol


def _dumps(message: dict[str, object]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _parse_retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after" and value.strip().isdigit():
            return float(int(value.strip()))
    return None


def _string_pairs(value: object) -> tuple[tuple[str, str], ...]:
    """String entries of a JSON object, sorted (nested values, e.g. broadcast errors, skipped)."""
    if not isinstance(value, dict):
        return ()
    return tuple(sorted((k, v) for k, v in value.items() if isinstance(v, str)))


class AutopushProtocol:
    """One WebSocket connection to an autopush service, from the user agent's side.

    ``host`` is the ``Host`` header (``push.services.mozilla.com`` or ``127.0.0.1:8080``),
    ``path`` the request target. ``max_message_bytes`` bounds one incoming WebSocket message
    (bigger: :class:`ProtocolViolation`, close 1009); ``max_body`` bounds a notification's
    decoded body (bigger: :class:`NotificationRefused`, which the caller still acknowledges).
    """

    def __init__(
        self,
        host: str,
        path: str = "/",
        *,
        max_message_bytes: int,
        max_body: int = MAX_NOTIFICATION_BODY,
        user_agent: str | None = None,
    ) -> None:
        if not host or any(c in host for c in "/\r\n "):
            raise ValueError(f"not a host[:port]: {host!r}")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        if max_message_bytes < MIN_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be at least {MIN_MAX_MESSAGE_BYTES}")
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        self.host = host
        self.path = path
        self.max_message_bytes = max_message_bytes
        self.max_body = max_body
        self._user_agent = user_agent
        self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._out = bytearray()
        self._initiated = False
        self._open = False  # the WebSocket handshake was accepted
        self._hello_uaid: str | None = None
        self._hello_wanted = False
        self._hello_sent = False
        self.uaid: str | None = None  # set by the hello reply
        self._queue: deque[str] = deque()  # requests waiting for the hello reply
        self._registering: set[str] = set()
        self._unregistering: set[str] = set()
        self._text: list[str] = []
        self._text_bytes = 0
        self._rejected = False
        self._closing = False  # we sent a close frame
        self._closed = False  # ConnectionClosed reported, or a violation raised
        self.messages_received = 0  # complete WebSocket messages, control frames included

    # ------------------------------------------------------------------ connection lifecycle

    def initiate(self) -> None:
        """Queue the WebSocket opening handshake (RFC 6455 §4.1)."""
        if self._initiated:
            raise RuntimeError("initiate() was already called")
        self._initiated = True
        extra: list[tuple[bytes, bytes]] = []
        if self._user_agent:
            extra.append((b"User-Agent", self._user_agent.encode("ascii", "replace")))
        request = ws.Request(
            host=self.host, target=self.path, subprotocols=[SUBPROTOCOL], extra_headers=extra
        )
        self._out += self._ws.send(request)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (may be empty)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def ready(self) -> bool:
        """True once the hello reply arrived and the connection is not closing."""
        return self.uaid is not None and not self._closing and not self._closed

    @property
    def closed(self) -> bool:
        """True once :class:`ConnectionClosed` was reported or a violation raised."""
        return self._closed

    @property
    def awaiting_replies(self) -> frozenset[str]:
        """Channel ids of register/unregister requests not answered yet."""
        return frozenset(self._registering | self._unregistering)

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Queue a close frame; the service answers with its own, then closes the socket."""
        if self._closed or self._closing:
            return
        self._closing = True
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._out += self._ws.send(ws.CloseConnection(code=code))

    def ping(self, payload: bytes) -> None:
        """Send a WebSocket ping (liveness of the path); answered by :class:`PongReceived`."""
        if len(payload) > MAX_PING_PAYLOAD:
            raise ValueError(f"a ping payload is at most {MAX_PING_PAYLOAD} bytes")
        self._check_usable()
        if not self._open:
            raise ConnectionGone("the WebSocket handshake has not completed")
        self._out += self._ws.send(ws.Ping(payload=payload))

    # ------------------------------------------------------------------------------ requests

    def hello(self, uaid: str | None) -> None:
        """Identify: the stored ``uaid``, or None on the first connect (a new one is issued)."""
        self._check_usable()
        if self._hello_wanted:
            raise RuntimeError("hello() was already called on this connection")
        if uaid is not None and _UAID.fullmatch(uaid) is None:
            raise ValueError("uaid must be 1-128 characters of [0-9A-Za-z_-]")
        self._hello_wanted = True
        self._hello_uaid = uaid
        if self._open:
            self._send_hello()

    def register(self, channel_id: str, key: str | None = None) -> None:
        """Create a channel; ``key`` (base64url P-256 point) makes the service demand VAPID."""
        if not is_channel_id(channel_id):
            raise ValueError("channel_id must be a lowercase dashed UUID")
        message: dict[str, object] = {"messageType": "register", "channelID": channel_id}
        if key is not None:
            try:
                b64url_decode(key)
            except B64DecodeError as exc:
                raise ValueError(f"key: {exc}") from None
            message["key"] = key
        if channel_id in self._registering:
            raise ValueError("a register request for this channel is already waiting")
        self._request(_dumps(message))
        self._registering.add(channel_id)

    def unregister(self, channel_id: str, code: int = UNREGISTER_MANUAL) -> None:
        """Remove a channel (``code``: 200 manual, 201 quota, 202 revoked)."""
        if not is_channel_id(channel_id):
            raise ValueError("channel_id must be a lowercase dashed UUID")
        if code not in UNREGISTER_CODES:
            raise ValueError(f"unregister code must be one of {sorted(UNREGISTER_CODES)}")
        if channel_id in self._unregistering:
            raise ValueError("an unregister request for this channel is already waiting")
        message = {"messageType": "unregister", "channelID": channel_id, "code": code}
        self._request(_dumps(message))
        self._unregistering.add(channel_id)

    def ack(self, updates: Sequence[Ack]) -> None:
        """Acknowledge notifications (code 100 delivered, 101 undecryptable, 102 not delivered).

        The service sends the next batch of stored messages only once every message of the
        previous batch is acknowledged.
        """
        for update in updates:
            if update.code not in ACK_CODES:
                raise ValueError(f"ack code must be one of {sorted(ACK_CODES)}")
            if not update.channel_id or not update.version:
                raise ValueError("an ack needs the channel id and the version")
        items = [{"channelID": u.channel_id, "version": u.version, "code": u.code} for u in updates]
        for start in range(0, len(items), MAX_ACKS_PER_MESSAGE):
            chunk = items[start : start + MAX_ACKS_PER_MESSAGE]
            self._request(_dumps({"messageType": "ack", "updates": chunk}))

    def nack(self, version: str, code: int) -> None:
        """Report a delivery error (301-303); the service only counts it."""
        if code not in NACK_CODES:
            raise ValueError(f"nack code must be one of {sorted(NACK_CODES)}")
        self._request(_dumps({"messageType": "nack", "version": version, "code": code}))

    def protocol_ping(self) -> None:
        """Send ``{}``; answered by :class:`ProtocolPong`. Never more often than every
        :data:`MIN_PROTOCOL_PING_INTERVAL` seconds, or the service closes the connection."""
        self._request("{}")

    def take_unsent(self) -> list[str]:
        """Remove and return the requests still waiting for the hello reply (JSON texts)."""
        unsent = list(self._queue)
        self._queue.clear()
        return unsent

    def _check_usable(self) -> None:
        if not self._initiated:
            raise RuntimeError("initiate() first")
        if self._closed or self._closing:
            raise ConnectionGone("the connection is closed")

    def _request(self, text: str) -> None:
        self._check_usable()
        if self.uaid is None:
            if len(self._queue) >= MAX_QUEUED_REQUESTS:
                raise ConnectionGone("too many requests waiting for the hello reply")
            self._queue.append(text)
            return
        self._out += self._ws.send(ws.TextMessage(data=text))

    def _send_hello(self) -> None:
        message: dict[str, object] = {"messageType": "hello"}
        if self._hello_uaid is not None:
            message["uaid"] = self._hello_uaid
        message |= {"use_webpush": True, "broadcasts": {}}
        self._out += self._ws.send(ws.TextMessage(data=_dumps(message)))
        self._hello_sent = True

    # -------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket (``b""`` at end of file); return the events.

        Raises :class:`ProtocolViolation` when the service must be dropped.
        """
        if self._closed:
            return []
        if not self._initiated:
            raise RuntimeError("initiate() first")
        if not data:
            self._closed = True
            return [ConnectionClosed("the service closed the connection")]
        out: list[Event] = []
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                out.extend(self._on_ws_event(event))
                if self.closed:  # the property: mypy narrowed the attribute above
                    break
        except ProtocolError as exc:
            self._violation(f"WebSocket protocol error: {exc}", None)
        return out

    def _violation(self, detail: str, code: int | None) -> NoReturn:
        """Queue a close frame (when there is an open WebSocket) and raise."""
        if code is not None and self._ws.state in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            self._out += self._ws.send(ws.CloseConnection(code=code, reason=detail[:100]))
        self._closed = True
        raise ProtocolViolation(detail)

    def _on_ws_event(self, event: ws.Event) -> list[Event]:
        if isinstance(event, ws.AcceptConnection):
            self._open = True
            if self._hello_wanted and not self._hello_sent:
                self._send_hello()
            return [Connected(event.subprotocol)]
        if isinstance(event, ws.RejectConnection):
            self._rejected = True
            rejected = HandshakeRejected(event.status_code, _parse_retry_after(event.headers))
            if event.has_body:
                return [rejected]
            self._closed = True
            return [rejected, ConnectionClosed(f"handshake refused: HTTP {event.status_code}")]
        if isinstance(event, ws.RejectData):
            if event.body_finished:
                self._closed = True
                return [ConnectionClosed("handshake refused")]
            return []  # the refusal's body: not ours to keep
        if isinstance(event, ws.Ping):
            self.messages_received += 1
            if self._ws.state is ConnectionState.OPEN:  # not once a close frame went out
                self._out += self._ws.send(event.response())
            return []
        if isinstance(event, ws.Pong):
            self.messages_received += 1
            return [PongReceived(bytes(event.payload))]
        if isinstance(event, ws.CloseConnection):
            return self._on_close(event)
        if isinstance(event, ws.TextMessage):
            return self._on_text(event)
        if isinstance(event, ws.BytesMessage):
            self._violation("binary frame (autopush speaks JSON text)", CLOSE_UNSUPPORTED_DATA)
        return []  # pragma: no cover - wsproto has no other events

    def _on_close(self, event: ws.CloseConnection) -> list[Event]:
        state = self._ws.state
        if state not in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
            # wsproto reports a frame it could not parse as a CloseConnection of its own,
            # without a state change: that is the peer breaking RFC 6455.
            self._violation(f"bad WebSocket frame: {event.reason}", event.code)
        self.messages_received += 1
        if state is ConnectionState.CLOSED:  # the answer to our close frame
            self._closed = True
            return [ConnectionClosed(f"closed (code {event.code})")]
        self._out += self._ws.send(event.response())
        self._closing = True
        return [ServerClosed(event.code, (event.reason or "")[:200])]

    def _on_text(self, event: ws.TextMessage) -> list[Event]:
        self._text_bytes += len(event.data.encode("utf-8", "surrogatepass"))
        if self._text_bytes > self.max_message_bytes:
            self._violation(f"message over {self.max_message_bytes} bytes", CLOSE_MESSAGE_TOO_BIG)
        self._text.append(event.data)
        if not event.message_finished:
            return []
        text = "".join(self._text)
        self._text.clear()
        self._text_bytes = 0
        self.messages_received += 1
        if self._closing:
            return []  # we are leaving: late messages are redelivered on the next connection
        return self._on_message(text)

    # ----------------------------------------------------------------------------- messages

    def _on_message(self, text: str) -> list[Event]:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            self._violation("text frame that is not JSON", CLOSE_PROTOCOL_ERROR)
        if not isinstance(message, dict):
            self._violation("JSON message that is not an object", CLOSE_PROTOCOL_ERROR)
        kind = message.get("messageType")
        if kind is None:
            return [ProtocolPong()]  # `{}` (Firefox takes any message without a type so)
        if not isinstance(kind, str):
            self._violation("messageType is not a string", CLOSE_PROTOCOL_ERROR)
        kind = kind.lower()
        if kind == "ping":
            return [ProtocolPong()]
        if self.uaid is None:
            if kind != "hello" or not self._hello_sent:
                self._violation(f"{kind[:32]!r} before the hello reply", CLOSE_PROTOCOL_ERROR)
            return [self._on_hello(message)]
        if kind == "notification":
            return [self._on_notification(message)]
        if kind == "register":
            return [self._on_register(message)]
        if kind == "unregister":
            return [self._on_unregister(message)]
        if kind == "broadcast":
            return [BroadcastReceived(_string_pairs(message.get("broadcasts")))]
        if kind == "hello":
            self._violation("a second hello reply", CLOSE_PROTOCOL_ERROR)
        return [UnknownMessage(kind[:64])]

    def _on_hello(self, message: dict[str, object]) -> Event:
        uaid = message.get("uaid")
        status = message.get("status", 200)
        if not isinstance(uaid, str) or _UAID.fullmatch(uaid) is None:
            self._violation("hello reply without a usable uaid", CLOSE_PROTOCOL_ERROR)
        if not isinstance(status, int) or isinstance(status, bool) or status != 200:
            self._violation(f"hello answered with status {status!r}", CLOSE_PROTOCOL_ERROR)
        self.uaid = uaid
        for text in self._queue:
            self._out += self._ws.send(ws.TextMessage(data=text))
        self._queue.clear()
        return HelloAccepted(
            uaid, self._hello_uaid, status, _string_pairs(message.get("broadcasts"))
        )

    def _reply_channel(self, message: dict[str, object], waiting: set[str], what: str) -> str:
        channel_id = message.get("channelID")
        if not isinstance(channel_id, str) or channel_id.lower() not in waiting:
            self._violation(
                f"{what} reply for a channel we did not ask about", CLOSE_PROTOCOL_ERROR
            )
        channel_id = channel_id.lower()
        waiting.discard(channel_id)
        return channel_id

    def _on_register(self, message: dict[str, object]) -> Event:
        channel_id = self._reply_channel(message, self._registering, "register")
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            return RegisterFailed(channel_id, 0, "register reply without a status")
        if status != 200:
            return RegisterFailed(channel_id, status, f"status {status}")
        endpoint = message.get("pushEndpoint")
        if not isinstance(endpoint, str) or not _usable_endpoint(endpoint):
            return RegisterFailed(channel_id, status, "status 200 without a usable pushEndpoint")
        return Registered(channel_id, endpoint, status)

    def _on_unregister(self, message: dict[str, object]) -> Event:
        channel_id = self._reply_channel(message, self._unregistering, "unregister")
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            status = 0
        return Unregistered(channel_id, status)

    def _on_notification(self, message: dict[str, object]) -> Event:
        channel_id = message.get("channelID")
        version = message.get("version")
        chid = channel_id if isinstance(channel_id, str) else ""
        ver = version if isinstance(version, str) else ""
        if not chid or len(chid) > MAX_CHANNEL_ID_LENGTH:
            return NotificationRefused(
                "", ver[:MAX_VERSION_LENGTH], "missing_fields", "no usable channelID"
            )
        if not ver or len(ver) > MAX_VERSION_LENGTH:
            return NotificationRefused(chid, "", "missing_fields", "no usable version")

        def refused(reason: str, detail: str) -> Event:
            return NotificationRefused(chid, ver, reason, detail)

        headers: list[tuple[str, str]] = []
        raw_headers = message.get("headers")
        if raw_headers is not None:
            if not isinstance(raw_headers, dict) or len(raw_headers) > MAX_NOTIFICATION_HEADERS:
                return refused("bad_headers", "headers is not a small JSON object")
            for name, value in raw_headers.items():
                if not isinstance(value, str):
                    return refused("bad_headers", f"header {name[:32]!r} is not a string")
                headers.append((name.lower(), value))
        headers.sort()
        data = message.get("data")
        body = b""
        if data is not None:
            if not isinstance(data, str):
                return refused("bad_base64", "data is not a string")
            # base64 of max_body bytes, plus padding the service may append (Firefox ignores it)
            if len(data.rstrip("=")) > (self.max_body * 4 + 2) // 3:
                return refused("too_large", f"body over {self.max_body} bytes")
            try:
                body = b64url_decode(data)
            except B64DecodeError as exc:
                return refused("bad_base64", str(exc))
        ttl = message.get("ttl")
        ttl_value = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 else None
        encoding = next((v for k, v in headers if k == "encoding"), None)
        return NotificationReceived(chid, ver, body, encoding, tuple(headers), ttl_value)


def _usable_endpoint(url: str) -> bool:
    if len(url) > MAX_ENDPOINT_LENGTH or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("https", "http") and bool(parts.hostname)
