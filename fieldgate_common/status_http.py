"""The local status endpoint: HTTP/1.1 (h11) on trio, loopback or a Unix socket only.

``GET /status`` (JSON: the provider's document, e.g. :mod:`gateway.status_schema`), ``GET
/metrics`` (Prometheus text 0.0.4), ``GET /healthz`` (200 ``ok`` / 503 reason) and ``GET /``
(a self-contained HTML page). One request per connection (``Connection: close``): the clients
are a person's browser, ``fieldgate status`` and a Prometheus scraper, none of which needs
keep-alive, and it keeps every connection short-lived. Used by the gateway and by push-service
nodes.

Bad clients never harm the program: a request head over :data:`MAX_REQUEST_HEAD_BYTES` gets
431, a client that does not finish its request within :data:`REQUEST_READ_TIMEOUT` (slowloris) or
does not read its response within :data:`RESPONSE_WRITE_TIMEOUT` is dropped, and at most
:data:`MAX_CONNECTIONS` connections are served at once (the rest get 503 and are closed).
Unless ``allow_remote``, the endpoint binds only loopback addresses, drops non-loopback peers and
answers 403 to a ``Host`` header that is not a loopback name, so a web page cannot read it through
DNS rebinding.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

import h11
import trio

from fieldgate_common.logs import get_logger

log = get_logger("status")

# Request line plus headers. A browser sends under 2 KiB; 16 KiB is the smallest limit among
# common servers (nginx large_client_header_buffers 4x8k, Apache LimitRequestFieldSize 8190 per
# field) and still bounds what one connection can make us buffer.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
# Whole-request deadline from accept to the end of the request head: a local client needs
# milliseconds; 10 s tolerates a browser over a slow SSH tunnel and defeats slowloris, which
# trickles header bytes to hold the connection open forever.
REQUEST_READ_TIMEOUT = 10.0
# A client that does not read the (at most tens of KiB) response within this is dropped.
RESPONSE_WRITE_TIMEOUT = 10.0
# Concurrent connections served. Legitimate use is one browser (6 parallel connections per host
# in Chromium and Firefox), a scraper and a CLI; 16 covers that with room and bounds memory and
# file descriptors (the unit's default LimitNOFILE soft limit is 1024).
MAX_CONNECTIONS = 16
# Pending connections in the kernel's accept queue.
LISTEN_BACKLOG = 16
RECEIVE_CHUNK = 4096
# After answering, we shut down our side and read (and discard) what the client still sends, so
# closing with unread data does not reset the connection before the client reads the answer
# (Apache's "lingering close"). Bounded in time and bytes.
LINGER_TIMEOUT = 1.0
LINGER_MAX_BYTES = 64 * 1024
# Unix socket permissions: only the gateway's user (root can always connect).
UNIX_SOCKET_MODE = 0o600

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
# The page has no scripts, images, fonts or external styles: forbid everything but inline CSS.
HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'"
)

LOOPBACK_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class ListenError(Exception):
    """The endpoint cannot listen at ``[status] listen`` (address in use, no such directory,
    not a loopback address); the message names the address and the reason."""


class StatusProvider(Protocol):
    """What the program (the gateway, a push-service node) hands the endpoint."""

    # The version of the /status document's schema (added to the served document).
    schema_version: int

    def status(self) -> dict[str, object]:
        """The /status document without ``schema`` and ``health`` (the endpoint adds those)."""
        ...

    def metrics(self) -> str:
        """Prometheus text exposition (``Metrics.render()``)."""
        ...

    def health(self) -> tuple[bool, str]:
        """``(ok, reason)``: is the program doing its job, and if not, why."""
        ...

    def page(self, document: dict[str, object]) -> str:
        """The HTML page served at ``/`` for a served /status document."""
        ...


@dataclass(frozen=True)
class Response:
    """One HTTP response, before encoding."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int


@dataclass(frozen=True)
class UnixAddress:
    path: Path


