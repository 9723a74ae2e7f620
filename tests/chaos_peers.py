"""The processes and the disk the chaos driver breaks: push service, serial device, state tmpfs.

The gateway is ``tests.gateway_process.GatewayProcess`` and the broker
``tests.mosquitto.Mosquitto``; this module adds what they lack for a kill-and-restart run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import trio

from tests.serial_sim import Simulator, point_symlink, start_simulator

# Python start-up plus opening SQLite takes about a second on a loaded 2-core box.
START_LIMIT = 20.0
# The state disk: big enough for the journal of a backlog of thousands of small messages, small
# enough to fill in a moment.
TMPFS_SIZE = "8m"
FILL_CHUNK = 64 * 1024


class PushServiceProcess:
    """``fieldgate push-service`` as a child, restartable on the same port with the same state."""

    def __init__(self, workdir: Path, port: int, *, redelivery_after: float) -> None:
        self.port = port
        self.state = workdir / "pushservice.sqlite3"
        self.ready_file = workdir / "pushservice.ready"
        self.log_path = workdir / "pushservice.log"
        self.redelivery_after = redelivery_after
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start and return once it wrote its ready file (it listens then)."""
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - a child the driver kills
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "push-service",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--state",
                    str(self.state),
                    "--control",
                    "--ready-file",
                    str(self.ready_file),
                    "--redelivery-after",
                    str(self.redelivery_after),
                    "--log-level",
                    "info",  # protocol errors from clients are logged at info
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        with trio.fail_after(START_LIMIT):
            # Another process writes the file: look for it.
            while not self.ready_file.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"push service exited:\n{self.log_path.read_text()}")
                await trio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: whatever is not committed to its SQLite state is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait (end of run)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SerialDevice:
    """The C simulator behind a stable by-id style symlink, unpluggable and repluggable."""

    def __init__(self, workdir: Path) -> None:
        self.record = workdir / "device-record.txt"
        self.link = workdir / "usb-fieldgate_chaos-if00"
        self.sim: Simulator | None = None

    def plug(self) -> None:
        """Start a new simulator (it restores its dedupe memory from the record) and link it."""
        self.sim = start_simulator(self.record, ["--id", "chaos-device"])
        point_symlink(self.link, self.sim.pty)

    def unplug(self) -> None:
        """Kill the simulator and remove the link, as udev does when the USB cable is pulled."""
        if self.link.is_symlink():
            self.link.unlink()
        if self.sim is not None:
            self.sim.kill()
            self.sim = None

    def processed(self) -> list[tuple[int, bytes]]:
        """(link message id, message bytes) per processed message, from the record."""
        out = []
        if self.record.exists():
            for line in self.record.read_text().splitlines():
                mid, _, body = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out.append((int(mid, 16), bytes.fromhex(body)))
        return out


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = TMPFS_SIZE, *, read_only: bool = False) -> Iterator[Path]:
    """Mount a small tmpfs (mode 0700, as the gateway wants its state directory) for the run;
    ``read_only``: one nothing can be written to (root included)."""
    directory.mkdir(parents=True, exist_ok=True)
    options = ("ro," if read_only else "") + f"size={size},mode=0700"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def fill_disk(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * FILL_CHUNK
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]  # fill the last few blocks too
    finally:
        os.close(fd)
