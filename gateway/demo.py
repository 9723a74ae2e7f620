"""``fieldgate demo``: the whole pipeline on loopback, with nothing configured and no hardware.

It starts the reference push service, a mosquitto broker (when installed) and the C device
simulator on a pseudo-terminal (when built), runs a gateway with one route to each, sends a few
encrypted messages as an application server would (urgency, topic, a receipt), and prints each
message's journey: sent, pushed and decrypted, journalled, delivered to the device, acknowledged
upstream, receipt back to the sender. Everything runs in a temporary directory that is removed at
the end, Ctrl-C included.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import msgpack
import trio

from adapters.base import AdapterConfig, TargetConfig
from adapters.log_config import LogAdapterConfig, LogTarget
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.serial_config import SerialAdapterConfig, SerialTarget
from gateway.app import Gateway
from gateway.config import (
    AckPolicy,
    Config,
    JournalConfig,
    PushConfig,
    RouteConfig,
    StatusConfig,
)
from gateway.http1 import request
from gateway.upstream.autopush import ack_key
from gateway.webpush.crypto import PushSubscriptionInfo, encrypt
from pushservice.autopush import AutopushService, AutopushSettings
from pushservice.service import PushService
from pushservice.settings import ServiceSettings

# Where `make demo` builds the simulator; FIELDGATE_FBSIM may point elsewhere.
FBSIM = Path(__file__).resolve().parents[1] / "firmware-bridge" / "build" / "fbsim"
MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")
# Each stage of a message's journey is waited for at most this long.
STAGE_LIMIT = 15.0
STARTUP_LIMIT = 10.0
# How often the demo looks at the device record, the MQTT subscriber and the receipts: its
# journey times are this much late at most.
POLL_INTERVAL = 0.005

STAGES = ("sent", "received", "journalled", "device", "acknowledged", "receipt")
STAGE_TITLES = {
    "sent": "sent by the app server",
    "received": "pushed + decrypted",
    "journalled": "journalled",
    "device": "delivered to device",
    "acknowledged": "acknowledged upstream",
    "receipt": "receipt back",
}


@dataclass
class Journey:
    """One demo message and when each stage happened (monotonic seconds)."""

    label: str
    route: str
    body: bytes
    urgency: str
    topic: str | None
    receipt: bool
    message_url: str = ""
    message_id: str | None = None
    times: dict[str, float] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)

    def mark(self, stage: str, when: float | None = None, detail: str = "") -> bool:
        if stage in self.times:
            return False
        self.times[stage] = time.monotonic() if when is None else when
        if detail:
            self.detail[stage] = detail
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mosquitto_binary() -> str | None:
    for candidate in MOSQUITTO_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@contextmanager
def _child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Demo:
    """The demo's state: its directory, its peers, the journeys."""

    def __init__(self, workdir: Path, *, out: TextIO | None = None) -> None:
        self.workdir = workdir
        self.out = out or sys.stdout
        self.t0 = time.monotonic()
        self.journeys: list[Journey] = []
        self.by_url: dict[str, Journey] = {}
        self.by_id: dict[str, Journey] = {}
        self.notes: list[str] = []
        self.mqtt_seen: list[tuple[str, str]] = []
        self.delivered_routes: set[str] = set()  # routes with ack = "delivered"
        # Events for a message whose 201/202 has not reached the sender yet (the push to the
        # gateway can overtake the answer to the application server).
        self.early: dict[str, list[tuple[str, str | None, float]]] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def event(
        self, journey: Journey, stage: str, detail: str = "", when: float | None = None
    ) -> None:
        if journey.mark(stage, when, detail=detail):
            elapsed = (journey.times[stage] - journey.times.get("sent", journey.times[stage])) * 1e3
            extra = f"  ({detail})" if detail else ""
            self.say(f"  {journey.label:<10} +{elapsed:7.1f} ms  {STAGE_TITLES[stage]}{extra}")

    # ------------------------------------------------------------------- gateway events

    def observe(self, event: str, url: str, message_id: str | None) -> None:
        """The agent's observer: called in the trio thread as messages move."""
        journey = self.by_url.get(url)
        if journey is None:
            self.early.setdefault(url, []).append((event, message_id, time.monotonic()))
            return
        self._apply(journey, event, message_id)

    def register(self, journey: Journey) -> None:
        """The sender learnt the message URL: replay what the gateway already did with it."""
        self.by_url[journey.message_url] = journey
        for event, message_id, when in self.early.pop(journey.message_url, []):
            self._apply(journey, event, message_id, when)

    def _apply(
        self, journey: Journey, event: str, message_id: str | None, when: float | None = None
    ) -> None:
        if message_id is not None and journey.message_id is None:
            journey.message_id = message_id
            self.by_id[message_id] = journey
        if event == "acknowledged" and journey.route in self.delivered_routes:
            # Under ack = "delivered" the DELETE waits for the device's application ACK, so the
            # device has it by now (the simulator's record file is only read every few ms).
            self.event(journey, "device", "the device's application ACK", when=when)
        if event in ("received", "journalled", "acknowledged"):
            self.event(journey, event, when=when)
        elif event in ("dead_lettered", "refused", "expired"):
            self.event(journey, "journalled", event, when=when)

    def device_saw(self, message_id: str, how: str) -> None:
        journey = self.by_id.get(message_id)
        if journey is not None:
            self.event(journey, "device", how)


