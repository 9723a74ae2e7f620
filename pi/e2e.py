"""The end-to-end part of ``make pi-check``, inside an emulated Raspberry Pi OS root.

Run by ``pi/in-root.sh e2e`` as root with the check's own venv (pywebpush, paho-mqtt), in a
network namespace of its own. Everything under test is what ``scripts/install.sh`` installed:
the reference push service (``fieldgate push-service``) and the gateway from /opt/fieldgate,
the gateway started as its installed unit says (ExecStart, User, Group, SupplementaryGroups,
UMask, StateDirectory, WatchdogSec, and ExecReload for a reload), with a ``NOTIFY_SOCKET`` as
systemd would give it (systemd itself cannot run as PID 1 under qemu-user). The devices are
Debian's mosquitto with a paho subscriber, and the C simulator ``fbsim`` built from this
checkout in the root, on a pty behind a ``/dev/serial/by-id`` link. pywebpush sends; every
message must reach both, in order. Lines starting "summary: " end up in pi-check's summary.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from pywebpush import webpush

FIELDGATE = "/opt/fieldgate/venv/bin/fieldgate"
UNIT = Path("/etc/systemd/system/fieldgate.service")
CONFIG = Path("/etc/fieldgate/config.toml")
FBSIM = Path("/home/pi/fieldgate/firmware-bridge/build/fbsim")
DEVICE_LINK = Path("/dev/serial/by-id/usb-fieldgate_fbsim_pi-check-if00-port0")
WORK = Path("/run/pi-check")
MQTT_PORT = 1883
SERVICE_PORT = 8443
STATUS_PORT = 8088  # the example configuration's
MESSAGES = int(os.environ.get("PI_CHECK_MESSAGES", "20"))  # per route
TTL = 600
# Under qemu-user a Python program runs 10-30x slower than natively (more with the other
# architecture's check on the other core): start-up takes tens of seconds, not one.
START_LIMIT = 240.0
DELIVERY_LIMIT = 300.0
STOP_LIMIT = 30.0  # the unit's TimeoutStopSec=
POLL = 0.2


def summary(text: str) -> None:
    print(f"summary: e2e: {text}", flush=True)


def step(text: str, started: float) -> None:
    print(f"e2e: {text} ({time.monotonic() - started:.1f} s)", flush=True)


def wait_for(what: str, ready: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"e2e: FAILED: no {what} within {limit:g} s")
        time.sleep(POLL)


# systemd.time(7): a time span is a sequence of numbers with units; a bare number is seconds.
TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def timespan(text: str) -> float:
    """Seconds in a systemd time span such as "30s", "1min 30s" or "90"."""
    total = 0.0
    for part in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        number, unit = part
        if unit not in TIME_UNITS and unit != "":
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * TIME_UNITS.get(unit, 1.0)
    return total


@dataclass(frozen=True)
class Unit:
    """The [Service] settings of the installed unit that decide how the gateway is started."""

    exec_start: list[str]
    exec_reload: list[str]
    user: str
    group: str
    supplementary_groups: list[str]
    umask: int
    state_directory: str
    state_directory_mode: int
    watchdog_seconds: float

    @classmethod
    def read(cls, path: Path) -> Unit:
        values: dict[str, str] = {}
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
        return cls(
            exec_start=shlex.split(values["ExecStart"]),
            exec_reload=shlex.split(values["ExecReload"]),
            user=values["User"],
            group=values["Group"],
            supplementary_groups=values.get("SupplementaryGroups", "").split(),
            umask=int(values.get("UMask", "0022"), 8),
            state_directory=values["StateDirectory"],
            state_directory_mode=int(values.get("StateDirectoryMode", "0755"), 8),
            watchdog_seconds=timespan(values.get("WatchdogSec", "0")),
        )


class Notifications:
    """The NOTIFY_SOCKET systemd would hand the service: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)  # the service runs as its own user
        self.sock.settimeout(POLL)
        self.seen: list[str] = []

    def drain(self) -> list[str]:
        try:
            while True:
                self.seen += self.sock.recv(4096).decode().splitlines()
        except TimeoutError:
            return self.seen

    def count(self, assignment: str) -> int:
        return self.drain().count(assignment)


