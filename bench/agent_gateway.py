"""The gateway side of the agent benchmark (a child process): the real Agent and Store.

``python -m bench.agent_gateway MODE SERVICE_URL STATE_DIR ROUTES EXPECT [KEEPALIVE [PROFILE]]``

MODE is one of
  ``setup``  subscribe every route (comma-separated ROUTES), write STATE_DIR/keys.json, exit;
  ``drain``  connect and time receive + decrypt + journal + ack of EXPECT stored messages;
  ``live``   connect, report ``ready``, then time EXPECT messages pushed while connected;
  ``idle``   connect, report ``ready``, then do nothing (the orchestrator watches /proc).

Upstream path only: ``on_journalled`` is a no-op (no router), the journal is SQLite on disk with
the real group commit. With PROFILE set, ``drain``/``live`` run under cProfile into that file.
"""

from __future__ import annotations

import cProfile
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from adapters.log_config import LogAdapterConfig, LogTarget
from bench.agent_common import (
    CORE_UNDER_TEST,
    POLL_INTERVAL,
    RouteKeys,
    cpu_seconds_self,
    emit,
    pin,
    rss_kib,
    write_keys,
)
from fieldgate_common.metrics import Metrics
from gateway.config import Config, PushConfig, RouteConfig
from gateway.routes import CurrentRoutes, RouteTable
from gateway.store import Store
from gateway.upstream.supervisor import Upstream
from gateway.webpush.crypto import SubscriptionKeys

# Queue limits far above the benchmark's N: messages pile up in the journal (there is no router
# draining it), and the drop-oldest path is not what this benchmark measures.
QUEUE_MAX_MESSAGES = 10_000_000
QUEUE_MAX_BYTES = 4 * 1024**3
# RSS is sampled this many times over a run (memory must be flat).
RSS_SAMPLES = 10
SETUP_LIMIT = 30.0  # seconds to subscribe on loopback; a failure, not a measurement


def make_config(service: str, state_dir: Path, routes: list[str], keepalive: float) -> Config:
    """Routes that journal for one (never delivered) log target, like a router-less gateway."""
    return Config(
        push=PushConfig(service=service, state_dir=state_dir, keepalive=keepalive),
        routes=tuple(
            RouteConfig(
                name=name,
                deliver=(LogTarget(adapter="log"),),
                queue_max_messages=QUEUE_MAX_MESSAGES,
                queue_max_bytes=QUEUE_MAX_BYTES,
            )
            for name in routes
        ),
        adapters={"log": LogAdapterConfig(name="log")},
    )


def _connected(agent: Upstream) -> bool:
    return agent.status.state == "connected" and bool(agent.subscription_infos())


async def _wait(predicate: Callable[[], bool], limit: float) -> None:
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polls state owned by the agent's tasks
            await trio.sleep(POLL_INTERVAL)


def _all_acked(agent: Upstream, expect: int) -> bool:
    """Every one of ``expect`` distinct messages journalled and its DELETE answered.

    The acknowledgement counter also counts the 404s of messages the service pushed twice, so it
    only gates the (store-locking) check of the dedupe records and the acks still owed: every
    acknowledgement the journal has not recorded is one answered and waiting for its record,
    which comes with the next commit or alone ACK_RECORD_DELAY later (a minute, which the run does
    not wait for: it did, and a drain of 3,000 read 95 msg/s). A batch just committed and not
    yet owed is in the journal's list and not answered, so it does not end the run early.
    """
    if agent.m.acked.get() < expect:
        return False
    if agent.store.dedupe_records() < expect or agent.acks.owed:
        return False
    return set(agent.store.pending_acks()) <= agent.acks.answered


async def setup(agent: Upstream, store: Store, state_dir: Path, routes: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await _wait(lambda: _connected(agent) and len(store.subscriptions()) == routes, SETUP_LIMIT)
        nursery.cancel_scope.cancel()
    found = []
    for record in store.subscriptions():
        keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
        found.append(
            RouteKeys(
                record.route,
                record.push_url,
                record.set_url or record.subscription_url,
                record.private_key_der.hex(),
                record.auth_secret.hex(),
                keys.p256dh.hex(),
            )
        )
    write_keys(state_dir / "keys.json", found)
    emit("setup", routes=len(found))


async def measure(agent: Upstream, mode: str, expect: int) -> None:
    """Time ``expect`` acknowledged messages; drain timing starts before the connection."""
    acked = agent.m.acked
    async with trio.open_nursery() as nursery:
        rss_start = rss_kib()
        t0, cpu0 = time.monotonic(), cpu_seconds_self()
        await nursery.start(agent.run)
        if mode in ("live", "idle"):
            await _wait(lambda: _connected(agent), SETUP_LIMIT)
            rss_start = rss_kib()
            emit("ready", rss_kib=rss_start)
            if mode == "idle":
                await trio.sleep_forever()
            t0, cpu0 = time.monotonic(), cpu_seconds_self()
        samples: list[tuple[int, int]] = []
        step = max(1, expect // RSS_SAMPLES)
        next_sample = step
        while not _all_acked(agent, expect):
            await trio.sleep(POLL_INTERVAL)
            if acked.get() >= next_sample:
                samples.append((int(acked.get()), rss_kib()))
                next_sample += step
        t1, cpu1 = time.monotonic(), cpu_seconds_self()
        counts = agent.store.take_counts()
        emit(
            "result",
            t_start=t0,
            t_end=t1,
            messages=expect,
            acked=int(acked.get()),
            journalled=sum(counts.journalled.values()),
            duplicates=counts.duplicates,
            dead_letters=sum(counts.dead_letters.values()),
            commits=agent.store.transactions,
            cpu_seconds=cpu1 - cpu0,
            rss_start_kib=rss_start,
            rss_end_kib=rss_kib(),
            rss_samples=samples,
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    mode, service, state_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    routes, expect = sys.argv[4].split(","), int(sys.argv[5])
    keepalive = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
    profile = sys.argv[7] if len(sys.argv) > 7 else ""
    pin(CORE_UNDER_TEST)
    config = make_config(service, state_dir, routes, keepalive)
    store = Store.open(state_dir, journal=config.journal)
    agent = Upstream(
        config,
        CurrentRoutes(RouteTable(config.routes)),
        store,
        Metrics(),
        on_journalled=lambda messages: None,
    )
    try:
        if mode == "setup":
            trio.run(setup, agent, store, state_dir, len(routes))
        elif profile:
            cProfile.runctx(
                "trio.run(measure, agent, mode, expect)", globals(), locals(), filename=profile
            )
        else:
            trio.run(measure, agent, mode, expect)
    finally:
        store.close()


if __name__ == "__main__":
    main()
