"""The real gateway's status surface: every metric moves with its event, /healthz flips, /status
matches its documented schema. Push service, gateway and status endpoint on loopback."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request

import trio
from pywebpush import webpush

from adapters.log_config import LogAdapterConfig, LogTarget
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from gateway.status_schema import capability_id, status_errors
from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionKeys
from tests.agent_harness import wait_until
from tests.pipeline import Pipeline, route, running_gateway

# Every metric the issue names, by the name the gateway exposes it under.
METRICS = (
    "fieldgate_messages_received_total",
    "fieldgate_messages_acknowledged_total",
    "fieldgate_messages_duplicate_total",
    "fieldgate_deliveries_total",
    "fieldgate_deliveries_retried_total",
    "fieldgate_messages_expired_total",
    "fieldgate_messages_dropped_total",
    "fieldgate_dead_letters_total",
    "fieldgate_messages_poison_total",
    "fieldgate_reconnects_total",
    "fieldgate_queue_depth",
    "fieldgate_queue_bytes",
    "fieldgate_delivery_latency_seconds",
    "fieldgate_resident_memory_bytes",
)


def _get(run: Pipeline, path: str) -> tuple[int, bytes]:
    url = f"http://{run.gateway.status_address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _value(text: str, name: str) -> float:
    """Sum of every series of ``name`` (histograms: their _count) in the Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        series = line.split(" ", 1)[0]
        base = series.split("{", 1)[0]
        if base in (name, f"{name}_count"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_every_metric_moves_with_its_event_and_health_flips(tmp_path):
    deliveries = tmp_path / "deliveries.jsonl"
    routes = [route("valves", LogTarget(adapter="out"))]
    adapters = {"out": LogAdapterConfig(name="out", path=deliveries)}
    async with running_gateway(tmp_path, routes, adapters) as run:
        status, body = await trio.to_thread.run_sync(_get, run, "/healthz")
        assert (status, body.strip()) == (200, b"ok")
        status, body = await trio.to_thread.run_sync(_get, run, "/status")
        document = json.loads(body)
        assert status == 200 and status_errors(document) == []
        # Capabilities stay out: the push resource and the set appear as identifiers only.
        [record] = run.gateway.store.subscriptions()
        assert document["routes"][0]["push_resource_id"] == capability_id(record.push_url)
        assert [s["id"] for s in document["sets"]] == [capability_id(str(record.set_url))]
        page = (await trio.to_thread.run_sync(_get, run, "/"))[1]
        for capability in (record.push_url, record.set_url, record.subscription_url):
            assert str(capability).encode() not in body + page

        before = run.gateway.metrics()
        await run.send("valves", b"one")
        await run.send("valves", b"two", ttl=1)  # under a second left when pushed: expired
        # Undecryptable: a poison message, dead-lettered and acknowledged.
        info = run.gateway.upstream.subscription_infos()["valves"]
        wrong = SubscriptionKeys.generate()
        forged = PushSubscriptionInfo(info.endpoint, wrong.p256dh, wrong.auth_secret).to_json()
        await trio.to_thread.run_sync(lambda: webpush(forged, b"?", ttl=60))
        await wait_until(
            lambda: run.counter("fieldgate_deliveries_total", outcome="delivered") >= 1,
            "a delivery",
        )
        await wait_until(lambda: run.counter("fieldgate_messages_expired_total") >= 1, "expiry")
        await wait_until(lambda: run.counter("fieldgate_messages_poison_total") == 1, "poison")
        # A reconnect, after which the service redelivers nothing new but the metric moves.
        run.service.faults.drop_connections()
        await wait_until(lambda: run.counter("fieldgate_reconnects_total") >= 1, "a reconnect")
        await wait_until(lambda: run.gateway.upstream.status.state == "connected", "connected")
        after = run.gateway.metrics()
        for name in METRICS:
            assert name in after, f"{name} missing from /metrics"
        moved = {name for name in METRICS if _value(after, name) != _value(before, name)}
        for name in (
            "fieldgate_messages_received_total",
            "fieldgate_messages_acknowledged_total",
            "fieldgate_deliveries_total",
            "fieldgate_messages_expired_total",
            "fieldgate_dead_letters_total",
            "fieldgate_messages_poison_total",
            "fieldgate_reconnects_total",
            "fieldgate_delivery_latency_seconds",
        ):
            assert name in moved, f"{name} did not move"
        # Resident memory is sampled at each scrape; it need not differ between two of them.
        assert _value(after, "fieldgate_resident_memory_bytes") > 10_000_000

        # The push service goes away: /healthz says so, with the reason; then it comes back.
        run.service.faults.freeze(True)
        run.service.faults.drop_connections()
        _code, reason = await _healthz_until(run, 503)
        assert b"push service" in reason
        run.service.faults.freeze(False)
        await _healthz_until(run, 200)


async def _healthz_until(run: Pipeline, wanted: int) -> tuple[int, bytes]:
    # The endpoint is served by this very trio loop: ask it from a thread.
    with trio.fail_after(20):
        while True:
            code, body = await trio.to_thread.run_sync(_get, run, "/healthz")
            if code == wanted:
                return code, body
            await trio.sleep(0.05)


CLOCK_SLACK = 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _row(page: str, name: str) -> list[str]:
    """The cells of the status page's table row for route ``name``."""
    row = next(r for r in page.split("<tr>") if r.startswith(f"<td>{name}</td>"))
    return [cell.split(">", 1)[1] for cell in row.split("</td>")[:-1]]


async def test_status_page_metrics_and_cli_show_what_happened_to_each_route(tmp_path):
    """Queued, delivered and failed messages, and what every status surface says of them.

    One route delivers to a file; the other to a broker that is down, so its messages wait in
    the journal with the broker's error. /status, /metrics, the HTML page and `fieldgate
    status` must each show the queue depth, the last message and the last delivery that
    happened, not defaults (they once showed an empty queue while messages waited).
    """
    deliveries = tmp_path / "deliveries.jsonl"
    routes = [
        route("valves", LogTarget(adapter="out")),
        route("pumps", MqttTarget(adapter="down", qos=1)),
    ]
    adapters = {
        "out": LogAdapterConfig(name="out", path=deliveries),
        "down": MqttAdapterConfig(
            name="down", port=_free_port(), reconnect_base=0.05, reconnect_cap=0.1
        ),
    }
    pump_bodies = (b"p1", b"pump two", b"pump three!")
    async with running_gateway(tmp_path, routes, adapters) as run:
        before = time.time()
        await run.send("valves", b"delivered one")
        await run.send_all("pumps", pump_bodies)
        await wait_until(lambda: deliveries.exists() and deliveries.read_text(), "a delivery")

        def depth(name: str) -> int:
            usage = run.gateway.store.queue_usage().get(name)
            return usage.messages if usage else 0

        # Per route: the file's delivery is recorded in the journal a moment after the file
        # has it, and the third pump message may still be on its way in.
        await wait_until(
            lambda: (depth("valves"), depth("pumps")) == (0, 3), "three messages waiting"
        )
        await wait_until(
            lambda: run.counter("fieldgate_deliveries_total", route="pumps") >= 1,
            "a failed attempt on the broker route",
        )
        # Wall-clock times: this VM's clock is slewed and stepped now and then (chrony), so
        # "between before and after" is judged with a little slack.
        before, after = before - CLOCK_SLACK, time.time() + CLOCK_SLACK

        status, body = await trio.to_thread.run_sync(_get, run, "/status")
        assert status == 200
        document = json.loads(body)
        assert status_errors(document) == []
        by_name = {r["name"]: r for r in document["routes"]}
        valves, pumps = by_name["valves"], by_name["pumps"]
        assert (valves["queue_depth"], valves["queue_bytes"]) == (0, 0)
        assert before <= valves["last_message"] <= after
        assert before <= valves["last_delivery"] <= after
        assert valves["last_error"] is None
        assert pumps["queue_depth"] == 3
        assert pumps["queue_bytes"] == sum(len(b) for b in pump_bodies)
        assert before <= pumps["last_message"] <= after
        assert pumps["last_delivery"] is None
        assert "Connection refused" in pumps["last_error"]  # why they wait: the broker
        assert document["health"]["ok"] is False

        metrics = run.gateway.metrics()
        assert 'fieldgate_queue_depth{route="pumps"} 3' in metrics
        assert 'fieldgate_queue_depth{route="valves"} 0' in metrics
        assert f'fieldgate_queue_bytes{{route="pumps"}} {pumps["queue_bytes"]}' in metrics

        status, page_bytes = await trio.to_thread.run_sync(_get, run, "/")
        assert status == 200
        page = page_bytes.decode()
        # Route, Queued, Last message, Last delivery, Subscribed, Last error, ...
        valves_row, pumps_row = _row(page, "valves"), _row(page, "pumps")
        assert (valves_row[1], pumps_row[1]) == ("0", "3")
        assert valves_row[3].endswith("ago") and pumps_row[3] == "never"
        assert pumps_row[2].endswith("ago")

        cli = await trio.run_process(
            [sys.executable, "-m", "gateway", "status", "--url",
             f"http://{run.gateway.status_address}"],
            capture_stdout=True,
            check=False,
        )  # fmt: skip
        assert cli.returncode == 1  # unhealthy: the broker is down
        lines = cli.stdout.decode().splitlines()
        [pumps_line] = [line for line in lines if line.startswith("pumps ")]
        [valves_line] = [line for line in lines if line.startswith("valves ")]
        assert pumps_line.split()[1] == "3" and valves_line.split()[1] == "0"
        assert "never" in pumps_line and "never" not in valves_line
