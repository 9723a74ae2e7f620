"""The end-to-end benchmark's Markdown table and PNG chart, from its results dictionary."""

from __future__ import annotations

import statistics
import sys
import time
from math import nan
from pathlib import Path
from typing import Any

from bench.e2e_png import Series, line_chart

Report = dict[str, Any]

NONE = "-"  # an empty cell

GATEWAY_COLORS = ((40, 90, 200), (200, 40, 40))  # p50, p99
FLOOR_COLORS = ((120, 170, 240), (240, 150, 150))


class Progress:
    """A plain-text progress bar on stderr."""

    WIDTH = 30

    def __init__(self, phases: int) -> None:
        self.phases = phases
        self.phase = 0
        self.label = ""
        self.last = ""
        self.started = time.monotonic()

    def next(self, label: str) -> None:
        self.phase += 1
        self.label = label
        self.show(0.0)

    def show(self, fraction: float) -> None:
        done = round(max(0.0, min(1.0, fraction)) * self.WIDTH)
        bar = "#" * done + "." * (self.WIDTH - done)
        elapsed = time.monotonic() - self.started
        line = (
            f"\r[{bar}] {fraction * 100:3.0f}%  phase {self.phase}/{self.phases} "
            f"{self.label:<34} {elapsed:5.0f} s"
        )
        if line != self.last:  # redraw only what changed: the output may be a log file
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def _mib(kib: float) -> float:
    return kib / 1024


def _median(runs: list[Report], variant: str, key: str) -> float:
    return float(statistics.median(r[key] for r in runs if r["variant"] == variant))


def _latency_cells(r: Report | None) -> str:
    if r is None:
        return NONE
    return f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f}"


def is_sparse(rate: float) -> bool:
    """Whether a field step at ``rate`` is the sparse one (a message now and then, each alone:
    a fixed few messages, no bare client beside it)."""
    return rate < 1.0


def rate_label(rate: float) -> str:
    """A field step's rate as people say it: "20/s", "1 per 30 s"."""
    return f"1 per {1 / rate:g} s" if is_sparse(rate) else f"{rate:g}/s"


def _field_lines(res: Report, drain_cpu: float) -> list[str]:
    """The field's rates: every figure beside its floor (issue 20's goals)."""
    field = res.get("field")
    if not field:
        return []
    bare = {r["offered_rate"]: r for r in res.get("floor_field", [])}
    lines = [
        "",
        "In the field (the connected gateway at a steady rate; the disk floor is a process that "
        "appends a 200-byte record and fsyncs once per message, same directory, same rate: its "
        "disk writes, and its CPU, which is mostly the cost of being woken; CPU also beside the "
        "drain's; the bare client is the floor of the live rows — h2 + cryptography + paho — at "
        "the same rate, with the gateway's CPU over it; wake-ups are the gateway's voluntary "
        "context switches; WAL restarts are the checkpoints that completed in the window):",
        "",
        "| rate | disk B/msg (WAL restarts) | floor B/msg | ratio (goal ≤ 2 at 20/s) | CPU µs/msg "
        "| fsync floor CPU µs/msg | vs drain (goal ≤ 2 at 20/s) | bare client CPU µs/msg "
        "(gateway ÷ it) | wake-ups/msg | p50 / p99 ms | RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in field:
        disk, floor = r["disk_bytes_per_message"], r["fsync_floor_bytes_per_message"]
        b = bare.get(r["offered_rate"])
        bare_cell = (
            f"{b['cpu_us']:,.0f} ({r['cpu_us'] / b['cpu_us']:.2f})" if b is not None else NONE
        )
        lines.append(
            f"| {rate_label(r['offered_rate'])} ({r['messages']}) | {disk:,.0f} "
            f"({r.get('wal_restarts', NONE)}) | {floor:,.0f} | "
            f"{disk / floor if floor else float('nan'):.2f} | {r['cpu_us']:,.0f} | "
            f"{r['fsync_floor_cpu_us']:,.0f} | {r['cpu_us'] / drain_cpu:.2f} | {bare_cell} | "
            f"{r.get('wakeups_per_message', nan):.1f} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {_mib(r['rss_kib_after']):.1f} |"
        )
    idle = res.get("idle")
    sparse = [r for r in field if is_sparse(r["offered_rate"])]
    if idle and sparse:
        # At a message every 30 s the keepalives are a large share of the wake-ups (their CPU
        # is below the clock tick's resolution over the idle window).
        rate = sparse[0]["offered_rate"]
        per_message = idle["wakeups_per_minute"] / 60.0 / rate
        lines.append(
            f"| (of {rate_label(rate)}: the keepalives alone, from the idle window) | - | - | - | "
            f"- | - | - | - | {per_message:.1f} | - | - |"
        )
    half = res.get("half_live")
    if half:
        lines.append(
            f"| half the live capacity, {half['offered_rate']:,.0f}/s ({half['messages']}) | "
            f"{half['disk_bytes'] / half['messages']:,.0f} | - | - | {half['cpu_us']:,.0f} | - | "
            f"{half['cpu_us'] / drain_cpu:.2f} | - | {half.get('wakeups_per_message', nan):.1f} | "
            f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f} (goal p99 < 10) | - |"
        )
    return lines


