"""Shared by the agent benchmark's processes: the keys file, JSON-line reports, /proc readings.

The benchmark runs as several processes (push service, sender, the agent or the bare-h2 floor)
that talk to the orchestrator (``bench/bench_agent.py``) with one JSON object per stdout line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Polling interval of the children that wait for "all N acknowledged": bounds the error of the
# end time (10 ms on runs of seconds) at ~100 cheap wake-ups per second.
POLL_INTERVAL = 0.01
# Core of the process under test (agent or floor) and of its peers (service, sender), as in
# reference/perf-limits.md §2b; ignored on a machine with a single core.
CORE_UNDER_TEST = 1
CORE_PEERS = 0


@dataclass(frozen=True)
class RouteKeys:
    """One route's subscription, as the floor and the sender need it (secrets: file is 0600)."""

    route: str
    push_url: str
    set_url: str
    private_key_der_hex: str
    auth_secret_hex: str
    p256dh_hex: str


def write_keys(path: Path, routes: list[RouteKeys]) -> None:
    """Write the keys file with mode 0600 (it holds private keys)."""
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump([asdict(r) for r in routes], out)


def read_keys(path: Path) -> list[RouteKeys]:
    """Read what :func:`write_keys` wrote."""
    return [RouteKeys(**item) for item in json.loads(path.read_text())]


def emit(event: str, **fields: object) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def pin(core: int, pid: int = 0) -> None:
    """Pin a process to one core when the machine has more than one."""
    cores = os.sched_getaffinity(0)
    if len(cores) > 1 and core in cores:
        os.sched_setaffinity(pid, {core})


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds_self() -> float:
    """User + system CPU of this process, all threads (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU of another process from /proc/PID/stat (exited threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def context_switches(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread: (voluntary, involuntary) context switches from /proc/PID/task/*/status."""
    found: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread exited meanwhile
        values = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        found[task.name] = (
            int(values["voluntary_ctxt_switches"]),
            int(values["nonvoluntary_ctxt_switches"]),
        )
    return found
