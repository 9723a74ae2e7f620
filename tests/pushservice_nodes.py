"""Push-service nodes as real processes, and HAProxy in TCP mode in front of them.

``NodeProcess`` runs ``fieldgate push-service --config FILE`` (a real node: PostgreSQL store,
PROXY protocol, status endpoint); ``HAProxy`` balances TCP connections over the nodes with
``send-proxy-v2`` and health checks, as the README's deployment does. Both are context
managers that kill what they started.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import trio

HOST = "127.0.0.1"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# A node starts in about a second (imports, schema check); this bounds a broken one.
START_LIMIT = 30.0
# HAProxy health checks: a killed node is out within ~0.3 s, a restarted one back as fast.
CHECK_INTERVAL_MS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate: object, what: str, limit: float = START_LIMIT) -> None:
    """Poll ``predicate()`` (a cheap check of another process) until true."""
    assert callable(predicate)
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


class NodeProcess:
    """One push-service node; ``start()`` waits for its ready file."""

    def __init__(
        self,
        directory: Path,
        *,
        storage: str,
        public_url: str,
        redelivery_after: str = "2s",
        proxy_protocol: bool = True,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.status_port = free_port()
        self.config = directory / "node.toml"
        self.ready = directory / "ready"
        self.log = directory / "node.log"
        self.config.write_text(
            f"""
[service]
listen = "{HOST}:{self.port}"
public_url = "{public_url}"
proxy_protocol = {"true" if proxy_protocol else "false"}
redelivery_after = "{redelivery_after}"
drain_timeout = "5s"

[storage]
url = "{storage}"
threads = 4

[status]
listen = "{HOST}:{self.status_port}"

[log]
level = "info"
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a child the test kills, never awaited
                [sys.executable, "-m", "gateway", "push-service", "--config", str(self.config),
                 "--ready-file", str(self.ready)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            await wait_for(self.ready.exists, f"node on port {self.port}")
        except AssertionError:
            raise AssertionError(f"node not ready:\n{self.log.read_text()}") from None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM (graceful drain) and wait; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def get(self, path: str) -> tuple[int, bytes]:
        """A status-endpoint request: (status, body)."""
        url = f"http://{HOST}:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, bytes(r.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metric(self, name: str) -> float:
        """Sum of every series of one metric on /metrics."""
        total = 0.0
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


class HAProxy:
    """HAProxy in TCP mode: round robin over the nodes, PROXY v2 to each, health checks."""

    def __init__(
        self,
        directory: Path,
        backends: list[int],
        *,
        port: int | None = None,
        send_proxy: bool = True,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = directory / "haproxy.cfg"
        proxy = " send-proxy-v2 check-send-proxy" if send_proxy else ""
        servers = "\n".join(
            f"  server node{i} {HOST}:{port} check inter {CHECK_INTERVAL_MS}ms fall 1 rise 1{proxy}"
            for i, port in enumerate(backends)
        )
        self.config.write_text(
            f"""
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch
frontend push
  bind {HOST}:{self.port}
  default_backend nodes
backend nodes
  balance roundrobin
{servers}
"""
        )
        self.log = directory / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> HAProxy:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-f", str(self.config), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                return self
            time.sleep(0.05)
        raise AssertionError(f"haproxy did not start:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
