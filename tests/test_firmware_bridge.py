"""The C firmware-bridge: its unit tests on the shared vectors, and the simulator over stdio."""

from __future__ import annotations

import subprocess
import time

import msgpack

from adapters import seriallink as sl
from tests.serial_sim import BRIDGE, build_firmware_bridge, exchange

VECTOR_FILES = ("link.txt", "transcripts.txt")


def test_c_unit_tests_pass_on_the_shared_vectors():
    subprocess.run(
        ["make", "-s", "-C", str(BRIDGE), "build/test_fb"], check=True, capture_output=True
    )
    out = subprocess.run(
        [str(BRIDGE / "build" / "test_fb"), *(str(BRIDGE / "vectors" / f) for f in VECTOR_FILES)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert ", 0 failures" in out.stdout


def test_bare_metal_example_builds_warning_free_and_runs():
    subprocess.run(
        ["make", "-s", "-C", str(BRIDGE), "build/baremetal_example"],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(BRIDGE / "build" / "baremetal_example")], capture_output=True)
    assert out.returncode == 0, out.stderr


def test_simulator_on_stdio_speaks_the_protocol(tmp_path):
    fbsim = build_firmware_bridge()
    record = tmp_path / "record"
    proc = subprocess.Popen(
        [str(fbsim), "--stdio", "--record", str(record), "--id", "stdio-1", "--max-payload", "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, fd = proc.stdin, proc.stdout.fileno()

        def write(data: bytes) -> None:
            stdin.write(data)
            stdin.flush()

        ep = sl.LinkEndpoint(ack_timeout=0.5)
        ep.open(time.monotonic())
        (up,) = [e for e in exchange(ep, write, fd, sl.LinkUp) if isinstance(e, sl.LinkUp)]
        assert up.device.device_id == "stdio-1" and up.device.max_payload == 20
        assert up.device.firmware.startswith("fbsim-")
        envelope = msgpack.packb({"id": "a", "route": "r", "rcv": 1, "exp": None, "body": b"x"})
        for mid, payload in [(1, b"plain"), (2, envelope), (3, bytes(range(1, 100)))]:
            ep.send_message(mid, payload, time.monotonic())
            assert sl.MessageAcknowledged(mid) in exchange(ep, write, fd, sl.MessageAcknowledged)
        ep.send_message(4, envelope[:-3], time.monotonic())  # truncated envelope
        (refused,) = [e for e in exchange(ep, write, fd, sl.MessageRefused)]
        assert refused == sl.MessageRefused(4, sl.RefuseCode.BAD_MESSAGE)
    finally:
        proc.kill()
        proc.wait()
    lines = record.read_text().split()
    assert lines[0::2] == ["00000001", "00000002", "00000003"]
    assert bytes.fromhex(lines[5]) == bytes(range(1, 100))
