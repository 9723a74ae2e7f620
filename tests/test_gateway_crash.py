"""SIGKILL at the two dangerous moments: nothing lost, nothing journalled twice.

The gateway runs as a real child process (``python -m gateway run``) against the reference push
service on loopback; messages are sent with pywebpush. What reached the journal is read from the
log adapter's delivery file: a message journalled twice would appear under two message ids.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from pywebpush import webpush

from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import wait_until
from tests.gateway_process import GatewayProcess, free_port, write_config

ROUTES = """
[adapters.out]
type = "log"
path = "{deliveries}"

[[routes]]
name = "valves"
deliver = [ {{ adapter = "out" }} ]
"""


async def _subscription(gateway: GatewayProcess, config: Path) -> dict[str, object]:
    """The route's PushSubscription JSON, as ``fieldgate subscriptions`` prints it."""

    def subscribed() -> bool:
        routes = gateway.status()["routes"]
        return bool(routes[0]["push_resource_id"])  # type: ignore[index]

    await wait_until(subscribed, "the route subscribed")
    out = await trio.run_process(
        [sys.executable, "-m", "gateway", "subscriptions", "--config", str(config), "valves"],
        capture_stdout=True,
    )
    return dict(json.loads(out.stdout))


async def _send(info: dict[str, object], bodies: list[bytes]) -> None:
    def post() -> None:
        for body in bodies:
            response = webpush(info, body, ttl=600)  # type: ignore[arg-type]
            assert response.status_code == 201, response.text

    await trio.to_thread.run_sync(post)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Gateways entered here are killed when the test ends, whatever happened."""
    with ExitStack() as exit_stack:
        yield exit_stack


def _journalled(deliveries: Path) -> dict[str, set[str]]:
    """body -> the message ids it was delivered under."""
    ids: dict[str, set[str]] = {}
    if deliveries.exists():
        for line in deliveries.read_text().splitlines():
            record = json.loads(line)
            ids.setdefault(record["body"], set()).add(record["id"])
    return ids


async def _setup(tmp_path: Path, nursery: trio.Nursery) -> tuple[PushService, Path, Path, int]:
    service = PushService(ServiceSettings(redelivery_after=0.5))
    await nursery.start(service.serve, "127.0.0.1", 0)
    deliveries = tmp_path / "deliveries.jsonl"
    status_port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        service.subscribe_url,
        tmp_path / "state",
        status_port=status_port,
        body=ROUTES.format(deliveries=deliveries),
    )
    return service, config, deliveries, status_port


async def test_killed_between_journal_commit_and_ack(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, config, deliveries, port = await _setup(tmp_path, nursery)
        gateway = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await gateway.start()
        info = await _subscription(gateway, config)
        # The service refuses the DELETEs: every message is journalled, none acknowledged.
        service.faults.fail_requests(500, count=5, methods=("DELETE",), paths="message")
        bodies = [b"msg-%d" % i for i in range(5)]
        await _send(info, bodies)
        await wait_until(lambda: len(_journalled(deliveries)) == 5, "five journalled")
        await wait_until(
            lambda: gateway.metric("fieldgate_ack_failures_total") >= 5, "five refused acks"
        )
        gateway.kill()
        assert service.pending_messages() == 5

        restarted = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await restarted.start()
        await wait_until(lambda: service.pending_messages() == 0, "every message acknowledged")
        # Stored policy: delivery follows the ack, so wait for the device side too.
        await wait_until(lambda: len(_journalled(deliveries)) == len(bodies), "every delivery")
        journal = _journalled(deliveries)
        assert sorted(journal) == sorted(b.decode() for b in bodies)
        assert all(len(ids) == 1 for ids in journal.values()), journal
        assert restarted.metric("fieldgate_messages_journalled_total") == 0  # all duplicates
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


async def test_killed_between_receipt_and_commit(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, config, deliveries, port = await _setup(tmp_path, nursery)
        gateway = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await gateway.start()
        info = await _subscription(gateway, config)
        # Hold the journal's write lock: messages arrive but cannot be committed.
        blocker = sqlite3.connect(tmp_path / "state" / "journal.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        bodies = [b"late-%d" % i for i in range(3)]
        await _send(info, bodies)
        await wait_until(
            lambda: gateway.metric("fieldgate_messages_received_total") == 3, "three received"
        )
        gateway.kill()
        blocker.rollback()
        blocker.close()
        assert _journalled(deliveries) == {}
        assert service.pending_messages() == 3  # never acknowledged

        restarted = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await restarted.start()
        await wait_until(lambda: service.pending_messages() == 0, "every message acknowledged")
        # Stored policy: delivery follows the ack, so wait for the device side too.
        await wait_until(lambda: len(_journalled(deliveries)) == len(bodies), "every delivery")
        journal = _journalled(deliveries)
        assert sorted(journal) == sorted(b.decode() for b in bodies)
        assert all(len(ids) == 1 for ids in journal.values()), journal
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()
