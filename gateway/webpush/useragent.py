"""The RFC 8030 user-agent protocol over one HTTP/2 connection, sans-IO.

:class:`UserAgentProtocol` wraps an ``h2.H2Connection``: the caller feeds it the bytes read from
the socket (:meth:`~UserAgentProtocol.receive_data`, which returns :class:`Event` objects) and
writes out whatever :meth:`~UserAgentProtocol.data_to_send` returns. Requests (subscribe,
monitor, acknowledge, unsubscribe) are queued and put on the wire as the peer's
``SETTINGS_MAX_CONCURRENT_STREAMS`` allows: a monitoring GET stays open for as long as the
service likes, so with a limit of 2 the management requests go one at a time beside it
(RFC 8030 §7.5). There are no sockets, clocks or threads in here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urljoin, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

from gateway.webpush.links import REL_PUSH, REL_SET, LinkParseError, find_links, format_link

Headers = tuple[tuple[str, str], ...]

# A request target we may send back: printable ASCII, no spaces (RFC 9112 §3.2, RFC 3986).
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")

# Our receive windows. A pushed body is at most a few KB (RFC 8030 §7.2 guarantees 4096 bytes);
# the 65,535-byte HTTP/2 default would stall a connection delivering many 3 KB bodies between
# two socket reads (shared/reference/perf-limits.md), so give the connection 1 MiB and each
# stream 256 KiB. Data is acknowledged as soon as it is buffered; the body limit bounds memory.
CONNECTION_WINDOW = 1024 * 1024
STREAM_WINDOW = 256 * 1024
# Pushed streams count against OUR max concurrent streams (RFC 7540 §8.2.2): this bounds how many
# messages can be in flight towards us at once.
MAX_PUSHED_STREAMS = 128
# HPACK decompressed header list limit: far above any real push response, far below a bomb.
MAX_HEADER_LIST_SIZE = 16 * 1024
# Every this many finished pushes, h2's closed streams are pruned (see _on_end): O(open streams)
# each time, so amortised O(1) per push.
PRUNE_EVERY_PUSHES = MAX_PUSHED_STREAMS
# Requests we keep waiting for a stream slot before refusing more (the ack queue of a large
# backlog drains at wire speed; this bounds memory if the peer never grants streams).
MAX_QUEUED_REQUESTS = 100_000

# The server's connection preface: one 9-byte frame header, of a SETTINGS frame on stream 0.
PREFACE_CHECK_BYTES = 9
FRAME_HEADER_BYTES = 9  # RFC 9113 §4.1: 24-bit length, type, flags, stream id
# Streams we open before the service's SETTINGS say how many it allows: RFC 9113 §6.5.2
# recommends that the limit be no smaller than 100.
ASSUMED_MAX_CONCURRENT_STREAMS = 100
SETTINGS_FRAME_TYPE = 0x04

RequestKind = Literal["subscribe", "monitor", "ack", "unsubscribe"]


class ProtocolViolation(Exception):
    """The push service broke HTTP/2 or RFC 8030 badly enough that the connection must go."""


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """Base class of everything :meth:`UserAgentProtocol.receive_data` returns."""


@dataclass(frozen=True)
class Subscribed(Event):
    """201 to a subscribe request: the new subscription's resources."""

    request_id: int
    tag: str
    subscription_url: str
    push_url: str
    set_url: str | None


@dataclass(frozen=True)
class SubscribeFailed(Event):
    """A subscribe request failed. ``set_rejected`` is a 400 to a request carrying a set link."""

    request_id: int
    tag: str
    status: int
    reason: str
    retry_after: float | None = None
    set_rejected: bool = False


@dataclass(frozen=True)
class MessageReceived(Event):
    """A complete pushed message (the promised stream ended)."""

    message_url: str  # the push message resource: DELETE acknowledges it
    push_url: str | None  # the push resource it was sent to (identifies the subscription)
    set_url: str | None  # the set (or subscription) whose monitor received it
    headers: Headers  # pushed response headers, falling back to promise headers
    body: bytes
    content_encoding: str | None


@dataclass(frozen=True)
class MessageRefused(Event):
    """A pushed message that cannot be taken: its stream was reset, the caller should still ack."""

    message_url: str
    push_url: str | None
    headers: Headers
    reason: str  # "too_large", "bad_status"
    detail: str


@dataclass(frozen=True)
class MonitorEnded(Event):
    """A monitoring GET finished: 200/204 (re-issue it), 404 (the set expired), or another code."""

    request_id: int
    url: str
    status: int
    retry_after: float | None = None


