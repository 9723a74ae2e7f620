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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Rig:
    """The push service and one gateway configuration (a log route writing ``deliveries``)."""

    service: PushService
    config: Path
    deliveries: Path
    status_port: int
    stack: ExitStack

    @property
    def journal(self) -> Path:
        return self.config.parent / "state" / "journal.sqlite3"

    async def started(self) -> GatewayProcess:
        """A gateway process on this configuration, killed when the test ends."""
        log = self.config.parent / "gateway.log"
        gateway = self.stack.enter_context(GatewayProcess(self.config, self.status_port, log))
        await gateway.start()
        return gateway

    def _delivered(self) -> int:
        return len(journalled_ids(self.deliveries))

    async def restarted_delivering_each_once(self, bodies: list[bytes]) -> GatewayProcess:
        """A new gateway takes over: every message acknowledged, and journalled exactly once."""
        restarted = await self.started()
        pending = self.service.pending_messages
        await wait_until(lambda: pending() == 0, "every message acknowledged")
        # Stored policy: delivery follows the ack, so wait for the device side too.
        await wait_until(lambda: self._delivered() == len(bodies), "every delivery")
        journal = journalled_ids(self.deliveries)
        assert sorted(journal) == sorted(b.decode() for b in bodies)
        assert all(len(ids) == 1 for ids in journal.values()), journal
        return restarted


async def _setup(tmp_path: Path, nursery: trio.Nursery, stack: ExitStack) -> _Rig:
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
    return _Rig(service, config, deliveries, status_port, stack)


async def test_killed_between_journal_commit_and_ack(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        rig = await _setup(tmp_path, nursery, stack)
        gateway = await rig.started()
        info = await subscription_of(gateway, rig.config)
        # The service refuses the DELETEs: every message is journalled, none acknowledged.
        rig.service.faults.fail_requests(500, count=5, methods=("DELETE",), paths="message")
        bodies = [b"msg-%d" % i for i in range(5)]
        await send_all(info, bodies)
        await wait_until(lambda: len(journalled_ids(rig.deliveries)) == 5, "five journalled")
        await wait_until(
            lambda: gateway.metric("fieldgate_ack_failures_total") >= 5, "five refused acks"
        )
        gateway.kill()
        assert rig.service.pending_messages() == 5

        restarted = await rig.restarted_delivering_each_once(bodies)
        assert restarted.metric("fieldgate_messages_journalled_total") == 0  # all duplicates
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


async def test_killed_between_receipt_and_commit(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        rig = await _setup(tmp_path, nursery, stack)
        gateway = await rig.started()
        info = await subscription_of(gateway, rig.config)
        # Hold the journal's write lock: messages arrive but cannot be committed.
        blocker = sqlite3.connect(rig.journal, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        bodies = [b"late-%d" % i for i in range(3)]
        await send_all(info, bodies)
        await wait_until(
            lambda: gateway.metric("fieldgate_messages_received_total") == 3, "three received"
        )
        gateway.kill()
        blocker.rollback()
        blocker.close()
        assert journalled_ids(rig.deliveries) == {}
        assert rig.service.pending_messages() == 3  # never acknowledged

        restarted = await rig.restarted_delivering_each_once(bodies)
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
        rig = await _setup(tmp_path, nursery, stack)
        gateway = await rig.started()
        info = await subscription_of(gateway, rig.config)
        bodies = [b"stop-%d" % i for i in range(4)]
        await send_all(info, bodies)
        await wait_until(lambda: rig.service.acked_count() == len(bodies), "every DELETE answered")
        # Confirmed, not yet recorded: that waits for the next commit (or 30 s).
        assert _owed_acks(rig.journal) > 0
        assert gateway.terminate() == 0
        assert _owed_acks(rig.journal) == 0
        nursery.cancel_scope.cancel()
