"""One HTTP/2 connection to an RFC 8030 push service: socket, TLS, I/O and keepalive.

The protocol is :class:`~gateway.webpush.useragent.UserAgentProtocol` (sans-IO); this module
owns the socket and the tasks of one connection: a reader, a writer, the keepalive (PING when
the line has been quiet for an interval; no answer within the next one means a dead path), the
monitors of the subscription sets (``Prefer: wait=0`` first), and GOAWAY draining. Everything
else is reported to the :class:`~gateway.upstream.contract.Hub`: pushed messages, finished
acknowledgements, sets the service expired.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import trio

from fieldgate_common.backoff import Backoff
from fieldgate_common.logs import get_logger, redact_url
from gateway.config import PushConfig, RouteConfig
from gateway.http1 import open_service_stream
from gateway.store import SubscriptionRecord
from gateway.upstream.contract import (
    Ack,
    Ended,
    Hub,
    NewSubscription,
    Pushed,
    SubscribeFailed,
)
from gateway.upstream.feeding import feed_until_closed
from gateway.upstream.instruments import UpstreamInstruments
from gateway.webpush import useragent as ua

log = get_logger("rfc8030")

# GOAWAY: how long the old connection may take to finish its streams once the next one is open.
GOAWAY_GRACE = 30.0
# A held monitoring GET that ends sooner than this is suspicious: re-issued with backoff.
MIN_MONITOR_HOLD = 1.0
# Re-monitoring after a 5xx without Retry-After, or after the service reset the GET.
REMONITOR_FLOOR = 1.0


class SessionEnded(Exception):
    """Why a connection ended (the text goes to the log and the status page)."""


def describe(exc: BaseException) -> str:
    """A one-line reason for a network failure, with the root cause trio wraps inside (an
    exception group is reduced to its first member: one failure, one line)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 3:
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        text = str(seen).strip()
        parts.append(f"{type(seen).__name__}: {text}" if text else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


@dataclass
class _Pending:
    """A request whose answer a task is waiting for."""

    done: trio.Event
    result: ua.Event | None = None


class Http2Connection:
    """One HTTP/2 connection and the tasks that serve it (see the module docstring)."""

    def __init__(
        self,
        push: PushConfig,
        hub: Hub,
        instruments: UpstreamInstruments,
        *,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(push.service)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.push = push
        self.hub = hub
        self._m = instruments
        self._rng = rng or random.Random()
        self.proto = ua.UserAgentProtocol(self.origin, max_body=push.max_message_bytes)
        self.replace_wanted = trio.Event()  # set when the supervisor should open the next one
        self.ended: Ended | None = None
        self._goaway = False
        self._closed = False
        self._established_setup = False
        self._retry_after: float | None = None
        self._wake_writer = trio.Event()
        self._pending: dict[int, _Pending] = {}
        self._acks: dict[int, str] = {}  # request id -> push message URL
        self._last_received = time.monotonic()
        self._frames_seen = 0
        self._pong = trio.Event()
        self._monitors: dict[int, str] = {}
        self._monitor_started: dict[int, tuple[float, bool]] = {}
        self._quick_monitor_ends: dict[str, Backoff] = {}
        self._pushes_refused_seen = 0
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._drained = trio.Event()
        self._flushed = trio.Event()
        self._established = trio.Event()
        self._closing = False
        self.monitored: set[str] = set()  # set (or subscription) URLs with a monitor

    # ------------------------------------------------------------------ Connection protocol

    @property
    def usable(self) -> bool:
        """True while new requests may be sent here."""
        return not self._closed and not self._goaway and self._established.is_set()

    def send_acks(self, acks: Sequence[Ack]) -> None:
        """A DELETE per message (RFC 8030 §6.2); the codes mean nothing to HTTP."""
        for ack in acks:
            self._acks[self.proto.acknowledge(ack.key)] = ack.key
        self._flush()

    async def subscribe(
        self, route: RouteConfig, known: Sequence[SubscriptionRecord]
    ) -> NewSubscription | SubscribeFailed:
        """POST to the service, joining the set the other routes are in (RFC 8030 §4.1)."""
        set_url = next((record.set_url for record in known if record.set_url), None)
        for _attempt in range(2):
            result = await self._request(
                partial(
                    self.proto.subscribe,
                    self.push.service,
                    set_url=set_url,
                    vapid_key=route.vapid_public_key,
                    tag=route.name,
                )
            )
            if isinstance(result, ua.Subscribed):
                monitor_url = result.set_url or result.subscription_url
                if self._established_setup and monitor_url not in self._monitors.values():
                    self._start_monitor(monitor_url, wait0=True)
                return NewSubscription(result.subscription_url, result.push_url, result.set_url)
            if isinstance(result, ua.SubscribeFailed) and result.set_rejected and set_url:
                log.warning(
                    "the push service refused set %s: subscribing without it", redact_url(set_url)
                )
                set_url = None
                continue
            if isinstance(result, ua.SubscribeFailed):
                return SubscribeFailed(result.reason, result.retry_after)
            return SubscribeFailed("connection lost")
        return SubscribeFailed("the push service refused the set and the request without it")

    async def unsubscribe(self, record: SubscriptionRecord) -> bool:
        """DELETE the subscription (RFC 8030 §7.3); 404/410 mean it was gone already."""
        result = await self._request(partial(self.proto.unsubscribe, record.subscription_url))
        return isinstance(result, ua.UnsubscribeCompleted) and (
            200 <= result.status < 300 or result.status in (404, 410)
        )

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
        except SessionEnded as exc:
            self._end(str(exc))
        finally:
            self._closed = True
            self._end("connection closed")
            for pending in self._pending.values():
                pending.done.set()
            self.hub.closed(self)

    def _end(self, error: str, *, retry_after: float | None = None) -> None:
        if retry_after is not None:
            self._retry_after = retry_after
        if self.ended is None:
            self.ended = Ended(
                error,
                retry_after=self._retry_after,
                goaway=self._goaway,
                established=self._established_setup,
            )
        self._closed = True
        self.replace_wanted.set()
        if self._cancel is not None:
            self._cancel.cancel()

    def _flush(self) -> None:
        self._wake_writer.set()

    async def _open(self) -> trio.abc.Stream:
        stream = await open_service_stream(
            self.push.service, self.push.ca_file, secure="https", plain="http", alpn=["h2"],
            refuse=SessionEnded,
        )  # fmt: skip
        if isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() != "h2":
            await stream.aclose()
            host = urlsplit(self.push.service).hostname or ""
            raise SessionEnded(f"{host} did not agree to HTTP/2 (ALPN)")
        return stream

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        # Every failure of a connection's task ends the connection with a reason, never the
        # process: the supervisor opens the next one.
        try:
            await task()
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(describe(exc))
        except (SessionEnded, ua.ProtocolViolation) as exc:
            self._end(str(exc))
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
            data = self.proto.data_to_send()
            if data:
                await stream.send_all(data)
            if self._closing:
                self._flushed.set()

    async def _reader(self, stream: trio.abc.Stream) -> None:
        await feed_until_closed(stream, self._received)

    def _received(self, data: bytes) -> None:
        events = self.proto.receive_data(data)
        if events or self.proto.frames_received != self._frames_seen:
            # Liveness is whole frames, not bytes: a peer trickling one byte at a time
            # (slow-loris) never completes a PING answer and is found dead.
            self._frames_seen = self.proto.frames_received
            self._last_received = time.monotonic()
        for event in events:
            self._dispatch(event)
        self._flush()
        self._check_drained()
        if self.proto.established:
            self._established.set()
        refused = self.proto.pushes_refused
        if refused != self._pushes_refused_seen:
            if self._pushes_refused_seen == 0:
                log.warning("the push service promised more pushes than allowed: refusing")
            self._m.pushes_refused.inc(refused - self._pushes_refused_seen)
            self._pushes_refused_seen = refused

    async def _keepalive(self) -> None:
        # Traffic counts as liveness; only a quiet line is pinged, so an idle gateway wakes once
        # per interval. No answer within the next interval: the path is dead.
        interval = self.push.keepalive
        seen_pushes: frozenset[int] = frozenset()
        while True:
            await trio.sleep(interval)
            # A pushed message still incomplete one interval after it was first seen has
            # stalled (a body that never ends): reset it, the service redelivers it.
            now_open = self.proto.open_pushes()
            stalled = self.proto.cancel_pushes(seen_pushes & now_open)
            if stalled:
                log.warning("reset %d pushed message(s) that stalled for %g s", stalled, interval)
                self._flush()
            seen_pushes = now_open - seen_pushes
            if time.monotonic() - self._last_received < interval:
                continue
            self._pong = trio.Event()
            self.proto.ping(os.urandom(8))
            self._flush()
            with trio.move_on_after(interval):
                await self._pong.wait()
                continue
            self._end(f"no answer to PING within {interval:g} s")

    # -------------------------------------------------------------------------- dispatch

    def _dispatch(self, event: ua.Event) -> None:
        if isinstance(event, ua.MessageReceived):
            self.hub.pushed(
                Pushed(
                    event.message_url,
                    event.push_url,
                    event.set_url,
                    event.headers,
                    event.body,
                    event.content_encoding,
                )
            )
        elif isinstance(event, ua.MessageRefused):
            self.hub.pushed(
                Pushed(
                    event.message_url,
                    event.push_url,
                    None,
                    event.headers,
                    b"",
                    None,
                    refused=event.reason,
                    detail=event.detail,
                )
            )
        elif isinstance(event, ua.AckCompleted):
            url = self._acks.pop(event.request_id, event.message_url)
            if not event.ok:
                # The service keeps the message and redelivers it; the dedupe record answers.
                self._m.ack_failed.inc()
                log.warning("DELETE of a push message answered %d", event.status)
            self.hub.acked(url, event.ok)
        elif isinstance(event, ua.PingAcknowledged):
            self._pong.set()
        elif isinstance(event, ua.MonitorEnded):
            self._monitor_ended(event)
        elif isinstance(event, ua.GoAway):
            self._on_goaway(event)
        elif isinstance(event, ua.ConnectionClosed):
            self._end(event.reason)
        elif isinstance(event, ua.RequestReset) and event.kind == "monitor":
            self._monitors.pop(event.request_id, None)
            self._remonitor(event.url, delay=REMONITOR_FLOOR)
        elif isinstance(event, ua.RequestReset) and event.kind == "ack":
            self._m.ack_failed.inc()
            self.hub.acked(self._acks.pop(event.request_id, event.url), False)
        if isinstance(
            event, ua.Subscribed | ua.SubscribeFailed | ua.UnsubscribeCompleted | ua.RequestReset
        ):
            pending = self._pending.pop(event.request_id, None)
            if pending is not None:
                pending.result = event
                pending.done.set()

    def _on_goaway(self, event: ua.GoAway) -> None:
        self._goaway = True
        level = log.info if event.error_code == 0 else log.warning
        level("GOAWAY from the push service (error %d) %s", event.error_code, event.detail)
        unsent = self.proto.take_unsent_acks(event.last_stream_id)
        for request_id in [r for r, url in self._acks.items() if url in set(unsent)]:
            del self._acks[request_id]
        self.replace_wanted.set()
        self.hub.detach(self, unsent)
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, self._drain)

    async def _drain(self) -> None:
        # Let acks and pushes in flight finish, within a bound, then close.
        self._check_drained()
        with trio.move_on_after(GOAWAY_GRACE):
            await self._drained.wait()
        self.proto.close()
        self._closing = True
        self._flush()
        with trio.move_on_after(1.0):
            await self._flushed.wait()
        self._end("drained after GOAWAY")

    def _check_drained(self) -> None:
        if self._goaway and not self.proto.has_pending_work():
            self._drained.set()

    # --------------------------------------------------------------------------- monitors

    def _monitor_ended(self, event: ua.MonitorEnded) -> None:
        self._monitors.pop(event.request_id, None)
        started, wait0 = self._monitor_started.pop(event.request_id, (0.0, False))
        if self._goaway:
            return
        if event.status in (200, 204):
            # A held GET that the service ends at once, again and again, must not become a
            # busy loop: back off unless it was held a while (a wait=0 drain ends at once).
            quick = not wait0 and time.monotonic() - started < MIN_MONITOR_HOLD
            backoff = self._quick_monitor_ends.setdefault(
                event.url,
                Backoff(
                    REMONITOR_FLOOR, max(REMONITOR_FLOOR, self.push.backoff_cap), rng=self._rng
                ),
            )
            if not quick:
                backoff.reset()
            self._remonitor(event.url, delay=backoff.next_delay() if quick else 0.0)
        elif 400 <= event.status < 500:
            # RFC 8030 §7.3.1: the service expired the set and every subscription in it.
            log.warning(
                "the push service expired %s (HTTP %d): re-subscribing",
                redact_url(event.url),
                event.status,
            )
            self.monitored.discard(event.url)
            url = event.url
            assert self._nursery is not None
            self._nursery.start_soon(
                self._guarded,
                partial(
                    self.hub.lost,
                    lambda record: url in (record.set_url, record.subscription_url),
                    f"the push service expired a subscription set (HTTP {event.status})",
                ),
            )
        else:
            delay = max(REMONITOR_FLOOR, event.retry_after or 0.0)
            log.warning("monitoring answered %d; again in %.0f s", event.status, delay)
            self._remonitor(event.url, delay=delay)

    def _remonitor(self, url: str, *, delay: float = 0.0, wait0: bool = False) -> None:
        if delay <= 0:
            self._start_monitor(url, wait0=wait0)
            return
        assert self._nursery is not None

        async def later() -> None:
            await trio.sleep(delay)
            if self.usable:
                self._start_monitor(url, wait0=wait0)

        self._nursery.start_soon(later)

    def _start_monitor(self, url: str, *, wait0: bool) -> None:
        if url in self._monitors.values():
            return
        request_id = self.proto.monitor(url, urgency=self.push.urgency, wait0=wait0)
        self._monitors[request_id] = url
        self._monitor_started[request_id] = (time.monotonic(), wait0)
        self.monitored.add(url)
        self._flush()

    # ----------------------------------------------------------------------------- setup

    async def _request(self, send: Callable[[], int]) -> ua.Event | None:
        request_id = send()
        pending = _Pending(trio.Event())
        self._pending[request_id] = pending
        self._flush()
        await pending.done.wait()
        return pending.result

    async def _setup(self) -> None:
        # Connected means the service answered our preface, not merely that TCP is up: a
        # service that accepts connections and then says nothing is not a working upstream.
        with trio.move_on_after(self.push.connect_timeout):
            await self._established.wait()
        if not self._established.is_set():
            raise SessionEnded(
                f"no HTTP/2 SETTINGS from the push service within {self.push.connect_timeout:g} s"
            )
        await self.hub.attach(self)  # owed acks go out, subscriptions are synced
        sets = {record.set_url or record.subscription_url for record in self.hub.records()}
        for url in sorted(sets):
            self._start_monitor(url, wait0=True)
        self._established_setup = True
        self.hub.connected(self, f"monitoring {len(sets)} set(s)")