def render_markdown(res: Report) -> str:
    """The results as a Markdown table; every figure beside its floor and goal."""
    goals = res["goals"]
    drains = res["drains"]
    rate, floor_rate = res["sustained_rate"], res["floor_rate"]
    ratio = rate / floor_rate
    g_cpu, f_cpu = _median(drains, "gateway", "cpu_us"), _median(drains, "floor", "cpu_us")
    disk = _median(drains, "gateway", "disk_bytes_per_message")
    floor_rss = _median(drains, "floor", "rss_kib")
    lat = {(r["variant"], r["load"]): r for r in res["latency"]}
    serial, idle = res["serial"], res["idle"]
    rss_start, rss_after = _mib(res["rss_start_kib"]), _mib(res["rss_after_kib"])
    lines = [
        "### End to end: push service → gateway → MQTT QoS 1 / serial",
        "",
        f"Machine: {res['machine']}. N = {res['messages']:,} messages of 100 B "
        f"({res['setup']['body_bytes']} B aes128gcm bodies) per drain, journal on disk, "
        f"ack after journalling; gateway or floor on core 1, push service, sender, mosquitto, "
        f"subscriber and fbsim on core 0; medians of {res['rounds']} interleaved rounds. "
        "Rates drift by 20-30% between minutes on this VM: the ratios to the floors measured "
        "in the same run are what hold.",
        "",
        "| figure | gateway | floor (same run) | ratio | goal |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| sustained msg/s, end to end to MQTT QoS 1 (drain of N, from the first message "
        f"taken in to the last out) | {rate:,.0f} | "
        f"{floor_rate:,.0f} (bare h2 + cryptography) | {ratio:.2f} | ≥ {goals['rate_ratio']:.2f}:"
        f" {_verdict(ratio >= goals['rate_ratio'])} |",
        f"| the same drain beside the bare parts publishing too (each decrypted message with bare"
        f" paho QoS 1 to the same subscriber, timed alike: to its last receipt) | {rate:,.0f} | "
        f"{res['floor_mqtt_rate']:,.0f} (bare h2 + cryptography + paho) | "
        f"{rate / res['floor_mqtt_rate']:.2f} | - |",
        f"| MQTT: QoS 1 msg/s | {rate:,.0f} | {res['mqtt_floor_rate']:,.0f} (bare paho burst) | "
        f"{rate / res['mqtt_floor_rate']:.2f} | - |",
        f"| CPU µs per message (drain, all threads) | {g_cpu:,.0f} | {f_cpu:,.0f} | "
        f"{g_cpu / f_cpu:.2f} | - |",
    ]
    live = {r["variant"]: r for r in res.get("live", [])}
    if "gateway" in live and "floor" in live:
        g, f = live["gateway"], live["floor"]
        lines.append(
            f"| live msg/s, gateway connected, sender POSTing flat out (sender "
            f"{g['sender_rate']:,.0f} POST/s; core 0 busy {g['core_busy'].get('cpu0', 0):.0%}) | "
            f"{g['rate']:,.0f} | {f['rate']:,.0f} (bare h2 + cryptography + paho) | "
            f"{g['rate'] / f['rate']:.2f} | - |"
        )
        lines.append(
            f"| CPU µs per message, live flat out (gateway: main thread "
            f"{g['main_thread_cpu_us']:,.0f}, other threads {g['other_threads_cpu_us']:,.0f}) | "
            f"{g['cpu_us']:,.0f} | "
            f"{f['cpu_us']:,.0f} | {g['cpu_us'] / f['cpu_us']:.2f} | - |"
        )
        lines.append(
            f"| disk bytes written per message, live flat out | "
            f"{g['disk_bytes_per_message']:,.0f} | 0 | - | - |"
        )
    for load in sorted({r["load"] for r in res["latency"]}):
        g, f = lat.get(("gateway", load)), lat.get(("floor", load))
        assert g is not None
        goal = NONE
        if abs(load - 0.5) < 1e-9:
            limit = goals["p99_ms_at_50"]
            goal = f"p99 < {limit:g} ms: {_verdict(g['p99_ms'] < limit)}"
        p99_ratio = f"{g['p99_ms'] / f['p99_ms']:.2f} (p99)" if f else NONE
        lines.append(
            f"| latency p50 / p99 / max ms at {load:.0%} ({g['offered_rate']:,.0f} msg/s, "
            f"{g['samples']} msgs) | {_latency_cells(g)} | {_latency_cells(f)} (floor + paho) "
            f"| {p99_ratio} | {goal} |"
        )
    hist = ", ".join(
        f"{r['load']:.0%}: ≤ {r['histogram_p50_le_ms']:g} / ≤ {r['histogram_p99_le_ms']:g}"
        for r in res["latency"]
        if r["variant"] == "gateway" and r.get("histogram_p99_le_ms") is not None
    )
    lines.append(
        f"| gateway's delivery_latency histogram p50 / p99 ms (receipt → PUBACK, bucket bound) "
        f"| {hist} | - | - | - |"
    )
    cpu_loads = ", ".join(
        f"{r['load']:.0%}: {r['cpu_us']:,.0f}"
        for r in res["latency"]
        if r["variant"] == "gateway" and "cpu_us" in r
    )
    lines.append(f"| CPU µs per message under partial load | {cpu_loads} | - | - | - |")
    rss_ok = max(rss_start, rss_after) < goals["rss_mib"]
    lines.append(
        f"| RSS MiB at start (connected, idle) / after the run | {rss_start:.1f} / "
        f"{rss_after:.1f} | {_mib(floor_rss):.1f} (floor after N) | "
        f"{rss_after / _mib(floor_rss):.2f} | < {goals['rss_mib']:g}: {_verdict(rss_ok)} |"
    )
    long = res.get("long")
    if long:
        points = long["rss_kib"]
        first, last = points[0][1], points[-1][1]
        flat = abs(last - first) / first
        lines.append(
            f"| RSS MiB at {points[0][0]:,} / {points[-1][0]:,} messages "
            f"({long['offered_rate']:,.0f} msg/s) | {_mib(first):.1f} / {_mib(last):.1f} | - | "
            f"{last / first:.3f} | within {goals['flat']:.0%}: {_verdict(flat <= goals['flat'])}"
            f" |"
        )
    else:
        lines.append(
            "| RSS flat from 100,000 to 1,000,000 messages | not run (FIELDGATE_BENCH_LONG=1) "
            "| - | - | within 10% |"
        )
    lines += [
        f"| disk bytes written per message (/proc/PID/io write_bytes) | {disk:,.0f} | 0 | - | - |",
        f"| serial route msg/s (fbsim on a pty, stop-and-wait) | {serial['rate']:,.0f} | "
        f"{serial['line_capacity_115200']:,.1f} (115200 baud, {serial['data_frame_bytes']} + "
        f"{serial['ack_frame_bytes']} B frames) | "
        f"{serial['rate'] / serial['line_capacity_115200']:.1f} | - |",
        f"| the {idle['settling']['seconds']:.0f} s after the last message (acknowledgement "
        f"record, dedupe records' grace): CPU s, wake-ups, per minute | "
        f"{idle['settling']['cpu_seconds_per_minute']:.4f} s, "
        f"{idle['settling']['wakeups_per_minute']:.1f} | - | - | - |",
        f"| idle CPU s/minute (the window after that) | "
        f"{idle['cpu_seconds_per_minute']:.4f} | - | - | - |",
        f"| idle wake-ups/minute (voluntary switches, {idle['seconds']:.0f} s window, all "
        f"threads) | {idle['wakeups_per_minute']:.1f} | keepalives (push, MQTT, serial at "
        f"{res['keepalive_s']:g} s; MQTT ticks 4x per interval) allow "
        f"{idle['keepalive_wakeups_allowed']} in the window | - | "
        f"only keepalives: {_verdict(idle['wakeups'] <= idle['keepalive_wakeups_allowed'])} |",
        "",
        "Latency runs from the sender's POST (just before the request is written) to the MQTT "
        "subscriber's on_message: it includes the HTTP/1.1 POST, the push service and its "
        "HTTP/2 push, the gateway (decrypt, journal commit, DELETE, MQTT publish) and the "
        "broker's hop to the subscriber; nothing is subtracted. The floor column is the same "
        "path with the bare client publishing each decrypted payload with bare paho "
        "(no journal).",
        "",
        "Each drain (msg/s from the first message taken in to the last out; first to last "
        "output — the subscriber's receipts, the floor's 204s — and over the 10-90% outputs; "
        "CPU µs/message):",
        "",
    ]
    for r in drains:
        batch = r.get("messages_per_ingest_commit")
        extra = (
            (f", {batch:.1f} messages per journal commit" if batch else "")
            + f" (since process start: main thread {r['main_thread_cpu_us']:,.0f}, other "
            f"{r['threads'] - 1} threads {r['other_threads_cpu_us']:,.0f}), "
            f"{r['disk_bytes_per_message']:,.0f} B/msg to disk, subscriber duplicates "
            f"{r['duplicates_at_subscriber']}"
            if r["variant"] == "gateway"
            else f", service duplicates {r['duplicates']}"
        )
        lines.append(
            f"- round {r['round']} {r['variant']:10}: {r['rate']:,.0f}/s (first to last output: "
            f"{r['output_rate']:,.0f}/s, 10-90%: {r['window_rate']:,.0f}/s), "
            f"{r['cpu_us']:,.0f} µs{extra}"
        )
    lines += _field_lines(res, g_cpu)
    lines += [
        "",
        "Each latency run (offered and achieved POST rate, busy fraction of each core):",
        "",
    ]
    for r in res["latency"]:
        busy = ", ".join(f"{core} {v:.0%}" for core, v in sorted(r["core_busy"].items()))
        batch = r.get("messages_per_ingest_commit")
        commits = f", {batch:.1f} messages per journal commit" if batch else ""
        lines.append(
            f"- {r['variant']:7} at {r['load']:.0%}: offered {r['offered_rate']:,.0f}/s, sent "
            f"{r['achieved_send_rate']:,.0f}/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} "
            f"ms, CPU {r.get('cpu_us', 0):,.0f} µs/msg{commits}; {busy}"
        )
    lines.append("")
    return "\n".join(lines)


def write_chart(res: Report, path: Path) -> None:
    """Latency p50/p99 against offered load, gateway and floor."""
    series = []
    for variant, colors in (("gateway", GATEWAY_COLORS), ("floor", FLOOR_COLORS)):
        runs = [r for r in res["latency"] if r["variant"] == variant]
        for key, color in zip(("p50_ms", "p99_ms"), colors, strict=True):
            points = [(float(r["offered_rate"]), float(r[key])) for r in runs]
            if points:
                series.append(Series(f"{variant} {key[:3]}", color, points))
    line_chart(
        path,
        series,
        title="post to mqtt subscriber latency against offered load (qos 1)",
        x_title="offered load, msg/s",
        y_title="latency, ms (log)",
        y_log=True,
    )
