"""The end-to-end benchmark's arithmetic on its samples: windows, interpolation, percentiles
of latencies, histogram quantiles, core busy fractions and the idle wake-up allowance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.e2e_common import ProcSample, percentile
from bench.e2e_procs import KEEPALIVE

WINDOW = (0.1, 0.9)  # the 10%-90% outputs: start-up and tail excluded

Report = dict[str, Any]


def interpolate(samples: list[ProcSample], t: float, field: str) -> float:
    """The value of ``field`` at time ``t``, linear between the samples around it."""
    before = [s for s in samples if s.t <= t]
    after = [s for s in samples if s.t >= t]
    if not before:
        return float(getattr(samples[0], field))
    if not after:
        return float(getattr(samples[-1], field))
    a, b = before[-1], after[0]
    va, vb = float(getattr(a, field)), float(getattr(b, field))
    return va if b.t == a.t else va + (vb - va) * (t - a.t) / (b.t - a.t)


def output_window(times: list[float]) -> tuple[int, float, float]:
    """(messages, start, end) of the 10%-90% window of sorted receipt times."""
    lo, hi = (max(1, round(len(times) * f)) - 1 for f in WINDOW)
    return hi - lo, times[lo], times[hi]


def latency_summary(latencies_s: list[float]) -> Report:
    """Count, p50, p99 and max in milliseconds of latencies given in seconds."""
    ms = [x * 1e3 for x in latencies_s]
    return {
        "samples": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


def histogram_quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float | None:
    """Upper bucket bound (s) under which ``q`` of the observations between two scrapes fell."""
    old = dict(before)
    diff = [(bound, count - old.get(bound, 0.0)) for bound, count in after]
    total = diff[-1][1] if diff else 0.0
    if total <= 0:
        return None
    for bound, count in diff:
        if count >= q * total:
            return bound
    return None


def core_ticks() -> dict[str, tuple[int, int]]:
    """Per core ("cpu0", ...): (busy, total) clock ticks from /proc/stat."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle + iowait
            found[name] = (sum(ticks) - idle, sum(ticks))
    return found


def busy_fractions(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Fraction of time each core was busy between two :func:`_core_ticks` readings."""
    return {
        core: (after[core][0] - b[0]) / max(1, after[core][1] - b[1])
        for core, b in before.items()
        if core in after
    }


def keepalive_wakeups(seconds: float) -> int:
    """Wake-ups the keepalives alone cause in ``seconds``: the push PING and the serial ping
    each a timer and a reply; the MQTT link ticks paho's loop_misc() several times per
    interval (adapters/mqtt_link.py) plus the PINGRESP."""
    from adapters.mqtt_link import KEEPALIVE_TICKS_PER_INTERVAL

    per_interval = 2 + 2 + KEEPALIVE_TICKS_PER_INTERVAL + 1
    return per_interval * math.ceil(seconds / KEEPALIVE)


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is 0."""
    return a / b if b else None


def to_ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, None passing through."""
    return None if seconds is None else seconds * 1e3


def count_lines(path: Path) -> int:
    """Lines in a file (0 when it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
