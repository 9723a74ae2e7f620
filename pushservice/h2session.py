"""One HTTP/2 connection: requests in, responses and server pushes out, flow control respected."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes

from pushservice.http import ConnectionInfo, Request, Response, text_response
from pushservice.session_api import SessionHost

# Bytes asked of the socket per read; 64 KiB matches h2's default max inbound window.
RECEIVE_SIZE = 65536
# An HTTP/2 frame header is 9 octets, its first 3 the payload length (RFC 9113 §4.1).
FRAME_HEADER_BYTES = 9
# Connection-level receive window we grant (bodies up to this need no WINDOW_UPDATE round trip).
CONNECTION_WINDOW = 1 << 20
# Pushes queued beyond the client's stream limit: a drain waits (push_room) above the high mark
# and the service is told when the queue is back under the low mark.
PUSH_QUEUE_HIGH = 1000
PUSH_QUEUE_LOW = 250


@dataclass
class _PendingRequest:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    answered: bool = False


@dataclass
class _Outbound:
    data: bytearray
    end: bool


@dataclass
class _QueuedPush:
    parent: int
    promise: list[tuple[str, str]]
    response: list[tuple[str, str]]
    body: bytes
    on_withdrawn: Callable[[], None] | None = None


class H2Session:
    """Drives an ``h2.H2Connection`` over a trio stream; the service pushes through it.

    Requests are answered one after another in arrival order (so a request answered means the
    ones sent before it were processed), except that a run of acknowledgements is answered
    with one store call.
    """

    def __init__(
        self,
        host: SessionHost,
        stream: trio.abc.Stream,
        info: ConnectionInfo,
        initial: bytes = b"",
    ) -> None:
        self.host = host
        self.stream = stream
        self.info = info
        self._initial = initial
        # Outbound headers are ours, built lower-case and valid: h2 need not check them again
        # (a third of the cost of a push). Inbound headers are still validated.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        s = host.settings
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_bytes,
            },
        )
        self.conn.decoder.max_header_list_size = s.max_header_bytes
        self._requests: dict[int, _PendingRequest] = {}
        self._outbound: dict[int, _Outbound] = {}
        self._push_queue: deque[_QueuedPush] = deque()
        self._queued_on: dict[int, int] = {}  # parent stream -> pushes queued on it
        self._push_progress = trio.Event()
        self._over_high = False
        self._withdrawn: dict[int, Callable[[], None]] = {}  # pushed streams in flight
        self._inbox: deque[tuple[int, Request]] = deque()
        self._inbox_ready = trio.Event()
        self._want_write = trio.Event()
        self._send_lock = trio.Lock()
        self._cancel: trio.CancelScope | None = None
        self.goaway_sent = False
        self._aborted = False
        self._goaway_last: int | None = None
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until the peer goes away, a protocol error, or a fault closes the connection."""
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self._wake()
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._writer)
                nursery.start_soon(self._request_loop)
                nursery.start_soon(self.host.faults.hostility.act, self)
                await self._reader()
                nursery.cancel_scope.cancel()
            # Peer closed or protocol error: flush what h2 queued (e.g. GOAWAY), then stop.
            data = self.conn.data_to_send()
            if data and not self._aborted:
                with trio.move_on_after(1):
                    await self._send(data)
        finally:
            self.closed = True
            self._push_progress.set()
            self.host.session_closed(self)

    def abort(self) -> None:
        """Stop at once; the caller closes the socket (fault: drop connections)."""
        self.closed = True
        self._aborted = True
        self._push_progress.set()
        if self._cancel is not None:
            self._cancel.cancel()

    def goaway(self, last_stream_id: int | None) -> None:
        """Refuse new streams; once the open ones finish, send GOAWAY and close.

        h2 sends nothing after its own GOAWAY, so the frame goes out when the streams are done
        (the service answers monitors 204 first, which finishes them).
        """
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self._goaway_last = last_stream_id
        self._wake()

    async def _reader(self) -> None:
        faults = self.host.faults
        if self._initial:
            self._feed(self._initial)
        while not self.closed:
            await faults.wait_thawed()
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            await faults.wait_thawed()
            if not self._feed(bytes(data)):
                return

    async def _writer(self) -> None:
        faults = self.host.faults
        while True:
            await self._want_write.wait()
            self._want_write = trio.Event()
            await faults.wait_thawed()
            self._flush()  # pushes queued since the last flush are promised now
            data = self.conn.data_to_send()
            if data:
                try:
                    await self._send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.abort()
                    return
            if self.goaway_sent and self._all_streams_done():
                last = self._goaway_last
                if last is None:
                    last = self.conn.highest_inbound_stream_id
                self.conn.close_connection(last_stream_id=last)
                with trio.move_on_after(1):
                    await self._send(self.conn.data_to_send())
                self.abort()
                return

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.host.faults.hostility.send(self, data)

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as given, between whole frames from h2 (hostile behaviours)."""
        await self._send(data)

    def _all_streams_done(self) -> bool:
        return (
            not self._outbound
            and not self._push_queue
            and not any(not s.closed for s in self.conn.streams.values())
        )

    def _wake(self) -> None:
        self._want_write.set()

    # -- inbound -----------------------------------------------------------------------------
    def _feed(self, data: bytes) -> bool:
        """Process bytes from the peer; False once the connection is finished."""
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.host.log.info("h2 protocol error from client: %s", type(exc).__name__)
            self._wake()
            return False
        if self._oversized_frame_pending():
            self.conn.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
            self._wake()
            return False
        for event in events:
            self._on_event(event)
        self._flush()
        self._wake()
        return not isinstance(events[-1] if events else None, h2.events.ConnectionTerminated)

    def _oversized_frame_pending(self) -> bool:
        # h2 checks a frame's length only once the whole frame has arrived, so a peer announcing
        # a 16 MiB frame makes it buffer 16 MiB. Look at the buffered frame header ourselves.
        buffered = getattr(self.conn.incoming_buffer, "_data", b"")
        if len(buffered) < FRAME_HEADER_BYTES:
            return False
        length = int.from_bytes(bytes(buffered[:3]), "big")
        return length > self.conn.local_settings.max_frame_size

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            headers = [(str(k), str(v)) for k, v in event.headers]
            self._requests[event.stream_id] = _PendingRequest(headers)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            pending = self._requests.get(event.stream_id)
            if pending is not None and not pending.answered:
                pending.body += event.data
                if len(pending.body) > self.host.settings.max_body:
                    pending.answered = True
                    limit = self.host.settings.max_body
                    self.respond(event.stream_id, text_response(413, f"body over {limit} bytes"))
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            pending = self._requests.pop(event.stream_id, None)
            if pending is not None and not pending.answered:
                self._dispatch(event.stream_id, pending)
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            withdrawn = self._withdrawn.pop(event.stream_id, None)
            if withdrawn is not None:
                withdrawn()
            self._stream_gone(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            pass  # _flush after every batch sends what the new windows allow
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _stream_gone(self, stream_id: int) -> None:
        self._requests.pop(stream_id, None)
        self._outbound.pop(stream_id, None)
        self.host.stream_reset(self, stream_id)

    def _dispatch(self, stream_id: int, pending: _PendingRequest) -> None:
        pseudo = {k: v for k, v in pending.headers if k.startswith(":")}
        headers = [(k.lower(), v) for k, v in pending.headers if not k.startswith(":")]
        authority = pseudo.get(":authority") or next((v for k, v in headers if k == "host"), "")
        info = self.info
        if pseudo.get(":scheme") and pseudo[":scheme"] != info.scheme:
            info = dataclasses.replace(info, scheme=pseudo[":scheme"])
        req = Request(
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            authority=authority,
            headers=headers,
            body=bytes(pending.body),
            conn=self.info if info is self.info else info,
        )
        if self.goaway_sent:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._inbox.append((stream_id, req))
        self._inbox_ready.set()

    async def _request_loop(self) -> None:
        while True:
            await self._inbox_ready.wait()
            self._inbox_ready = trio.Event()
            while self._inbox:
                acks: list[tuple[int, Request]] = []
                while self._inbox and self.host.is_ack(self._inbox[0][1]):
                    acks.append(self._inbox.popleft())
                if acks:
                    answers = await self.host.acknowledge([req for _, req in acks])
                    for (stream_id, _), answer in zip(acks, answers, strict=True):
                        self.respond(stream_id, answer)
                    continue
                stream_id, req = self._inbox.popleft()
                response = await self.host.request(self, stream_id, req)
                if response is not None:
                    self.respond(stream_id, response)

    @property
    def push_enabled(self) -> bool:
        """Whether the client accepts server push (SETTINGS_ENABLE_PUSH)."""
        return bool(self.conn.remote_settings.enable_push)

    def monitor_stream(self) -> int | None:
        """A held-open monitoring GET on this connection, if any."""
        return self.host.monitor_stream_of(self)

    # -- outbound ----------------------------------------------------------------------------
    def respond(self, stream_id: int, response: Response) -> None:
        """Send a complete response on a stream (ignored if the stream is gone)."""
        headers = [(":status", str(response.status))]
        headers += [(k, v) for k, v in response.headers if k != "content-length"]
        headers.append(("content-length", str(len(response.body))))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not response.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        if response.body:
            self._outbound[stream_id] = _Outbound(bytearray(response.body), True)
        self._flush()
        self._wake()

    def stream_open(self, stream_id: int) -> bool:
        """Whether a monitor stream can still carry pushes."""
        stream = self.conn.streams.get(stream_id)
        return stream is not None and not stream.closed and not self.closed

    def push(
        self,
        parent: int,
        promise: list[tuple[str, str]],
        response: list[tuple[str, str]],
        body: bytes,
        on_withdrawn: Callable[[], None] | None = None,
    ) -> bool:
        """Server-push one response on ``parent``; False if that stream can no longer push.

        ``on_withdrawn`` is called if the pushed stream is reset (by a fault or the client)
        before it completes: the message is then not in flight on this connection any more.
        """
        if self.closed or self.goaway_sent or not self.stream_open(parent):
            return False
        self._push_queue.append(_QueuedPush(parent, promise, response, body, on_withdrawn))
        self._queued_on[parent] = self._queued_on.get(parent, 0) + 1
        # Promised by the writer's flush: a page of stored messages is queued in one go and
        # flushed once, not one walk of every stream and every buffered body per push.
        self._wake()
        return True

    def push_backlog(self) -> int:
        """Pushes queued and not yet promised."""
        return len(self._push_queue)

    async def pushes_promised(self, parent: int) -> None:
        """Return once every push queued on ``parent`` was promised (or cannot be any more)."""
        while self._queued_on.get(parent, 0) > 0 and self.stream_open(parent):
            progress = self._push_progress
            await progress.wait()

    async def push_room(self) -> None:
        """Return once the push queue is below its low-water mark (or the connection closed)."""
        while len(self._push_queue) > PUSH_QUEUE_LOW and not self.closed:
            progress = self._push_progress
            await progress.wait()

    def _drain_push_queue(self) -> None:
        # Pushed streams count against the client's SETTINGS_MAX_CONCURRENT_STREAMS (RFC 7540
        # §8.2.2); h2 does not check that for pushes, so we queue beyond it.
        before = len(self._push_queue)
        limit = self.conn.remote_settings.max_concurrent_streams
        # Counted here as pushes open streams (h2 walks every stream to count them, so not at
        # all with nothing queued: every flush comes here); nothing in this loop closes one, so
        # the count only errs high, and the next call counts afresh.
        open_streams = self.conn.open_outbound_streams if self._push_queue else 0
        while self._push_queue:
            if open_streams >= limit:
                break
            item = self._push_queue.popleft()
            self._dequeued(item.parent)
            if not self.stream_open(item.parent):
                if item.on_withdrawn is not None:
                    item.on_withdrawn()  # never promised: not in flight
                continue
            promised = self.conn.get_next_available_stream_id()
            try:
                self.conn.push_stream(item.parent, promised, item.promise)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                if item.on_withdrawn is not None:
                    item.on_withdrawn()
                continue
            if self.host.faults.take_reset():
                self.conn.reset_stream(promised, ErrorCodes.CANCEL)
                if item.on_withdrawn is not None:
                    item.on_withdrawn()
                continue
            if item.on_withdrawn is not None and item.body:
                self._withdrawn[promised] = item.on_withdrawn
            headers = [*item.response, ("content-length", str(len(item.body)))]
            self.conn.send_headers(promised, headers, end_stream=not item.body)
            if item.body:
                self._outbound[promised] = _Outbound(bytearray(item.body), True)
                open_streams += 1
        queued = len(self._push_queue)
        if queued != before:
            self._push_progress.set()
            self._push_progress = trio.Event()
        if queued >= PUSH_QUEUE_HIGH:
            self._over_high = True
        elif self._over_high and queued <= PUSH_QUEUE_LOW:
            self._over_high = False
            self.host.room_for_pushes(self)

    def _dequeued(self, parent: int) -> None:
        left = self._queued_on.get(parent, 0) - 1
        if left > 0:
            self._queued_on[parent] = left
        else:
            self._queued_on.pop(parent, None)

    def end_monitor(self, stream_id: int, status: int) -> None:
        """Finish a monitoring GET with ``status`` (404 expired, 204 on GOAWAY)."""
        if self.stream_open(stream_id):
            self.respond(stream_id, Response(status))

    def _flush(self) -> None:
        """Start queued pushes and send buffered bodies as far as the peer's windows allow."""
        while True:
            queued = len(self._push_queue)
            self._drain_push_queue()
            self._send_buffered()
            self._drain_push_queue()  # ended streams free slots for queued pushes
            if not self._push_queue or len(self._push_queue) == queued:
                return

    def _send_buffered(self) -> None:
        for stream_id in list(self._outbound):
            out = self._outbound[stream_id]
            try:
                while out.data:
                    window = self.conn.local_flow_control_window(stream_id)
                    size = min(window, self.conn.max_outbound_frame_size, len(out.data))
                    if size <= 0:
                        break
                    self.conn.send_data(stream_id, bytes(out.data[:size]))
                    del out.data[:size]
                if not out.data:
                    if out.end:
                        self.conn.end_stream(stream_id)
                    del self._outbound[stream_id]
                    self._withdrawn.pop(stream_id, None)  # fully sent: no longer withdrawable
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self._outbound.pop(stream_id, None)
