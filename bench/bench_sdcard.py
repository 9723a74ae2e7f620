"""The SD-card budget and the memory of a field gateway: bytes written per message at field rates,
in a burst and idle, and resident memory idle and under load, each beside its floor.

Processes of ``bench e2e`` (mosquitto, the push service, fbsim on a pty, a sender, an MQTT
subscriber), and the gateway as ``fieldgate run`` with that benchmark's configuration (one MQTT
QoS 1 route, one serial route, journal on disk). Bytes written are the gateway's own
``/proc/PID/io`` write_bytes: what it sends to the block device (SQLite's WAL, its checkpoints),
not the file system's own journal nor the card's internal write amplification. Phases:

* idle: connected, no traffic, ``IDLE`` seconds: bytes per hour;
* field rate: messages that arrive one at a time (``FIELD_RATE`` a second, each processed long
  before the next arrives: the regime of 1 or 100 messages a minute), to MQTT and to the serial
  device, ``FIELD_MESSAGES`` each;
* burst: ``BURST`` messages posted flat out (a backlog drains in large group commits).

Floor, in the same run: a bare SQLite journal in WAL mode with ``synchronous=FULL`` that commits
each message when it arrives and commits again when it is done with it (the least a durable
store-and-forward must write), one message at a time. Memory: the gateway's RSS connected and
idle, after the field-rate phases and after the burst, beside a bare interpreter that imported
the same libraries (h2, trio, cryptography, paho-mqtt, pyserial, sqlite3).

``FIELDGATE_BENCH_FIELD_MESSAGES`` (default 100), ``FIELDGATE_BENCH_BURST`` (default 3000),
``FIELDGATE_BENCH_IDLE`` (seconds, default 60). Raw results: ``bench/results/sdcard.json``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.e2e_common import sample
from bench.e2e_procs import MQTT_ROUTE, SERIAL_ROUTE
from bench.e2e_rig import Peers

DEFAULT_FIELD_MESSAGES = 100
DEFAULT_BURST = 3000
DEFAULT_IDLE = 60.0  # one keepalive period (every keepalive is 60 s in this configuration)
FIELD_RATE = 5.0  # messages/s: each is done in a few ms here, so every one arrives alone
TTL = 3600
LIMIT = 120.0  # a phase making no progress for this long is a failure
SETTLE = 2.0  # after the last message: the commits that record the deliveries
POLL = 0.05
MESSAGES_PER_DAY = {"1 a minute": 24 * 60, "100 a minute": 100 * 24 * 60}
PAYLOAD = b"x" * 100  # the floor's message, as big as the benchmark's payloads
RESULTS = Path(__file__).parent / "results" / "sdcard.json"
# What the floor interpreter imports: the gateway's libraries, none of its code.
LIBRARIES = (
    "h2.connection",
    "trio",
    "cryptography.hazmat.primitives.ciphers.aead",
    "paho.mqtt.client",
    "serial",
    "sqlite3",
    "msgpack",
)


def floor_journal(directory: Path, messages: int) -> float:
    """Bytes written per message by a bare SQLite WAL journal, one message at a time."""
    db = sqlite3.connect(directory / "floor.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
    before = own_write_bytes()
    for i in range(messages):
        db.execute("INSERT INTO messages VALUES (?, ?)", (i, PAYLOAD))  # kept: commit 1
        db.execute("DELETE FROM messages WHERE id = ?", (i,))  # done with it: commit 2
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # what the WAL owes the database file
    written = own_write_bytes() - before
    db.close()
    return written / messages


def own_write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def libraries_rss_kib() -> int:
    """RSS of an interpreter that imported the gateway's libraries and nothing else."""
    status = "print(open('/proc/self/status').read())"
    code = f"import {', '.join(LIBRARIES)}\n{status}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Rig:
    """The peers and the gateway of one run."""

    def __init__(self, workdir: Path, largest: int) -> None:
        self.peers = Peers(workdir)
        self.workdir = workdir
        self.record = self.peers.record
        self.gateway = self.peers.subscribe("gateway.log")
        pools = {MQTT_ROUTE: largest, SERIAL_ROUTE: largest}
        self.subscriber, self.sender = self.peers.clients(TTL, pools)

    def delivered(self, route: str) -> int:
        if route == MQTT_ROUTE:
            return int(self.subscriber.ask("count", LIMIT, cmd="count")["count"])
        return len(self.record.read_text().splitlines()) if self.record.exists() else 0

    def phase(self, route: str, messages: int, rate: float) -> dict[str, float]:
        """Post ``messages`` at ``rate`` (0: flat out); bytes written per message until every
        one is delivered and its delivery recorded."""
        self.subscriber.ask("reset", LIMIT, cmd="reset")
        base = self.delivered(route)
        before = sample(self.gateway.pid)
        self.sender.send(cmd="post", route=route, count=messages, rate=rate, times=False)
        got, last_change = 0, time.monotonic()
        while got < messages:
            time.sleep(POLL)
            now = self.delivered(route) - base
            if now != got:
                got, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > LIMIT:
                raise RuntimeError(f"{route} stuck at {got}/{messages}; see {self.workdir}")
        self.sender.expect("sent", LIMIT)
        time.sleep(SETTLE)
        after = sample(self.gateway.pid)
        return {
            "messages": messages,
            "bytes_per_message": (after.write_bytes - before.write_bytes) / messages,
            "rss_kib_after": after.rss_kib,
        }

    def idle(self, seconds: float) -> dict[str, float]:
        time.sleep(SETTLE)
        before = sample(self.gateway.pid)
        time.sleep(seconds)
        after = sample(self.gateway.pid)
        per_hour = (after.write_bytes - before.write_bytes) * 3600 / seconds
        return {"seconds": seconds, "bytes_per_hour": per_hour, "rss_kib": after.rss_kib}

    def close(self) -> None:
        self.gateway.stop()
        self.peers.close()


