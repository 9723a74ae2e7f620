"""The reference RFC 8030 push service: trio server, monitors, delivery, expiry and redelivery."""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import trio

from fieldgate_common.logs import get_logger
from pushservice.faults import Faults
from pushservice.h1session import H1Session
from pushservice.h2session import H2Session
from pushservice.http import ConnectionInfo, MonitorRequest, Request, Response, text_response
from pushservice.model import Message, ReceiptEvent
from pushservice.resources import REL_PUSH, Resources, message_path
from pushservice.settings import SWEEP_INTERVAL, ServiceSettings
from pushservice.state import PushState
from pushservice.store import SqliteStore

# The HTTP/2 client connection preface (RFC 9113 §3.4) tells h2 and HTTP/1.1 apart on one port.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A client must finish TLS and send its first bytes within this (seconds); slowloris bound.
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class SubscriptionView:
    """One subscription as tests see it: the UA's URL, the AS's push URL, its set URL."""

    subscription_url: str
    push_url: str
    set_url: str
    restricted: bool
    pending: int


@dataclass
class MonitorHandle:
    """A held-open monitoring GET on an HTTP/2 stream."""

    session: H2Session
    stream_id: int
    kind: str
    target_id: str
    request: Request
    min_urgency: int | None


class PushService:
    """An RFC 8030 push service; ``serve()`` it in a nursery, then use ``subscribe_url``."""

    def __init__(
        self,
        settings: ServiceSettings = ServiceSettings(),  # noqa: B008 - frozen, so shared safely
        *,
        state_path: Path | None = None,
        control: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.log = get_logger("pushservice")
        self._store = SqliteStore(state_path) if state_path is not None else None
        self.state = PushState(self._store)
        self.faults = Faults(self)
        self.resources = Resources(self.state, settings, self.faults, self, control_enabled=control)
        self._sessions: set[H2Session] = set()
        self._monitors: dict[tuple[str, str], list[MonitorHandle]] = {}
        self._nursery: trio.Nursery | None = None
        self._origin: str | None = None

    # -- public API --------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """``scheme://host:port`` once started."""
        if self._origin is None:
            raise RuntimeError("the push service is not serving yet")
        return self._origin

    @property
    def subscribe_url(self) -> str:
        """The subscribe resource, valid once ``serve`` has started."""
        return f"{self.origin}/subscribe"

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve forever; ``task_status.started(bound_port)`` once listening."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        self._origin = f"{'https' if ssl_context else 'http'}://{url_host}:{bound}"
        self.log.info("listening on %s (subscribe at %s)", self._origin, self.subscribe_url)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sweeper)
                task_status.started(bound)

                async def handler(stream: trio.SocketStream) -> None:
                    await self._connection(stream, ssl_context)

                await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
        finally:
            if self._store is not None:
                self._store.close()

    def pending_messages(self, push_url: str | None = None) -> int:
        """Unacknowledged messages, of one push resource or all."""
        if push_url is None:
            return self.state.pending_count()
        sub = self.state.by_push_id.get(push_url.rstrip("/").rsplit("/", 1)[-1])
        return 0 if sub is None else self.state.pending_count(sub.id)

    def acked_count(self) -> int:
        """Messages acknowledged with DELETE since start."""
        return self.state.acked

    def subscriptions(self) -> list[SubscriptionView]:
        """Every live subscription."""
        o = self.origin
        return [
            SubscriptionView(
                f"{o}/subscription/{s.id}",
                f"{o}/push/{s.push_id}",
                f"{o}/set/{s.set_id}",
                s.vapid_key is not None,
                self.state.pending_count(s.id),
            )
            for s in self.state.subscriptions.values()
        ]

    def monitor_count(self) -> int:
        """Monitoring GETs currently held open (subscriptions, sets and receipts)."""
        return sum(len(v) for v in self._monitors.values())

    def sweep(self) -> None:
        """Expire and redeliver now (the background task does this every SWEEP_INTERVAL)."""
        now = self.clock()
        after = self.settings.redelivery_after
        dropped: list[Message] = []
        for m in list(self.state.messages.values()):
            if m.expires <= now:
                # Never delivered after its TTL; a pushed one gets the ack grace period first.
                if m.pushed_at is None or now - m.pushed_at >= after:
                    self.state.give_up(m)
                    dropped.append(m)
            elif m.pushed_at is not None and now - m.pushed_at >= after:
                m.pushed_at = None
                self.message_stored(m)
        self.messages_dropped(dropped)

    # -- connections -------------------------------------------------------------------------
    async def _connection(self, tcp: trio.SocketStream, ssl_context: ssl.SSLContext | None) -> None:
        peer = tcp.socket.getpeername()[0]
        loopback = ipaddress.ip_address(peer.split("%")[0]).is_loopback
        stream: trio.abc.Stream = tcp
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if ssl_context is not None:
                    tls = trio.SSLStream(tcp, ssl_context, server_side=True)
                    await tls.do_handshake()
                    stream = tls
                    http2, initial = tls.selected_alpn_protocol() == "h2", b""
                else:
                    http2, initial = await _sniff_preface(tcp)
            info = ConnectionInfo("https" if ssl_context else "http", loopback, http2)
            if http2:
                session = H2Session(self, stream, info, initial)
                self._sessions.add(session)
                await session.run()
            else:
                await H1Session(self, stream, info, initial).run()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a client that went away or never spoke; nothing to answer
        except Exception:
            # One connection's bug must not take the service down for everyone else.
            self.log.exception("connection from %s failed", peer)
        finally:
            await trio.aclose_forcefully(stream)

    def session_closed(self, session: H2Session) -> None:
        """Forget a finished HTTP/2 session and its monitors."""
        self._sessions.discard(session)
        for key, handles in list(self._monitors.items()):
            kept = [h for h in handles if h.session is not session]
            if kept:
                self._monitors[key] = kept
            else:
                del self._monitors[key]

    # -- monitors ----------------------------------------------------------------------------
    def start_monitor(
        self, session: H2Session, stream_id: int, req: Request, mon: MonitorRequest
    ) -> None:
        """Begin a monitoring GET: push what is stored, then hold it (or answer, for wait=0)."""
        handle = MonitorHandle(session, stream_id, mon.kind, mon.target_id, req, mon.min_urgency)
        receipts = mon.kind == "receipt"
        pushed = self._push_receipts(handle) if receipts else self._push_stored(handle)
        if mon.wait0:
            # RFC 8030 §6: 204 means no messages were pushed.
            session.respond(stream_id, Response(200 if pushed else 204))
            return
        self._monitors.setdefault((mon.kind, mon.target_id), []).append(handle)

    def monitor_stream_closed(self, session: H2Session, stream_id: int) -> None:
        """The client reset a stream; drop a monitor on it."""
        for key, handles in list(self._monitors.items()):
            kept = [h for h in handles if not (h.session is session and h.stream_id == stream_id)]
            if len(kept) != len(handles):
                if kept:
                    self._monitors[key] = kept
                else:
                    del self._monitors[key]

    def _sub_ids(self, handle: MonitorHandle) -> list[str]:
        if handle.kind == "subscription":
            return [handle.target_id] if handle.target_id in self.state.subscriptions else []
        s = self.state.sets.get(handle.target_id)
        return sorted(s.members) if s else []

    def _push_stored(self, handle: MonitorHandle) -> int:
        now = self.clock()
        after = self.settings.redelivery_after
        count = 0
        for m in self.state.messages_for(self._sub_ids(handle), None):
            in_flight_here = (
                m.pushed_on is handle.session
                and m.pushed_at is not None
                and now - m.pushed_at < after
            )
            if in_flight_here or m.expires <= now or not self._accepts(handle, m):
                continue
            if self._push_message(handle, m):
                count += 1
        return count

    @staticmethod
    def _accepts(handle: MonitorHandle, m: Message) -> bool:
        # RFC 8030 §5.3: never deliver below the monitor's Urgency.
        return handle.min_urgency is None or m.urgency >= handle.min_urgency

    def _live_monitors(self, m: Message) -> list[MonitorHandle]:
        sub = self.state.subscriptions.get(m.sub_id)
        if sub is None:
            return []
        found = self._monitors.get(("subscription", sub.id), []) + self._monitors.get(
            ("set", sub.set_id), []
        )
        return [
            h
            for h in found
            if self._accepts(h, m)
            and not h.session.goaway_sent
            and h.session.stream_open(h.stream_id)
        ]

    def _push_message(self, handle: MonitorHandle, m: Message) -> bool:
        sub = self.state.subscriptions[m.sub_id]
        req = handle.request
        now = self.clock()
        promise = [
            (":method", "GET"),
            (":path", message_path(m.id)),
            (":authority", req.authority),
            (":scheme", req.conn.scheme),
        ]
        response = [
            (":status", "200"),
            ("date", formatdate(now, usegmt=True)),
            ("last-modified", formatdate(m.created, usegmt=True)),
            ("link", f'<{req.origin}/push/{sub.push_id}>; rel="{REL_PUSH}"'),
            ("cache-control", "private"),
            ("ttl", str(m.remaining_ttl(now))),  # fieldgate extension: remaining TTL
        ]
        if m.content_encoding:
            response.append(("content-encoding", m.content_encoding))

        def withdrawn() -> None:
            # Reset before it completed: a new monitor on this connection may have it again.
            if m.pushed_on is handle.session:
                m.pushed_on = None

        # Marked before pushing: a fault may withdraw the push inside push() itself.
        previous = (m.pushed_at, m.pushed_on)
        m.pushed_at, m.pushed_on = now, handle.session
        if handle.session.push(handle.stream_id, promise, response, m.body, withdrawn):
            return True
        m.pushed_at, m.pushed_on = previous
        return False

    # -- Delivery (called by Resources) ------------------------------------------------------
    def message_stored(self, message: Message) -> bool:
        """Push a new (or due) message to one monitor that wants it."""
        monitors = self._live_monitors(message)
        if not monitors:
            return False
        handle = monitors[0]
        delay = self.faults.push_delay
        if delay > 0 and self._nursery is not None:
            message.pushed_at = self.clock()  # in flight: not due for redelivery yet
            self._nursery.start_soon(self._delayed_push, handle, message, delay)
            return True
        return self._push_message(handle, message)

    async def _delayed_push(self, handle: MonitorHandle, m: Message, delay: float) -> None:
        await trio.sleep(delay)
        live = self.state.messages.get(m.id) is m and m.expires > self.clock()
        if live and not self._push_message(handle, m):
            m.pushed_at = None  # the monitor went away; the next monitor gets it

    def monitors_gone(self, kind: str, target_ids: list[str]) -> None:
        """Answer 404 on monitors of removed resources (RFC 8030 §7.3)."""
        for target in target_ids:
            for h in self._monitors.pop((kind, target), []):
                h.session.end_monitor(h.stream_id, 404)

    def messages_dropped(self, messages: list[Message]) -> None:
        """Push 410 receipts for given-up messages."""
        for rid in {m.receipt_id for m in messages if m.receipt_id}:
            self._push_receipts_to_all(rid)

    def message_acked(self, message: Message) -> None:
        """Push the 204 receipt of an acknowledged message."""
        if message.receipt_id:
            self._push_receipts_to_all(message.receipt_id)

    def _push_receipts_to_all(self, receipt_id: str) -> None:
        for h in self._monitors.get(("receipt", receipt_id), []):
            if self._push_receipts(h):
                return

    def _push_receipts(self, handle: MonitorHandle) -> int:
        r = self.state.receipts.get(handle.target_id)
        if r is None:
            return 0
        count = 0
        for event in r.events:
            if not event.pushed and self._push_receipt(handle, event):
                self.state.mark_receipt_pushed(r.id, event)
                count += 1
        return count

    def _push_receipt(self, handle: MonitorHandle, event: ReceiptEvent) -> bool:
        req = handle.request
        promise = [
            (":method", "GET"),
            (":path", message_path(event.message_id)),
            (":authority", req.authority),
            (":scheme", req.conn.scheme),
        ]
        response = [(":status", str(event.status)), ("date", formatdate(self.clock(), usegmt=True))]
        return handle.session.push(handle.stream_id, promise, response, b"")

    def control(self, fault: str, args: dict[str, object]) -> Response:
        """The ``--control`` JSON API: ``POST /_control/<fault>`` with the Faults arguments."""
        if fault == "stats":
            stats = {
                "pending": self.pending_messages(),
                "acked": self.acked_count(),
                "subscriptions": len(self.state.subscriptions),
                "sets": len(self.state.sets),
                "monitors": self.monitor_count(),
                "connections": len(self._sessions),
            }
            return Response(200, [("content-type", "application/json")], json.dumps(stats).encode())
        action = getattr(self.faults, fault, None) if not fault.startswith("_") else None
        if fault not in _CONTROL_FAULTS or action is None:
            return text_response(404, "no such fault")
        if "methods" in args and isinstance(args["methods"], list):
            args = {**args, "methods": tuple(args["methods"])}
        try:
            action(**args)
        except (TypeError, ValueError) as exc:
            return text_response(400, f"bad arguments: {exc}")
        self.log.warning("fault injected: %s %s", fault, json.dumps(args, default=str))
        return Response(204)

    # -- fault targets -----------------------------------------------------------------------
    def _fault_drop_connections(self) -> None:
        for session in list(self._sessions):
            session.abort()

    def _fault_goaway(self, last_stream_id: int | None) -> None:
        sessions = list(self._sessions)
        for key, handles in list(self._monitors.items()):
            for h in handles:
                h.session.end_monitor(h.stream_id, 204)
            del self._monitors[key]
        for session in sessions:
            session.goaway(last_stream_id)

    def _fault_expire_sets(self) -> None:
        for set_id in list(self.state.sets):
            members = list(self.state.sets[set_id].members)
            dropped = self.state.delete_set(set_id)
            self.monitors_gone("set", [set_id])
            self.monitors_gone("subscription", members)
            self.messages_dropped(dropped)

    def _fault_invalidate_set_links(self) -> None:
        self.state.make_sets_unjoinable()

    async def _sweeper(self) -> None:
        interval = min(SWEEP_INTERVAL, self.settings.redelivery_after / 2)
        while True:
            await trio.sleep(interval)
            self.sweep()


_CONTROL_FAULTS = frozenset(
    {
        "drop_connections",
        "goaway",
        "reset_pushes",
        "fail_requests",
        "expire_sets",
        "delay_pushes",
        "freeze",
        "invalidate_set_links",
        "hostile",
    }
)


async def _sniff_preface(stream: trio.SocketStream) -> tuple[bool, bytes]:
    """Read until the bytes are or cannot be the HTTP/2 preface; (is_http2, bytes read)."""
    data = b""
    while len(data) < len(H2_PREFACE):
        chunk = await stream.receive_some(len(H2_PREFACE) - len(data))
        if not chunk:
            break
        data += chunk
        if not H2_PREFACE.startswith(data):
            return False, data
    return data == H2_PREFACE, data
