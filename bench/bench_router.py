"""Deliveries per second through the router, and bytes written to disk per message.

A producer ingests 100-byte messages in batches (the agent's group commit) into an on-disk
journal while the router delivers them to a no-op adapter. Beside it, in the same run, the floor:
the same number of bare SQLite inserts and deletes in transactions of the same size, with the
same WAL and ``synchronous=FULL``. Disk writes come from ``/proc/self/io`` ``write_bytes`` (what
reached the block layer: the flash-wear figure), measured after a warm-up (steady state).
Goal: under 2 KB written per 100-byte message.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import trio

from adapters.base import Adapter, Delivered, Health, Message, Outcome, TargetConfig
from adapters.log_config import LogTarget
from fieldgate_common.metrics import Metrics
from gateway import policy
from gateway.config import JournalConfig, RouteConfig
from gateway.router import Router
from gateway.routes import RouteTable
from gateway.store import Incoming, Store

MESSAGES = 20_000
WARMUP = 2_000
BATCH = 50  # a burst's worth: what the agent commits together under load
TRICKLE = 500  # messages arriving one at a time (no group commit to share the fsync)
BODY = b"m" * 100
GOAL_BYTES_PER_MESSAGE = 2048


def write_bytes() -> int:
    """Bytes this process caused to be written to storage so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


class NoopAdapter(Adapter):
    """Confirms every message at once: measures the router and the journal alone."""

    def __init__(self) -> None:
        self.name = "noop"
        self.count = 0
        self.reached = trio.Event()
        self.target_count = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        self.count += 1
        if self.count >= self.target_count:
            self.reached.set()
        return Delivered()

    def health(self) -> Health:
        return Health(ok=True, state="noop")


# Room for every message: this measures delivery, not what a full queue drops.
ROUTES = RouteTable(
    (RouteConfig(name="bench", deliver=(LogTarget("noop"),), queue_max_messages=10 * MESSAGES),)
)


def incoming(batch_size: int) -> list[policy.Admission]:
    now = time.time()
    return [
        policy.admit(
            Incoming(
                push_message_url=f"https://push.example/m/{uuid.uuid4().hex}",
                route="bench",
                plaintext=BODY,
                raw_body=b"",
                headers=(),
                received_at=now,
            ),
            ROUTES,
            now,
        )
        for _ in range(batch_size)
    ]


async def _pump(store: Store, router: Router, adapter: NoopAdapter, count: int, batch: int) -> None:
    adapter.target_count = adapter.count + count
    adapter.reached = trio.Event()
    for _ in range(count // batch):
        results = await trio.to_thread.run_sync(store.ingest, incoming(batch))
        router.notify()
        # As the agent does once its DELETEs succeeded: keeps the table of owed acks small.
        acked = [r.push_message_url for r in results if r.ack_now]
        await trio.to_thread.run_sync(store.mark_acked, acked)
    await adapter.reached.wait()


async def _router_run(state_dir: Path) -> dict[str, float]:
    store = Store.open(state_dir, journal=JournalConfig())
    adapter = NoopAdapter()
    router = Router(store, ROUTES, {"noop": adapter}, Metrics(), on_ack=lambda urls: None)
    results: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        await _pump(store, router, adapter, WARMUP, BATCH)
        written, started = write_bytes(), time.perf_counter()
        await _pump(store, router, adapter, MESSAGES, BATCH)
        results["elapsed"] = time.perf_counter() - started
        results["written"] = write_bytes() - written
        written = write_bytes()
        await _pump(store, router, adapter, TRICKLE, 1)
        results["trickle_written"] = write_bytes() - written
        nursery.cancel_scope.cancel()
    results["transactions"] = store.transactions
    store.close()
    return results


def _floor(state_dir: Path) -> dict[str, float]:
    """Bare SQLite: insert BATCH rows in one transaction, delete them in another."""
    state_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(str(state_dir / "floor.sqlite3"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, url TEXT, body BLOB)")

    def rounds(count: int, batch: int) -> None:
        for _ in range(count // batch):
            rows = [(f"https://push.example/m/{uuid.uuid4().hex}", BODY) for _ in range(batch)]
            conn.execute("BEGIN")
            cursor = conn.executemany("INSERT INTO m (url, body) VALUES (?, ?) RETURNING id", rows)
            ids = [(row[0],) for row in cursor.fetchall()]
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM m WHERE id = ?", ids)
            conn.execute("COMMIT")

    rounds(WARMUP, BATCH)
    written, started = write_bytes(), time.perf_counter()
    rounds(MESSAGES, BATCH)
    results = {"elapsed": time.perf_counter() - started, "written": write_bytes() - written}
    written = write_bytes()
    rounds(TRICKLE, 1)
    results["trickle_written"] = write_bytes() - written
    conn.close()
    return results


def _row(label: str, value: float, floor: float, unit: str, fmt: str = ",.0f") -> str:
    ratio = value / floor if floor else float("nan")
    return f"| {label} | {value:{fmt}} {unit} | {floor:{fmt}} {unit} | {ratio:.2f} |"


def main(argv: Sequence[str] = ()) -> None:
    """Print the table (figures beside the bare-SQLite floor, as ratios)."""
    base = Path(tempfile.mkdtemp(prefix="fieldgate-bench-", dir="/var/tmp"))
    try:
        base.chmod(0o700)
        floor = _floor(base / "floor")
        ours = trio.run(_router_run, base / "router")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rate, floor_rate = MESSAGES / ours["elapsed"], MESSAGES / floor["elapsed"]
    per_msg, floor_per_msg = ours["written"] / MESSAGES, floor["written"] / MESSAGES
    trickle, floor_trickle = ours["trickle_written"] / TRICKLE, floor["trickle_written"] / TRICKLE
    print(f"{MESSAGES:,} messages of {len(BODY)} bytes, ingest batches of {BATCH}, one no-op")
    print(f"target, journal on disk (WAL, synchronous=FULL); after {WARMUP:,} warm-up messages.")
    print()
    print("| figure | router | floor (bare SQLite insert+delete) | ratio |")
    print("| --- | --- | --- | --- |")
    print(_row("deliveries per second", rate, floor_rate, "msg/s"))
    print(_row(f"bytes written per message (batches of {BATCH})", per_msg, floor_per_msg, "B"))
    print(_row("bytes written per message (one at a time)", trickle, floor_trickle, "B"))
    print()
    verdict = "met" if per_msg < GOAL_BYTES_PER_MESSAGE else "NOT met"
    print(f"flash-wear goal (< {GOAL_BYTES_PER_MESSAGE} B per message at steady state): {verdict}")
    print(f"journal transactions committed: {ours['transactions']:,.0f}")


if __name__ == "__main__":
    main()
