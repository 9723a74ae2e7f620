"""The chaos run: messages through push service, proxy, gateway, broker and serial device while
everything is broken at random; then reconcile what was accepted against what devices saw.

``python -m tests.chaos --messages 20000 [--seed N] [--duration-limit S]`` prints the report and
exits 1 on any discrepancy (lost, processed twice at a device, expired but arrived). Needs root
(the gateway's state directory is a small tmpfs that gets filled), mosquitto and a C compiler.

Topics: a share of messages carries a Topic from a small per-route pool; an unseen message is
"superseded", not lost, when a later accepted message has the same route and topic (RFC 8030
§5.4 replaces undelivered messages). Everything else accepted must arrive unless its TTL ran out.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import trio

from gateway.webpush.crypto import PushSubscriptionInfo, encrypt
from pushservice.h1client import HttpConnection
from tests.chaos_ledger import Ledger, Report, Sent, format_report, make_body
from tests.chaos_observe import MqttDevice, watch_record
from tests.chaos_peers import TMPFS_SIZE, PushServiceProcess, SerialDevice, fill_disk, tmpfs
from tests.chaos_proxy import CutMode, CuttableProxy
from tests.gateway_process import GatewayProcess, free_port
from tests.mosquitto import Mosquitto
from tests.serial_sim import build_firmware_bridge

FAULT_KINDS = (
    "gateway_kill",
    "proxy_cut",
    "mosquitto_restart",
    "pushservice_restart",
    "serial_unplug",
    "disk_full",
)
# route name -> (device kind, ack policy): both policies on both transports.
ROUTES = {
    "mqtt-stored": ("mqtt", "stored"),
    "mqtt-delivered": ("mqtt", "delivered"),
    "serial-stored": ("serial", "stored"),
    "serial-delivered": ("serial", "delivered"),
}
CUT_MODES: tuple[CutMode, ...] = ("reset", "blackhole")
URGENCIES = ("very-low", "low", "normal", "high")
LONG_TTL = 3600  # longer than any run: such a message must arrive
SHORT_TTL = (1, 6)  # short enough to run out during an outage
TOPICS_PER_ROUTE = 4
# The service pushes unacknowledged messages again after this (the gateway's ack was lost).
REDELIVERY_AFTER = 2.0
# After the last fault, everything accepted must have arrived within this.
DRAIN_LIMIT = 180.0
# Once nothing is outstanding, keep watching this long for late duplicates.
QUIET_PERIOD = 3.0
SEND_TIMEOUT = 5.0
SUBSCRIPTIONS_COMMAND = (sys.executable, "-m", "gateway", "subscriptions")


@dataclass(frozen=True)
class ChaosOptions:
    """How big and how wild the run is."""

    messages: int = 20_000
    seed: int | None = None
    duration_limit: float = 1800.0  # the whole run, start-up to reconcile
    rate: float = 300.0  # messages offered per second
    fault_gap: tuple[float, float] = (1.0, 4.0)  # quiet time between two faults
    fault_hold: tuple[float, float] = (0.5, 3.0)  # how long one fault lasts
    short_ttl_share: float = 0.15
    topic_share: float = 0.15
    body_size: tuple[int, int] = (16, 600)
    state_disk: str = TMPFS_SIZE  # the size of the gateway's state partition (a tmpfs)


@dataclass
class ChaosResult:
    """The reconciliation, the faults injected and the printable summary."""

    report: Report
    faults: Counter[str]
    text: str
    gateway_exits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.gateway_exits


def _config_text(
    service_url: str, state: Path, status_port: int, mqtt_port: int, serial_link: Path
) -> str:
    routes = []
    for name, (device, ack) in ROUTES.items():
        target = (
            '{ adapter = "broker", topic = "chaos/{route}/{id}", qos = 1 }'
            if device == "mqtt"
            else '{ adapter = "device" }'
        )
        routes.append(
            f"""
[[routes]]
name = "{name}"
ack = "{ack}"
max_age = "1h"
queue_max_messages = 100000
queue_max_bytes = "64MiB"
retry_base = "100ms"
retry_cap = "1s"
deliver = [ {target} ]
"""
        )
    return f"""
