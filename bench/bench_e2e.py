"""End to end: push service -> gateway (journal on disk) -> MQTT QoS 1 and serial, beside floors.

Processes (``bench/e2e_*.py``): mosquitto, the reference push service (``fieldgate
push-service``), a sender (pre-encrypted 100 B payloads, HTTP/1.1 keep-alive, rate-controlled),
an MQTT subscriber (QoS 1, stamps each receipt) and the C device simulator fbsim on a pty, all on
core 0; on core 1 either the gateway (``fieldgate run`` with a generated config: one MQTT QoS 1
route, one serial route, ack after journalling) or the floor, a bare h2 + bare cryptography
client (``bench.agent_floor.FloorClient``) against the same service.

Measured, each beside its floor from the same run:

* sustained messages/s: N messages wait at the push service, then the gateway starts and takes
  them to the MQTT subscriber; rate from the first message taken in (the journal's
  received_at) to the last receipt (start-up excluded; first to last receipt beside it).
  Floor: the bare client draining N the same way (receive + decrypt + DELETE, no MQTT; from
  the first to the last message taken in, first to last 204 beside it); the bare client
  draining N and publishing each decrypted message with bare paho (QoS 1, to the same
  subscriber: what delivering costs the bare parts, timed like the gateway, to the last
  receipt); and a bare paho QoS 1 publisher burst (the MQTT floor). Also "live": the gateway
  connected while the sender POSTs N as fast as the service answers;
* gateway CPU µs/message (``/proc/PID/stat``, all threads, minus what a start-up without
  messages costs) and disk bytes/message (``/proc/PID/io`` write_bytes) over the drain;
* latency at 25%, 50% and 90% of the sustained rate: from the sender's POST (just before it
  writes the request) to the subscriber's on_message; it includes the HTTP/1.1 POST, the push
  service, the gateway and the broker hop. Beside it the same path with the floor client
  publishing each decrypted payload with bare paho, and the gateway's own
  ``fieldgate_delivery_latency_seconds`` (gateway receipt -> broker PUBACK; bucket bounds);
* serial: messages/s to fbsim over the pty beside a 115200-baud line's stop-and-wait capacity
  for the same frames (computed; a pty has no baud rate);
* RSS at start (connected, idle) and after the run; idle CPU and wake-ups (voluntary context
  switches) per minute with every keepalive at 60 s;
* the field's rates, one message every 30 s (five), 1, 20 and 100 msg/s through the connected
  gateway, after the idle window (so that no earlier phase's deferred work lands in theirs):
  disk bytes written per message beside the floor of acknowledging after a durable commit (one
  append of a 200-byte record and one fsync per message in the same directory,
  ``bench/e2e_fsync.py``, at the same rate), CPU per message beside the drain's, the fsync
  floor's and the bare client's at the same rate (the live floor: h2 + cryptography + paho;
  from 1/s), wake-ups per message, latency, resident memory; and the latency at half the live
  capacity (the live flat-out rate measured first).

``FIELDGATE_BENCH_MESSAGES`` (N, default 3000), ``FIELDGATE_BENCH_ROUNDS`` (default 2),
``FIELDGATE_BENCH_IDLE`` (idle window, s, default 60), ``FIELDGATE_BENCH_FIELD_SECONDS`` (each
field-rate step, default 30; the gateway's at 20/s and more send at least FIELD_STEADY_MESSAGES,
3,000), ``FIELDGATE_BENCH_LONG=1`` (also
1,000,000 messages, or ``FIELDGATE_BENCH_LONG_MESSAGES``, at 90% of the live rate, RSS every
100,000), ``FIELDGATE_BENCH_PROFILE=FILE`` (the last
gateway process runs under cProfile; top functions printed). Results:
bench/results/e2e.{md,json,png}.
"""

from __future__ import annotations

import json
import os
import pstats
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.e2e_common import (
    CORE_PEERS,
    CORE_UNDER_TEST,
    Child,
    context_switches,
    pin,
    sample,
    thread_cpu,
    wal_restarts,
)
from bench.e2e_measure import (
    WINDOW,
    busy_fractions,
    core_ticks,
    count_lines,
    histogram_quantile,
    interpolate,
    keepalive_wakeups,
    latency_summary,
    output_window,
    ratio,
    to_ms,
)
from bench.e2e_procs import (
    KEEPALIVE,
    MQTT_ADAPTER,
    MQTT_ROUTE,
    SERIAL_ROUTE,
    TOPIC_PREFIX,
    GatewayProcess,
    export_keys,
    free_port,
    histogram_buckets,
    metric_sum,
    start_mosquitto,
    start_push_service,
    start_simulator,
    stop_process,
    write_config,
)
from bench.e2e_report import Progress, is_sparse, rate_label, render_markdown, write_chart
from gateway.config import load_config
from gateway.policy import DEDUPE_GRACE
from gateway.router import PRUNE_BUSY_INTERVAL, PRUNE_DUE_SLACK
from gateway.store import DB_NAME
from gateway.upstream.journal import ACK_RECORD_DELAY