def _config(
    workdir: Path, mqtt_port: int | None, serial_port: Path | None, *, autopush: bool = False
) -> Config:
    adapters: dict[str, AdapterConfig] = {}
    routes: list[RouteConfig] = []
    if serial_port is not None:
        adapters["valve-controller"] = SerialAdapterConfig(
            name="valve-controller", port=str(serial_port), ping_interval=30.0
        )
        targets: tuple[TargetConfig, ...] = (SerialTarget(adapter="valve-controller"),)
        # autopush sends no delivery receipts: the stored policy there (check-config says so).
        ack: AckPolicy = "stored" if autopush else "delivered"
        routes.append(RouteConfig(name="greenhouse-valves", deliver=targets, ack=ack, max_age=3600))
    if mqtt_port is not None:
        adapters["site-broker"] = MqttAdapterConfig(name="site-broker", port=mqtt_port)
        routes.append(
            RouteConfig(
                name="site-telemetry",
                deliver=(MqttTarget(adapter="site-broker", topic="greenhouse/{route}/{id}"),),
            )
        )
    if not routes:
        adapters["device-log"] = LogAdapterConfig(name="device-log", path=workdir / "device.log")
        routes.append(RouteConfig(name="device-log", deliver=(LogTarget(adapter="device-log"),)))
    return Config(
        push=PushConfig(
            service="http://127.0.0.1:1/subscribe",  # replaced once the service listens
            state_dir=workdir / "state",
            keepalive=60.0,
        ),
        routes=tuple(routes),
        adapters=adapters,
        status=StatusConfig(listen="127.0.0.1:0"),
        journal=JournalConfig(),
    )


async def _send(
    demo: Demo, journey: Journey, info: PushSubscriptionInfo, channel_id: str | None = None
) -> None:
    body = encrypt(journey.body, p256dh=info.p256dh, auth_secret=info.auth)
    headers = [
        ("ttl", "600"),
        ("content-encoding", "aes128gcm"),
        ("content-type", "application/octet-stream"),
        ("urgency", journey.urgency),
    ]
    if journey.topic:
        headers.append(("topic", journey.topic))
    if journey.receipt:
        headers.append(("prefer", "respond-async"))
    sent_at = time.monotonic()
    response = await request("POST", info.endpoint, body, headers=headers)
    values = dict(response.headers)
    journey.message_url = values.get("location", "")
    if channel_id is not None:
        # autopush: the gateway knows the message by its channel and version (the last segment
        # of the Location the service answered).
        journey.message_url = ack_key(channel_id, journey.message_url.rsplit("/", 1)[-1])
    how = f"HTTP {response.status}, {len(body)} bytes, urgency {journey.urgency}"
    if journey.topic:
        how += f", topic {journey.topic}"
    demo.event(journey, "sent", how, when=sent_at)
    demo.register(journey)
    link = values.get("link", "")
    if journey.receipt and "<" in link:
        journey.detail["receipt_url"] = link[link.index("<") + 1 : link.index(">")]


async def _watch_receipts(demo: Demo) -> None:
    while True:
        for journey in demo.journeys:
            url = journey.detail.get("receipt_url")
            if not url or "receipt" in journey.times:
                continue
            response = await request("GET", url)
            for item in json.loads(response.body or b"[]"):
                if item.get("message") == journey.message_url:
                    demo.event(journey, "receipt", f"HTTP {item.get('status')}")
        await trio.sleep(POLL_INTERVAL)


