"""The two upstream protocols side by side: RFC 8030 over HTTP/2 (the reference push service)
and Mozilla's autopush WebSocket protocol (its test double), through the same gateway path.

For each protocol: the real upstream side (``gateway.upstream`` + the journal on disk, no
router) in its own process on the core under test, the service and an HTTP/1.1 sender on the
other core (``bench/agent_*.py``, as ``bench agent`` runs them), two routes, 100-byte payloads:

* **live**: connected, then the sender posts N messages (first POST to N-th acknowledgement);
* **drain**: 150 messages stored while the gateway was away, then it connects (autopush drops
  a uaid that receives more than 150 stored messages in one session: a larger drain is not
  something the protocol allows).

Rounds alternate the protocols; each figure is the median. The RFC 8030 path is the baseline
measured in the same run: the ratio is what holds on a noisy machine.
Environment: ``FIELDGATE_BENCH_MESSAGES`` (N, default 2000), ``FIELDGATE_BENCH_ROUNDS`` (3).
Raw results: ``bench/results/upstreams.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_agent import Bench

PROTOCOLS = ("rfc8030", "autopush")
DEFAULT_MESSAGES = 2000
DEFAULT_ROUNDS = 3
DRAIN = 150  # autopush's per-session limit of stored messages (autoconnect check_msg_limit)
RESULTS = Path(__file__).parent / "results" / "upstreams.json"


def _runs(kind: str, messages: int, rounds: int, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    benches = {}
    for protocol in PROTOCOLS:
        where = workdir / f"{protocol}-{kind}"
        where.mkdir()
        benches[protocol] = Bench(where, messages, protocol=protocol)
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PROTOCOLS}
    try:
        for _ in range(rounds):
            for protocol in PROTOCOLS:
                results[protocol].append(benches[protocol].run("agent", kind))
    finally:
        for bench in benches.values():
            bench.close()
    return results


def _median(reports: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in reports)


def main() -> None:
    messages = int(os.environ.get("FIELDGATE_BENCH_MESSAGES", DEFAULT_MESSAGES))
    rounds = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", DEFAULT_ROUNDS))
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-upstreams-") as tmp:
        live = _runs("live", messages, rounds, Path(tmp))
        drain = _runs("drain", DRAIN, rounds, Path(tmp))
    rows = []
    for kind, results, n in (("live", live, messages), ("drain", drain, DRAIN)):
        base_rate = _median(results["rfc8030"], "rate")
        base_cpu = _median(results["rfc8030"], "cpu_us")
        for protocol in PROTOCOLS:
            rate, cpu = _median(results[protocol], "rate"), _median(results[protocol], "cpu_us")
            rows.append(
                {
                    "mode": kind,
                    "messages": n,
                    "protocol": protocol,
                    "rate": rate,
                    "cpu_us": cpu,
                    "rate_ratio": rate / base_rate,
                    "cpu_ratio": cpu / base_cpu,
                }
            )
    print(f"{rounds} rounds, medians; the RFC 8030 path is the baseline of the same run\n")
    print("| mode | protocol | msg/s | CPU µs/msg | rate vs RFC 8030 | CPU vs RFC 8030 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['mode']} ({row['messages']}) | {row['protocol']} | {row['rate']:,.0f} "
            f"| {row['cpu_us']:,.0f} | {row['rate_ratio']:.2f} | {row['cpu_ratio']:.2f} |"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "live": live, "drain": drain}, indent=1))


if __name__ == "__main__":
    main()
