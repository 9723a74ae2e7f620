"""The autopush test double: one trio process serving user agents (WebSocket) and application
servers (HTTP/1.1 ``POST`` to the endpoints), on one port or two.

Rules (autopush-rs defaults, see :mod:`.settings`): ``hello`` within 5 s; a uaid is minted by
the first ``hello`` and kept once a channel is registered; a ``hello`` with an unknown uaid gets
a new one (the reset signal); notifications go straight to a connected uaid, else they are
stored (``TTL: 0`` is then dropped, a ``Topic`` replaces the stored message of that topic) and
sent after the next ``hello`` in batches of 10, the next batch once the last is acknowledged;
unacknowledged messages come again on the next connection; more than 150 stored messages in one
session drop the uaid (senders get 410). Unlike autopush, a message accepted for a connected
client is written to storage before it is sent, so a killed service loses nothing it answered
201 for: a loss in a chaos test is the client's.

Control: the Python methods below, and with ``control=True`` ``POST /_control/<action>`` (JSON
in and out, loopback peers only) on the endpoint port: ``stats``, ``endpoints``,
``reset_uaid {"uaid"}``, ``drop_connections``, ``close_with {"code", "reason"}``, ``ignore_acks
{"on"}`` (the attribute :attr:`AutopushService.ignore_acks`: a fault for crash tests).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import trio

from pushservice.autopush.endpoint import (
    EndpointError,
    HttpRequest,
    HttpResponse,
    PushRequest,
    parse_push,
)
from pushservice.autopush.host import Counters
from pushservice.autopush.http1 import Http1Session, is_websocket_upgrade, read_head, text_response
from pushservice.autopush.session import CLOSE_NORMAL, WebSocketSession
from pushservice.autopush.settings import HANDSHAKE_TIMEOUT, AutopushSettings
from pushservice.autopush.state import AutopushState, Store, StoredMessage, TokenInfo, User, new_id
from pushservice.autopush.state import key_hash as hash_key

Role = Literal["websocket", "endpoint", "both"]
# Close code 4774: "do not reconnect automatically" (Firefox's kBACKOFF_WS_STATUS_CODE).
BACKOFF_CLOSE_CODE = 4774
CONTROL_PREFIX = "/_control/"
# A control request body is a small JSON object.
MAX_CONTROL_BODY = 4096


@dataclass(frozen=True)
class AutopushStats:
    """A snapshot: the counters (a copy) and the current sizes."""

    counters: Counters
    connected: int  # uaids with an identified connection
    users: int  # uaid records
    stored_now: int  # messages stored, in flight ones included


@dataclass(frozen=True)
class IssuedEndpoint:
    """One ``pushEndpoint`` handed out (capability URLs: for tests and the demo only)."""

    uaid: str
    channel_id: str
    endpoint: str
    restricted: bool


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class AutopushService:
    """``await nursery.start(service.serve)``; then ``ws_url`` is where user agents connect."""

    def __init__(
        self,
        settings: AutopushSettings = AutopushSettings(),  # noqa: B008 - frozen, shared safely
        *,
        state_path: Path | None = None,
        control: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.control_enabled = control
        self.log = logging.getLogger("pushservice.autopush")
        self.state = AutopushState(Store(state_path) if state_path is not None else None)
        self.counters = Counters()
        self.sessions: dict[str, WebSocketSession] = {}  # identified sessions by uaid
        self._all: set[WebSocketSession] = set()
        self._issued: list[IssuedEndpoint] = []
        self._ws_url: str | None = None
        self._public_url: str | None = None
        # A fault for crash tests: acknowledgements are read and dropped, so everything sent
        # stays unacknowledged (as if the gateway died between its commit and its ack).
        self.ignore_acks = False

    # -- addresses ---------------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        """``ws://host:port/`` (``wss`` with TLS) once serving."""
        if self._ws_url is None:
            raise RuntimeError("the autopush double is not serving yet")
        return self._ws_url

    @property
    def public_url(self) -> str:
        """The origin endpoints are minted under (and VAPID ``aud`` must name)."""
        if self._public_url is None:
            raise RuntimeError("the autopush double is not serving yet")
        return self._public_url

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        endpoint_port: int | None = None,
        endpoint_host: str | None = None,
        public_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(ws_url)``.

        Without ``endpoint_port`` one listener serves both sides (an upgrade request is a user
        agent, anything else an application server).
        """
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1"])
        ws_listeners = await trio.open_tcp_listeners(port, host=host)
        ep_listeners = None
        if endpoint_port is not None:
            ep_listeners = await trio.open_tcp_listeners(endpoint_port, host=endpoint_host or host)
        scheme = "wss" if ssl_context else "ws"
        ws_port = ws_listeners[0].socket.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        self._ws_url = f"{scheme}://{url_host}:{ws_port}/"
        ep_port = ep_listeners[0].socket.getsockname()[1] if ep_listeners else ws_port
        ep_host = endpoint_host or host
        ep_host = f"[{ep_host}]" if ":" in ep_host else ep_host
        default_public = f"{'https' if ssl_context else 'http'}://{ep_host}:{ep_port}"
        parts = urlsplit(public_url or default_public)
        self._public_url = f"{parts.scheme}://{parts.netloc}"
        self.log.info(
            "autopush double: user agents at %s, endpoints under %s", self._ws_url, self._public_url
        )
        try:
            async with trio.open_nursery() as nursery:
                role: Role = "both" if ep_listeners is None else "websocket"
                nursery.start_soon(
                    partial(
                        trio.serve_listeners,
                        partial(self._connection, role=role, ssl_context=ssl_context),
                        ws_listeners,
                        handler_nursery=nursery,
                    )
                )
                if ep_listeners is not None:
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            partial(self._connection, role="endpoint", ssl_context=ssl_context),
                            ep_listeners,
                            handler_nursery=nursery,
                        )
                    )
                task_status.started(self._ws_url)
        finally:
            self.state.close()

    async def _connection(
        self, tcp: trio.SocketStream, *, role: Role, ssl_context: ssl.SSLContext | None
    ) -> None:
        loopback = _is_loopback(tcp.socket.getpeername()[0])
        stream: trio.abc.Stream = tcp
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if ssl_context is not None:
                    stream = trio.SSLStream(tcp, ssl_context, server_side=True)
                    await stream.do_handshake()
                head = await read_head(stream)
            if not head:
                return
            upgrade = is_websocket_upgrade(head)
            if upgrade and role != "endpoint":
                session = WebSocketSession(self, stream, head)
                self._all.add(session)
                self.counters.connections += 1
                try:
                    await session.run()
                finally:
                    self._session_ended(session)
            elif not upgrade and role != "websocket":
                too_large = EndpointError(413, 104, "Payload too large").response()
                await Http1Session(
                    stream,
                    head,
                    self.handle_http,
                    max_body=max(self.settings.max_data_bytes, MAX_CONTROL_BODY),
                    peer_is_loopback=loopback,
                    too_large=too_large,
                ).run()
            else:
                await Http1Session(
                    stream,
                    head,
                    lambda _: text_response(404, "not here"),
                    max_body=0,
                    peer_is_loopback=loopback,
                ).run()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a client that went away or never spoke
        except Exception:
            # One connection's bug must not take the service down for everyone else.
            self.log.exception("autopush double: a connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    def _session_ended(self, session: WebSocketSession) -> None:
        # Unacknowledged messages stay stored: the next connection gets them again.
        self._all.discard(session)
        if session.uaid is not None and self.sessions.get(session.uaid) is session:
            del self.sessions[session.uaid]

    # -- used by the sessions ----------------------------------------------------------------
    def lookup_user(self, uaid: str | None, now: float) -> User | None:
        """A live user record; one idle for longer than ``max_user_idle`` is dropped first."""
        user = self.state.users.get(uaid or "")
        if user is not None and now - user.connected_at > self.settings.max_user_idle:
            self.drop_user(user.uaid)
            return None
        return user

    def drop_user(self, uaid: str) -> None:
        """Forget a uaid, its channels and messages (its endpoints answer 410 from now on)."""
        if uaid in self.state.users:
            self.counters.users_dropped += 1
        self.state.drop_user(uaid)

    def mint_endpoint(self, uaid: str, channel_id: str, raw_key: bytes | None) -> str:
        """A ``pushEndpoint``: ``/wpush/v1/<token>``, or ``v2`` when registered with a key."""
        key_hash = hash_key(raw_key) if raw_key is not None else None
        version, token = self.state.tokens.mint(TokenInfo(uaid, channel_id, key_hash))
        endpoint = f"{self.public_url}/wpush/{version}/{token}"
        self._issued.append(IssuedEndpoint(uaid, channel_id, endpoint, raw_key is not None))
        return endpoint

    # -- the endpoint side -------------------------------------------------------------------
    def handle_http(self, req: HttpRequest) -> HttpResponse:
        """Route one HTTP request of an application server (or of the control API)."""
        path = req.target.split("?", 1)[0]
        if path.startswith(CONTROL_PREFIX):
            return self._control(req, path[len(CONTROL_PREFIX) :])
        if path.startswith("/wpush/"):
            if req.method != "POST":
                return text_response(405, "push with POST")
            parsed = parse_push(
                req,
                tokens=self.state.tokens,
                audience=self.public_url,
                now=self.clock(),
                max_data=self.settings.max_data_bytes,
                max_ttl=self.settings.max_ttl,
            )
            if isinstance(parsed, EndpointError):
                self.counters.rejected += 1
                return parsed.response()
            return self.push(parsed)
        if path.startswith("/m/") and req.method == "DELETE":
            return self._cancel(path[len("/m/") :])
        if path == "/health" and req.method == "GET":
            return HttpResponse(200, (("content-type", "application/json"),), b'{"status":"OK"}')
        return EndpointError(404, None, "Not Found").response()

    def push(self, p: PushRequest) -> HttpResponse:
        """Accept a checked push: deliver it to the connected uaid, or store it."""
        now = self.clock()
        user = self.lookup_user(p.token.uaid, now)
        if user is None or p.token.channel_id not in user.channels:
            self.counters.rejected += 1
            return EndpointError(410, 106, "No such subscription").response()
        m = StoredMessage(
            new_id(),
            user.uaid,
            p.token.channel_id,
            p.data,
            p.headers,
            now,
            p.ttl,
            p.topic,
            self.state.next_seq(),
        )
        session = self.sessions.get(user.uaid)
        live = session is not None and session.accepting()
        if p.ttl > 0:
            self.state.store(m)  # before sending: nothing answered 201 is lost
        if live:
            assert session is not None
            session.deliver(m)
        elif p.ttl == 0:
            self.counters.dropped_ttl0 += 1  # routers/webpush.rs: TTL 0, not delivered, dropped
        else:
            self.counters.stored += 1
        self.counters.accepted += 1
        headers = (("location", f"{self.public_url}/m/{m.version}"), ("ttl", str(p.ttl)))
        return HttpResponse(201, headers)

    def _cancel(self, version: str) -> HttpResponse:
        """``DELETE /m/<id>``: withdraw a message not yet acknowledged (204 either way)."""
        for uaid, messages in list(self.state.messages.items()):
            if version in messages:
                self.state.delete(uaid, version)
                break
        return HttpResponse(204)

    # -- control -----------------------------------------------------------------------------
    def stats(self) -> AutopushStats:
        """Counters and current sizes."""
        return AutopushStats(
            replace(self.counters),
            connected=len(self.sessions),
            users=len(self.state.users),
            stored_now=self.state.stored_count(),
        )

    def endpoints(self) -> list[IssuedEndpoint]:
        """Every endpoint issued since start, oldest first."""
        return list(self._issued)

    def connected(self, uaid: str) -> bool:
        """Whether this uaid has an identified connection now."""
        session = self.sessions.get(uaid)
        return session is not None and session.accepting()

    def reset_uaid(self, uaid: str) -> bool:
        """Drop a uaid as autopush does (close 1000); its next hello gets a new uaid."""
        known = uaid in self.state.users or uaid in self.sessions
        self.drop_user(uaid)
        session = self.sessions.get(uaid)
        if session is not None:
            session.close(CLOSE_NORMAL, "SM: UAID dropped")
        return known

    def drop_connections(self) -> int:
        """Cut every WebSocket connection (TCP closed, no close frame); returns how many."""
        sessions = list(self._all)
        for session in sessions:
            session.abort()
        return len(sessions)

    def close_with(self, code: int = BACKOFF_CLOSE_CODE, reason: str = "") -> int:
        """Close every WebSocket connection with this close code; returns how many."""
        if not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError("close code must be 1000 or 3000-4999")
        sessions = list(self._all)
        for session in sessions:
            session.close(code, reason)
        return len(sessions)

    def _control(self, req: HttpRequest, action: str) -> HttpResponse:
        if not self.control_enabled or not req.peer_is_loopback:
            return EndpointError(404, None, "Not Found").response()
        if req.method != "POST":
            return text_response(405, "control requests are POSTs")
        try:
            args = json.loads(req.body or b"{}")
        except ValueError:
            return text_response(400, "control body is not JSON")
        if not isinstance(args, dict):
            return text_response(400, "control body must be a JSON object")
        result: object
        try:
            if action == "stats":
                result = asdict(self.stats())
            elif action == "endpoints":
                result = [asdict(e) for e in self.endpoints()]
            elif action == "reset_uaid":
                result = {"known": self.reset_uaid(str(args["uaid"]))}
            elif action == "drop_connections":
                result = {"dropped": self.drop_connections()}
            elif action == "ignore_acks":
                self.ignore_acks = bool(args.get("on", True))
                result = {"ignore_acks": self.ignore_acks}
            elif action == "close_with":
                code = int(args.get("code", BACKOFF_CLOSE_CODE))
                result = {"closed": self.close_with(code, str(args.get("reason", "")))}
            else:
                return text_response(404, "no such control action")
        except (KeyError, TypeError, ValueError) as exc:
            return text_response(400, f"bad arguments: {exc}")
        self.log.warning("autopush double: control %s", action)
        body = json.dumps(result).encode()
        return HttpResponse(200, (("content-type", "application/json"),), body)