class Subscriber:
    """The MQTT device: a paho client subscribed to the route's topics, QoS 1."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pi-check-device")
        self.client.on_connect = lambda c, *_: c.subscribe("pi-check/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", MQTT_PORT)
        self.client.loop_start()

    def _message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.payloads.append(bytes(message.payload))

    def received(self) -> list[bytes]:
        with self.lock:
            return list(self.payloads)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def device_bodies(record: Path, sent: list[bytes]) -> list[bytes]:
    """Which of ``sent`` the simulator processed, in its order (its record holds each message
    envelope in hex; the body is in it verbatim)."""
    if not record.exists():
        return []
    lines = record.read_text().splitlines()
    found = []
    for line in lines:
        envelope = line.partition(" ")[2]
        found += [body for body in sent if body.hex() in envelope]
    return found


def write_config(service_url: str, device: Path) -> None:
    """What an operator writes into /etc/fieldgate/config.toml: one MQTT and one serial route."""
    CONFIG.write_text(
        f"""# written by pi/e2e.py (make pi-check)
[push]
service = "{service_url}"

[status]
listen = "127.0.0.1:{STATUS_PORT}"

[adapters.site-broker]
type = "mqtt"
host = "127.0.0.1"
port = {MQTT_PORT}

[adapters.valve-controller]
type = "serial"
port = "{device}"

[[routes]]
name = "telemetry"
deliver = [{{ adapter = "site-broker", topic = "pi-check/{{route}}", qos = 1 }}]

[[routes]]
name = "valves"
ack = "delivered"
deliver = [{{ adapter = "valve-controller" }}]
"""
    )
    os.chown(CONFIG, 0, grp.getgrnam("fieldgate").gr_gid)  # as install.sh leaves it
    CONFIG.chmod(0o640)


def metric(name: str) -> float:
    """The sum of every series of ``name`` on the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{STATUS_PORT}/metrics", timeout=30) as page:
        text = page.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rpartition(" ")[2])
    return total


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Peers:
    """The processes around the gateway, and their logs."""

    procs: list[subprocess.Popen[bytes]]
    logs: dict[str, BinaryIO]
    service_url: str = ""
    pty: str = ""
    record: Path = WORK / "device-record"

    def spawn(self, args: list[str], log: str, **options: Any) -> subprocess.Popen[bytes]:
        self.logs[log] = (WORK / f"{log}.log").open("wb")
        options.setdefault("stdout", self.logs[log])
        proc = subprocess.Popen(args, stderr=self.logs[log], **options)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self.logs.values():
            log.close()