def _watch_mqtt(demo: Demo, port: int, stop: threading.Event, ready: threading.Event) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_client: object, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        message_id = msg.topic.rsplit("/", 1)[-1]
        demo.notes.append(f"MQTT {msg.topic}: {msg.payload!r}")
        demo.mqtt_seen.append((message_id, msg.topic))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("greenhouse/#", qos=1)
    client.loop_start()
    ready.set()
    stop.wait()
    client.loop_stop()
    client.disconnect()


async def _watch_devices(demo: Demo, record: Path | None) -> None:
    seen_lines = 0
    while True:
        for message_id, topic in list(demo.mqtt_seen):
            demo.device_saw(message_id, f"MQTT subscriber got it on {topic}")
        if record is not None:
            lines = await trio.to_thread.run_sync(_read_lines, record)
            for line in lines[seen_lines:]:
                with suppress(ValueError, msgpack.UnpackException):
                    _mid, payload_hex = line.split(" ", 1)
                    envelope = msgpack.unpackb(bytes.fromhex(payload_hex.strip()), raw=False)
                    demo.device_saw(str(envelope["id"]), "the C device simulator processed it")
            seen_lines = len(lines)
        await trio.sleep(POLL_INTERVAL)


async def run_demo(workdir: Path, *, keep_running: bool = False, autopush: bool = False) -> int:
    """Run the demo in ``workdir`` (``autopush``: against the autopush double, as a gateway
    pointed at Mozilla's push service would run); returns the exit status."""
    demo = Demo(workdir)
    demo.say("fieldgate demo: a Web Push gateway, end to end on loopback\n")
    mosquitto = _mosquitto_binary()
    fbsim = FBSIM if FBSIM.exists() else None
    with _maybe_children(workdir, mosquitto, fbsim) as (mqtt_port, serial_port, record):
        async with trio.open_nursery() as nursery:
            if autopush:
                double = AutopushService(AutopushSettings())
                await nursery.start(partial(double.serve, "127.0.0.1", 0))
                service_url = double.ws_url
                demo.say(f"push service   {service_url}  (autopush double: Mozilla's protocol)")
            else:
                service = PushService(ServiceSettings(redelivery_after=5.0))
                await nursery.start(partial(service.serve, "127.0.0.1", 0))
                service_url = service.subscribe_url
                demo.say(f"push service   {service_url}  (reference RFC 8030 service)")
            demo.say(
                "MQTT broker    "
                + (f"mosquitto on 127.0.0.1:{mqtt_port}" if mqtt_port else "not installed: skipped")
            )
            demo.say(
                "serial device  "
                + (f"C simulator on {serial_port}" if serial_port else "not built: skipped")
            )
            base = _config(workdir, mqtt_port, serial_port, autopush=autopush)
            config = Config(
                push=PushConfig(
                    service=service_url,
                    state_dir=base.push.state_dir,
                    keepalive=base.push.keepalive,
                ),
                routes=base.routes,
                adapters=base.adapters,
                status=base.status,
            )
            demo.delivered_routes = {r.name for r in config.routes if r.ack == "delivered"}
            gateway = Gateway(config, observer=demo.observe)
            await nursery.start(gateway.run)
            with trio.fail_after(STARTUP_LIMIT):
                await _poll_until(
                    lambda: len(gateway.upstream.subscription_infos()) == len(config.routes)
                )
            infos = gateway.upstream.subscription_infos()
            demo.say(f"status page    http://{gateway.status_address}/\n")
            for route in config.routes:
                demo.say(f"route {route.name} (ack: {route.ack}) -> PushSubscription:")
                demo.say("  " + json.dumps(infos[route.name].to_json()))
            demo.say("")
            stop = threading.Event()
            if mqtt_port:
                ready = threading.Event()
                threading.Thread(
                    target=_watch_mqtt, args=(demo, mqtt_port, stop, ready), daemon=True
                ).start()
                await trio.to_thread.run_sync(ready.wait, 5.0)
            nursery.start_soon(_watch_receipts, demo)
            nursery.start_soon(_watch_devices, demo, record)
            plan = _plan(config, receipts=not autopush)
            channels = {r.route: r.subscription_url for r in gateway.store.subscriptions()}
            demo.journeys.extend(plan)
            try:
                for journey in plan:
                    channel = channels[journey.route] if autopush else None
                    await _send(demo, journey, infos[journey.route], channel)
                    with trio.move_on_after(STAGE_LIMIT):
                        await _poll_until(partial(_done, journey))
                    demo.say("")
                _summary(demo, gateway)
                if keep_running:
                    demo.say("running until Ctrl-C ...")
                    await trio.sleep_forever()
            finally:
                stop.set()
                nursery.cancel_scope.cancel()
    return 0 if all(_done(j) for j in demo.journeys) else 1


