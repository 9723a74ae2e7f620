"""The floor of "acknowledge only after a durable commit" (a child process of ``bench e2e``):
one append of a message-sized record and one fsync per message, in the state directory.

``python -m bench.e2e_fsync DIR COUNT RATE`` appends COUNT records of RECORD_BYTES to a file in
DIR at RATE a second (0: flat out), each followed by ``os.fsync``, and reports the bytes it made
the block layer write (``/proc/self/io`` write_bytes) and its CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.agent_common import CORE_UNDER_TEST, cpu_seconds_self, emit, pin

# A 100-byte payload's record as the journal keeps it: body, ids and times (~200 bytes).
RECORD_BYTES = 200


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    directory, count, rate = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    pin(CORE_UNDER_TEST)
    path = directory / "fsync-floor.bin"
    record = os.urandom(RECORD_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fsync(fd)
        written0, cpu0 = write_bytes(), cpu_seconds_self()
        started = time.monotonic()
        for i in range(count):
            if rate > 0:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            os.write(fd, record)
            os.fsync(fd)
        elapsed = time.monotonic() - started
        emit(
            "result",
            messages=count,
            bytes_per_message=(write_bytes() - written0) / count,
            cpu_us=(cpu_seconds_self() - cpu0) / count * 1e6,
            seconds=elapsed,
        )
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