DEFAULT_MESSAGES = 3000  # ~4-5 s of gateway drain at the ~700 msg/s seen here
DEFAULT_ROUNDS = 2  # floor/gateway drains alternate; medians (the VM drifts 20-30%)
LOADS = (0.25, 0.5, 0.9)  # fractions of the gateway's sustained rate (issue 10)
# The field's rates (issue 20): a few messages a minute is the usual case, 100/s a busy site.
# The sparse step sends FIELD_SPARSE_MESSAGES, each alone in the kernel's writeback window (30 s):
# what a message costs when nothing it writes is shared with another's. Each one's record rides
# on the next one's commit (policy.RECORD_DEFER), the last one's on the next step's first.
FIELD_SPARSE_GAP = 30.0
FIELD_SPARSE_MESSAGES = 5
FIELD_RATES = (1.0 / FIELD_SPARSE_GAP, 1.0, 20.0, 100.0)
FIELD_SECONDS = 30.0  # each field step lasts this long (FIELDGATE_BENCH_FIELD_SECONDS) ...
FIELD_MIN_MESSAGES = 20  # ... with at least this many messages
# ... and the gateway's at 20/s or more at least this many: a trickle's WAL is checkpointed once
# in ~1,400 messages (a checkpoint writes the pages touched since once more) and its dedupe
# records are pruned every PRUNE_BUSY_INTERVAL, so a 600-message window held one checkpoint or
# none, by chance (1.65x or 2.46x the fsync floor in runs of the same code); ~2 checkpoints and a
# few prunes make the figure the steady state's. The bare client keeps nothing: its steps stay
# rate x seconds.
FIELD_STEADY_MESSAGES = 3000
FIELD_STEADY_FROM = 20.0
LATENCY_SECONDS = 4.0  # each load step lasts about this long ...
LATENCY_MIN_MESSAGES = 200  # ... with at least this many samples for a p99
SERIAL_MESSAGES = 600  # ~1 s over the pty
MQTT_FLOOR_MESSAGES = 10_000  # perf-limits.md §3a burst size (~1 s)
DEFAULT_IDLE = 60.0  # one whole keepalive period
# After the last message the gateway still records its acknowledgements (ACK_RECORD_DELAY after
# they finished), may forget the dedupe records a grace period after that, and prunes at most
# PRUNE_BUSY_INTERVAL (+ slack) after they fell due: the "settling" window covers the whole chain,
# the idle window follows it.
SETTLING_SECONDS = ACK_RECORD_DELAY + DEDUPE_GRACE + PRUNE_BUSY_INTERVAL + PRUNE_DUE_SLACK + 10.0
IDLE_SETTLE = 3.0  # after the last message: let deferred work (commits, thread exits) finish
LONG_MESSAGES = 1_000_000
LONG_STEP = 100_000  # RSS is read every this many delivered messages
TTL = 86_400  # no message may expire during a run (the long run takes ~30 min)
REDELIVERY_AFTER = 3600.0  # the service must not push a message twice because a run is slow
SAMPLE_EVERY = 0.05  # /proc sampling of the gateway during a drain
RESULT_LIMIT = 120.0  # a phase making no progress for this long is a failure, not slow
GOAL_RATE = 0.65  # issue 10: end to end >= 65% of the h2 + cryptography floor
GOAL_P99_MS = 10.0  # p99 at 50% load
GOAL_RSS_MIB = 50.0
GOAL_FLAT = 0.10  # RSS within 10% from 100k to 1M messages
LINE_BYTES_PER_S = 115200 / 10  # 8N1: start + 8 data + stop bits
RESULTS = Path(__file__).parent / "results"

Report = dict[str, Any]


def field_messages(rate: float, seconds: float, *, steady: bool = False) -> int:
    """How many messages a field step at ``rate`` sends; ``steady``: the gateway's, long enough
    at 20/s and more to hold its periodic disk work (FIELD_STEADY_MESSAGES)."""
    if is_sparse(rate):
        return FIELD_SPARSE_MESSAGES
    count = max(FIELD_MIN_MESSAGES, round(rate * seconds))
    if steady and rate >= FIELD_STEADY_FROM:
        count = max(count, FIELD_STEADY_MESSAGES)
    return count


