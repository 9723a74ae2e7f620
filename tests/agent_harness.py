"""Shared set-up for tests that run the agent against the reference push service on loopback."""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import trio
from pywebpush import webpush

from adapters.log_config import LogAdapterConfig, LogTarget
from fieldgate_common.metrics import Metrics
from gateway.config import Config, PushConfig, RouteConfig
from gateway.routes import CurrentRoutes, RouteTable
from gateway.store import Store
from gateway.upstream.supervisor import Upstream
from gateway.webpush.crypto import PushSubscriptionInfo
from pushservice.service import PushService
from pushservice.settings import ServiceSettings

# Generous bound for anything on loopback; a test that needs it has failed anyway.
WAIT_LIMIT = 20.0


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = WAIT_LIMIT) -> None:
    """Poll ``predicate`` (cheap, in-process state) until true; fail with ``what``."""
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110 - polls state owned by other tasks
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


def make_config(
    service: str,
    state_dir: Path,
    *,
    routes: tuple[str, ...] = ("valves",),
    ack: str = "stored",
    keepalive: float = 30.0,
    ca_file: Path | None = None,
    max_message_bytes: int = 65536,
) -> Config:
    """A configuration with log-adapter routes and fast backoff for tests."""
    return Config(
        push=PushConfig(
            service=service,
            state_dir=state_dir,
            keepalive=keepalive,
            backoff_base=0.05,
            backoff_cap=0.3,
            healthy_after=60.0,
            ca_file=ca_file,
            connect_timeout=5.0,
            max_message_bytes=max_message_bytes,
        ),
        routes=tuple(
            RouteConfig(name=name, deliver=(LogTarget(adapter="log"),), ack=ack) for name in routes
        ),
        adapters={"log": LogAdapterConfig(name="log")},
    )


@dataclass
class Running:
    """A push service and an agent talking to it."""

    service: PushService
    upstream: Upstream
    store: Store
    config: Config
    journalled: list[int] = field(default_factory=list)

    def info(self, route: str) -> PushSubscriptionInfo:
        return self.upstream.subscription_infos()[route]

    async def send(self, route: str, data: bytes, **kwargs: object) -> None:
        """Send like an application server would: pywebpush over HTTP/1.1, in a thread."""
        info = self.info(route).to_json()
        kwargs.setdefault("ttl", 600)

        def post() -> None:
            response = webpush(info, data, **kwargs)  # type: ignore[arg-type]
            assert response.status_code in (201, 202), response.text

        await trio.to_thread.run_sync(post)

    def journal(self, route: str) -> list[bytes]:
        """Bodies still owed to the route's first target, in order."""
        return [p.message.body for p in self.store.pending_deliveries(route, "0:log", limit=10_000)]


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    settings: ServiceSettings | None = None,
    service: PushService | None = None,
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    connected: bool = True,
    **config_kwargs: object,
) -> AsyncIterator[Running]:
    """Start a push service (unless given) and an agent; cancel both on exit."""
    service = service or PushService(settings or ServiceSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", port, ssl_context=ssl_context))
        config = make_config(service.subscribe_url, tmp_path / "state", **config_kwargs)  # type: ignore[arg-type]
        store = Store.open(config.push.state_dir, journal=config.journal)
        run = Running(service, None, store, config)  # type: ignore[arg-type]
        agent = Upstream(
            config,
            CurrentRoutes(RouteTable(config.routes)),
            store,
            Metrics(),
            on_journalled=lambda messages: run.journalled.append(len(messages)),
            rng=random.Random(7),
        )
        run.upstream = agent
        await nursery.start(agent.run)
        if connected:
            await wait_until(
                lambda: (
                    agent.status.state == "connected"
                    and len(agent.subscription_infos()) == len(config.routes)
                ),
                "the agent to subscribe every route",
            )
        try:
            yield run
        finally:
            nursery.cancel_scope.cancel()
    store.close()


def subscription_json(info: PushSubscriptionInfo) -> str:
    return json.dumps(info.to_json())


class Receiver:
    """A tiny HTTP/1.1 server (h11 on trio): answers the first ``fail`` POSTs 503, then 204."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        status = 503 if len(self.statuses) < self.fail else 204
        self.statuses.append(status)
        if status == 204:
            self.bodies.append(body)
        await stream.send_all(
            conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
            + conn.send(h11.EndOfMessage())
        )
        await stream.aclose()
