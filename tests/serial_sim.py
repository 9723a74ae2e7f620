"""Build and run the C device simulator (firmware-bridge/build/fbsim) for serial tests."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters import seriallink as sl

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "firmware-bridge"
FBSIM = BRIDGE / "build" / "fbsim"
_build_lock = threading.Lock()


def build_firmware_bridge() -> Path:
    """``make -C firmware-bridge`` (library + simulator); returns the simulator's path."""
    with _build_lock:
        subprocess.run(["make", "-s", "-C", str(BRIDGE), "all"], check=True, capture_output=True)
    return FBSIM


@dataclass
class Simulator:
    """One running fbsim on a pty it created."""

    proc: subprocess.Popen[bytes]
    pty: str
    record: Path

    def processed(self) -> list[tuple[int, bytes]]:
        """(message id, message bytes) per processed message, in order (from the record)."""
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            mid, _, body = line.partition(" ")
            out.append((int(mid, 16), bytes.fromhex(body)))
        return out

    def kill(self) -> None:
        """SIGKILL: the port disappears mid-whatever, as on an unplug."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def reboot(self) -> None:
        """SIGUSR1: the simulated device reboots (keeps its non-volatile dedupe memory)."""
        self.proc.send_signal(10)


def start_simulator(record: Path, args: Sequence[str] = ()) -> Simulator:
    """Start fbsim on a new pty, appending to ``record``; waits for the pty path."""
    build_firmware_bridge()
    proc = subprocess.Popen(
        [str(FBSIM), "--record", str(record), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("/dev/"):
        proc.kill()
        raise RuntimeError(f"fbsim did not print a pty path: {line!r}")
    return Simulator(proc, line, record)


def exchange(
    ep: sl.LinkEndpoint, write: Callable[[bytes], None], read_fd: int, want: type
) -> list[sl.Event]:
    """Drive a host endpoint against a device until an event of type ``want`` arrives."""
    events: list[sl.Event] = []
    deadline = time.monotonic() + 10
    while not any(isinstance(e, want) for e in events):
        out = ep.data_to_send()
        if out:
            write(out)
        ready, _, _ = select.select([read_fd], [], [], 0.05)
        if ready:
            events += ep.receive_data(os.read(read_fd, 4096), time.monotonic())
        events += ep.timer_expired(time.monotonic())
        assert time.monotonic() < deadline, events
    return events


def point_symlink(link: Path, target: str) -> None:
    """Atomically (re)point ``link`` at ``target``, as udev does for /dev/serial/by-id."""
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
