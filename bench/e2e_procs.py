"""The end-to-end benchmark's long-lived peers: mosquitto, the push service, the C simulator
and the gateway (``fieldgate run`` with a generated configuration), each its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.e2e_common import CORE_PEERS, CORE_UNDER_TEST, ROOT, RouteKeys, pin, write_keys

STARTUP_LIMIT = 30.0  # seconds for a peer to come up on loopback; beyond that it is broken
POLL = 0.02  # start-up polling interval (not a measurement)
MQTT_ROUTE = "telemetry"
SERIAL_ROUTE = "valves"
MQTT_ADAPTER = "broker"
SERIAL_ADAPTER = "device"
TOPIC_PREFIX = "bench/"
# Every keepalive at the production default of 60 s (PushConfig.keepalive and the MQTT Keep
# Alive); the serial ping (default 10 s) is set to the same so that idle wake-ups can be
# compared against one period.
KEEPALIVE = 60.0
# Far above any N of the benchmark: the drop-oldest path and the journal's size limit are not
# what this benchmark measures (1,000,000 messages remembered for dedupe need ~200 MB).
QUEUE_MAX_MESSAGES = 10_000_000
JOURNAL_MAX_BYTES = "4GiB"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], limit: float = 10.0) -> int:
    """SIGTERM, SIGKILL after ``limit`` seconds; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_LIMIT
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start on port {port}")
        time.sleep(POLL)


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    pin(CORE_PEERS, proc.pid)
    _wait_port(port, proc, "mosquitto")
    return proc, port


def start_push_service(
    workdir: Path, redelivery_after: float
) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / "service.url"
    args = [sys.executable, "-m", "gateway", "push-service", "--listen", "127.0.0.1:0"]
    args += ["--ready-file", str(ready), "--redelivery-after", str(redelivery_after)]
    with (workdir / "service.log").open("wb") as log:
        proc = subprocess.Popen(
            [*args, "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT
        )
    pin(CORE_PEERS, proc.pid)
    deadline = time.monotonic() + STARTUP_LIMIT
    while not ready.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the push service did not start (see {workdir / 'service.log'})")
        time.sleep(POLL)
    return proc, ready.read_text().strip()


def start_simulator(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """fbsim on a pty (built with ``make -C firmware-bridge`` first); its record file."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "firmware-bridge"), "all"], check=True)
    record = workdir / "device-record.txt"
    args = [str(ROOT / "firmware-bridge" / "build" / "fbsim"), "--record", str(record)]
    with (workdir / "fbsim.log").open("wb") as log:
        proc = subprocess.Popen([*args, "--id", "bench-valves"], stdout=subprocess.PIPE, stderr=log)
    pin(CORE_PEERS, proc.pid)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip(), record


def write_config(
    workdir: Path, service: str, mqtt_port: int, serial_port: str, status_port: int
) -> Path:
    """The gateway's TOML: one MQTT QoS 1 route and one serial route, journal on disk."""
    path = workdir / "fieldgate.toml"
    path.write_text(
        f"""
[push]
service = "{service}"
state_dir = "{workdir / "state"}"
keepalive = "{KEEPALIVE:g}s"

[status]
listen = "127.0.0.1:{status_port}"

[journal]
max_bytes = "{JOURNAL_MAX_BYTES}"

[log]
level = "warning"

[adapters.{MQTT_ADAPTER}]
type = "mqtt"
host = "127.0.0.1"
port = {mqtt_port}
keepalive = "{KEEPALIVE:g}s"

[adapters.{SERIAL_ADAPTER}]
type = "serial"
port = "{serial_port}"
ping_interval = "{KEEPALIVE:g}s"

[[routes]]
name = "{MQTT_ROUTE}"
ack = "stored"
queue_max_messages = {QUEUE_MAX_MESSAGES}
queue_max_bytes = "{JOURNAL_MAX_BYTES}"
deliver = [{{ adapter = "{MQTT_ADAPTER}", topic = "{TOPIC_PREFIX}{{route}}", qos = 1 }}]

[[routes]]
name = "{SERIAL_ROUTE}"
ack = "stored"
queue_max_messages = {QUEUE_MAX_MESSAGES}
queue_max_bytes = "{JOURNAL_MAX_BYTES}"
deliver = [{{ adapter = "{SERIAL_ADAPTER}" }}]
"""
    )
    return path


class GatewayProcess:
    """``fieldgate run --config FILE`` as a child on the core under test; READY over a real
    NOTIFY_SOCKET, /status and /metrics over HTTP."""

    def __init__(self, config: Path, status_port: int, log: Path) -> None:
        self.config = config
        self.status_port = status_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self.ready = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, profile: Path | None = None) -> None:
        """Spawn it (under cProfile into ``profile`` if given, written when it stops);
        :meth:`poll_ready` or :meth:`wait_ready` sees READY=1."""
        path = self.config.parent / f"notify-{time.monotonic_ns()}.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(path))
        self._notify.setblocking(False)
        env = dict(os.environ, NOTIFY_SOCKET=str(path))
        env.pop("JOURNAL_STREAM", None)
        env.pop("WATCHDOG_USEC", None)
        with self.log.open("ab") as log:
            wrapper = ["-m", "cProfile", "-o", str(profile)] if profile else []
            self.proc = subprocess.Popen(
                [sys.executable, *wrapper, "-m", "gateway", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        pin(CORE_UNDER_TEST, self.proc.pid)
        self.ready = False

    def poll_ready(self) -> bool:
        """True once READY=1 has arrived (never blocks)."""
        assert self._notify is not None and self.proc is not None
        while not self.ready:
            try:
                data = self._notify.recv(4096)
            except BlockingIOError:
                break
            if b"READY=1" in data.split(b"\n"):
                self.ready = True
                path = self._notify.getsockname()
                self._notify.close()
                Path(path).unlink(missing_ok=True)
        if not self.ready and self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({self.proc.returncode}); see {self.log}")
        return self.ready

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT
        while not self.poll_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway sent no READY=1; see {self.log}")
            time.sleep(POLL)

    def get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.status_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return bytes(response.read())

    def status(self) -> dict[str, object]:
        return dict(json.loads(self.get("/status")))

    def wait_subscribed(self) -> None:
        """Until every route has a push resource and the upstream is connected."""
        deadline = time.monotonic() + STARTUP_LIMIT
        while True:
            status = self.status()
            routes = status["routes"]
            upstream = status["upstream"]
            assert isinstance(routes, list) and isinstance(upstream, dict)
            if upstream["state"] == "connected" and all(r["push_resource_id"] for r in routes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not subscribe: {status}")
            time.sleep(POLL * 5)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc, 20.0)


def export_keys(config_path: Path, out: Path) -> dict[str, RouteKeys]:
    """Read the subscriptions the (stopped) gateway made from its store; write ``out`` (0600)."""
    from gateway.config import load_config
    from gateway.store import Store
    from gateway.webpush.crypto import SubscriptionKeys

    config = load_config(config_path)
    store = Store.open(config.push.state_dir, journal=config.journal)
    try:
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
    finally:
        store.close()
    write_keys(out, found)
    return {k.route: k for k in found}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(w in series for w in wanted):
            total += float(value)
    return total


def histogram_buckets(text: str, name: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, summed over matching series."""
    bounds: dict[float, float] = {}
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        series, _, value = line.rpartition(" ")
        if not all(w in series for w in wanted):
            continue
        le = series.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        bounds[bound] = bounds.get(bound, 0.0) + float(value)
    return sorted(bounds.items())
