"""Power loss: the journal survives a kill at any point of a transaction.

The real gateway (``python -m gateway run``) journals messages that flow in continuously and is
SIGKILLed at seeded random moments, several times. After each kill the journal opens, passes
``PRAGMA integrity_check`` and holds every message the push service counts as acknowledged
(unless it was already delivered); after the last restart every message sent is delivered.

SQLite setting: the journal runs in WAL mode with ``synchronous=FULL`` (gateway/store.py), so
every commit fsyncs the WAL before it returns, and the gateway sends a DELETE only after its
commit returned. SIGKILL tests the process dying at any instruction (mid-transaction, between
commit and DELETE); the OS page cache survives a SIGKILL, so what makes the same hold for a
real power cut is the fsync that FULL adds: with NORMAL, WAL commits are fsynced only at
checkpoints, and the last commits (already acknowledged, so forgotten by the service) could be
lost. ``test_the_journal_uses_full_synchronous_wal`` pins that setting. (What is committed
with NORMAL — finished deliveries, confirmed acknowledgements, retry schedules — can only be
repeated after a power loss; tests/test_store.py pins which commits those are.)
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from pywebpush import webpush

from gateway.config import JournalConfig
from gateway.store import Store
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import wait_until
from tests.gateway_process import LOG_ROUTE, GatewayProcess, free_port, write_config

SEED = 20261125
KILLS = 8
# Kill between these many seconds after messages start flowing (a few to a few dozen commits).
KILL_AFTER = (0.05, 1.0)
SQLITE_SYNCHRONOUS_FULL = 2


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exit_stack:
        yield exit_stack


def test_the_journal_uses_full_synchronous_wal(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state", journal=JournalConfig())
    try:
        conn = store._conn  # the store's own connection: synchronous is per connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == SQLITE_SYNCHRONOUS_FULL
    finally:
        store.close()


class Sender:
    """Sends numbered messages in a thread until stopped; remembers each one's message URL."""

    def __init__(self, info: dict[str, object]) -> None:
        self.info = info
        self.sent: dict[str, str] = {}  # push message URL -> plaintext
        self._stop = threading.Event()
        self._count = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self, prefix: str) -> None:
        self._stop.clear()
        while not self._stop.is_set():
            body = f"{prefix}-{self._count}"
            self._count += 1
            response = webpush(self.info, body.encode(), ttl=600)
            assert response.status_code == 201, response.text
            self.sent[response.headers["location"]] = body


def delivered(deliveries: Path) -> set[str]:
    if not deliveries.exists():
        return set()
    return {json.loads(line)["body"] for line in deliveries.read_text().splitlines() if line}


def check_journal(journal: Path) -> set[str]:
    """Integrity check; the push message URLs the journal holds."""
    conn = sqlite3.connect(journal)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {url for (url,) in conn.execute("SELECT key FROM journal WHERE body IS NOT NULL")}
    finally:
        conn.close()


async def subscription(config: Path) -> dict[str, object]:
    out = await trio.run_process(
        [sys.executable, "-m", "gateway", "subscriptions", "--config", str(config), "valves"],
        capture_stdout=True,
    )
    return dict(json.loads(out.stdout))


async def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, stack: ExitStack) -> None:
    rng = random.Random(SEED)
    service = PushService(ServiceSettings(redelivery_after=0.5))
    deliveries = tmp_path / "deliveries.jsonl"
    journal = tmp_path / "state" / "journal.sqlite3"
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve, "127.0.0.1", 0)
        status_port = free_port()
        config = write_config(
            tmp_path / "config.toml",
            service.subscribe_url,
            tmp_path / "state",
            status_port=status_port,
            body=LOG_ROUTE.format(deliveries=deliveries),
        )
        log_path = tmp_path / "gateway.log"
        sender: Sender | None = None
        checked = 0  # acknowledged messages checked after a kill (the test must check some)
        for kill in range(KILLS):
            gateway = stack.enter_context(GatewayProcess(config, status_port, log_path))
            await gateway.start()
            if sender is None:
                await wait_until(lambda: service.monitor_count() >= 1, "monitoring")
                sender = Sender(await subscription(config))
            sending = trio.Event()

            async def send(s: Sender = sender, k: int = kill, done: trio.Event = sending) -> None:
                await trio.to_thread.run_sync(s.run, f"pl-{k}")
                done.set()

            nursery.start_soon(send)
            await trio.sleep(rng.uniform(*KILL_AFTER))
            gateway.kill()
            sender.stop()
            await sending.wait()

            held = check_journal(journal)
            pending = {f"{service.origin}/message/{mid}" for mid in service.pending_message_ids()}
            acked = {url for url in sender.sent if url not in pending}
            done = delivered(deliveries)
            missing = [url for url in acked if url not in held and sender.sent[url] not in done]
            assert not missing, f"kill {kill}: acknowledged but neither journalled nor delivered"
            checked += len(acked)

        assert sender is not None and checked > 0
        gateway = stack.enter_context(GatewayProcess(config, status_port, log_path))
        await gateway.start()
        await wait_until(lambda: service.pending_messages() == 0, "everything acknowledged")
        everything = set(sender.sent.values())
        await wait_until(lambda: everything <= delivered(deliveries), "everything delivered")
        print(f"{len(everything)} messages, {KILLS} kills, {checked} acknowledged checked")
        assert gateway.terminate() == 0
        check_journal(journal)
        nursery.cancel_scope.cancel()
