"""Serial link throughput: messages/s over a pty with the C simulator, and the fraction of a
115200-baud line's capacity that stop-and-wait achieves for 100-byte messages.

A pty has no real baud rate, so the 115200 figure is computed: time per message on a real line =
(DATA frame bytes + ACK frame bytes) x 10 bits / 115200 + the turnaround measured here (host and
device processing per round trip, i.e. 1 / the pty rate with the line infinitely fast).
Baseline in the same run: the raw pty round trip (write 110 bytes, read 6 back) with no protocol.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import trio

from adapters import seriallink as sl
from adapters.base import Delivered, Message
from adapters.serial import SerialAdapter
from adapters.serial_config import SerialAdapterConfig, SerialTarget

ROOT = Path(__file__).resolve().parent.parent
FBSIM = ROOT / "firmware-bridge" / "build" / "fbsim"
BAUD = 115200
LINE_BYTES_PER_S = BAUD / 10  # 8N1: start + 8 data + stop bits = 11520 bytes/s
BODY = 100
N_LINK = 3000
N_ADAPTER = 1500


def start_sim() -> tuple[subprocess.Popen[bytes], str]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "firmware-bridge"), "all"], check=True)
    proc = subprocess.Popen([str(FBSIM)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


def open_raw(path: str) -> int:
    import termios
    import tty

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    termios.tcflush(fd, termios.TCIOFLUSH)
    return fd


def link_rate(path: str) -> tuple[float, int, int]:
    """Messages/s driving LinkEndpoint directly with blocking I/O; wire bytes per DATA and ACK."""
    fd = open_raw(path)
    ep = sl.LinkEndpoint(ack_timeout=1.0)
    ep.open(time.monotonic())
    os.write(fd, ep.data_to_send())
    while ep.state is not sl.State.READY:
        ep.receive_data(os.read(fd, 4096), time.monotonic())
    body = bytes(range(1, BODY + 1))
    data_wire = len(sl.encode_frame(sl.FrameType.DATA, 0, bytes(4) + body))
    ack_wire = len(sl.encode_frame(sl.FrameType.ACK, 0))
    started = time.perf_counter()
    for i in range(N_LINK):
        ep.send_message(i, body, time.monotonic())
        os.write(fd, ep.data_to_send())
        while ep.busy:
            ep.receive_data(os.read(fd, 4096), time.monotonic())
    rate = N_LINK / (time.perf_counter() - started)
    os.close(fd)
    return rate, data_wire, ack_wire


def raw_rate(path: str) -> float:
    """Baseline: a bare 110-byte write / 6-byte echo-like round trip through the same pty pair,
    answered by a Python peer on the master side (no framing, no CRC, no state)."""
    import pty

    master, slave = pty.openpty()
    import tty

    tty.setraw(slave)
    tty.setraw(master)
    out = bytes(110)
    started = time.perf_counter()
    for _ in range(N_LINK):
        os.write(slave, out)
        got = 0
        while got < len(out):
            got += len(os.read(master, 4096))
        os.write(master, bytes(6))
        got = 0
        while got < 6:
            select.select([slave], [], [])
            got += len(os.read(slave, 4096))
    rate = N_LINK / (time.perf_counter() - started)
    os.close(master)
    os.close(slave)
    return rate


async def adapter_rate(path: str) -> float:
    cfg = SerialAdapterConfig(name="bench", port=path, ack_timeout=1.0)
    adapter = SerialAdapter(cfg)
    target = SerialTarget(adapter="bench", payload="raw")
    body = bytes(range(1, BODY + 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(adapter.run)
        first = await adapter.deliver(Message("warm", "r", body, 0.0, None), target)
        assert isinstance(first, Delivered), first
        started = time.perf_counter()
        for i in range(N_ADAPTER):
            outcome = await adapter.deliver(Message(f"b{i}", "r", body, 0.0, None), target)
            assert isinstance(outcome, Delivered), outcome
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return N_ADAPTER / elapsed


def main() -> None:
    proc, path = start_sim()
    try:
        baseline = raw_rate(path)
        link, data_wire, ack_wire = link_rate(path)
        adapter = trio.run(adapter_rate, path)
    finally:
        proc.kill()
        proc.wait()
    turnaround = 1 / link
    line_time = (data_wire + ack_wire) / LINE_BYTES_PER_S
    per_msg = line_time + turnaround
    fraction = BODY / LINE_BYTES_PER_S / per_msg
    fraction_adapter = BODY / LINE_BYTES_PER_S / (line_time + 1 / adapter)
    print("100-byte messages, C simulator on a pty")
    print("| figure | value | baseline | ratio |")
    print("| --- | --- | --- | --- |")
    print(
        f"| link (LinkEndpoint, blocking I/O) msg/s | {link:,.0f} | raw pty round trip "
        f"{baseline:,.0f}/s | {link / baseline:.2f} |"
    )
    print(
        f"| SerialAdapter.deliver (trio) msg/s | {adapter:,.0f} | raw pty round trip "
        f"{baseline:,.0f}/s | {adapter / baseline:.2f} |"
    )
    print(
        f"| wire bytes per message (DATA + ACK) | {data_wire} + {ack_wire} | payload {BODY} | "
        f"{BODY / (data_wire + ack_wire):.3f} |"
    )
    print(
        f"| 115200 8N1: payload B/s, link turnaround {turnaround * 1e6:.0f} us | "
        f"{fraction * LINE_BYTES_PER_S:,.0f} | line capacity {LINE_BYTES_PER_S:,.0f} | "
        f"{fraction:.3f} (goal >= 0.85) |"
    )
    print(
        f"| 115200 8N1: payload B/s, adapter turnaround {1e6 / adapter:.0f} us | "
        f"{fraction_adapter * LINE_BYTES_PER_S:,.0f} | line capacity {LINE_BYTES_PER_S:,.0f} | "
        f"{fraction_adapter:.3f} |"
    )
    print(
        f"| 115200 8N1: messages/s | {1 / per_msg:.1f} | frames of 100 B at line rate "
        f"{LINE_BYTES_PER_S / BODY:.1f} | {(1 / per_msg) / (LINE_BYTES_PER_S / BODY):.3f} |"
    )
