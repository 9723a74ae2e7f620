"""Memory and survival under a storm of redeliveries (issue 15, items 5 and 6).

A gateway with one MQTT route under ``ack = "delivered"`` whose broker is down: nothing it
journals can be acknowledged, so the reference push service (``--redelivery-after``, 3 s here)
pushes every message again and again, and the gateway absorbs each redelivery as a duplicate.
N messages (default 20,000, twice the route's queue limit, so half are refused and stay with the
service) until D duplicates (default 200,000) were absorbed; the gateway's resident memory is
sampled throughout, beside its value once connected and idle (the baseline of the same run).
Goal: it keeps running, and stays under 80 MB resident.

``FIELDGATE_BENCH_MESSAGES`` (N), ``FIELDGATE_BENCH_DUPLICATES`` (D). Results:
``bench/results/duplicates.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.e2e_common import CORE_PEERS, Child, sample
from bench.e2e_procs import (
    GatewayProcess,
    export_keys,
    free_port,
    metric_sum,
    start_push_service,
    stop_process,
)

DEFAULT_MESSAGES = 20_000
DEFAULT_DUPLICATES = 200_000
REDELIVERY_AFTER = 3.0
TTL = 86_400
GOAL_RSS_MIB = 80.0
SAMPLE_EVERY = 5.0
RESULT_LIMIT = 1800.0  # the whole storm; a gateway that absorbs nothing for this long failed
RESULTS = Path(__file__).parent / "results" / "duplicates.json"
ROUTE = "valves"

CONFIG = """
[push]
service = "{service}"
state_dir = "{state}"
keepalive = "60s"

[status]
listen = "127.0.0.1:{status_port}"

[log]
level = "warning"

[adapters.broker]
type = "mqtt"
port = {dead_port}
reconnect_cap = "5s"

[[routes]]
name = "{route}"
ack = "delivered"
deliver = [ {{ adapter = "broker", topic = "bench/{{route}}" }} ]
"""


def main() -> None:
    messages = int(os.environ.get("FIELDGATE_BENCH_MESSAGES", DEFAULT_MESSAGES))
    duplicates = int(os.environ.get("FIELDGATE_BENCH_DUPLICATES", DEFAULT_DUPLICATES))
    base = Path(os.environ.get("FIELDGATE_BENCH_DIR", "/var/tmp"))
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-duplicates-", dir=base))
    service, url = start_push_service(workdir, REDELIVERY_AFTER)
    status_port = free_port()
    config = workdir / "config.toml"
    config.write_text(
        CONFIG.format(
            service=url,
            state=workdir / "state",
            status_port=status_port,
            dead_port=free_port(),
            route=ROUTE,
        )
    )
    gateway = GatewayProcess(config, status_port, workdir / "gateway.log")
    sender: Child | None = None
    try:
        gateway.start()  # subscribes; the keys are read from its journal once it stopped
        gateway.wait_ready()
        gateway.wait_subscribed()
        gateway.stop()
        export_keys_to = workdir / "keys.json"
        export_keys(config, export_keys_to)
        gateway.start()
        gateway.wait_ready()
        time.sleep(2.0)
        rss_idle = sample(gateway.pid).rss_kib
        sender = Child(
            [sys.executable, "-m", "bench.e2e_sender", str(export_keys_to), str(TTL)],
            core=CORE_PEERS,
            stdin=True,
            stderr=workdir / "sender.log",
        )
        sender.expect("ready", 60)
        sender.ask("encrypted", 600, cmd="encrypt", route=ROUTE, count=messages)
        started = time.monotonic()
        sender.send(cmd="post", route=ROUTE, count=messages, rate=0.0, times=False)
        points: list[tuple[float, float, int]] = []  # (seconds, duplicates, RSS KiB)
        absorbed, last_change, last = 0.0, time.monotonic(), -1.0
        while absorbed < duplicates:
            time.sleep(SAMPLE_EVERY)
            if gateway.proc is None or gateway.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited; see {workdir / 'gateway.log'}")
            text = gateway.get("/metrics").decode()
            absorbed = metric_sum(text, "fieldgate_messages_duplicate_total")
            rss = sample(gateway.pid).rss_kib
            points.append((time.monotonic() - started, absorbed, rss))
            print(
                f"  {points[-1][0]:6.0f} s: {absorbed:9,.0f} duplicates, RSS {rss / 1024:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
            if absorbed != last:
                last, last_change = absorbed, time.monotonic()
            elif time.monotonic() - last_change > RESULT_LIMIT:
                raise RuntimeError(f"stuck at {absorbed:,.0f} duplicates")
        journalled = metric_sum(
            gateway.get("/metrics").decode(), "fieldgate_messages_journalled_total"
        )
        log_text = (workdir / "gateway.log").read_text(errors="replace")
    finally:
        if sender is not None:
            sender.send(cmd="quit")
            sender.stop()
        gateway.stop()
        stop_process(service)
    peak = max(p[2] for p in points)
    result = {
        "messages": messages,
        "duplicates": absorbed,
        "journalled": journalled,
        "seconds": points[-1][0],
        "rss_idle_kib": rss_idle,
        "rss_peak_kib": peak,
        "rss_end_kib": points[-1][2],
        "tracebacks_in_log": log_text.count("Traceback"),
        "points": points,
    }
    ok = peak / 1024 < GOAL_RSS_MIB and result["tracebacks_in_log"] == 0
    print(
        f'{messages:,} messages under ack = "delivered", broker down, redelivery every '
        f"{REDELIVERY_AFTER:g} s: {absorbed:,.0f} duplicates absorbed in {points[-1][0]:.0f} s "
        f"({journalled:,.0f} journalled, the rest refused and left with the service)"
    )
    print(
        f"resident memory: idle {rss_idle / 1024:.1f} MiB (baseline, same run), peak "
        f"{peak / 1024:.1f} MiB, at the end {points[-1][2] / 1024:.1f} MiB; goal < "
        f"{GOAL_RSS_MIB:g} MiB and no crash: {'met' if ok else 'MISSED'}"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
