"""The contracts between connections and the service, so neither imports the other.

:class:`SessionHost` is what an HTTP/1.1 or HTTP/2 connection needs from the service;
:class:`PushTarget` is what delivery needs from an HTTP/2 connection that holds monitors;
:class:`HostileSession` is what the hostile behaviours (:mod:`pushservice.hostile`) drive;
:class:`SessionFaults` is the fault switches a connection obeys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import h2.connection
import trio

from pushservice.http import Request, Response
from pushservice.settings import ServiceSettings

Headers = list[tuple[str, str]]


class PushTarget(Protocol):
    """An HTTP/2 connection that monitors are held on (implemented by H2Session)."""

    closed: bool
    goaway_sent: bool

    @property
    def push_enabled(self) -> bool:
        """Whether the client accepts server push."""
        ...

    def stream_open(self, stream_id: int) -> bool:
        """Whether a monitor stream can still carry pushes."""
        ...

    def push(
        self,
        parent: int,
        promise: Headers,
        response: Headers,
        body: bytes,
        on_withdrawn: Callable[[], None] | None = None,
    ) -> bool:
        """Queue one server push on ``parent``; False if that stream cannot push any more."""
        ...

    def respond(self, stream_id: int, response: Response) -> None:
        """Send a complete response on a stream (ignored if the stream is gone)."""
        ...

    def end_monitor(self, stream_id: int, status: int) -> None:
        """Finish a monitoring GET with ``status``."""
        ...

    def push_backlog(self) -> int:
        """Pushes queued and not yet promised."""
        ...

    async def pushes_promised(self, parent: int) -> None:
        """Return once every push queued on ``parent`` was promised (or the stream is gone)."""
        ...

    async def push_room(self) -> None:
        """Return once the push queue is short again (backpressure for large drains)."""
        ...

    def goaway(self, last_stream_id: int | None) -> None:
        """Refuse new streams and close once the open ones are done."""
        ...

    def abort(self) -> None:
        """Stop at once (the caller's task closes the socket)."""
        ...


class HostileSession(Protocol):
    """What a hostile behaviour drives (implemented by H2Session)."""

    conn: h2.connection.H2Connection
    stream: trio.abc.Stream
    closed: bool

    def stream_open(self, stream_id: int) -> bool: ...
    def respond(self, stream_id: int, response: Response) -> None: ...
    def end_monitor(self, stream_id: int, status: int) -> None: ...
    async def send_raw(self, data: bytes) -> None: ...
    def monitor_stream(self) -> int | None:
        """A held-open monitoring GET on this connection, if any."""
        ...


class HostileHooks(Protocol):
    """The hostile behaviour switch as connections see it (Hostility implements it)."""

    async def send(self, session: HostileSession, data: bytes) -> None: ...
    def answer_monitor(self, session: HostileSession, stream_id: int) -> bool: ...
    async def act(self, session: HostileSession) -> None: ...


class SessionFaults(Protocol):
    """The fault switches every connection obeys (Faults implements it)."""

    @property
    def hostility(self) -> HostileHooks: ...

    async def wait_thawed(self) -> None: ...
    def take_reset(self) -> bool: ...


class SessionHost(Protocol):
    """What a connection needs from the service (PushService implements it)."""

    settings: ServiceSettings
    log: logging.Logger
    draining: bool  # stopping: HTTP/1.1 connections close after their current request

    @property
    def faults(self) -> SessionFaults: ...

    def clock(self) -> float: ...

    async def request(
        self, session: PushTarget | None, stream_id: int, req: Request
    ) -> Response | None:
        """Answer one request; None when it became a monitor on ``session`` (HTTP/2).

        Over HTTP/1.1 (``session`` None) a receipt monitor is answered with the receipts so far
        as JSON, and other monitors with 400.
        """
        ...

    async def acknowledge(self, requests: list[Request]) -> list[Response]:
        """Answer several ``DELETE /message/..`` at once (one database round trip)."""
        ...

    def is_ack(self, req: Request) -> bool:
        """Whether a request acknowledges a message (they are answered in batches)."""
        ...

    def stream_reset(self, session: PushTarget, stream_id: int) -> None:
        """The peer reset a stream (a monitor on it ends)."""
        ...

    def session_closed(self, session: PushTarget) -> None:
        """An HTTP/2 connection finished."""
        ...

    def room_for_pushes(self, session: PushTarget) -> None:
        """A connection's push queue drained below its low-water mark."""
        ...

    def monitor_stream_of(self, session: PushTarget) -> int | None:
        """A held monitor stream of ``session``, if any."""
        ...