class Bench:
    """The peers and the children of one run."""

    def __init__(self, workdir: Path, messages: int, progress: Progress) -> None:
        self.startup_cpu = 0.0
        self.workdir = workdir
        self.messages = messages
        self.progress = progress
        self.children: list[Child] = []
        self.procs: list[Any] = []
        mosquitto, self.mqtt_port = start_mosquitto(workdir)
        self.procs.append(mosquitto)
        service, self.service_url = start_push_service(workdir, REDELIVERY_AFTER)
        self.service = service
        self.procs.append(service)
        fbsim, pty, self.record = start_simulator(workdir)
        self.procs.append(fbsim)
        status_port = free_port()
        self.config = write_config(workdir, self.service_url, self.mqtt_port, pty, status_port)
        self.journal_db = load_config(self.config).push.state_dir / DB_NAME
        self.gateway = GatewayProcess(self.config, status_port, workdir / "gateway.log")
        self.gateway_runs = 0

    def child(self, args: list[str], *, core: int, stdin: bool = False) -> Child:
        child = Child(
            [sys.executable, *args], core=core, stdin=stdin, stderr=self.workdir / "children.log"
        )
        self.children.append(child)
        return child

    # ------------------------------------------------------------------ set-up

    def setup(self) -> Report:
        """First gateway start: subscribe both routes, read RSS connected and idle, stop."""
        self.gateway.start()
        self.gateway.wait_ready()
        self.gateway.wait_subscribed()
        time.sleep(IDLE_SETTLE)
        start = sample(self.gateway.pid)
        # What a start without messages costs (imports, store, subscribe, connections): taken
        # off the drains' CPU, whose gateway starts with N messages waiting.
        self.startup_cpu = start.cpu
        self.gateway.stop()
        self.keys_file = self.workdir / "keys.json"
        self.keys = export_keys(self.config, self.keys_file)
        self.subscriber = self.child(
            ["-m", "bench.e2e_subscriber", str(self.mqtt_port), TOPIC_PREFIX + "#"],
            core=CORE_PEERS,
            stdin=True,
        )
        self.subscriber.expect("ready", RESULT_LIMIT)
        self.sender = self.child(
            ["-m", "bench.e2e_sender", str(self.keys_file), str(TTL)], core=CORE_PEERS, stdin=True
        )
        self.sender.expect("ready", RESULT_LIMIT)
        encrypted = self.encrypt(MQTT_ROUTE, self.messages)
        return {"rss_start_kib": start.rss_kib, "body_bytes": encrypted["body_bytes"]}

    def encrypt(self, route: str, count: int) -> Report:
        return self.sender.ask(
            "encrypted", RESULT_LIMIT + count * 0.01, cmd="encrypt", route=route, count=count
        )

    def post(self, route: str, count: int, rate: float, times: bool = False) -> None:
        self.sender.send(cmd="post", route=route, count=count, rate=rate, times=times)

    def sent(self) -> Report:
        return self.sender.expect("sent", RESULT_LIMIT + self.messages * 0.01)

    def received(self) -> int:
        return int(self.subscriber.ask("count", RESULT_LIMIT, cmd="count")["count"])

    def receipts(self) -> dict[int, float]:
        report = self.subscriber.ask("times", RESULT_LIMIT, cmd="times")
        return {int(seq): float(t) for seq, t in report["times"]}

    # ------------------------------------------------------------------ phases

    def mqtt_floor(self) -> float:
        """Bare paho QoS 1 burst through the loop_start() thread until the last PUBACK."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        own = os.sched_getaffinity(0)
        pin(CORE_UNDER_TEST)  # the publisher takes the gateway's core (threads inherit it)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)  # perf-limits.md §3a: paho's best QoS 1 rate
        try:
            client.connect("127.0.0.1", self.mqtt_port)
            client.loop_start()
            deadline = time.monotonic() + RESULT_LIMIT
            while not client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.01)  # set-up only: paho offers no connected event to wait on
            body = b"x" * 100
            started = time.perf_counter()
            info = None
            for _ in range(MQTT_FLOOR_MESSAGES):
                info = client.publish("floor/paho", body, qos=1)
            assert info is not None
            info.wait_for_publish(RESULT_LIMIT)
            return MQTT_FLOOR_MESSAGES / (time.perf_counter() - started)
        finally:
            client.disconnect()
            client.loop_stop()
            os.sched_setaffinity(0, own)

    def floor_drain(self) -> Report:
        report = self._floor_child()
        # From the first message taken in to the last, as the gateway's drain is timed. The
        # first to the last 204 is the push service's pace of answering (it answers after it
        # pushed everything: faster than the client can take messages in), kept beside it.
        report["rate"] = (report["messages"] - 1) / report["taken_seconds"]
        return report

    def floor_mqtt_drain(self) -> Report:
        """The floor drain publishing each message with bare paho too, timed like the gateway's:
        from its first message taken in to the subscriber's last receipt."""
        self.subscriber.ask("reset", RESULT_LIMIT, cmd="reset")
        report = self._floor_child(str(self.mqtt_port), TOPIC_PREFIX + MQTT_ROUTE)
        n = report["messages"]
        deadline = time.monotonic() + RESULT_LIMIT
        while (got := self.received()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the floor's publishes stuck at {got}/{n}; see {self.workdir}")
            time.sleep(SAMPLE_EVERY)
        last = max(self.receipts().values())
        report["rate"] = (n - 1) / (last - report["first_decrypted_at"])
        return report

    def _floor_child(self, *publish_to: str) -> Report:
        """N messages waiting, then the bare client (``bench.e2e_floor drain``) takes them; its
        report with the rates and CPU both floor drains share (not yet ``rate``)."""
        self.post(MQTT_ROUTE, self.messages, 0.0)
        self._wait_sent()
        args = ["-m", "bench.e2e_floor", "drain", str(self.keys_file), str(self.messages)]
        floor = self.child([*args, *publish_to], core=CORE_UNDER_TEST)
        report = floor.expect("result", RESULT_LIMIT + self.messages * 0.01)
        floor.proc.wait()
        n = report["messages"]
        report["output_rate"] = (n - 1) / report["first_to_last_seconds"]  # its 204s
        report["window_rate"] = report["window"] / report["window_seconds"]
        report["cpu_us"] = report["cpu_seconds"] / n * 1e6
        return report

    def _wait_sent(self) -> Report:
        while True:
            try:
                return self.sender.expect("sent", 1.0)
            except TimeoutError:
                self.progress.show(0.0)

    def gateway_drain(self, profile: Path | None = None) -> Report:
        """N waiting messages; the gateway starts and delivers them to the subscriber."""
        self.post(MQTT_ROUTE, self.messages, 0.0)
        self._wait_sent()
        self.subscriber.ask("reset", RESULT_LIMIT, cmd="reset")
        started = time.time()
        self.gateway.start(profile)
        self.gateway_runs += 1
        report = self._collect(self.messages, self.gateway.pid, self.startup_cpu)
        self.gateway.wait_ready()
        # From the first message taken in to the last at the subscriber (the floor's drain is
        # timed from its first message taken in too); first to last receipt kept beside it.
        n = report["messages"]
        report["output_rate"] = report["rate"]
        report["rate"] = (n - 1) / (report["last_receipt_at"] - self._first_taken(started))
        return report

    def _first_taken(self, since: float) -> float:
        """When (``time.monotonic()``) the gateway took in its first message since ``since``
        (``time.time()``): the journal's ``received_at``, read beside the running gateway."""
        db = self.journal_db
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT min(received_at) FROM journal WHERE received_at >= ?", (since,)
            ).fetchone()
        finally:
            conn.close()
        if row is None or row[0] is None:
            raise RuntimeError(f"no message in the journal since the drain began; see {db}")
        return float(row[0]) - (time.time() - time.monotonic())

    def live_max(self, pid: int) -> Report:
        """The gateway (or floor) connected; the sender POSTs N as fast as it is answered."""
        self.subscriber.ask("reset", RESULT_LIMIT, cmd="reset")
        self.post(MQTT_ROUTE, self.messages, 0.0)
        report = self._collect(self.messages, pid)
        sent = self._wait_sent()
        report["sender_rate"] = sent["count"] / (sent["t_end"] - sent["t_start"])
        return report

    def _collect(self, n: int, pid: int, startup_cpu: float | None = None) -> Report:
        """Sample ``pid`` until the subscriber has ``n`` messages.

        The rate is from the first to the last receipt at the subscriber (and over the 10%-90%
        receipts). CPU/message: with ``startup_cpu`` (a fresh process), all its CPU up to the
        last receipt minus what a start-up without messages took; else over the first-to-last
        span."""
        samples = [sample(pid)]
        threads0 = thread_cpu(pid) if startup_cpu is None else {}
        is_gateway = self.gateway.proc is not None and pid == self.gateway.pid
        batches0 = self._batches() if is_gateway and startup_cpu is None else (0.0, 0.0)
        cores0 = core_ticks()
        got, last_change, last_got = 0, time.monotonic(), -1
        while got < n:
            time.sleep(SAMPLE_EVERY)
            if pid == self.gateway.pid:
                self.gateway.poll_ready()
            samples.append(sample(pid))
            got = self.received()
            if got != last_got:
                last_got, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > RESULT_LIMIT:
                raise RuntimeError(f"stuck at {got}/{n} messages; see {self.workdir}")
            self.progress.show(got / n)
        busy = busy_fractions(cores0, core_ticks())
        threads1 = thread_cpu(pid)
        time.sleep(1.0)  # the commits that mark the last deliveries
        samples.append(sample(pid))
        batches1 = self._batches() if is_gateway else (0.0, 0.0)
        main_cpu = threads1.get(pid, 0.0) - threads0.get(pid, 0.0)
        other_cpu = sum(v - threads0.get(t, 0.0) for t, v in threads1.items() if t != pid)
        times = sorted(self.receipts().values())
        count, t_lo, t_hi = output_window(times)
        cpu_last = interpolate(samples, times[-1], "cpu")
        if startup_cpu is None:
            cpu = cpu_last - interpolate(samples, times[0], "cpu")
        else:
            cpu = cpu_last - startup_cpu
        written = samples[-1].write_bytes - samples[0].write_bytes
        duplicates = self.subscriber.ask("count", RESULT_LIMIT, cmd="count")["duplicates"]
        return {
            "messages": n,
            "window": count,
            "window_seconds": t_hi - t_lo,
            "window_rate": count / (t_hi - t_lo),
            "first_to_last_seconds": times[-1] - times[0],
            "last_receipt_at": times[-1],
            "rate": (n - 1) / (times[-1] - times[0]),
            "cpu_us": cpu / n * 1e6,
            # Main thread (trio: h2, crypto, MQTT) against the others (SQLite, workers); both
            # from the start of the process for a drain, from the start of the run otherwise.
            "main_thread_cpu_us": main_cpu / n * 1e6,
            "other_threads_cpu_us": other_cpu / n * 1e6,
            "threads": len(threads1),
            "ingest_commits": batches1[0] - batches0[0],
            "messages_per_ingest_commit": ratio(
                batches1[1] - batches0[1], batches1[0] - batches0[0]
            ),
            "disk_bytes_per_message": written / n,
            "disk_bytes": written,
            "rss_kib_after": samples[-1].rss_kib,
            "duplicates_at_subscriber": duplicates,
            "core_busy": busy,
        }

    def _batches(self) -> tuple[float, float]:
        """(journal transactions, messages in them) of the agent's group commit, so far."""
        text = self.gateway.get("/metrics").decode()
        name = "fieldgate_commit_batch_messages"
        return metric_sum(text, name + "_count"), metric_sum(text, name + "_sum")

    def latency(
        self, rate: float, cpu_pid: int | None, scrape: bool, count: int | None = None
    ) -> Report:
        """Offer ``rate`` msg/s for LATENCY_SECONDS (or ``count`` messages); POST -> on_message
        latency per message."""
        if count is None:
            count = max(LATENCY_MIN_MESSAGES, round(rate * LATENCY_SECONDS))
        self.subscriber.ask("reset", RESULT_LIMIT, cmd="reset")
        metrics_before = self.gateway.get("/metrics").decode() if scrape else ""
        before = sample(cpu_pid) if cpu_pid else None
        switches0 = context_switches(cpu_pid) if cpu_pid else {}
        cores0 = core_ticks()
        self.post(MQTT_ROUTE, count, rate, times=True)
        got, deadline = 0, time.monotonic() + RESULT_LIMIT + count / rate
        while got < count:
            time.sleep(0.1)
            got = self.received()
            self.progress.show(got / count)
            if time.monotonic() > deadline:
                raise RuntimeError(f"latency run at {rate:.0f}/s stuck at {got}/{count}")
        if cpu_pid:
            time.sleep(IDLE_SETTLE)  # the commits and acks that follow the last receipt
        after = sample(cpu_pid) if cpu_pid else None
        switches1 = context_switches(cpu_pid) if cpu_pid else {}
        busy = busy_fractions(cores0, core_ticks())
        sent = self._wait_sent()
        receipts = self.receipts()
        latencies = [receipts[i] - t for i, t in enumerate(sent["send_times"]) if i in receipts]
        report: Report = {
            "offered_rate": rate,
            "achieved_send_rate": count / (sent["t_end"] - sent["t_start"]),
            "messages": count,
            "core_busy": busy,
            **latency_summary(latencies),
        }
        if before is not None and after is not None:
            report["cpu_us"] = (after.cpu - before.cpu) / count * 1e6
            report["disk_bytes"] = after.write_bytes - before.write_bytes
            # Voluntary context switches: each one a sleep and a wake-up (threads that ended
            # in the window are not counted: a lower bound).
            woken = sum(v - switches0.get(tid, (0, 0))[0] for tid, (v, _) in switches1.items())
            report["wakeups_per_message"] = woken / count
        if scrape:
            metrics_after = self.gateway.get("/metrics").decode()
            name = "fieldgate_delivery_latency_seconds"
            hb = histogram_buckets(metrics_before, name, route=MQTT_ROUTE)
            ha = histogram_buckets(metrics_after, name, route=MQTT_ROUTE)
            report["histogram_p50_le_ms"] = to_ms(histogram_quantile(hb, ha, 0.5))
            report["histogram_p99_le_ms"] = to_ms(histogram_quantile(hb, ha, 0.99))
            name = "fieldgate_commit_batch_messages"
            commits = metric_sum(metrics_after, name + "_count") - metric_sum(
                metrics_before, name + "_count"
            )
            batched = metric_sum(metrics_after, name + "_sum") - metric_sum(
                metrics_before, name + "_sum"
            )
            report["messages_per_ingest_commit"] = ratio(batched, commits)
        return report

    def field(self, rate: float, seconds: float) -> Report:
        """``rate`` msg/s for ``seconds`` through the connected gateway: what each message
        costs in the field (disk bytes, CPU, latency, memory), beside the append + fsync floor
        at the same rate in the same directory."""
        count = field_messages(rate, seconds, steady=True)
        pid = self.gateway.pid
        time.sleep(IDLE_SETTLE)  # deferred work of the previous phase is done
        restarts = wal_restarts(self.journal_db)
        report = self.latency(rate, pid, scrape=True, count=count)
        time.sleep(IDLE_SETTLE)
        after = sample(pid)
        checkpoints = wal_restarts(self.journal_db) - restarts
        floor = self.child(
            ["-m", "bench.e2e_fsync", str(self.workdir), str(count), str(rate)],
            core=CORE_UNDER_TEST,
        )
        fsync = floor.expect("result", RESULT_LIMIT + count / rate)
        floor.proc.wait()
        return {
            **report,
            "disk_bytes_per_message": report["disk_bytes"] / report["messages"],
            "wal_restarts": checkpoints,
            "rss_kib_after": after.rss_kib,
            "fsync_floor_bytes_per_message": fsync["bytes_per_message"],
            "fsync_floor_cpu_us": fsync["cpu_us"],
        }

    def serial(self) -> Report:
        """K messages to the serial route; rate from fbsim's record file."""
        k = SERIAL_MESSAGES
        self.encrypt(SERIAL_ROUTE, k)
        base = count_lines(self.record)
        marks = [max(1, round(k * f)) for f in WINDOW]
        seen: list[float] = []
        self.post(SERIAL_ROUTE, k, 0.0)
        deadline = time.monotonic() + RESULT_LIMIT
        got = 0
        while got < k:
            time.sleep(0.01)
            got = count_lines(self.record) - base
            while len(seen) < 2 and got >= marks[len(seen)]:
                seen.append(time.monotonic())
            self.progress.show(got / k)
            if time.monotonic() > deadline:
                raise RuntimeError(f"serial route stuck at {got}/{k}")
        self._wait_sent()
        envelope = bytes.fromhex(self.record.read_text().splitlines()[-1].split(" ", 1)[1])
        from adapters import seriallink as sl

        data_wire = len(sl.encode_frame(sl.FrameType.DATA, 0, bytes(4) + envelope))
        ack_wire = len(sl.encode_frame(sl.FrameType.ACK, 0))
        return {
            "messages": k,
            "rate": (marks[1] - marks[0]) / (seen[1] - seen[0]),
            "envelope_bytes": len(envelope),
            "data_frame_bytes": data_wire,
            "ack_frame_bytes": ack_wire,
            "line_capacity_115200": LINE_BYTES_PER_S / (data_wire + ack_wire),
        }

    def idle(self, seconds: float) -> Report:
        """The connected gateway with no traffic: CPU and wake-ups per thread, over the window
        right after the last message (``settling``: deferred work such as the acknowledgement
        record and the dedupe records' grace period) and over the one after it (idle)."""
        time.sleep(IDLE_SETTLE)
        settling = self._quiet_window(SETTLING_SECONDS)
        return {**self._quiet_window(seconds), "settling": settling}

    def _quiet_window(self, seconds: float) -> Report:
        pid = self.gateway.pid
        cpu0, ctx0 = sample(pid).cpu, context_switches(pid)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            self.progress.show(1 - left / seconds)
        cpu1, ctx1 = sample(pid).cpu, context_switches(pid)
        per_minute = 60.0 / seconds
        threads = {
            tid: {
                "voluntary": ctx1[tid][0] - ctx0.get(tid, (0, 0))[0],
                "involuntary": ctx1[tid][1] - ctx0.get(tid, (0, 0))[1],
            }
            for tid in ctx1
        }
        voluntary = sum(t["voluntary"] for t in threads.values())
        return {
            "seconds": seconds,
            "cpu_seconds_per_minute": (cpu1 - cpu0) * per_minute,
            "wakeups": voluntary,
            "wakeups_per_minute": voluntary * per_minute,
            "threads": threads,
            "threads_gone": sorted(set(ctx0) - set(ctx1)),
            "keepalive_wakeups_allowed": keepalive_wakeups(seconds),
        }

    def long_run(self, rate: float, total: int, step: int = LONG_STEP) -> Report:
        """``total`` messages at ``rate`` through the running gateway; RSS every ``step``."""
        points: list[tuple[int, int]] = []
        name = "fieldgate_deliveries_total"
        labels = {"route": MQTT_ROUTE, "adapter": MQTT_ADAPTER, "outcome": "delivered"}
        base = metric_sum(self.gateway.get("/metrics").decode(), name, **labels)
        started = time.monotonic()
        step_size = min(step, total)
        for step in range(total // step_size):
            self.post(MQTT_ROUTE, step_size, rate)
            target = (step + 1) * step_size
            done = 0.0
            while done < target:
                time.sleep(2.0)
                done = metric_sum(self.gateway.get("/metrics").decode(), name, **labels) - base
                self.progress.show(done / total)
            self._wait_sent()
            points.append((target, sample(self.gateway.pid).rss_kib))
            print(f"\n  {target:,} messages: RSS {points[-1][1] / 1024:.1f} MiB", file=sys.stderr)
        return {
            "messages": total,
            "offered_rate": rate,
            "seconds": time.monotonic() - started,
            "rss_kib": points,
        }

    def floor_live(self) -> Child:
        floor = self.child(
            [
                "-m",
                "bench.e2e_floor",
                "live",
                str(self.keys_file),
                str(self.mqtt_port),
                TOPIC_PREFIX + MQTT_ROUTE,
            ],
            core=CORE_UNDER_TEST,
        )
        floor.expect("ready", RESULT_LIMIT)
        return floor

    def close(self) -> None:
        for child in self.children:
            if child in (self.sender, self.subscriber) and child.proc.poll() is None:
                child.send(cmd="quit")
            child.stop()
        if self.gateway.proc is not None:
            self.gateway.stop()
        for proc in reversed(self.procs):
            stop_process(proc)


def run(
    workdir: Path,
    messages: int,
    rounds: int,
    idle_seconds: float,
    long: int,
    profile: Path | None = None,
    field_seconds: float = FIELD_SECONDS,
) -> Report:
    bare_rates = [r for r in FIELD_RATES if not is_sparse(r)]
    phases = 5 + 3 * rounds + len(LOADS) * 2 + 2 + len(FIELD_RATES) + len(bare_rates) + 1
    phases += 1 if long else 0
    progress = Progress(phases)
    progress.next("start peers, subscribe")
    bench = Bench(workdir, messages, progress)
    try:
        setup = bench.setup()
        progress.next("MQTT floor (bare paho QoS 1)")
        mqtt_floor = statistics.median(bench.mqtt_floor() for _ in range(3))
        drains: list[Report] = []
        for round_no in range(1, rounds + 1):
            if bench.gateway.proc is not None and bench.gateway.proc.poll() is None:
                bench.gateway.stop()
            progress.next(f"floor drain, round {round_no}")
            drains.append({"variant": "floor", "round": round_no, **bench.floor_drain()})
            progress.next(f"floor drain publishing with paho, round {round_no}")
            drains.append({"variant": "floor+paho", "round": round_no, **bench.floor_mqtt_drain()})
            progress.next(f"gateway drain, round {round_no}")
            last = round_no == rounds
            report = bench.gateway_drain(profile if last else None)
            drains.append({"variant": "gateway", "round": round_no, **report})
        sustained = statistics.median(d["rate"] for d in drains if d["variant"] == "gateway")
        pool = max(LATENCY_MIN_MESSAGES, round(max(LOADS) * sustained * LATENCY_SECONDS))
        field_pool = max(field_messages(r, field_seconds, steady=True) for r in FIELD_RATES)
        bench.encrypt(MQTT_ROUTE, max(pool, messages, field_pool))
        progress.next("gateway live, sender flat out")
        live = [{"variant": "gateway", **bench.live_max(bench.gateway.pid)}]
        latency: list[Report] = []
        for load in LOADS:
            progress.next(f"gateway latency at {load:.0%}")
            report = bench.latency(load * sustained, bench.gateway.pid, scrape=True)
            latency.append({"variant": "gateway", "load": load, **report})
        progress.next("latency at half the live capacity")
        half_live = bench.latency(0.5 * live[0]["rate"], bench.gateway.pid, scrape=True)
        progress.next("serial route (fbsim on a pty)")
        serial = bench.serial()
        progress.next(
            f"after the last message {SETTLING_SECONDS:.0f} s, then idle {idle_seconds:.0f} s"
        )
        idle = bench.idle(idle_seconds)
        rss_after = sample(bench.gateway.pid).rss_kib
        # The field's rates last: by now the earlier phases' deferred work (acknowledgement
        # records, the dedupe records' grace period and their prune, checkpoints) is done, and
        # would otherwise land in a field window and be counted as that window's messages'.
        field: list[Report] = []
        for field_rate in FIELD_RATES:
            progress.next(f"the field: {rate_label(field_rate)}")
            field.append(bench.field(field_rate, field_seconds))
        long_report = None
        if long:
            progress.next(f"{long:,} messages (long run)")
            # 90% of what the connected gateway kept up with, so that no backlog builds up
            long_report = bench.long_run(max(LOADS) * live[0]["rate"], long)
        bench.gateway.stop()
        floor = bench.floor_live()
        progress.next("floor live, sender flat out")
        live.append({"variant": "floor", **bench.live_max(floor.pid)})
        for load in LOADS:
            progress.next(f"floor latency at {load:.0%}")
            report = bench.latency(load * sustained, floor.pid, scrape=False)
            latency.append({"variant": "floor", "load": load, **report})
        # The bare client at the field's rates: what being woken for each message costs code
        # that only receives, decrypts, DELETEs and publishes (the field rows divide by it).
        floor_field: list[Report] = []
        # Not at the sparse rate: there, too, it pays mostly for being woken (as at 1/s).
        for field_rate in bare_rates:
            progress.next(f"floor in the field: {rate_label(field_rate)}")
            time.sleep(IDLE_SETTLE)
            count = field_messages(field_rate, field_seconds)
            floor_field.append(bench.latency(field_rate, floor.pid, scrape=False, count=count))
        floor.stop()
    finally:
        progress.done()
        bench.close()
    return {
        "messages": messages,
        "rounds": rounds,
        "machine": _machine(),
        "keepalive_s": KEEPALIVE,
        "setup": setup,
        "mqtt_floor_rate": mqtt_floor,
        "drains": drains,
        "sustained_rate": sustained,
        "floor_rate": statistics.median(d["rate"] for d in drains if d["variant"] == "floor"),
        "floor_mqtt_rate": statistics.median(
            d["rate"] for d in drains if d["variant"] == "floor+paho"
        ),
        "live": live,
        "latency": latency,
        "field": field,
        "floor_field": floor_field,
        "half_live": half_live,
        "serial": serial,
        "idle": idle,
        "rss_start_kib": setup["rss_start_kib"],
        "rss_after_kib": rss_after,
        "long": long_report,
        "goals": {
            "rate_ratio": GOAL_RATE,
            "p99_ms_at_50": GOAL_P99_MS,
            "rss_mib": GOAL_RSS_MIB,
            "flat": GOAL_FLAT,
        },
    }


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} x {model}, Linux {os.uname().release}, Python {sys.version.split()[0]}"
    )