def parse_listen(listen: str) -> TcpAddress | UnixAddress:
    """``"HOST:PORT"``, ``"[V6]:PORT"`` or ``"unix:/path"``; ValueError otherwise."""
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"status listen {listen!r}: the Unix socket path must be absolute")
        return UnixAddress(Path(path))
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"status listen {listen!r}: expected HOST:PORT or unix:/path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"status listen {listen!r}: write IPv6 addresses as [ADDR]:PORT")
    return TcpAddress(host, int(port_text))


def format_tcp_address(host: str, port: int) -> str:
    """``host:port`` with IPv6 addresses bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(address: str) -> bool:
    """Whether an IP address literal is a loopback address (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def client_allowed(peer: object, allow_remote: bool) -> bool:
    """Whether to serve a peer, given ``getpeername()``: Unix peers always, IP peers on loopback
    unless ``allow_remote``."""
    if allow_remote or not isinstance(peer, tuple):
        return True
    return is_loopback(str(peer[0]))


def host_header_allowed(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (defeats DNS rebinding)."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".") in LOOPBACK_HOST_NAMES or is_loopback(name)


def _text(status: int, text: str) -> Response:
    return Response(status, TEXT_CONTENT_TYPE, (text + "\n").encode())


def status_document(provider: StatusProvider) -> dict[str, object]:
    """The served /status document: the provider's plus ``schema`` and ``health``."""
    ok, reason = provider.health()
    document = dict(provider.status())
    document["schema"] = provider.schema_version
    document["health"] = {"ok": ok, "reason": reason}
    return document


def _status_json(provider: StatusProvider) -> Response:
    body = json.dumps(status_document(provider), indent=2, sort_keys=True) + "\n"
    return Response(200, JSON_CONTENT_TYPE, body.encode())


def _metrics(provider: StatusProvider) -> Response:
    return Response(200, METRICS_CONTENT_TYPE, provider.metrics().encode())


def _healthz(provider: StatusProvider) -> Response:
    ok, reason = provider.health()
    return _text(200, "ok") if ok else _text(503, reason or "unhealthy")


def _page(provider: StatusProvider) -> Response:
    html = provider.page(status_document(provider))
    return Response(200, HTML_CONTENT_TYPE, html.encode(), (("Content-Security-Policy", HTML_CSP),))


ROUTES: dict[str, Callable[[StatusProvider], Response]] = {
    "/status": _status_json,
    "/metrics": _metrics,
    "/healthz": _healthz,
    "/": _page,
}


def respond(method: str, target: str, provider: StatusProvider) -> Response:
    """The response to one request (no I/O besides asking the provider).

    A provider that raises gets the client a 500; the server carries on.
    """
    path = target.split("?", 1)[0]
    handler = ROUTES.get(path)
    if handler is None:
        return _text(404, "not found")
    if method not in ("GET", "HEAD"):
        return Response(405, TEXT_CONTENT_TYPE, b"method not allowed\n", (("Allow", "GET, HEAD"),))
    try:
        return handler(provider)
    except Exception as exc:  # the provider is the gateway's code: report, never crash the server
        log.error("status provider failed on %s: %s", path, type(exc).__name__)
        return _text(500, "internal error")


def _encode_head(response: Response) -> h11.Response:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
        *response.headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode("ascii")
    return h11.Response(status_code=response.status, headers=headers, reason=reason)


@dataclass
class _ConnectionGate:
    """Counts connections being served, against :data:`MAX_CONNECTIONS`."""

    limit: int
    active: int = field(default=0)


async def _receive_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The next request head, or None when the client went away first."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_CHUNK))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, method: str, res: Response
) -> None:
    data = conn.send(_encode_head(res)) or b""
    if method != "HEAD" and res.body:
        data += conn.send(h11.Data(data=res.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.move_on_after(RESPONSE_WRITE_TIMEOUT):
        await stream.send_all(data)
        await _linger(stream)


async def _linger(stream: trio.SocketStream) -> None:
    await stream.send_eof()
    discarded = 0
    with trio.move_on_after(LINGER_TIMEOUT):
        while discarded < LINGER_MAX_BYTES:
            chunk = await stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return
            discarded += len(chunk)


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _serve_one(
    stream: trio.SocketStream, provider: StatusProvider, allow_remote: bool, check_host: bool
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    request: h11.Request | None = None
    error: Response | None = None
    with trio.move_on_after(REQUEST_READ_TIMEOUT):
        try:
            request = await _receive_request(stream, conn)
        except h11.RemoteProtocolError as exc:
            error = _text(exc.error_status_hint, "bad request")
    if error is not None:
        if conn.our_state is h11.IDLE:
            await _send(stream, conn, "GET", error)
        return
    if request is None:
        return  # timed out or closed before a full request: nothing to say
    method = request.method.decode("ascii", "replace")
    target = request.target.decode("ascii", "replace")
    host = _header(request, b"host")
    if check_host and not allow_remote and host is not None and not host_header_allowed(host):
        response = _text(403, "forbidden: not a loopback Host")
    else:
        response = respond(method, target, provider)
    await _send(stream, conn, method, response)


async def _handle(
    stream: trio.SocketStream,
    provider: StatusProvider,
    gate: _ConnectionGate,
    allow_remote: bool,
    check_host: bool,
) -> None:
    try:
        if not client_allowed(stream.socket.getpeername(), allow_remote):
            log.debug("dropped a connection from a non-loopback peer")
            return
        if gate.active >= gate.limit:
            conn = h11.Connection(h11.SERVER)
            await _send(stream, conn, "GET", _text(503, "busy"))
            return
        gate.active += 1
        try:
            await _serve_one(stream, provider, allow_remote, check_host)
        finally:
            gate.active -= 1
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away; nothing to clean up beyond closing
    except Exception as exc:  # one bad connection must never take the endpoint down
        log.error("status connection failed: %s", type(exc).__name__)
    finally:
        with trio.move_on_after(0):
            await stream.aclose()


async def _tcp_listener(address: TcpAddress, allow_remote: bool) -> tuple[trio.SocketListener, str]:
    infos = await trio.socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"status listen: cannot resolve {address.host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    if not allow_remote and not is_loopback(str(sockaddr[0])):
        raise ValueError(
            f"status listen {address.host!r} is not a loopback address; set status.allow_remote "
            "to serve other hosts"
        )
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()
    return trio.SocketListener(sock), format_tcp_address(str(bound[0]), int(bound[1]))


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST, "status socket path exists and is not a socket", str(path)
        )
    path.unlink()


async def _unix_listener(address: UnixAddress) -> tuple[trio.SocketListener, str]:
    path = address.path
    _remove_stale_socket(path)
    # Bind under a temporary name, restrict it, then rename: the socket is never reachable with
    # the umask's (possibly wider) permissions.
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    _remove_stale_socket(staging)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(staging))
        os.chmod(staging, UNIX_SOCKET_MODE)
        os.rename(staging, path)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    return trio.SocketListener(sock), f"unix:{path}"


async def serve_status(
    listen: str,
    provider: StatusProvider,
    *,
    allow_remote: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status endpoint until cancelled.

    ``listen`` is ``"HOST:PORT"`` (port 0 picks a free one) or ``"unix:/path"`` (a 0600 socket,
    removed on exit). ``task_status.started()`` gets the bound address in the same notation.
    Raises :class:`ListenError` when it cannot listen there (in use, a missing directory, a
    malformed or, without ``allow_remote``, non-loopback address).
    """
    try:
        address = parse_listen(listen)
        if isinstance(address, UnixAddress):
            listener, bound = await _unix_listener(address)
        else:
            listener, bound = await _tcp_listener(address, allow_remote)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ListenError(f"cannot listen on {listen}: {reason}") from None
    check_host = isinstance(address, TcpAddress)
    gate = _ConnectionGate(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, provider, gate, allow_remote, check_host)

    log.info("status endpoint on %s", bound)
    try:
        async with listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            task_status.started(bound)
    finally:
        if isinstance(address, UnixAddress):
            address.path.unlink(missing_ok=True)