@dataclass(frozen=True)
class AckCompleted(Event):
    """A DELETE of a push message finished. 2xx, 404 and 410 all mean the message is gone."""

    request_id: int
    message_url: str
    status: int

    @property
    def ok(self) -> bool:
        """True when the service no longer holds the message."""
        return 200 <= self.status < 300 or self.status in (404, 410)


@dataclass(frozen=True)
class UnsubscribeCompleted(Event):
    """A DELETE of a subscription finished (404/410: it was already gone)."""

    request_id: int
    url: str
    status: int


@dataclass(frozen=True)
class RequestReset(Event):
    """The peer reset one of our request streams before answering."""

    request_id: int
    kind: RequestKind
    url: str
    error_code: int


@dataclass(frozen=True)
class PingAcknowledged(Event):
    """The answer to our PING."""

    opaque: bytes


@dataclass(frozen=True)
class GoAway(Event):
    """The service is closing this connection; streams above ``last_stream_id`` were not seen."""

    error_code: int
    last_stream_id: int
    detail: str


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """Nothing more will come on this connection."""

    reason: str


# ------------------------------------------------------------------------------------- requests


@dataclass
class _Request:
    request_id: int
    kind: RequestKind
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    tag: str = ""
    carries_set: bool = False
    redirects: int = 0
    path: str = ""
    stream_id: int | None = None
    status: int | None = None
    response_headers: Headers = ()
    response_body: bytearray = field(default_factory=bytearray)


@dataclass
class _Pushed:
    message_url: str
    parent_url: str | None
    promise_headers: Headers
    response_headers: Headers = ()
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    refused: bool = False


