"""The reference RFC 8030 push service: one node, on SQLite alone or beside others on PostgreSQL.

:class:`PushService` wires the parts: the store (:mod:`pushservice.store`) run from worker
threads (:mod:`pushservice.db`), the resources (request -> store calls), delivery to the
monitors this node holds, the sweeper, the PostgreSQL listener, and the connections (HTTP/2
and HTTP/1.1 on one port, optionally TLS, optionally behind a PROXY-protocol balancer).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from fieldgate_common.logs import get_logger
from pushservice.db import Database
from pushservice.delivery import Delivery
from pushservice.faults import Faults
from pushservice.h1session import H1Session
from pushservice.h2session import H2Session
from pushservice.http import ConnectionInfo, MonitorRequest, Request, Response, text_response
from pushservice.metrics import ServiceMetrics
from pushservice.monitors import Monitor, MonitorRegistry
from pushservice.paths import message_path, resource_url, split_path
from pushservice.proxy import ProxyHeaderError, parse_proxy_header
from pushservice.resources import Resources
from pushservice.session_api import PushTarget
from pushservice.settings import SWEEP_BATCH, SWEEP_INTERVAL, ServiceSettings
from pushservice.store import Changes, Store, StoreUnavailable
from pushservice.store_sqlite import SqliteStore
from pushservice.tls import ALPN, ReloadableTls

# The HTTP/2 client connection preface (RFC 9113 §3.4) tells h2 and HTTP/1.1 apart on one port.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A client must finish TLS and send its first bytes within this (seconds); slowloris bound.
HANDSHAKE_TIMEOUT = 10.0
# How often the database is pinged for /healthz (seconds).
HEALTH_INTERVAL = 1.0
# Bytes read at a time while looking for the PROXY header.
PROXY_READ = 536


@dataclass(frozen=True)
class SubscriptionView:
    """One subscription as tests see it: the UA's URL, the AS's push URL, its set URL."""

    subscription_url: str
    push_url: str
    set_url: str
    restricted: bool
    pending: int


def open_store(storage: str | None, *, node: str, threads: int) -> Store:
    """``sqlite:///PATH`` (or a bare path), ``postgresql://...``, or None: SQLite in memory."""
    if storage is None or storage == "sqlite://":
        return SqliteStore(None)
    if storage.startswith(("postgresql://", "postgres://")):
        from pushservice.store_postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(storage, node=node, pool_size=threads)
    return SqliteStore(Path(storage.removeprefix("sqlite://")))