def run(workdir: Path, field: int, burst: int, idle_seconds: float) -> dict[str, Any]:
    rig = Rig(workdir, max(field, burst))
    try:
        idle = rig.idle(idle_seconds)
        mqtt = rig.phase(MQTT_ROUTE, field, FIELD_RATE)
        serial = rig.phase(SERIAL_ROUTE, field, FIELD_RATE)
        burst_phase = rig.phase(MQTT_ROUTE, burst, 0.0)
    finally:
        rig.close()
    return {
        "idle": idle,
        "field_mqtt": mqtt,
        "field_serial": serial,
        "burst_mqtt": burst_phase,
        "floor_bytes_per_message": floor_journal(workdir, field),
        "floor_rss_kib": libraries_rss_kib(),
    }


def kib(value: float) -> str:
    return f"{value / 1024:,.1f} KiB"


def print_tables(res: dict[str, Any]) -> None:
    floor = res["floor_bytes_per_message"]
    print(
        "Bytes the gateway wrote (its /proc/PID/io write_bytes), per message until delivered;"
        " floor: a bare SQLite WAL journal, synchronous=FULL, one commit to keep a message and"
        " one to drop it.\n"
    )
    head = f"{'':44} {'gateway':>12} {'floor':>12} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    rows = (
        (f"field rate ({FIELD_RATE:g}/s), to MQTT QoS 1", res["field_mqtt"]),
        (f"field rate ({FIELD_RATE:g}/s), to the serial device", res["field_serial"]),
        (f"burst of {res['burst_mqtt']['messages']:,} to MQTT", res["burst_mqtt"]),
    )
    for label, phase in rows:
        value = phase["bytes_per_message"]
        print(f"{label:44} {kib(value):>12} {kib(floor):>12} {value / floor:>6.1f}")
    idle = res["idle"]
    print(f"{'idle, per hour':44} {kib(idle['bytes_per_hour']):>12} {kib(0):>12}")
    print("\nPer day, at the field-rate figure (MQTT route):")
    for label, count in MESSAGES_PER_DAY.items():
        per_day = count * res["field_mqtt"]["bytes_per_message"] + 24 * idle["bytes_per_hour"]
        print(f"  {label:14} {count:>8,} messages: {per_day / 1e6:>8.1f} MB written")
    print("\nResident memory (MiB):")
    print(f"  connected, idle:            {idle['rss_kib'] / 1024:6.1f}")
    print(f"  after the field-rate runs:  {res['field_serial']['rss_kib_after'] / 1024:6.1f}")
    print(f"  after the burst:            {res['burst_mqtt']['rss_kib_after'] / 1024:6.1f}")
    print(f"  floor (the libraries only): {res['floor_rss_kib'] / 1024:6.1f}")


def main() -> None:
    field = int(os.environ.get("FIELDGATE_BENCH_FIELD_MESSAGES", DEFAULT_FIELD_MESSAGES))
    burst = int(os.environ.get("FIELDGATE_BENCH_BURST", DEFAULT_BURST))
    idle_seconds = float(os.environ.get("FIELDGATE_BENCH_IDLE", DEFAULT_IDLE))
    # On disk, not tmpfs: write_bytes counts only what reaches a block device.
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-sdcard-", dir="/var/tmp") as tmp:
        res = run(Path(tmp), field, burst, idle_seconds)
    print_tables(res)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    print(f"\nraw results: {RESULTS}")
