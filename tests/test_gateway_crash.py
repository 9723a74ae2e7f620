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
    GatewayRig,
    journalled_ids,
    send_all,
    sigterm_records_confirmations,
    subscription_of,
)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Gateways entered here are killed when the test ends, whatever happened."""
    with ExitStack() as exit_stack:
        yield exit_stack


async def _setup(
    tmp_path: Path, nursery: trio.Nursery, stack: ExitStack
) -> tuple[PushService, GatewayRig]:
    service = PushService(ServiceSettings(redelivery_after=0.5))
    await nursery.start(service.serve, "127.0.0.1", 0)
    return service, GatewayRig.create(tmp_path, service.subscribe_url, stack)


async def test_killed_between_journal_commit_and_ack(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, rig = await _setup(tmp_path, nursery, stack)
        gateway = await rig.started()
        info = await subscription_of(gateway, rig.config)
        # The service refuses the DELETEs: every message is journalled, none acknowledged.
        service.faults.fail_requests(500, count=5, methods=("DELETE",), paths="message")
        bodies = [b"msg-%d" % i for i in range(5)]
        await send_all(info, bodies)
        await wait_until(lambda: len(journalled_ids(rig.deliveries)) == 5, "five journalled")
        await wait_until(
            lambda: gateway.metric("fieldgate_ack_failures_total") >= 5, "five refused acks"
        )
        gateway.kill()
        assert service.pending_messages() == 5

        restarted = await rig.restarted_delivering_each_once(
            bodies, lambda: service.pending_messages() == 0
        )
        assert restarted.metric("fieldgate_messages_journalled_total") == 0  # all duplicates
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


async def test_killed_between_receipt_and_commit(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, rig = await _setup(tmp_path, nursery, stack)
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
        assert service.pending_messages() == 3  # never acknowledged

        restarted = await rig.restarted_delivering_each_once(
            bodies, lambda: service.pending_messages() == 0
        )
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


async def test_sigterm_records_the_confirmed_acknowledgements(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        _service, rig = await _setup(tmp_path, nursery, stack)
        await sigterm_records_confirmations(rig)
        nursery.cancel_scope.cancel()
