"""Several push-service nodes on one PostgreSQL: everything created on one is served by all.

In-process nodes (real sockets, a real server) for the semantics across nodes; real processes
behind HAProxy with real gateways and pywebpush senders for the failures: a node SIGKILLed while
gateways are connected and PostgreSQL restarted while messages flow.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import psycopg
import pytest
import requests
import trio
from pywebpush import WebPushException, webpush

from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.gateway_process import (
    LOG_ROUTE,
    GatewayProcess,
    journalled_ids,
    subscription_of,
    write_config,
)
from tests.postgres import Postgres, pg_url_fixture, postgres_fixture  # noqa: F401
from tests.pushservice_client import (
    REL_PUSH,
    REL_RECEIPT,
    REL_SET,
    h1_request,
    h2_client,
    link_of,
    path_of,
    send,
    subscribe,
    sync,
)
from tests.pushservice_nodes import HAProxy, NodeProcess, free_port, wait_for

REDELIVERY = 1.0


@asynccontextmanager
async def nodes(url: str, count: int, **settings: object) -> AsyncIterator[list[PushService]]:
    """``count`` in-process nodes on one database, all minting URLs under one public origin."""
    public = f"http://127.0.0.1:{free_port()}"  # the load balancer's address (none here)
    made = [
        PushService(
            ServiceSettings(public_url=public, redelivery_after=REDELIVERY, **settings),  # type: ignore[arg-type]
            storage=url,
        )
        for _ in range(count)
    ]
    async with trio.open_nursery() as nursery:
        for node in made:
            await nursery.start(node.serve)
        try:
            yield made
        finally:
            nursery.cancel_scope.cancel()
    for node in made:
        node.close()


def at(node: PushService, url: str) -> str:
    """The same resource, asked of a particular node (the path is what matters)."""
    return f"{node.bound_origin}{path_of(url)}"


async def test_three_nodes_serve_one_set_of_resources(pg_url: str) -> None:
    async with (
        nodes(pg_url, 3) as (a, b, c),
        h2_client(a.bound_origin) as ua,
        h2_client(c.bound_origin) as app,
    ):
        sub = await subscribe(ua)
        for link in (
            sub.header("location") or "",
            link_of(sub, REL_PUSH),
            link_of(sub, REL_SET),
        ):
            assert link.startswith(a.origin) and a.origin == b.origin == c.origin
        await ua.start("GET", path_of(link_of(sub, REL_SET)))
        await sync(ua)
        # Pushed through B; the monitor on A is woken by pg_notify.
        sent = await send(
            at(b, link_of(sub, REL_PUSH)), b"via b", headers=[("prefer", "respond-async")]
        )
        assert sent.status == 202
        receipt = link_of(sent, REL_RECEIPT)
        await app.start("GET", path_of(receipt))  # the receipt monitor on a third node
        await sync(app)
        pushed = await ua.next_push()
        assert pushed.body == b"via b"
        assert pushed.pseudo(":path") == path_of(sent.header("location") or "")
        # Unacknowledged: redelivered (a sweep on any node makes it due again).
        again = await ua.next_push()
        assert again.pseudo(":path") == pushed.pseudo(":path")
        assert (await ua.ack(again)).status == 204
        receipt_push = await app.next_push()
        assert receipt_push.status == 204
        assert receipt_push.pseudo(":path") == pushed.pseudo(":path")
        polled = await h1_request(at(b, receipt), "GET")
        assert json.loads(polled.body) == [{"message": sent.header("location"), "status": 204}]
        assert (await ua.ack(again)).status == 404  # acknowledged once, everywhere


async def test_topic_expiry_and_deletion_across_nodes(pg_url: str) -> None:
    async with nodes(pg_url, 3) as (a, b, c), h2_client(a.bound_origin) as ua:
        sub = await subscribe(ua)
        push = link_of(sub, REL_PUSH)
        await send(at(b, push), b"v1", headers=[("topic", "weather")])
        await send(at(c, push), b"v2", headers=[("topic", "weather")])
        short = await send(at(b, push), b"short", ttl="1", headers=[("prefer", "respond-async")])
        await trio.sleep(1.5)  # past its TTL: some node's sweep gives up on it
        receipt = at(c, link_of(short, REL_RECEIPT))
        await wait_for_receipt(receipt, 410)
        drained = await ua.request("GET", path_of(link_of(sub, REL_SET)), [("prefer", "wait=0")])
        assert drained.status == 200
        assert [(await ua.next_push()).body] == [b"v2"]
        assert ua.pushes.statistics().current_buffer_used == 0
        monitor = await ua.start("GET", path_of(link_of(sub, REL_SET)))
        await sync(ua)
        deleted = await h1_request(at(c, link_of(sub, REL_SET)), "DELETE")
        assert deleted.status == 204
        assert (await ua.wait(monitor)).status == 404  # told through pg_notify
        assert (await send(at(b, push))).status == 404


async def wait_for_receipt(url: str, status: int) -> None:
    with trio.fail_after(10):
        while True:
            reply = await h1_request(url, "GET")
            if [r["status"] for r in json.loads(reply.body)] == [status]:
                return
            await trio.sleep(0.1)


async def test_two_nodes_sweeping_expiry_at_once_give_one_receipt_each(pg_url: str) -> None:
    async with nodes(pg_url, 2) as (a, b):
        async with h2_client(a.bound_origin) as ua:
            sub = await subscribe(ua)
        receipt = a.db.blocking(a.db.store.new_receipt, 0.0)
        count = 3000
        with psycopg.connect(pg_url, autocommit=True) as conn:
            sub_id = path_of(sub.header("location") or "").rsplit("/", 1)[1]
            conn.execute(
                "INSERT INTO messages (id, sub_id, push_id, set_id, body, urgency, created,"
                " expires, receipt_id) SELECT 'm' || n, s.id, s.push_id, s.set_id, '', 2, 0, 1, %s"
                " FROM subscriptions s, generate_series(1, %s) n WHERE s.id = %s",
                (receipt, count, sub_id),
            )
            conn.execute("UPDATE subscriptions SET pending = %s WHERE id = %s", (count, sub_id))
        # Both nodes' sweepers run every 0.5 s anyway; make them race on purpose too.
        expired = {a.node: 0, b.node: 0}
        async with trio.open_nursery() as nursery:
            for node in (a, b, a, b):
                nursery.start_soon(sweep_until_empty, node, expired)
        events = a.db.blocking(a.db.store.receipts, receipt) or []
        assert sorted(e.message_id for e in events) == sorted(f"m{n}" for n in range(1, count + 1))
        assert {e.status for e in events} == {410}
        assert min(expired.values()) > 0  # the work was shared (and never done twice, above)
        assert a.pending_messages() == 0


async def sweep_until_empty(node: PushService, expired: dict[str, int]) -> None:
    while node.pending_messages():
        swept = await node.db.call(node.db.store.sweep, node.clock(), REDELIVERY, 200)
        expired[node.node] += swept.expired


# -- real processes: HAProxy, two nodes, gateways, pywebpush ------------------------------------
MESSAGES = 5000
SENDERS = 4
KILL_AT = 1500  # accepted messages before a node is SIGKILLed
RESTART_AT = 3000  # ... before PostgreSQL is restarted


class Senders:
    """pywebpush senders in threads; every 2xx is recorded (message URL, body, receipt URL)."""

    def __init__(self, infos: list[dict[str, object]], total: int) -> None:
        self.infos = infos
        self.total = total
        self.accepted: dict[str, str] = {}  # message URL -> body
        self.receipts: set[str] = set()
        self.refused: dict[int, int] = {}
        self.lock = threading.Lock()
        self._next = 0
        self.stop = threading.Event()

    def _take(self) -> int | None:
        with self.lock:
            if self._next >= self.total or self.stop.is_set():
                return None
            self._next += 1
            return self._next

    def run(self) -> None:
        session = requests.Session()
        receipt: str | None = None
        while (n := self._take()) is not None:
            info = self.infos[n % len(self.infos)]
            body = f"msg-{n}"
            headers = (
                {"Prefer": "respond-async"}
                if receipt is None
                else {"Link": f'<{receipt}>; rel="{REL_RECEIPT}"'}
            )
            while not self.stop.is_set():
                try:
                    response = webpush(
                        info, body, ttl=3600, headers=headers, timeout=10, requests_session=session
                    )  # type: ignore[arg-type]
                except (requests.RequestException, WebPushException) as exc:
                    status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
                    with self.lock:
                        self.refused[status] = self.refused.get(status, 0) + 1
                    self.stop.wait(0.05)
                    continue
                link = response.headers.get("Link", "")
                receipt = link[link.index("<") + 1 : link.index(">")]
                with self.lock:
                    self.accepted[response.headers["Location"]] = body
                    self.receipts.add(receipt)
                break


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exit_stack:
        yield exit_stack


def receipts_of(url: str) -> dict[str, int]:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return {entry["message"]: entry["status"] for entry in response.json()}


@pytest.mark.slow
async def test_two_nodes_lose_nothing_when_a_node_dies_and_postgres_restarts(
    tmp_path: Path, stack: ExitStack
) -> None:
    server = Postgres()
    stack.callback(server.close)
    server.start()
    proxy_port = free_port()
    public = f"http://127.0.0.1:{proxy_port}"  # every node mints URLs under the balancer's
    cluster = [
        stack.enter_context(
            NodeProcess(tmp_path / f"node{i}", storage=server.url(), public_url=public)
        )
        for i in range(2)
    ]
    for node in cluster:
        await node.start()
    proxy = stack.enter_context(
        HAProxy(tmp_path / "haproxy", [n.port for n in cluster], port=proxy_port)
    )
    gateways: list[GatewayProcess] = []
    deliveries: list[Path] = []
    infos: list[dict[str, object]] = []
    for i in range(2):
        gw_dir = tmp_path / f"gw{i}"
        gw_dir.mkdir()
        delivered = gw_dir / "deliveries.jsonl"
        status_port = free_port()
        config = write_config(
            gw_dir / "config.toml",
            f"{proxy.url}/subscribe",
            gw_dir / "state",
            status_port=status_port,
            body=LOG_ROUTE.format(deliveries=delivered),
        )
        gateway = stack.enter_context(GatewayProcess(config, status_port, gw_dir / "gateway.log"))
        await gateway.start()
        infos.append(await subscription_of(gateway, config))
        gateways.append(gateway)
        deliveries.append(delivered)
    senders = Senders(infos, MESSAGES)
    threads = [threading.Thread(target=senders.run) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    try:
        await wait_for(lambda: len(senders.accepted) >= KILL_AT, "messages before the kill", 120)
        cluster[0].kill()
        await wait_for(
            lambda: len(senders.accepted) >= RESTART_AT, "messages before the restart", 120
        )
        await trio.to_thread.run_sync(server.stop, "immediate")
        await wait_for(
            lambda: cluster[1].get("/healthz")[0] == 503, "the node to report unhealthy", 10
        )
        await trio.to_thread.run_sync(server.start)
        await wait_for(lambda: cluster[1].get("/healthz")[0] == 200, "the node healthy again", 20)
        await wait_for(lambda: not any(t.is_alive() for t in threads), "every message sent", 300)
    finally:
        senders.stop.set()
        for t in threads:
            t.join()
    assert len(senders.accepted) == MESSAGES
    assert senders.refused.get(503, 0) > 0  # refused while PostgreSQL was down, not accepted

    def all_delivered() -> bool:
        bodies = set()
        for path in deliveries:
            bodies |= set(journalled_ids(path))
        return set(senders.accepted.values()) <= bodies

    await wait_for(all_delivered, "every accepted message on a device side", 120)

    def all_receipts() -> bool:
        got: dict[str, int] = {}
        for url in senders.receipts:
            got |= receipts_of(url)
        return all(got.get(url) == 204 for url in senders.accepted)

    await wait_for(lambda: all_receipts(), "every receipt", 120)
    for gateway in gateways:
        assert gateway.terminate() == 0
    assert cluster[1].terminate() == 0  # drained gracefully
