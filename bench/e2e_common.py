"""Shared by the end-to-end benchmark's processes: reports, keys, pinning, /proc readings.

The benchmark (``bench/bench_e2e.py``) runs the push service, a sender, an MQTT subscriber, the
gateway or the floor client each in its own process; children talk to it with one JSON object
per stdout line and take commands as one JSON object per stdin line.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Shared with the agent benchmark, re-exported for the e2e modules ("as" marks a re-export).
from bench.agent_common import RouteKeys as RouteKeys
from bench.agent_common import context_switches as context_switches
from bench.agent_common import cpu_seconds_self as cpu_seconds_self
from bench.agent_common import emit as emit
from bench.agent_common import pin as pin
from bench.agent_common import read_keys as read_key_list
from bench.agent_common import rss_kib as _rss_kib
from bench.agent_common import write_keys as write_keys


def rss_kib_self() -> int:
    """VmRSS of this process in KiB."""
    return _rss_kib("self")


# Core of the process under test (gateway or floor) and of its peers (push service, sender,
# broker, subscriber, simulator), as in reference/perf-limits.md §2b; ignored on one core.
CORE_UNDER_TEST = 1
CORE_PEERS = 0
# The payload of every benchmark message starts with its sequence number in this many digits,
# so the subscriber can match a receipt to its send time; 100 B in all (perf-limits.md §2b).
SEQ_DIGITS = 10
PAYLOAD_BYTES = 100
ROOT = Path(__file__).resolve().parent.parent

Report = dict[str, Any]


def read_keys(path: Path) -> dict[str, RouteKeys]:
    """Read what :func:`write_keys` wrote, by route name."""
    return {keys.route: keys for keys in read_key_list(path)}


def payload(seq: int) -> bytes:
    """The benchmark payload: the sequence number, then padding to PAYLOAD_BYTES."""
    return (b"%0*d " % (SEQ_DIGITS, seq)).ljust(PAYLOAD_BYTES, b"x")


def seq_of(data: bytes) -> int:
    """The sequence number of a payload made by :func:`payload` (-1 if it is not one)."""
    head = data[:SEQ_DIGITS]
    return int(head) if head.isdigit() else -1


def commands() -> Any:
    """The orchestrator's commands on stdin, one JSON object per line, until EOF."""
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


@dataclass(frozen=True)
class ProcSample:
    """One reading of another process from /proc."""

    t: float  # time.monotonic()
    cpu: float  # user + system seconds, all threads
    write_bytes: int  # bytes this process caused to be sent to the block layer
    rss_kib: int


def sample(pid: int) -> ProcSample:
    """Read CPU, disk writes and RSS of ``pid`` (raises OSError when it is gone)."""
    t = time.monotonic()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    write_bytes = 0
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            write_bytes = int(line.split()[1])
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcSample(t, cpu, write_bytes, rss)


def wal_restarts(db: Path) -> int:
    """How often ``db``'s WAL was started afresh after a complete checkpoint: the checkpoint
    sequence number of its header (bytes 12-15, big-endian; SQLite's file format, "WAL File
    Format"). Read from outside, without SQLite; 0 while there is no WAL."""
    try:
        with open(f"{db}-wal", "rb") as wal:
            header = wal.read(16)
    except FileNotFoundError:
        return 0
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else 0


def thread_cpu(pid: int) -> dict[int, float]:
    """Per thread of ``pid``: user + system CPU seconds (threads that exited are not listed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Child:
    """A child process that reports one JSON object per stdout line."""

    def __init__(
        self,
        args: list[str],
        *,
        core: int | None = None,
        stdin: bool = False,
        stderr: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        err = stderr.open("ab") if stderr is not None else None
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=env,
        )
        if err is not None:
            err.close()
        if core is not None:
            pin(core, self.proc.pid)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **command: object) -> None:
        """One command line to the child."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, limit: float) -> Report:
        """Wait for the next report, which must be ``event``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + limit
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no {event!r} from {self.proc.args!r} in {limit:g} s")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{self.proc.args!r} exited ({self.proc.wait()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        report: Report = json.loads(line)
        if report.get("event") != event:
            raise RuntimeError(f"expected {event!r}, got {str(report)[:300]}")
        return report

    def ask(self, event: str, limit: float, **command: object) -> Report:
        """Send a command and wait for its answer."""
        self.send(**command)
        return self.expect(event, limit)

    def stop(self, limit: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``limit`` seconds; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
