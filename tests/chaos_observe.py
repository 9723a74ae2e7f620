"""The device side of the chaos run: an MQTT subscriber and a reader of the simulator's record."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.chaos_ledger import Ledger

# The subscriber's broker session outlives a broker restart (mosquitto persists it) and a
# reconnect, so QoS 1 messages queued for it meanwhile are not lost at the broker.
SESSION_EXPIRY = 3600
# How often the record file is read: the time of a serial sighting is this much late at most.
RECORD_POLL = 0.05


class MqttDevice:
    """A QoS 1 subscriber to ``topic_filter`` that records every copy it gets in the ledger."""

    def __init__(self, ledger: Ledger, port: int, topic_filter: str) -> None:
        self.ledger = ledger
        self.topic_filter = topic_filter
        self.port = port
        self.missing_id = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="chaos-subscriber", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]

    def start(self) -> None:
        """Connect (keeping the broker session) and run paho's network thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, _client: object, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        user = dict(getattr(props, "UserProperty", None) or [])
        gateway_id = user.get("message-id")
        if gateway_id is None:
            self.missing_id += 1
            gateway_id = "?"
        self.ledger.add_seen(bytes(msg.payload), gateway_id, "mqtt", time.monotonic())


async def watch_record(ledger: Ledger, record: Path) -> None:
    """Add each message the simulator processed (its record, one line each) to the ledger."""
    offset = 0
    pending = b""
    previous_read = time.monotonic()
    while True:
        # Another process appends to the file: look at it. A line this read finds was written
        # after the previous read began, so that moment is a lower bound of when the device
        # processed it, however late this loop runs: a late arrival it shows is a real one.
        started = time.monotonic()
        data = await trio.to_thread.run_sync(_read_from, record, offset)
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        now, previous_read = previous_read, started
        for line in lines:
            _mid, _, body_hex = line.decode().partition(" ")
            with contextlib.suppress(ValueError, msgpack.UnpackException, KeyError, TypeError):
                envelope = msgpack.unpackb(bytes.fromhex(body_hex.strip()), raw=False)
                ledger.add_seen(bytes(envelope["body"]), str(envelope["id"]), "serial", now)
                continue
            ledger.unknown += 1
        await trio.sleep(RECORD_POLL)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""