[push]
service = "{service_url}"
state_dir = "{state}"
keepalive = "2s"
backoff_base = "50ms"
backoff_cap = "1s"
connect_timeout = "3s"

[status]
listen = "127.0.0.1:{status_port}"

[log]
level = "info"

[adapters.broker]
type = "mqtt"
port = {mqtt_port}
client_id = "chaos-gateway"
reconnect_base = "100ms"
reconnect_cap = "1s"

[adapters.device]
type = "serial"
port = "{serial_link}"
ping_interval = "1s"
reopen_base = "100ms"
reopen_cap = "1s"
""" + "".join(routes)


class Chaos:
    """One chaos run in ``workdir``: the peers, the ledger, the sender and the fault driver."""

    def __init__(self, options: ChaosOptions, workdir: Path, out: Callable[[str], None]) -> None:
        self.options = options
        self.workdir = workdir
        self.say = out
        self.rng = random.Random(options.seed)
        self.ledger = Ledger()
        self.faults: Counter[str] = Counter()
        self.gateway_exits: list[str] = []
        self.sending_done = threading.Event()
        self.stop_sending = threading.Event()
        self._restarting_gateway = False
        self.state = workdir / "state"
        self.mosquitto = Mosquitto(
            workdir / "mosquitto",
            verbose=False,
            # Persist sessions across the restart fault: a subscriber's queued QoS 1 messages
            # would otherwise vanish with the broker (not the gateway's loss to measure).
            extra_config=(
                f"persistence true\npersistence_location {workdir / 'mosquitto'}/\n"
                "max_queued_messages 0\nmax_inflight_messages 0\n"
            ),
        )
        self.device = SerialDevice(workdir)
        self.service = PushServiceProcess(workdir, free_port(), redelivery_after=REDELIVERY_AFTER)
        self.proxy = CuttableProxy(self.service.port)
        self.status_port = free_port()
        self.config = workdir / "gateway.toml"
        self.gateway = GatewayProcess(self.config, self.status_port, workdir / "gateway.log")
        self.subscriber: MqttDevice | None = None

    # ------------------------------------------------------------------ set-up and tear-down

    async def run(self) -> ChaosResult:
        started = time.monotonic()
        await trio.to_thread.run_sync(build_firmware_bridge)
        with tmpfs(self.state, self.options.state_disk):
            try:
                with trio.fail_after(self.options.duration_limit):
                    async with trio.open_nursery() as nursery:
                        await self._start_peers(nursery)
                        infos = await self._subscriptions()
                        nursery.start_soon(watch_record, self.ledger, self.device.record)
                        nursery.start_soon(self._watch_gateway)
                        sender = partial(trio.to_thread.run_sync, self._send_all, infos)
                        nursery.start_soon(sender)
                        await self._inject_faults()
                        await self._drain()
                        nursery.cancel_scope.cancel()
            finally:
                self.stop_sending.set()
                await trio.to_thread.run_sync(self._stop_peers)
        now = time.monotonic()
        device_of_route = {name: device for name, (device, _ack) in ROUTES.items()}
        report = self.ledger.reconcile(now, device_of_route)
        problems = tuple(f"the gateway exited on its own: {e}" for e in self.gateway_exits)
        findings: tuple[str, ...] = ()
        if self.proxy.bad_openings:
            findings = (
                f"{len(self.proxy.bad_openings)} connection(s) to the push service did not open "
                f"with the HTTP/2 preface; first bytes: {self.proxy.bad_openings[0]!r}",
            )
        text = format_report(
            report, self.faults, now - started, self.ledger, problems=problems, findings=findings
        )
        return ChaosResult(report, self.faults, text, self.gateway_exits)

    async def _start_peers(self, nursery: trio.Nursery) -> None:
        await trio.to_thread.run_sync(self.mosquitto.start)
        await trio.to_thread.run_sync(self.device.plug)
        await self.service.start()
        await nursery.start(self.proxy.serve)
        self.config.write_text(
            _config_text(
                f"http://127.0.0.1:{self.proxy.port}/subscribe",
                self.state,
                self.status_port,
                self.mosquitto.port,
                self.device.link,
            )
        )
        await self.gateway.start()
        self.subscriber = MqttDevice(self.ledger, self.mosquitto.port, "chaos/#")
        await trio.to_thread.run_sync(self.subscriber.start)

    def _stop_peers(self) -> None:
        if self.gateway.proc is not None and self.gateway.proc.poll() is None:
            try:
                self.gateway.terminate()
            except subprocess.TimeoutExpired:
                self.gateway.kill()
        if self.subscriber is not None:
            self.subscriber.stop()
        self.service.stop()
        self.mosquitto.stop()
        self.device.unplug()

    async def _subscriptions(self) -> dict[str, PushSubscriptionInfo]:
        """Each route's PushSubscription, its endpoint pointed at the service, not the proxy."""
        with trio.fail_after(30):
            while not self._all_subscribed():  # noqa: ASYNC110 - another process's state
                await trio.sleep(0.1)
        infos = {}
        for route in ROUTES:
            out = await trio.run_process(
                [*SUBSCRIPTIONS_COMMAND, "--config", str(self.config), route],
                capture_stdout=True,
            )
            info = dict(json.loads(out.stdout))
            parts = urlsplit(str(info["endpoint"]))
            info["endpoint"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.service.port}"))
            infos[route] = PushSubscriptionInfo.from_json(json.dumps(info))
        return infos

    def _all_subscribed(self) -> bool:
        try:
            routes = self.gateway.status()["routes"]
        except OSError:
            return False
        return isinstance(routes, list) and all(r.get("push_resource_id") for r in routes)

    # ------------------------------------------------------------------ the application server

    def _send_all(self, infos: dict[str, PushSubscriptionInfo]) -> None:
        """Send every message once (thread): random route, urgency, topic, TTL and size."""
        rng = random.Random(self.rng.random())
        endpoint = next(iter(infos.values())).endpoint
        parts = urlsplit(endpoint)
        conn = HttpConnection(f"{parts.scheme}://{parts.netloc}", timeout=SEND_TIMEOUT)
        interval = 1.0 / self.options.rate
        next_at = time.monotonic()
        names = list(ROUTES)
        try:
            for seq in range(self.options.messages):
                if self.stop_sending.is_set():
                    break
                route = rng.choice(names)
                short = rng.random() < self.options.short_ttl_share
                ttl = rng.randint(*SHORT_TTL) if short else LONG_TTL
                topic = None
                if rng.random() < self.options.topic_share:
                    topic = f"t{rng.randrange(TOPICS_PER_ROUTE)}"
                message = Sent(seq, route, rng.choice(URGENCIES), topic, ttl)
                body = make_body(seq, rng.randint(*self.options.body_size))
                self._send_one(conn, infos[route], message, body)
                self.ledger.add_sent(message)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
        finally:
            conn.close()
            self.sending_done.set()

    @staticmethod
    def _send_one(
        conn: HttpConnection, info: PushSubscriptionInfo, message: Sent, body: bytes
    ) -> None:
        payload = encrypt(body, p256dh=info.p256dh, auth_secret=info.auth)
        headers = [
            ("ttl", str(message.ttl)),
            ("urgency", message.urgency),
            ("content-encoding", "aes128gcm"),
            ("content-type", "application/octet-stream"),
        ]
        if message.topic is not None:
            headers.append(("topic", message.topic))
        try:
            reply = conn.request("POST", urlsplit(info.endpoint).path, headers, payload)
        except Exception:  # any failure means "not accepted"; go on
            conn.close()
            time.sleep(0.05)  # the service is down: do not spin
            return
        message.status = reply.status
        message.answered_at = time.monotonic()
        message.location = reply.header("location") or ""

    # ------------------------------------------------------------------ faults

    async def _inject_faults(self) -> None:
        """Random faults until the sender is done and (for short runs) every kind happened."""
        pending = list(FAULT_KINDS)
        self.rng.shuffle(pending)  # every kind once first, in random order, then at random
        while not self.sending_done.is_set() or pending:
            await trio.sleep(self.rng.uniform(*self.options.fault_gap))
            kind = pending.pop() if pending else self.rng.choice(FAULT_KINDS)
            hold = self.rng.uniform(*self.options.fault_hold)
            self._note(f"fault {kind} for {hold:.1f} s")
            await self._fault(kind, hold)
            self._note(f"fault {kind} over")
            self.faults[kind] += 1

    def _note(self, text: str) -> None:
        """A timestamped line in faults.log, to line up with the peers' logs."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S") + f",{int(time.time() * 1000) % 1000:03d}"
        with (self.workdir / "faults.log").open("a") as log:
            log.write(f"{stamp} {text}\n")

    async def _fault(self, kind: str, hold: float) -> None:
        actions: dict[str, Callable[[float], Awaitable[None]]] = {
            "gateway_kill": self._kill_gateway,
            "proxy_cut": self._cut_proxy,
            "mosquitto_restart": self._restart_mosquitto,
            "pushservice_restart": self._restart_service,
            "serial_unplug": self._unplug_device,
            "disk_full": self._fill_disk,
        }
        await actions[kind](hold)

    async def _kill_gateway(self, hold: float) -> None:
        self._restarting_gateway = True
        try:
            self.gateway.kill()
            await trio.sleep(hold / 4)
            await self.gateway.start()
        finally:
            self._restarting_gateway = False

    async def _cut_proxy(self, hold: float) -> None:
        mode: CutMode = self.rng.choice(CUT_MODES)
        self._note(f"proxy cut: {mode}")
        self.proxy.cut(mode)
        await trio.sleep(hold)
        self.proxy.restore()

    async def _restart_mosquitto(self, hold: float) -> None:
        await trio.to_thread.run_sync(self.mosquitto.stop)
        await trio.sleep(hold / 2)
        await trio.to_thread.run_sync(self.mosquitto.start)

    async def _restart_service(self, hold: float) -> None:
        self.service.kill()
        await trio.sleep(hold / 2)
        await self.service.start()

    async def _unplug_device(self, hold: float) -> None:
        await trio.to_thread.run_sync(self.device.unplug)
        await trio.sleep(hold)
        await trio.to_thread.run_sync(self.device.plug)

    async def _fill_disk(self, hold: float) -> None:
        filler = self.state / "filler"
        await trio.to_thread.run_sync(fill_disk, filler)
        await trio.sleep(hold)
        filler.unlink()

    async def _watch_gateway(self) -> None:
        """A gateway exiting by itself is a finding: note it, restart it as systemd would."""
        while True:
            proc = self.gateway.proc
            if not self._restarting_gateway and proc is not None and proc.poll() is not None:
                self.gateway_exits.append(f"exit status {proc.returncode} (see gateway.log)")
                self.say(f"gateway exited by itself with status {proc.returncode}; restarting")
                self._restarting_gateway = True
                try:
                    await self.gateway.start()
                finally:
                    self._restarting_gateway = False
            await trio.sleep(0.2)

    # ------------------------------------------------------------------ the end

    async def _drain(self) -> None:
        """Wait until nothing accepted is outstanding, then a quiet period for late copies."""
        with trio.move_on_after(DRAIN_LIMIT):
            while self.ledger.outstanding(time.monotonic()):  # noqa: ASYNC110 - other processes
                await trio.sleep(0.2)
        await trio.sleep(QUIET_PERIOD)


async def run_chaos(options: ChaosOptions, workdir: Path) -> ChaosResult:
    """Run the chaos in ``workdir`` (which must exist) and reconcile."""
    return await Chaos(options, workdir, print).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--messages", type=int, default=ChaosOptions.messages)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration-limit", type=float, default=ChaosOptions.duration_limit)
    parser.add_argument("--rate", type=float, default=ChaosOptions.rate, help="messages/s")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    options = ChaosOptions(
        messages=args.messages, seed=seed, duration_limit=args.duration_limit, rate=args.rate
    )
    print(f"chaos: {options.messages} messages, seed {seed}", flush=True)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = trio.run(run_chaos, options, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fieldgate-chaos-") as tmp:
            result = trio.run(run_chaos, options, Path(tmp))
    print(result.text, flush=True)
    print(f"seed {seed}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
