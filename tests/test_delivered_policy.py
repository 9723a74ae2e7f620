"""The `delivered` ack policy end to end: the sender's receipt means the device has it.

Push service, agent, store and router are real (loopback sockets, SQLite on disk); the device
is an in-process adapter that holds each delivery until the test releases it.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from pywebpush import webpush

from adapters.log_config import LogTarget
from fieldgate_common.metrics import Metrics
from gateway.config import Config, RouteConfig
from gateway.router import Router
from gateway.routes import CurrentRoutes, RouteTable
from gateway.store import Store
from gateway.upstream.supervisor import Upstream
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import make_config, wait_until
from tests.fake_adapters import FakeAdapter


@dataclass
class Pipeline:
    upstream: Upstream
    store: Store


@asynccontextmanager
async def pipeline(
    service: PushService, config: Config, device: FakeAdapter
) -> AsyncIterator[Pipeline]:
    store = Store.open(config.push.state_dir, journal=config.journal)
    try:
        async with trio.open_nursery() as nursery:
            holder: list[Router] = []
            agent = Upstream(
                config,
                CurrentRoutes(RouteTable(config.routes)),
                store,
                Metrics(),
                on_journalled=lambda messages: holder[0].journalled(messages),
                rng=random.Random(3),
            )
            router = Router(
                store,
                RouteTable(config.routes),
                {"dev": device},
                Metrics(),
                on_ack=agent.acknowledge,
            )
            holder.append(router)
            await nursery.start(router.run)
            await nursery.start(agent.run)
            await wait_until(
                lambda: agent.status.state == "connected" and agent.subscription_infos(),
                "subscribed",
            )
            yield Pipeline(agent, store)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def delivered_config(service: PushService, state_dir: Path) -> Config:
    base = make_config(service.subscribe_url, state_dir)
    route = RouteConfig(name="valves", deliver=(LogTarget(adapter="dev"),), ack="delivered")
    return Config(push=base.push, routes=(route,), adapters=base.adapters)


async def send_with_receipt(info: dict[str, object], body: bytes) -> str:
    """Push with ``Prefer: respond-async``; return the receipt subscription URL."""

    def post() -> str:
        response = webpush(info, body, ttl=600, headers={"Prefer": "respond-async"})  # type: ignore[arg-type]
        assert response.status_code == 202, response.text
        link = response.headers["Link"]
        return link[link.index("<") + 1 : link.index(">")]

    return await trio.to_thread.run_sync(post)


def receipts(url: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.loads(response.read()))


async def test_receipt_arrives_only_after_the_device_confirmed(tmp_path):
    service = PushService(ServiceSettings(redelivery_after=0.3))
    device = FakeAdapter("dev")
    device.hanging = True
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        config = delivered_config(service, tmp_path / "state")
        async with pipeline(service, config, device) as run:
            info = run.upstream.subscription_infos()["valves"].to_json()
            receipt_url = await send_with_receipt(info, b"close valve 3")
            await wait_until(lambda: len(device.attempts) >= 1, "the delivery attempt")
            # Redeliveries come and go (redelivery_after=0.3 s) while the device holds it.
            await trio.sleep(1.0)
            assert await trio.to_thread.run_sync(receipts, receipt_url) == []
            assert service.pending_messages() == 1
            device.hanging = False
            device.release()
            await wait_until(lambda: service.pending_messages() == 0, "the ack")
            got = await trio.to_thread.run_sync(receipts, receipt_url)
            assert [r["status"] for r in got] == [204]
            assert [m.body for m in device.delivered] == [b"close valve 3"]
        nursery.cancel_scope.cancel()


async def test_a_gateway_stopped_before_confirmation_gets_the_message_again(tmp_path):
    service = PushService(ServiceSettings(redelivery_after=0.3))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        config = delivered_config(service, tmp_path / "state")
        stuck = FakeAdapter("dev")
        stuck.failing = True
        async with pipeline(service, config, stuck) as run:
            info = run.upstream.subscription_infos()["valves"].to_json()
            receipt_url = await send_with_receipt(info, b"open valve 1")
            await wait_until(lambda: len(stuck.attempts) >= 1, "a failed attempt")
        assert service.pending_messages() == 1  # never acknowledged
        # A new gateway on the same state: the device now works.
        device = FakeAdapter("dev")
        async with pipeline(service, config, device):
            await wait_until(lambda: service.pending_messages() == 0, "the ack")
            assert [m.body for m in device.delivered] == [b"open valve 1"]
            got = await trio.to_thread.run_sync(receipts, receipt_url)
            assert [r["status"] for r in got] == [204]
        nursery.cancel_scope.cancel()
