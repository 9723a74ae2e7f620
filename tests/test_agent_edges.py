"""The agent's edges: distributing push resources, a peer that is not a push service, ingest."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from functools import partial

import trio

from fieldgate_common.metrics import Metrics
from gateway.config import Config
from gateway.ingest import Ingestor
from gateway.routes import CurrentRoutes, RouteTable
from gateway.store import Store, SubscriptionRecord
from gateway.upstream.contract import Pushed
from gateway.upstream.supervisor import Upstream
from gateway.webpush.crypto import SubscriptionKeys, encrypt
from pushservice.service import PushService
from tests.agent_harness import Receiver, make_config, wait_until


async def test_push_resources_are_distributed_with_retries(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.upstream.subscriptions.DISTRIBUTE_BACKOFF_BASE", 0.05)
    monkeypatch.setattr("gateway.upstream.subscriptions.DISTRIBUTE_BACKOFF_CAP", 0.1)
    receiver = Receiver(fail=2)
    service = PushService()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        base = make_config(service.subscribe_url, tmp_path / "state")
        route = replace(base.routes[0], distribute_url=f"http://127.0.0.1:{port}/subs")
        config = Config(push=base.push, routes=(route,), adapters=base.adapters)
        store = Store.open(config.push.state_dir, journal=config.journal)
        agent = Upstream(
            config, CurrentRoutes(RouteTable(config.routes)), store, Metrics(), rng=random.Random(1)
        )
        await nursery.start(agent.run)
        await wait_until(lambda: receiver.bodies, "the subscription POSTed")
        assert receiver.statuses[:3] == [503, 503, 204]
        posted = json.loads(receiver.bodies[0])
        assert posted == agent.subscription_infos()["valves"].to_json()
        await wait_until(
            lambda: store.subscriptions()[0].distributed_at is not None, "recorded as distributed"
        )
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_peer_speaking_garbage_is_survived_with_a_clear_reason(tmp_path):
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\x00" * 64)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        config = make_config(f"http://127.0.0.1:{port}/subscribe", tmp_path / "state")
        store = Store.open(config.push.state_dir, journal=config.journal)
        agent = Upstream(
            config, CurrentRoutes(RouteTable(config.routes)), store, Metrics(), rng=random.Random(1)
        )
        await nursery.start(agent.run)
        await wait_until(lambda: agent.status.connections >= 3, "several attempts")
        assert agent.status.state in ("backoff", "connecting")
        assert "protocol error" in (agent.status.last_error or "").lower()
        nursery.cancel_scope.cancel()
    store.close()


def _ingestor(*records: SubscriptionRecord) -> Ingestor:
    return Ingestor(records, max_body=4096)


def _record(route: str, keys: SubscriptionKeys, n: int) -> SubscriptionRecord:
    return SubscriptionRecord(
        route,
        f"https://p.example/subscription/{n}",
        f"https://p.example/push/{n}",
        "https://p.example/set/1",
        keys.private_bytes(),
        keys.auth_secret,
        0.0,
    )


def test_a_message_without_push_link_is_matched_by_trial_decryption():
    keys_a, keys_b = SubscriptionKeys.generate(), SubscriptionKeys.generate()
    ingestor = _ingestor(_record("a", keys_a, 1), _record("b", keys_b, 2))
    body = encrypt(b"for b", p256dh=keys_b.p256dh, auth_secret=keys_b.auth_secret)
    event = Pushed(
        "https://p.example/message/x", None, "https://p.example/set/1", (), body, "aes128gcm"
    )
    incoming = ingestor.prepare(event, received_at=1000.0)
    assert incoming.route == "b" and incoming.plaintext == b"for b"


def test_unknown_push_resource_and_unsupported_encoding_are_dead_letters():
    keys = SubscriptionKeys.generate()
    ingestor = _ingestor(_record("valves", keys, 1))
    body = encrypt(b"x", p256dh=keys.p256dh, auth_secret=keys.auth_secret)
    unknown = Pushed("u", "https://p.example/push/999", None, (), body, "aes128gcm")
    assert ingestor.prepare(unknown, received_at=0).failure == "unknown_subscription"
    legacy = Pushed("u", "https://p.example/push/1", None, (), body, "aesgcm")
    assert ingestor.prepare(legacy, received_at=0).failure == "unsupported_encoding"
