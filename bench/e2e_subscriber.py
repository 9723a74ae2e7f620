"""The MQTT subscriber of the end-to-end benchmark (a child process): the receipt end.

``python -m bench.e2e_subscriber PORT TOPIC_FILTER`` subscribes at QoS 1 (paho's network thread
takes the messages) and answers JSON commands on stdin:

* ``{"cmd": "reset"}``: forget everything received (answer ``reset``);
* ``{"cmd": "count"}``: answer ``count`` with the number of distinct sequence numbers received
  since the reset (a QoS 1 duplicate counts once) and of duplicates;
* ``{"cmd": "times"}``: answer ``times`` with ``[[seq, receipt time], ...]``, receipt time being
  time.monotonic() in the on_message callback (the first copy of each message).
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.e2e_common import CORE_PEERS, commands, emit, pin, seq_of

CONNECT_LIMIT = 10.0


class Receipts:
    """Receipt times by sequence number; written by paho's thread, read by the main one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[int, float] = {}
        self.duplicates = 0

    def on_message(self, _client: object, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        seq = seq_of(bytes(msg.payload))
        with self.lock:
            if seq in self.times:
                self.duplicates += 1
            else:
                self.times[seq] = now

    def reset(self) -> None:
        with self.lock:
            self.times = {}
            self.duplicates = 0


def main() -> None:
    port, topic = int(sys.argv[1]), sys.argv[2]
    pin(CORE_PEERS)
    receipts = Receipts()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = receipts.on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(CONNECT_LIMIT):
        raise SystemExit(f"not subscribed to {topic} on 127.0.0.1:{port}")
    emit("ready")
    for command in commands():
        cmd = command["cmd"]
        if cmd == "quit":
            break
        if cmd == "reset":
            receipts.reset()
            emit("reset")
        elif cmd == "count":
            with receipts.lock:
                emit("count", count=len(receipts.times), duplicates=receipts.duplicates)
        elif cmd == "times":
            with receipts.lock:
                emit("times", times=sorted(receipts.times.items()))
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
