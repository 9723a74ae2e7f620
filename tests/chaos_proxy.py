"""A loopback TCP proxy whose path the chaos driver can cut and restore.

Two ways to cut, as a field network fails:

- ``reset``: every connection is closed at once and new ones are accepted and closed (the peer
  sees EOF/RST at once, like a router that reboots);
- ``blackhole``: connections stay open but nothing is forwarded, new ones are accepted and held
  silent (a dead NAT path: only the gateway's PING keepalive can notice). On restore every
  connection that lived through the cut is closed, as the NAT entry is gone.
"""

from __future__ import annotations

from typing import Literal

import trio

# Bytes moved per read; a push message is a few hundred bytes, an HTTP/2 burst a few KB.
CHUNK = 64 * 1024
# RFC 9113 §3.4: every HTTP/2 client connection starts with this.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CutMode = Literal["reset", "blackhole"]


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port`` until cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_mode: CutMode | None = None
        self._open = trio.Event()
        self._open.set()
        self._connections: set[trio.CancelScope] = set()
        # The first bytes of client connections that did not open with the HTTP/2 preface.
        self.bad_openings: list[bytes] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (``self.port``) and forward until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self, mode: CutMode) -> None:
        """Cut the path (see the module docstring for the two modes)."""
        self.cut_mode = mode
        if self._open.is_set():
            self._open = trio.Event()
        if mode == "reset":
            self._close_all()

    def restore(self) -> None:
        """Forward again; connections that lived through a blackhole are closed."""
        if self.cut_mode == "blackhole":
            self._close_all()
        self.cut_mode = None
        self._open.set()

    def _close_all(self) -> None:
        for scope in list(self._connections):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                await self._relay(client)
            finally:
                self._connections.discard(scope)
        await trio.aclose_forcefully(client)

    async def _relay(self, client: trio.SocketStream) -> None:
        if self.cut_mode == "reset":
            return
        await self._open.wait()  # a blackhole holds new connections silent
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            return  # the service is down: the client sees the connection close
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope, True)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        finally:
            await trio.aclose_forcefully(upstream)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        pair: trio.CancelScope,
        from_client: bool = False,
    ) -> None:
        opening = b""
        try:
            while True:
                data = await source.receive_some(CHUNK)
                if not data:
                    break
                if from_client and len(opening) < len(H2_PREFACE):
                    opening += data
                    if not H2_PREFACE.startswith(opening[: len(H2_PREFACE)]):
                        self.bad_openings.append(opening[:64])
                await self._open.wait()  # blackhole: hold the bytes, forward nothing
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        pair.cancel()  # either side ending ends the pair