# 307 redirects followed for one subscribe request (RFC 8030 §7.1 load redistribution).
MAX_REDIRECTS = 3
# Distinct Link header values remembered (one per subscription in practice).
LINK_CACHE_SIZE = 1024
# A response body we keep for an error message (the rest is discarded).
MAX_ERROR_BODY = 512


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds, or an HTTP-date when ``now`` is given."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    if now is None:
        return None
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - now)


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _headers_all(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def _decode(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Headers:
    out = []
    for key, value in headers:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        out.append((k.lower(), v))
    return tuple(out)


class _Connection(h2.connection.H2Connection):
    # h2 remembers 2**16 closed stream ids (~11 MiB after 33k messages) to tell late frames on
    # them from protocol errors; a few thousand cover any frame still in flight on one
    # connection, since our streams close in order within a round trip.
    MAX_CLOSED_STREAMS = 4096


class UserAgentProtocol:
    """One HTTP/2 connection to a push service, from the user agent's side.

    ``origin`` is the push service's ``scheme://authority``; every URL given to or returned by
    this object is absolute and must share that origin (one connection serves one origin).
    """

    def __init__(self, origin: str, *, max_body: int, user_agent: str = "fieldgate") -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.scheme = parts.scheme
        self.authority = parts.netloc
        self.origin = f"{self.scheme}://{self.authority}"
        self.max_body = max_body
        self._user_agent = user_agent
        # h2's header validation and normalisation are off: ~15% of the CPU per message (three
        # header blocks each), and this class checks every header it reads itself: names are
        # lower-cased in _decode, values are parsed strictly (digits, RFC 8288 links, HTTP
        # dates), the promised :path is checked before it is sent back, and our own requests'
        # headers are built from validated URLs.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._conn = _Connection(config=config)
        self._ids = itertools.count(1)
        self._queue: deque[_Request] = deque()
        self._by_stream: dict[int, _Request] = {}
        self._pushed: dict[int, _Pushed] = {}
        self._closed = False
        self.goaway_received = False
        self._preface: bytes | None = b""  # the server's first bytes until checked
        self.pushes_refused = 0  # promises refused because too many were open
        self.frames_received = 0  # h2 events seen: the agent's measure of liveness
        self._pushes_finished = 0
        self._initiated = False
        self._remote_settings_seen = False
        self._link_cache: dict[tuple[str, ...], str] = {}

    # ------------------------------------------------------------------ connection lifecycle

    def initiate(self) -> None:
        """Queue the connection preface and our settings."""
        self._conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 1,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_PUSHED_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._initiated = True
        self._pump()

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (may be empty)."""
        return self._conn.data_to_send()

    def ping(self, opaque: bytes) -> None:
        """Send a PING (8 bytes); the answer is a :class:`PingAcknowledged`."""
        self._conn.ping(opaque)

    def close(self) -> None:
        """Send GOAWAY (no error): we are done with this connection."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.close_connection()

    @property
    def established(self) -> bool:
        """True once the service's SETTINGS arrived: it speaks HTTP/2 to us."""
        return self._remote_settings_seen

    @property
    def open_requests(self) -> int:
        """Requests on the wire or queued, monitors included."""
        return len(self._by_stream) + len(self._queue)

    def has_pending_work(self, *, ignore_monitors: bool = True) -> bool:
        """Whether requests (monitors aside) or pushed streams are still unfinished."""
        requests = [r for r in (*self._by_stream.values(), *self._queue)]
        if ignore_monitors:
            requests = [r for r in requests if r.kind != "monitor"]
        return bool(requests) or bool(self._pushed)

    # ------------------------------------------------------------------------------ requests

    def _url_path(self, url: str) -> str:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.origin:
            raise ValueError(f"{url!r} is not on this connection's origin {self.origin}")
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def _enqueue(self, request: _Request, *, front: bool = False) -> int:
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            raise ProtocolViolation("too many requests waiting for a stream")
        request.path = self._url_path(request.url)  # validated now, not when it is sent
        if front:
            self._queue.appendleft(request)
        else:
            self._queue.append(request)
        self._pump()
        return request.request_id

    def subscribe(
        self, url: str, *, set_url: str | None = None, vapid_key: str | None = None, tag: str = ""
    ) -> int:
        """POST to the push service (RFC 8030 §4), joining ``set_url`` when given (§4.1).

        ``vapid_key`` (base64url P-256 point) makes a restricted subscription (RFC 8292 §4).
        """
        headers: list[tuple[str, str]] = []
        if set_url:
            headers.append(("link", format_link(set_url, REL_SET)))
        body = b""
        if vapid_key:
            body = json.dumps({"vapid": vapid_key}).encode()
            headers.append(("content-type", "application/webpush-options+json"))
        request = _Request(
            next(self._ids), "subscribe", "POST", url, headers, body, tag, bool(set_url)
        )
        return self._enqueue(request)

    def monitor(self, url: str, *, urgency: str | None = None, wait0: bool = False) -> int:
        """GET a subscription set (or subscription); messages arrive as server pushes (§6).

        ``wait0`` asks for everything pending now and a 204 after it (``Prefer: wait=0``).
        Monitors jump the queue: they hold a stream for as long as the service likes.
        """
        headers: list[tuple[str, str]] = []
        if urgency:
            headers.append(("urgency", urgency))
        if wait0:
            headers.append(("prefer", "wait=0"))
        return self._enqueue(_Request(next(self._ids), "monitor", "GET", url, headers), front=True)

    def acknowledge(self, message_url: str) -> int:
        """DELETE a push message (§6.2)."""
        return self._enqueue(_Request(next(self._ids), "ack", "DELETE", message_url, []))

    def unsubscribe(self, url: str) -> int:
        """DELETE a subscription or a set (§7.3)."""
        return self._enqueue(_Request(next(self._ids), "unsubscribe", "DELETE", url, []))

    def _free_slots(self) -> int:
        # Counted here, not by h2 (which walks every stream on each call). Until the service's
        # SETTINGS arrive, h2 reports "unlimited": assume RFC 9113 §6.5.2's recommended floor.
        if self._remote_settings_seen:
            limit = int(self._conn.remote_settings.max_concurrent_streams)
        else:
            limit = ASSUMED_MAX_CONCURRENT_STREAMS
        return limit - len(self._by_stream)

    def _pump(self) -> None:
        # Nothing goes out before our preface (initiate) or after GOAWAY.
        if self._closed or self.goaway_received or not self._initiated:
            return
        while self._queue and self._free_slots() > 0:
            request = self._queue.popleft()
            self._send(request)

    def _send(self, request: _Request) -> None:
        stream_id = self._conn.get_next_available_stream_id()
        headers: list[tuple[str, str] | NeverIndexedHeaderTuple] = [
            (":method", request.method),
            (":scheme", self.scheme),
            (":authority", self.authority),
            # A path here is a capability (a message, subscription or set URL): sent as "never
            # indexed" (RFC 7541 §7.1.3), it stays out of both sides' HPACK tables and of any
            # intermediary's; each is used once, so indexing it would only evict useful entries.
            NeverIndexedHeaderTuple(":path", request.path),
            ("user-agent", self._user_agent),
            *request.headers,
        ]
        if request.body:
            headers.append(("content-length", str(len(request.body))))
        end = not request.body
        self._conn.send_headers(stream_id, headers, end_stream=end)
        if request.body:
            # Bodies are tiny (a VAPID key); they always fit the initial window.
            self._conn.send_data(stream_id, request.body, end_stream=True)
        request.stream_id = stream_id
        self._by_stream[stream_id] = request

    # ------------------------------------------------------------------------------- receive

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; ``b""`` means the peer closed the connection."""
        if not data:
            return [ConnectionClosed("the push service closed the connection")]
        if self._preface is not None:
            self._check_preface(data)
        try:
            h2_events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise ProtocolViolation(f"HTTP/2 protocol error from the push service: {exc}") from exc
        self.frames_received += len(h2_events)
        if self._oversized_frame_pending():
            raise ProtocolViolation(
                "HTTP/2 protocol error from the push service: overlong frame announced "
                f"(over SETTINGS_MAX_FRAME_SIZE {self._conn.local_settings.max_frame_size})"
            )
        events: list[Event] = []
        for ev in h2_events:
            events.extend(self._handle(ev))
        self._pump()
        return events

    def _oversized_frame_pending(self) -> bool:
        # h2 judges a frame's length only once the whole frame is buffered: a peer announcing a
        # 16 MiB frame would make us hold 16 MiB. Look at the buffered header ourselves (h2 has
        # no public accessor; without the attribute, fall back to h2's own late check).
        buffered = getattr(self._conn.incoming_buffer, "_data", b"")
        if len(buffered) < FRAME_HEADER_BYTES:
            return False
        announced = int.from_bytes(bytes(buffered[:3]), "big")
        return announced > int(self._conn.local_settings.max_frame_size)

    def _check_preface(self, data: bytes) -> None:
        # RFC 7540 §3.5: the server's preface is a SETTINGS frame. h2 waits for a whole frame
        # before judging one, so an HTTP/1.1 answer would otherwise just sit in its buffer.
        assert self._preface is not None
        self._preface += data[: PREFACE_CHECK_BYTES - len(self._preface)]
        if len(self._preface) < PREFACE_CHECK_BYTES:
            return
        head, self._preface = self._preface, None
        if head.startswith(b"HTTP/"):
            raise ProtocolViolation(
                "protocol error: the push service answered in HTTP/1.x, not HTTP/2"
            )
        if head[3] != SETTINGS_FRAME_TYPE or head[5:9] != b"\0\0\0\0":
            raise ProtocolViolation(
                "protocol error: the push service did not start with an HTTP/2 SETTINGS frame"
            )

    def _handle(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.PushedStreamReceived):
            return self._on_promise(ev)
        if isinstance(ev, h2.events.ResponseReceived):
            return self._on_response(ev.stream_id, _decode(ev.headers or ()))
        if isinstance(ev, h2.events.DataReceived):
            return self._on_data(ev)
        if isinstance(ev, h2.events.StreamEnded):
            return self._on_end(ev.stream_id)
        if isinstance(ev, h2.events.StreamReset):
            return self._on_reset(ev.stream_id, int(ev.error_code or 0))
        if isinstance(ev, h2.events.PingAckReceived):
            return [PingAcknowledged(bytes(ev.ping_data or b""))]
        if isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway_received = True
            detail = (ev.additional_data or b"").decode("utf-8", "replace")[:200]
            return [GoAway(int(ev.error_code or 0), int(ev.last_stream_id or 0), detail)]
        if isinstance(ev, h2.events.InformationalResponseReceived | h2.events.TrailersReceived):
            return []
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self._remote_settings_seen = True
            return []
        # SettingsAcknowledged, RemoteSettingsChanged (h2 acks them itself), WindowUpdated,
        # PriorityUpdated, PingReceived (h2 answers it): nothing for us to do but pump.
        return []

    def _on_promise(self, ev: h2.events.PushedStreamReceived) -> list[Event]:
        headers = _decode(ev.headers or ())
        pushed_id = ev.pushed_stream_id or 0
        parent = self._by_stream.get(ev.parent_stream_id or 0)
        path = _header(headers, ":path") or "/"
        if not path.startswith("/") or not _VISIBLE_ASCII.fullmatch(path):
            # h2's own header validation is off (it costs ~15% of the CPU per message): what we
            # send back (the DELETE's :path) must be a clean request target, so check it here.
            raise ProtocolViolation(f"PUSH_PROMISE with an unusable :path {path[:100]!r}")
        # The message is acknowledged on this connection whatever :authority the promise names.
        message_url = f"{self.origin}{path}"
        if len(self._pushed) >= MAX_PUSHED_STREAMS:
            # h2 does not count promised streams against our SETTINGS_MAX_CONCURRENT_STREAMS
            # until they start; a flood would grow without bound. Refuse: the service
            # redelivers an unacknowledged message later.
            self.pushes_refused += 1
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._conn.reset_stream(pushed_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return []
        self._pushed[pushed_id] = _Pushed(message_url, parent.url if parent else None, headers)
        return []

    def open_pushes(self) -> frozenset[int]:
        """Stream ids of pushed messages still arriving."""
        return frozenset(self._pushed)

    def cancel_pushes(self, stream_ids: Iterable[int]) -> int:
        """Reset pushed streams that stalled (a body that never ends); returns how many.

        The caller decides what "stalled" means (it has the clock): typically, still open a
        keepalive interval after it was first seen. The service redelivers them later.
        """
        cancelled = 0
        for stream_id in stream_ids:
            if self._pushed.pop(stream_id, None) is not None:
                cancelled += 1
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        return cancelled

    def _on_response(self, stream_id: int, headers: Headers) -> list[Event]:
        status_text = _header(headers, ":status") or "0"
        status = int(status_text) if status_text.isdigit() else 0
        pushed = self._pushed.get(stream_id)
        if pushed is not None:
            pushed.response_headers = headers
            pushed.status = status
            length = _header(headers, "content-length")
            if length and length.isdigit() and int(length) > self.max_body:
                return self._refuse(stream_id, pushed, "too_large", f"content-length {length}")
            return []
        request = self._by_stream.get(stream_id)
        if request is not None:
            request.status = status
            request.response_headers = headers
        return []

    def _on_data(self, ev: h2.events.DataReceived) -> list[Event]:
        stream_id = int(ev.stream_id)
        data = bytes(ev.data or b"")
        # Give the window back at once: memory is bounded by max_body, not by flow control.
        if ev.flow_controlled_length:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._conn.acknowledge_received_data(int(ev.flow_controlled_length), stream_id)
        pushed = self._pushed.get(stream_id)
        if pushed is not None:
            if pushed.refused:
                return []
            pushed.body += data
            if len(pushed.body) > self.max_body:
                return self._refuse(
                    stream_id, pushed, "too_large", f"body over {self.max_body} bytes"
                )
            return []
        request = self._by_stream.get(stream_id)
        if request is not None and len(request.response_body) < MAX_ERROR_BODY:
            request.response_body += data[: MAX_ERROR_BODY - len(request.response_body)]
        return []

    def _refuse(self, stream_id: int, pushed: _Pushed, reason: str, detail: str) -> list[Event]:
        pushed.refused = True
        pushed.body = bytearray()
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        del self._pushed[stream_id]
        headers = pushed.response_headers or pushed.promise_headers
        return [
            MessageRefused(pushed.message_url, self._push_link(pushed), headers, reason, detail)
        ]

    def _push_link(self, pushed: _Pushed) -> str | None:
        # RFC 8030 §6: the push resource link is in the pushed response (-12), drafts put it in
        # the promise; look in both, response first.
        for headers in (pushed.response_headers, pushed.promise_headers):
            values = tuple(_headers_all(headers, "link"))
            if values:
                link = self._push_link_of(values, pushed.message_url)
                if link:
                    return link
        return None

    def _push_link_of(self, values: tuple[str, ...], base: str) -> str | None:
        # Every message of a subscription carries the same Link value: parse each value once.
        # Absolute targets do not depend on the base; relative ones are resolved per message.
        cached = self._link_cache.get(values)
        if cached is None:
            try:
                found = find_links(values, REL_PUSH)
            except LinkParseError:
                found = []
            cached = found[0] if found else ""
            if len(self._link_cache) >= LINK_CACHE_SIZE:
                self._link_cache.clear()
            self._link_cache[values] = cached
        if not cached:
            return None
        return cached if "://" in cached else urljoin(base, cached)

    def _on_end(self, stream_id: int) -> list[Event]:
        pushed = self._pushed.pop(stream_id, None)
        if pushed is not None:
            self._pushes_finished += 1
            if self._pushes_finished % PRUNE_EVERY_PUSHES == 0:
                # h2 forgets closed streams only when it counts open ones, which it does when we
                # open a stream; a gateway that only receives (every ack held under the
                # delivered policy, a redelivery storm) would keep every pushed stream forever.
                _ = self._conn.open_inbound_streams
            return self._finish_push(pushed)
        request = self._by_stream.pop(stream_id, None)
        if request is None:
            return []
        return self._finish_request(request)

    def _finish_push(self, pushed: _Pushed) -> list[Event]:
        headers = pushed.response_headers or pushed.promise_headers
        if pushed.status != 200:
            return [
                MessageRefused(
                    pushed.message_url,
                    self._push_link(pushed),
                    headers,
                    "bad_status",
                    f"pushed response status {pushed.status}",
                )
            ]
        encoding = _header(pushed.response_headers, "content-encoding") or _header(
            pushed.promise_headers, "content-encoding"
        )
        merged = pushed.response_headers + tuple(
            (k, v)
            for k, v in pushed.promise_headers
            if not k.startswith(":") and _header(pushed.response_headers, k) is None
        )
        return [
            MessageReceived(
                pushed.message_url,
                self._push_link(pushed),
                pushed.parent_url,
                merged,
                bytes(pushed.body),
                encoding,
            )
        ]

    def _finish_request(self, request: _Request) -> list[Event]:
        status = request.status or 0
        headers = request.response_headers
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        if request.kind == "subscribe":
            return self._finish_subscribe(request, status, headers, retry_after)
        if request.kind == "monitor":
            return [MonitorEnded(request.request_id, request.url, status, retry_after)]
        if request.kind == "ack":
            return [AckCompleted(request.request_id, request.url, status)]
        return [UnsubscribeCompleted(request.request_id, request.url, status)]

    def _finish_subscribe(
        self, request: _Request, status: int, headers: Headers, retry_after: float | None
    ) -> list[Event]:
        def failed(reason: str, *, set_rejected: bool = False) -> list[Event]:
            return [
                SubscribeFailed(
                    request.request_id, request.tag, status, reason, retry_after, set_rejected
                )
            ]

        if status == 307:
            location = _header(headers, "location")
            if not location or request.redirects >= MAX_REDIRECTS:
                return failed("307 without a usable Location")
            target = urljoin(request.url, location)
            try:
                self._url_path(target)
            except ValueError:
                return failed(f"307 to another origin ({urlsplit(target).netloc})")
            again = _Request(
                request.request_id,
                "subscribe",
                "POST",
                target,
                request.headers,
                request.body,
                request.tag,
                request.carries_set,
                request.redirects + 1,
            )
            again.path = self._url_path(target)
            self._queue.appendleft(again)
            return []
        if status != 201:
            body = bytes(request.response_body).decode("utf-8", "replace").strip()
            reason = f"HTTP {status}" + (f": {body[:200]}" if body else "")
            return failed(reason, set_rejected=status == 400 and request.carries_set)
        location = _header(headers, "location")
        if not location:
            return failed("201 without Location")
        subscription_url = urljoin(request.url, location)
        try:
            link_values = _headers_all(headers, "link")
            push_links = find_links(link_values, REL_PUSH, request.url)
            set_links = find_links(link_values, REL_SET, request.url)
        except LinkParseError as exc:
            return failed(f"unparseable Link header: {exc}")
        if not push_links:
            return failed('201 without a rel="urn:ietf:params:push" link')
        for url in (subscription_url, push_links[0], *set_links[:1]):
            try:
                self._url_path(url)
            except ValueError:
                return failed(f"resource on another origin: {url}")
        return [
            Subscribed(
                request.request_id,
                request.tag,
                subscription_url,
                push_links[0],
                set_links[0] if set_links else None,
            )
        ]

    def _on_reset(self, stream_id: int, error_code: int) -> list[Event]:
        if self._pushed.pop(stream_id, None) is not None:
            return []  # the service withdrew a push: it will redeliver the message later
        request = self._by_stream.pop(stream_id, None)
        if request is None:
            return []
        return [RequestReset(request.request_id, request.kind, request.url, error_code)]

    def take_unsent_acks(self, last_stream_id: int | None = None) -> list[str]:
        """Remove and return acks the service never saw: still queued, or (after GOAWAY) on a
        stream above ``last_stream_id``. The caller sends them on the next connection."""
        urls = [r.url for r in self._queue if r.kind == "ack"]
        self._queue = deque(r for r in self._queue if r.kind != "ack")
        if last_stream_id is not None:
            for sid in [s for s, r in self._by_stream.items() if r.kind == "ack"]:
                if sid > last_stream_id:
                    urls.append(self._by_stream.pop(sid).url)
        return urls
