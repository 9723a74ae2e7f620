"""Run ``fieldgate run`` as a real child process for kill/restart tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import trio

from gateway.store import DB_NAME
from tests.agent_harness import wait_until

START_LIMIT = 20.0
# One route to a log adapter writing to ``{deliveries}``: what the tests read back as "the device".
LOG_ROUTE = """
[adapters.out]
type = "log"
path = "{deliveries}"

[[routes]]
name = "valves"
deliver = [ {{ adapter = "out" }} ]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, service: str, state_dir: Path, *, status_port: int, body: str) -> Path:
    """A config file: [push] and [status] from arguments, adapters and routes from ``body``."""
    path.write_text(
        f"""
[push]
service = "{service}"
state_dir = "{state_dir}"
keepalive = "30s"
backoff_base = "50ms"
backoff_cap = "500ms"

[status]
listen = "127.0.0.1:{status_port}"

[log]
level = "debug"
{body}
"""
    )
    return path


class GatewayProcess:
    """A gateway child process; READY is awaited over a real NOTIFY_SOCKET.

    Use it as a context manager (``with GatewayProcess(...) as gw``) so that a failing test
    never leaves a gateway running.
    """

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __init__(
        self, config: Path, status_port: int, log_path: Path, *, args: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.status_port = status_port
        self.log_path = log_path
        self.args = args  # more `fieldgate run` arguments (--reset)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        notify_path = self.config.parent / f"notify-{time.monotonic_ns()}.sock"
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        env.pop("JOURNAL_STREAM", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a child the test kills, never awaited
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            with trio.fail_after(START_LIMIT):
                while True:
                    data = await sock.recv(4096)
                    if b"READY=1" in data.split(b"\n"):
                        return
        except trio.TooSlowError:
            raise AssertionError(f"gateway not ready:\n{self.log_path.read_text()}") from None
        finally:
            sock.close()
            notify_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or acknowledge anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}", timeout=5) as r:
            return bytes(r.read())

    def metric(self, name: str) -> float:
        """Sum of every series of one metric on /metrics."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def status(self) -> dict[str, object]:
        return dict(json.loads(self.get("/status")))


async def subscription_of(
    gateway: GatewayProcess, config: Path, route: str = "valves"
) -> dict[str, object]:
    """A route's PushSubscription JSON, as ``fieldgate subscriptions`` prints it, once the
    running gateway has subscribed it."""
    from tests.agent_harness import wait_until

    def subscribed() -> bool:
        routes = gateway.status()["routes"]
        assert isinstance(routes, list)
        return any(r["name"] == route and r["push_resource_id"] for r in routes)

    await wait_until(subscribed, f"route {route} subscribed")
    out = await trio.run_process(
        [sys.executable, "-m", "gateway", "subscriptions", "--config", str(config), route],
        capture_stdout=True,
    )
    return dict(json.loads(out.stdout))


async def send_all(info: dict[str, object], bodies: list[bytes], ttl: int = 600) -> None:
    """POST each body with pywebpush (encrypted as an application server does), in a thread."""
    from pywebpush import webpush

    def post() -> None:
        for body in bodies:
            response = webpush(info, body, ttl=ttl)  # type: ignore[arg-type]
            assert response.status_code == 201, response.text

    await trio.to_thread.run_sync(post)


def journalled_ids(deliveries: Path) -> dict[str, set[str]]:
    """What a log adapter's delivery file shows: body -> the message ids it was delivered under
    (a message journalled twice appears under two ids)."""
    ids: dict[str, set[str]] = {}
    if deliveries.exists():
        for line in deliveries.read_text().splitlines():
            record = json.loads(line)
            ids.setdefault(record["body"], set()).add(record["id"])
    return ids


def owed_acks(journal: Path) -> int:
    """Journal rows whose acknowledgement is not recorded as confirmed (read from outside)."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM journal WHERE ack = 'owed'").fetchone()[0])
    finally:
        conn.close()


@dataclass(frozen=True)
class GatewayRig:
    """A configuration with one log route (``deliveries`` is "the device") and the gateway
    processes started on it, killed when ``stack`` closes."""

    config: Path
    deliveries: Path
    status_port: int
    stack: ExitStack

    @classmethod
    def create(cls, tmp_path: Path, service_url: str, stack: ExitStack) -> GatewayRig:
        deliveries = tmp_path / "deliveries.jsonl"
        status_port = free_port()
        config = write_config(
            tmp_path / "config.toml",
            service_url,
            tmp_path / "state",
            status_port=status_port,
            body=LOG_ROUTE.format(deliveries=deliveries),
        )
        return cls(config, deliveries, status_port, stack)

    @property
    def journal(self) -> Path:
        return self.config.parent / "state" / DB_NAME

    async def started(self) -> GatewayProcess:
        """A gateway process on this configuration, ready."""
        log = self.config.parent / "gateway.log"
        gateway = self.stack.enter_context(GatewayProcess(self.config, self.status_port, log))
        await gateway.start()
        return gateway

    def delivered(self) -> int:
        return len(journalled_ids(self.deliveries))

    async def restarted_delivering_each_once(
        self, bodies: Sequence[bytes], acknowledged: Callable[[], bool]
    ) -> GatewayProcess:
        """A new gateway takes over: every message acknowledged (as the service tells) and
        journalled, each exactly once."""
        restarted = await self.started()
        await wait_until(acknowledged, "every message acknowledged")
        await wait_until(lambda: self.delivered() == len(bodies), "every delivery")
        journal = journalled_ids(self.deliveries)
        assert sorted(journal) == sorted(b.decode() for b in bodies)
        assert all(len(ids) == 1 for ids in journal.values()), journal
        return restarted


async def sigterm_records_confirmations(rig: GatewayRig) -> None:
    """Every acknowledgement confirmed, then SIGTERM: the journal owes none any more, so the
    next start sends nothing again (the contrast to SIGKILL)."""
    gateway = await rig.started()
    info = await subscription_of(gateway, rig.config)
    bodies = [b"stop-%d" % i for i in range(4)]
    await send_all(info, bodies)
    confirmed = "fieldgate_messages_acknowledged_total"
    await wait_until(lambda: gateway.metric(confirmed) == len(bodies), "every ack confirmed")
    # Confirmed, not yet recorded: that waits for the next commit (or 30 s).
    assert owed_acks(rig.journal) > 0
    assert gateway.terminate() == 0
    assert owed_acks(rig.journal) == 0
