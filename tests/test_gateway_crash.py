"""SIGKILL at the two dangerous moments: nothing lost, nothing journalled twice; SIGTERM: nothing
sent again.

The gateway runs as a real child process (``python -m gateway run``) against the reference push
service on loopback; messages are sent with pywebpush. What reached the journal is read from the
log adapter's delivery file: a message journalled twice would appear under two message ids.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio

from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import wait_until
from tests.gateway_process import (
    LOG_ROUTE,
    GatewayProcess,
    free_port,
    journalled_ids,
    send_all,
    subscription_of,
    write_config,
)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Gateways entered here are killed when the test ends, whatever happened."""
    with ExitStack() as exit_stack:
        yield exit_stack


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
        body=LOG_ROUTE.format(deliveries=deliveries),
    )
    return service, config, deliveries, status_port


async def test_killed_between_journal_commit_and_ack(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, config, deliveries, port = await _setup(tmp_path, nursery)
        gateway = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await gateway.start()
        info = await subscription_of(gateway, config)
        # The service refuses the DELETEs: every message is journalled, none acknowledged.
        service.faults.fail_requests(500, count=5, methods=("DELETE",), paths="message")
        bodies = [b"msg-%d" % i for i in range(5)]
        await send_all(info, bodies)
        await wait_until(lambda: len(journalled_ids(deliveries)) == 5, "five journalled")
        await wait_until(
            lambda: gateway.metric("fieldgate_ack_failures_total") >= 5, "five refused acks"
        )
        gateway.kill()
        assert service.pending_messages() == 5

        restarted = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await restarted.start()
        await wait_until(lambda: service.pending_messages() == 0, "every message acknowledged")
        # Stored policy: delivery follows the ack, so wait for the device side too.
        await wait_until(lambda: len(journalled_ids(deliveries)) == len(bodies), "every delivery")
        journal = journalled_ids(deliveries)
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
        info = await subscription_of(gateway, config)
        # Hold the journal's write lock: messages arrive but cannot be committed.
        blocker = sqlite3.connect(tmp_path / "state" / "journal.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        bodies = [b"late-%d" % i for i in range(3)]
        await send_all(info, bodies)
        await wait_until(
            lambda: gateway.metric("fieldgate_messages_received_total") == 3, "three received"
        )
        gateway.kill()
        blocker.rollback()
        blocker.close()
        assert journalled_ids(deliveries) == {}
        assert service.pending_messages() == 3  # never acknowledged

        restarted = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await restarted.start()
        await wait_until(lambda: service.pending_messages() == 0, "every message acknowledged")
        # Stored policy: delivery follows the ack, so wait for the device side too.
        await wait_until(lambda: len(journalled_ids(deliveries)) == len(bodies), "every delivery")
        journal = journalled_ids(deliveries)
        assert sorted(journal) == sorted(b.decode() for b in bodies)
        assert all(len(ids) == 1 for ids in journal.values()), journal
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


def _owed_acks(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM journal WHERE ack = 'owed'").fetchone()[0])
    finally:
        conn.close()


async def test_sigterm_records_the_confirmed_acknowledgements(tmp_path, stack):
    # The contrast to SIGKILL: a clean stop leaves the next start nothing to send again.
    async with trio.open_nursery() as nursery:
        service, config, _deliveries, port = await _setup(tmp_path, nursery)
        gateway = stack.enter_context(GatewayProcess(config, port, tmp_path / "gateway.log"))
        await gateway.start()
        info = await subscription_of(gateway, config)
        bodies = [b"stop-%d" % i for i in range(4)]
        await send_all(info, bodies)
        await wait_until(lambda: service.acked_count() == len(bodies), "every DELETE answered")
        db = tmp_path / "state" / "journal.sqlite3"
        # Confirmed, not yet recorded: that waits for the next commit (or 30 s).
        assert _owed_acks(db) > 0
        assert gateway.terminate() == 0
        assert _owed_acks(db) == 0
        nursery.cancel_scope.cancel()
