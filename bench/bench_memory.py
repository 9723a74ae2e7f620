"""Resident memory over a long run at a steady rate (issue 20: flat memory).

The gateway, connected to the push service, mosquitto and the serial simulator (``bench e2e``'s
rig), takes ``FIELDGATE_BENCH_MEMORY_MESSAGES`` messages (default 200,000: ~9 minutes,
part of ``make bench``) at ``FIELDGATE_BENCH_MEMORY_RATE`` msg/s (default 400) to MQTT at
QoS 1; its RSS is read at start (connected, idle) and after every
``FIELDGATE_BENCH_MEMORY_STEP`` (default 50,000) delivered.
Beside it, in the same run: an interpreter that imported the gateway's libraries and nothing
else (the floor no code of ours can go below). Goals: RSS after the last step within 10% of the
first step's, and under 60 MiB. The issue's run, 1,000,000 at 400 msg/s (~45 minutes):
``FIELDGATE_BENCH_MEMORY_MESSAGES=1000000 FIELDGATE_BENCH_MEMORY_STEP=100000``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_e2e import GOAL_FLAT, IDLE_SETTLE, Bench
from bench.bench_sdcard import libraries_rss_kib
from bench.e2e_common import sample
from bench.e2e_report import Progress

DEFAULT_MESSAGES = 200_000
DEFAULT_RATE = 400.0  # the rate the 1M-message run was measured at
DEFAULT_STEP = 50_000
GOAL_RSS_MIB = 60.0  # issue 20


def _mib(kib: float) -> float:
    return kib / 1024


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    total = int(os.environ.get("FIELDGATE_BENCH_MEMORY_MESSAGES", DEFAULT_MESSAGES))
    rate = float(os.environ.get("FIELDGATE_BENCH_MEMORY_RATE", DEFAULT_RATE))
    step = min(total, int(os.environ.get("FIELDGATE_BENCH_MEMORY_STEP", DEFAULT_STEP)))
    base = Path(os.environ.get("FIELDGATE_BENCH_DIR", "/var/tmp"))
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-memory-", dir=base))
    progress = Progress(2)
    progress.next("start peers, subscribe")
    bench = Bench(workdir, step, progress)
    try:
        bench.setup()  # encrypts a pool of `step` messages; the sender refills it after each
        bench.gateway.start()
        bench.gateway.wait_ready()
        bench.gateway.wait_subscribed()
        time.sleep(IDLE_SETTLE)
        start = sample(bench.gateway.pid).rss_kib
        progress.next(f"{total:,} messages at {rate:g} msg/s")
        report = bench.long_run(rate, total, step)
    except BaseException:
        print(f"(logs kept in {workdir})", file=sys.stderr)
        raise
    finally:
        bench.close()
    shutil.rmtree(workdir, ignore_errors=True)
    floor = libraries_rss_kib()
    points: list[tuple[int, int]] = report["rss_kib"]
    first, last = points[0][1], points[-1][1]
    peak = max(kib for _, kib in points)
    print(f"\n{total:,} messages at {rate:g} msg/s in {report['seconds']:.0f} s")
    print("| messages delivered | gateway RSS MiB | floor: the libraries alone, MiB |")
    print("| ---: | ---: | ---: |")
    print(f"| 0 (connected, idle) | {_mib(start):.1f} | {_mib(floor):.1f} |")
    for count, kib in points:
        print(f"| {count:,} | {_mib(kib):.1f} | |")
    flat = abs(last - first) / first
    print(
        f"\nlast / first step: {last / first:.3f} (goal within {GOAL_FLAT:.0%}: "
        f"{'met' if flat <= GOAL_FLAT else 'missed'}); peak {_mib(peak):.1f} MiB (goal < "
        f"{GOAL_RSS_MIB:g}: {'met' if _mib(peak) < GOAL_RSS_MIB else 'missed'}); "
        f"{_mib(peak - floor):.1f} MiB above the floor"
    )