def main() -> None:
    # SIGTERM as Ctrl-C: the finally blocks stop every child process and peer.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    messages = int(os.environ.get("FIELDGATE_BENCH_MESSAGES", DEFAULT_MESSAGES))
    rounds = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", DEFAULT_ROUNDS))
    idle_seconds = float(os.environ.get("FIELDGATE_BENCH_IDLE", DEFAULT_IDLE))
    field_seconds = float(os.environ.get("FIELDGATE_BENCH_FIELD_SECONDS", FIELD_SECONDS))
    long = 0
    if os.environ.get("FIELDGATE_BENCH_LONG", "") == "1":
        long = int(os.environ.get("FIELDGATE_BENCH_LONG_MESSAGES", LONG_MESSAGES))
    profile_env = os.environ.get("FIELDGATE_BENCH_PROFILE", "")
    profile = Path(profile_env).resolve() if profile_env else None
    # On disk, not tmpfs: write_bytes counts only what goes to a block device.
    base = Path(os.environ.get("FIELDGATE_BENCH_DIR", "/var/tmp"))
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-e2e-", dir=base))
    try:
        results = run(workdir, messages, rounds, idle_seconds, long, profile, field_seconds)
    except BaseException:
        print(f"(logs kept in {workdir})", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    markdown = render_markdown(results)
    print(markdown)
    (RESULTS / "e2e.md").write_text(markdown)
    (RESULTS / "e2e.json").write_text(json.dumps(results, indent=1, default=_json_default))
    write_chart(results, RESULTS / "e2e.png")
    print(f"raw results: {RESULTS / 'e2e.json'}; chart: {RESULTS / 'e2e.png'}")
    if profile is not None and profile.exists():
        print(f"\ncProfile of the last gateway (drain, live, latency, serial, idle): {profile}")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)


def _json_default(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    raise TypeError(type(value))