def _plan(config: Config, *, receipts: bool = True) -> list[Journey]:
    journeys: list[Journey] = []
    for route in config.routes:
        if route.name == "greenhouse-valves":
            journeys.append(
                Journey(
                    "valve-1", route.name, b'{"valve": 3, "open": true}', "high", None, receipts
                )
            )
            journeys.append(
                Journey(
                    "valve-2",
                    route.name,
                    b'{"valve": 3, "open": false}',
                    "normal",
                    "valve3",
                    receipts,
                )
            )
        else:
            journeys.append(
                Journey("telemetry", route.name, b'{"interval_s": 60}', "low", "interval", receipts)
            )
    return journeys


def _expected(journey: Journey) -> tuple[str, ...]:
    return STAGES if journey.receipt else STAGES[:-1]


def _done(journey: Journey) -> bool:
    return all(stage in journey.times for stage in _expected(journey))


def _summary(demo: Demo, gateway: Gateway) -> None:
    demo.say("summary (ms after sending)")
    header = f"  {'message':<10} {'route':<18}" + "".join(f"{s[:12]:>13}" for s in STAGES[1:])
    demo.say(header)
    for journey in demo.journeys:
        start = journey.times.get("sent", 0.0)
        cells = []
        for stage in STAGES[1:]:
            when = journey.times.get(stage)
            cells.append(f"{(when - start) * 1e3:13.1f}" if when is not None else f"{'-':>13}")
        demo.say(f"  {journey.label:<10} {journey.route:<18}" + "".join(cells))
    ok, reason = gateway.health()
    delivered = sum(1 for j in demo.journeys if "device" in j.times)
    demo.say(
        f"\n{delivered}/{len(demo.journeys)} delivered to devices; gateway health: "
        f"{'ok' if ok else reason}"
    )
    demo.say(
        f"status page: http://{gateway.status_address}/ (JSON at /status, Prometheus at /metrics)"
    )


@contextmanager
def _maybe_children(
    workdir: Path, mosquitto: str | None, fbsim: Path | None
) -> Iterator[tuple[int | None, Path | None, Path | None]]:
    with (
        _optional_mosquitto(workdir, mosquitto) as mqtt_port,
        _optional_fbsim(workdir, fbsim) as (serial_port, record),
    ):
        yield mqtt_port, serial_port, record


@contextmanager
def _optional_mosquitto(workdir: Path, binary: str | None) -> Iterator[int | None]:
    if binary is None:
        yield None
        return
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with _child([binary, "-c", str(conf)], workdir / "mosquitto.log"):
        deadline = time.monotonic() + STARTUP_LIMIT
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port


@contextmanager
def _optional_fbsim(
    workdir: Path, binary: Path | None
) -> Iterator[tuple[Path | None, Path | None]]:
    if binary is None:
        yield None, None
        return
    record = workdir / "device-record.txt"
    with _child(
        [str(binary), "--record", str(record), "--id", "demo-valves"], workdir / "fbsim.log"
    ) as proc:
        assert proc.stdout is not None
        pty = proc.stdout.readline().decode().strip()
        link = workdir / "usb-fieldgate_demo-if00"  # as /dev/serial/by-id would name it
        link.symlink_to(pty)
        yield link, record


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


async def _poll_until(predicate: Callable[[], bool]) -> None:
    # The demo watches other processes' output (files, sockets): it has to look, not wait.
    while not predicate():  # noqa: ASYNC110 - polling other processes' output
        await trio.sleep(POLL_INTERVAL)


def main(*, keep_running: bool = False, workdir: Path | None = None, autopush: bool = False) -> int:
    """Run the demo in a temporary directory (removed afterwards) or in ``workdir``."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return trio.run(partial(run_demo, workdir, keep_running=keep_running, autopush=autopush))
    with tempfile.TemporaryDirectory(prefix="fieldgate-demo-") as tmp:
        return trio.run(partial(run_demo, Path(tmp), keep_running=keep_running, autopush=autopush))