class PushService:
    """An RFC 8030 push service; ``serve()`` it in a nursery, then use ``subscribe_url``.

    ``storage`` is a store URL (``sqlite:///PATH``, ``postgresql://...``); ``state_path`` is the
    older spelling of a SQLite file; neither means SQLite in memory.
    """

    def __init__(
        self,
        settings: ServiceSettings = ServiceSettings(),  # noqa: B008 - frozen, so shared safely
        *,
        state_path: Path | None = None,
        storage: str | None = None,
        control: bool = False,
        clock: Callable[[], float] = time.time,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.log = get_logger("pushservice")
        self.node = secrets.token_hex(4)
        self.metrics = metrics or ServiceMetrics()
        self._storage = (
            storage if storage is not None else (str(state_path) if state_path else None)
        )
        threads = settings.store_threads
        store = open_store(self._storage, node=self.node, threads=threads)
        self.db = Database(store, threads=threads if store.shared else 1, metrics=self.metrics)
        self.metrics.store_up.set(1)
        self.monitors = MonitorRegistry()
        self.faults = Faults(FaultActions(self))
        self.delivery = Delivery(
            self.db,
            self.monitors,
            settings,
            clock,
            self._monitor_origin,
            self.metrics,
            self.log,
            push_delay=lambda: self.faults.push_delay,
        )
        self.resources = Resources(
            self.db,
            settings,
            self.faults,
            self.delivery,
            self.metrics,
            control=self.control if control else None,
        )
        self._sessions: set[H2Session] = set()
        self._connections = 0
        self._busy = 0  # requests being answered (a drain waits for them)
        self._idle = trio.Event()
        self._origin: str | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._connections_scope: trio.CancelScope | None = None
        self.draining = False
        self.listener_up = not store.shared

    # -- public API --------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        """``scheme://host:port`` once started (the public URL when one is configured)."""
        if self._origin is None:
            raise RuntimeError("the push service is not serving yet")
        return (self.settings.public_url or self._origin).rstrip("/")

    @property
    def bound_origin(self) -> str:
        """``scheme://host:port`` this node listens on (behind a balancer: not the public one)."""
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
        tls: ReloadableTls | None = None,
        proxy_protocol: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled or drained; ``task_status.started(bound_port)``."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(ALPN)
        context: Callable[[], ssl.SSLContext | None] = (
            (lambda: tls.current) if tls is not None else (lambda: ssl_context)
        )
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        scheme = "https" if tls is not None or ssl_context is not None else "http"
        self._origin = f"{scheme}://{url_host}:{bound}"
        self.log.info("listening on %s:%d (subscribe at %s)", url_host, bound, self.subscribe_url)
        async with trio.open_nursery() as background:
            await background.start(self.delivery.run)
            background.start_soon(self._sweeper)
            background.start_soon(self._health)
            if self.db.store.shared:
                background.start_soon(self._listen)
            async with trio.open_nursery() as connections:
                self._connections_scope = connections.cancel_scope

                async def handler(stream: trio.SocketStream) -> None:
                    await self._connection(stream, context(), proxy_protocol)

                with trio.CancelScope() as accepting:
                    self._accept_scope = accepting
                    task_status.started(bound)
                    await trio.serve_listeners(handler, listeners, handler_nursery=connections)
            # Drained: the connections ended (or the drain timed out and cancelled them).
            background.cancel_scope.cancel()

    def close(self) -> None:
        """Release the store (the service can be served again until then)."""
        self.db.store.close()

    async def drain(self) -> None:
        """Graceful stop: refuse new connections, GOAWAY (monitors 204), let requests finish."""
        self.draining = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()  # closes the listeners
        self.log.info("draining: %d connections", self._connections)
        self._goaway_all(None)
        with trio.move_on_after(self.settings.drain_timeout):
            while self._sessions or self._busy:
                await self._idle.wait()
        if self._connections_scope is not None:
            self._connections_scope.cancel()  # idle HTTP/1.1 keep-alives, and what overran

    def pending_messages(self, push_url: str | None = None) -> int:
        """Unacknowledged messages, of one push resource or all (blocking: tests, tools)."""
        push_id = None if push_url is None else push_url.rstrip("/").rsplit("/", 1)[-1]
        return self.db.blocking(self.db.store.pending, push_id)

    def pending_message_ids(self) -> list[str]:
        """Ids of the stored messages (blocking: tests, tools)."""
        return self.db.blocking(self.db.store.message_ids)

    def acked_count(self) -> int:
        """Messages acknowledged with DELETE through this node since start."""
        return int(self.metrics.acknowledged.get())

    def subscriptions(self) -> list[SubscriptionView]:
        """Every live subscription (blocking: tests, tools)."""
        o = self.origin
        return [
            SubscriptionView(
                resource_url(o, "subscription", s.id),
                resource_url(o, "push", s.push_id),
                resource_url(o, "set", s.set_id),
                s.vapid_key is not None,
                pending,
            )
            for s, pending in self.db.blocking(self.db.store.subscriptions)
        ]

    def monitor_count(self) -> int:
        """Monitoring GETs currently held open here (subscriptions, sets and receipts)."""
        return len(self.monitors)

    def sweep(self) -> None:
        """Expire and redeliver now (blocking; the background task does it every 0.5 s)."""
        swept = self.db.blocking(
            self.db.store.sweep, self.clock(), self.settings.redelivery_after, SWEEP_BATCH
        )
        self._swept(swept.expired, swept.redelivered, swept.changes)

    def health(self) -> tuple[bool, str]:
        """``(ok, reason)`` for /healthz: the database answers and we are not draining."""
        if self.draining:
            return False, "draining"
        if not self.db.up:
            return False, f"database unavailable: {self.db.last_error}"
        return True, ""

    def status(self) -> dict[str, object]:
        """A small status document for the status endpoint's /status."""
        _, reason = self.health()
        return {
            "node": self.node,
            "origin": self.origin if self._origin else None,
            "connections": self._connections,
            "monitors": len(self.monitors),
            "store": {"up": self.db.up, "shared": self.db.store.shared, "error": reason},
            "listener_up": self.listener_up,
        }

    def render_metrics(self) -> str:
        """Prometheus text for /metrics."""
        return self.metrics.render()

    # -- what sessions need (pushservice.session_api.SessionHost) -----------------------------
    async def request(
        self, session: PushTarget | None, stream_id: int, req: Request
    ) -> Response | None:
        """Answer one request, or start a monitor on ``session``."""
        self._busy += 1
        try:
            result = await self.resources.handle(req, self.clock())
        finally:
            self._done()
        if not isinstance(result, MonitorRequest):
            return result
        if session is None:
            return await self._monitor_over_http1(req, result)
        if self.faults.hostility.answer_monitor(session, stream_id):  # type: ignore[arg-type]
            return None
        if not session.push_enabled:
            return text_response(400, "monitoring needs server push")
        monitor = Monitor(
            session, stream_id, result.kind, result.target_id, req, result.min_urgency
        )
        self.delivery.start_monitor(monitor, wait0=result.wait0)
        return None

    async def _monitor_over_http1(self, req: Request, mon: MonitorRequest) -> Response:
        if mon.kind != "receipt":
            return text_response(400, "monitoring a subscription needs HTTP/2 server push")
        try:
            events = await self.db.call(self.db.store.receipts, mon.target_id)
        except StoreUnavailable:
            return text_response(503, "storage unavailable, try again", [("retry-after", "2")])
        origin = self.resources.origin(req)
        listing = [
            {"message": f"{origin}{message_path(e.message_id)}", "status": e.status}
            for e in events or []
        ]
        return Response(200, [("content-type", "application/json")], json.dumps(listing).encode())

    def is_ack(self, req: Request) -> bool:
        """``DELETE /message/<id>``."""
        return req.method == "DELETE" and split_path(req.path)[0] == "message"

    async def acknowledge(self, requests: list[Request]) -> list[Response]:
        """Several acknowledgements in one store call."""
        self._busy += 1
        try:
            return await self.resources.acknowledge(requests, self.clock())
        finally:
            self._done()

    def _done(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()
            self._idle = trio.Event()

    def stream_reset(self, session: PushTarget, stream_id: int) -> None:
        """A stream ended by the client: a monitor on it ends."""
        self.delivery.stream_reset(session, stream_id)

    def session_closed(self, session: PushTarget) -> None:
        """Forget a finished HTTP/2 session and its monitors."""
        self._sessions.discard(session)
        self.delivery.session_closed(session)
        self._idle.set()
        self._idle = trio.Event()

    def room_for_pushes(self, session: PushTarget) -> None:
        """A session drained its push queue."""
        self.delivery.room_for_pushes(session)

    def monitor_stream_of(self, session: PushTarget) -> int | None:
        """A held monitor stream of ``session``."""
        live = [m for m in self.monitors.of_session(session) if session.stream_open(m.stream_id)]
        return live[0].stream_id if live else None

    def _monitor_origin(self, monitor: Monitor) -> str:
        return self.resources.origin(monitor.request)

    # -- connections -------------------------------------------------------------------------
    async def _connection(
        self, tcp: trio.SocketStream, ssl_context: ssl.SSLContext | None, proxied: bool
    ) -> None:
        stream: trio.abc.Stream = tcp
        self._connections += 1
        self.metrics.connections.set(self._connections)
        try:
            peer = str(tcp.socket.getpeername()[0])  # OSError if the peer is gone already
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                leftover = b""
                if proxied:
                    client, leftover = await _read_proxy_header(tcp)
                    peer = client or peer
                    stream = _Prefixed(tcp, leftover) if leftover else tcp
                if ssl_context is not None:
                    tls = trio.SSLStream(stream, ssl_context, server_side=True)
                    await tls.do_handshake()
                    stream = tls
                    http2, initial = tls.selected_alpn_protocol() == "h2", b""
                else:
                    http2, initial = await _sniff_preface(stream)
            loopback = ipaddress.ip_address(peer.split("%")[0]).is_loopback
            info = ConnectionInfo("https" if ssl_context else "http", loopback, http2, peer=peer)
            if http2:
                session = H2Session(self, stream, info, initial)
                self._sessions.add(session)
                if self.draining:
                    session.goaway(None)
                await session.run()
            else:
                await H1Session(self, stream, info, initial).run()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a client that went away or never spoke; nothing to answer
        except ProxyHeaderError as exc:
            self.log.warning("dropped a connection without a valid PROXY header: %s", exc)
        except Exception:
            # One connection's bug must not take the service down for everyone else.
            self.log.exception("connection failed")
        finally:
            self._connections -= 1
            self.metrics.connections.set(self._connections)
            await trio.aclose_forcefully(stream)

    def _goaway_all(self, last_stream_id: int | None) -> None:
        for monitor in self.monitors.all():
            monitor.session.end_monitor(monitor.stream_id, 204)
            self.delivery.end(monitor)
        for session in list(self._sessions):
            session.goaway(last_stream_id)

    # -- background --------------------------------------------------------------------------
    async def _sweeper(self) -> None:
        interval = min(SWEEP_INTERVAL, self.settings.redelivery_after / 2)
        while True:
            try:
                swept = await self.db.call(
                    self.db.store.sweep, self.clock(), self.settings.redelivery_after, SWEEP_BATCH
                )
            except StoreUnavailable:
                await trio.sleep(interval)
                continue
            self._swept(swept.expired, swept.redelivered, swept.changes)
            if swept.expired < SWEEP_BATCH and swept.redelivered < SWEEP_BATCH:
                await trio.sleep(interval)

    def _swept(self, expired: int, redelivered: int, changes: Changes) -> None:
        self.metrics.expired.inc(expired)
        self.metrics.redelivered.inc(redelivered)
        self.resources.changed(changes)

    async def _health(self) -> None:
        while True:
            was_up = self.db.up
            try:
                await self.db.call(self.db.store.ping)
            except StoreUnavailable as exc:
                if was_up:
                    self.log.error("database unavailable: %s", exc)
            else:
                if not was_up:
                    self.log.info("database available again")
                    self.delivery.resync()
            await trio.sleep(HEALTH_INTERVAL)

    async def _listen(self) -> None:
        from pushservice.store_postgres import Listener

        assert self._storage is not None
        token = trio.lowlevel.current_trio_token()

        def call(fn: Callable[..., None], *args: object) -> None:
            try:
                trio.from_thread.run_sync(fn, *args, trio_token=token)
            except trio.RunFinishedError:
                listener.stop.set()

        listener = Listener(
            self._storage,
            self.node,
            on_changes=lambda changes: call(self.resources.changed, changes),
            on_connected=lambda: call(self._listener_connected),
            on_lost=lambda reason: call(self._listener_lost, reason),
        )

        async def stop_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            finally:
                listener.stop.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_cancel)
            # Not abandoned on cancel: stop_on_cancel sets the flag, the thread sees it within
            # LISTEN_POLL and returns, so no thread outlives the service.
            await trio.to_thread.run_sync(listener.run)
            nursery.cancel_scope.cancel()

    def _listener_connected(self) -> None:
        if not self.listener_up:
            self.log.info("listening for other nodes' notifications")
        self.listener_up = True
        self.delivery.resync()  # what was notified while we were away is lost: re-read

    def _listener_lost(self, reason: str) -> None:
        if self.listener_up:
            self.log.warning("notification listener lost: %s", reason)
        self.listener_up = False

    # -- control API -------------------------------------------------------------------------
    def control(self, fault: str, args: dict[str, object]) -> Response:
        """The ``--control`` JSON API: ``POST /_control/<fault>`` with the Faults arguments."""
        if fault == "stats":
            counts = self.db.blocking(self.db.store.counts)
            stats = {
                "pending": counts.messages,
                "acked": self.acked_count(),
                "subscriptions": counts.subscriptions,
                "sets": counts.sets,
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


class FaultActions:
    """What :class:`~pushservice.faults.Faults` acts on (test tooling: blocking store calls)."""

    def __init__(self, service: PushService) -> None:
        self._service = service

    def drop_connections(self) -> None:
        """Abort every HTTP/2 connection (TCP close, no GOAWAY)."""
        for session in list(self._service._sessions):
            session.abort()

    def goaway(self, last_stream_id: int | None) -> None:
        """Answer monitors 204 and GOAWAY every HTTP/2 connection."""
        self._service._goaway_all(last_stream_id)

    def expire_sets(self) -> None:
        """Delete every set; their monitors get 404."""
        s = self._service
        s.resources.changed(s.db.blocking(s.db.store.delete_all_sets, s.clock()))

    def invalidate_set_links(self) -> None:
        """Existing sets refuse new members."""
        s = self._service
        s.db.blocking(s.db.store.close_sets)


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


class _Prefixed(trio.abc.Stream):
    """A stream that returns some bytes already read before reading on (after a PROXY header)."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_proxy_header(stream: trio.SocketStream) -> tuple[str, bytes]:
    """The client address from a PROXY header, and the bytes read after it."""
    data = b""
    while True:
        chunk = await stream.receive_some(PROXY_READ)
        if not chunk:
            raise ProxyHeaderError("connection closed before the PROXY header")
        data += chunk
        parsed = parse_proxy_header(data)
        if parsed is not None:
            address, length = parsed
            return address, data[length:]


async def _sniff_preface(stream: trio.abc.Stream) -> tuple[bool, bytes]:
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