def start_peers(peers: Peers) -> None:
    """mosquitto, the installed push service, and fbsim on a pty behind a by-id link."""
    (WORK / "mosquitto.conf").write_text(
        f"listener {MQTT_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    peers.spawn(["/usr/sbin/mosquitto", "-c", str(WORK / "mosquitto.conf")], "mosquitto")
    ready = WORK / "service.url"
    service = [FIELDGATE, "push-service", "--listen", f"127.0.0.1:{SERVICE_PORT}"]
    service += ["--ready-file", str(ready), "--log-level", "warning"]
    peers.spawn(service, "service", stdout=subprocess.DEVNULL)
    fbsim = [str(FBSIM), "--record", str(peers.record), "--id", "pi-check"]
    sim = peers.spawn(fbsim, "fbsim", stdout=subprocess.PIPE)
    assert sim.stdout is not None
    peers.pty = sim.stdout.readline().decode().strip()
    if not peers.pty.startswith("/dev/"):
        raise SystemExit(f"e2e: FAILED: fbsim printed {peers.pty!r}, not a pty")
    # As udev leaves a USB serial adapter: root:dialout 0660, a stable by-id link.
    os.chown(peers.pty, 0, grp.getgrnam("dialout").gr_gid)
    os.chmod(peers.pty, 0o660)
    DEVICE_LINK.parent.mkdir(parents=True, exist_ok=True)
    DEVICE_LINK.symlink_to(peers.pty)
    wait_for("push service", ready.exists, START_LIMIT)
    peers.service_url = ready.read_text().strip()


def send_and_wait(
    infos: dict[str, dict[str, object]], subscriber: Subscriber, record: Path
) -> float:
    """MESSAGES to each route with pywebpush; every one must reach its device, in order, and be
    acknowledged upstream. Returns the seconds from the first send."""
    to_mqtt = [b'{"reading": %d, "from": "pi-check"}' % i for i in range(MESSAGES)]
    to_device = [b"valve %d to %d%%" % (i % 4, i * 5) for i in range(MESSAGES)]
    started = time.monotonic()
    for telemetry, valve in zip(to_mqtt, to_device, strict=True):
        for info, body in ((infos["telemetry"], telemetry), (infos["valves"], valve)):
            response = webpush(info, body, ttl=TTL)
            if response.status_code not in (201, 202):
                raise SystemExit(f"e2e: FAILED: the push service answered {response.status_code}")

    def acknowledged() -> bool:
        return metric("fieldgate_messages_acknowledged_total") >= 2 * MESSAGES

    wait_for("MQTT delivery", lambda: len(subscriber.received()) >= MESSAGES, DELIVERY_LIMIT)
    wait_for(
        "device delivery", lambda: len(device_bodies(record, to_device)) >= MESSAGES, DELIVERY_LIMIT
    )
    wait_for("upstream acknowledgements", acknowledged, DELIVERY_LIMIT)
    if subscriber.received() != to_mqtt:
        raise SystemExit(f"e2e: FAILED: MQTT got {subscriber.received()!r}")
    if (device := device_bodies(record, to_device)) != to_device:
        raise SystemExit(f"e2e: FAILED: the device got {device!r}")
    return time.monotonic() - started


def main() -> None:
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    unit = Unit.read(UNIT)
    peers = Peers([], {})
    subscriber = None
    try:
        start_peers(peers)
        step(f"push service at {peers.service_url}, mosquitto, fbsim on {peers.pty}", started)
        write_config(peers.service_url, DEVICE_LINK)
        check = subprocess.run(
            [FIELDGATE, "check-config", str(CONFIG)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise SystemExit(f"e2e: FAILED: check-config: {check.stdout}{check.stderr}")

        gateway, notes = start_gateway(unit)
        peers.procs.append(gateway)
        wait_for(
            "READY=1", lambda: "READY=1" in notes.drain() or gateway.poll() is not None, START_LIMIT
        )
        if gateway.poll() is not None:
            raise SystemExit(f"e2e: FAILED: the gateway exited ({gateway.returncode})")
        step("gateway READY=1", started)
        infos = subscriptions(unit)
        step("both routes subscribed", started)
        idle_rss = vm_rss_mib(gateway.pid)
        subscriber = Subscriber()
        wait_for("MQTT subscription", subscriber.subscribed.is_set, START_LIMIT)
        io_before = write_bytes(gateway.pid)
        seconds = send_and_wait(infos, subscriber, peers.record)
        written = write_bytes(gateway.pid) - io_before
        loaded_rss = vm_rss_mib(gateway.pid)
        step("every message delivered, in order, and acknowledged upstream", started)

        reload_gateway(unit, gateway, notes)
        step("reloaded (ExecReload)", started)
        status = subprocess.run([FIELDGATE, "status"], capture_output=True, text=True, check=False)
        if status.returncode != 0:
            raise SystemExit(f"e2e: FAILED: fieldgate status: {status.stdout}{status.stderr}")
        watchdog_pings = notes.count("WATCHDOG=1")
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(STOP_LIMIT)
        if code != 0 or "STOPPING=1" not in notes.drain():
            raise SystemExit(f"e2e: FAILED: the gateway stopped with {code}")
        step("stopped on SIGTERM with status 0", started)
        summary(
            f"{MESSAGES} messages to MQTT (mosquitto) and {MESSAGES} to the serial device (fbsim),"
            f" every one in order, in {seconds:.1f} s emulated; reload, status, watchdog"
            f" ({watchdog_pings} pings), clean stop"
        )
        summary(
            f"gateway as user {unit.user}: {written / (2 * MESSAGES) / 1024:.1f} KiB written per"
            f" message one at a time; RSS {idle_rss:.0f} MiB idle, {loaded_rss:.0f} MiB after"
            " (qemu's own memory included)"
        )
    except BaseException:
        show_logs()
        raise
    finally:
        if subscriber is not None:
            subscriber.stop()
        peers.close()


def show_logs() -> None:
    """The end of every log of the run (they live in /run, which goes away with the check)."""
    for log in sorted(WORK.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-30:]
        print(f"---- {log} (last {len(lines)} lines)", *lines, sep="\n", flush=True)


def start_gateway(unit: Unit) -> tuple[subprocess.Popen[bytes], Notifications]:
    """The unit's ExecStart as systemd would run it (identity, umask, directories, watchdog)."""
    account = pwd.getpwnam(unit.user)
    state = Path("/var/lib") / unit.state_directory
    state.mkdir(mode=unit.state_directory_mode, exist_ok=True)
    os.chown(state, account.pw_uid, account.pw_gid)
    state.chmod(unit.state_directory_mode)
    notes = Notifications(WORK / "notify.sock")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "LANG": "C.UTF-8",
        "NOTIFY_SOCKET": str(notes.path),
        "STATE_DIRECTORY": str(state),
        "WATCHDOG_USEC": str(int(unit.watchdog_seconds * 1_000_000)),
        "QEMU_CPU": os.environ.get("QEMU_CPU", "max"),
    }
    gateway = subprocess.Popen(
        unit.exec_start,
        env=env,
        user=unit.user,
        group=unit.group,
        extra_groups=unit.supplementary_groups,
        umask=unit.umask,
        cwd="/",
        stdout=(WORK / "gateway.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    return gateway, notes


def subscriptions(unit: Unit) -> dict[str, dict[str, object]]:
    """Each route's PushSubscription JSON, as the operator gets it: ``fieldgate subscriptions``
    run as the service's user (the state directory is 0700)."""
    command = [FIELDGATE, "subscriptions", "--config", str(CONFIG), "--json"]
    found: dict[str, dict[str, object]] = {}
    said = ""

    def both() -> bool:
        nonlocal found, said
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            user=unit.user,
            group=unit.group,
            extra_groups=[],
            check=False,
        )
        said = out.stderr.strip()
        if out.returncode == 0:
            found = json.loads(out.stdout)
        return out.returncode == 0 and set(found) == {"telemetry", "valves"}

    try:
        wait_for("subscriptions", both, START_LIMIT)
    except SystemExit as exc:
        raise SystemExit(f"{exc}; fieldgate subscriptions said: {said}") from None
    return found


def reload_gateway(unit: Unit, gateway: subprocess.Popen[bytes], notes: Notifications) -> None:
    """ExecReload= with $MAINPID, as ``systemctl reload`` runs it; RELOADING=1 then READY=1."""
    before = notes.count("READY=1")
    command = [arg.replace("$MAINPID", str(gateway.pid)) for arg in unit.exec_reload]
    subprocess.run(command, check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    wait_for("RELOADING=1", lambda: notes.count("RELOADING=1") >= 1, START_LIMIT)
    wait_for("READY=1 after the reload", lambda: notes.count("READY=1") > before, START_LIMIT)


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
