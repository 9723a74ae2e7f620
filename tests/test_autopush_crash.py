"""The autopush path under SIGKILL at the two dangerous moments: nothing lost, nothing twice;
under SIGTERM: nothing sent again.

As tests/test_gateway_crash.py does for RFC 8030: the gateway is a real child process
(``python -m gateway run``) against the autopush double on loopback (``ws://``), messages are
sent with pywebpush, and what reached the journal is read from the log adapter's file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest
import trio

from pushservice.autopush import AutopushService, AutopushSettings
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
) -> tuple[AutopushService, GatewayRig]:
    service = AutopushService(AutopushSettings(), state_path=tmp_path / "autopush.sqlite3")
    await nursery.start(partial(service.serve, "127.0.0.1", 0))
    return service, GatewayRig.create(tmp_path, service.ws_url, stack)


def _stored(service: AutopushService) -> int:
    return service.stats().stored_now


async def test_killed_between_journal_commit_and_ack(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service, rig = await _setup(tmp_path, nursery, stack)
        gateway = await rig.started()
        info = await subscription_of(gateway, rig.config)
        # The service drops the acks: every message is journalled, none acknowledged.
        service.ignore_acks = True
        bodies = [b"msg-%d" % i for i in range(5)]
        await send_all(info, bodies)
        await wait_until(lambda: len(journalled_ids(rig.deliveries)) == 5, "five journalled")
        await wait_until(lambda: service.counters.acks_ignored >= 5, "five acks dropped")
        gateway.kill()
        assert _stored(service) == 5
        service.ignore_acks = False

        restarted = await rig.restarted_delivering_each_once(bodies, lambda: _stored(service) == 0)
        assert restarted.metric("fieldgate_messages_journalled_total") == 0  # all duplicates
        assert restarted.metric("fieldgate_messages_duplicate_total") == 5
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
        assert _stored(service) == 3  # never acknowledged

        restarted = await rig.restarted_delivering_each_once(bodies, lambda: _stored(service) == 0)
        assert restarted.terminate() == 0
        nursery.cancel_scope.cancel()


async def test_sigterm_records_the_confirmed_acknowledgements(tmp_path, stack):
    # Confirmed here means the answer to the ping sent behind the acks (autopush has no other).
    async with trio.open_nursery() as nursery:
        _service, rig = await _setup(tmp_path, nursery, stack)
        await sigterm_records_confirmations(rig)
        nursery.cancel_scope.cancel()
