"""The real gateway's status surface: every metric moves with its event, /healthz flips, /status
matches its documented schema. Push service, gateway and status endpoint on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio
from pywebpush import webpush

from gateway.config import LogAdapterConfig, LogTarget
from gateway.status_schema import status_errors
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
        assert document["routes"][0]["push_resource"]

        before = run.gateway.metrics()
        await run.send("valves", b"one")
        await run.send("valves", b"two", ttl=1)  # under a second left when pushed: expired
        # Undecryptable: a poison message, dead-lettered and acknowledged.
        info = run.gateway.agent.subscription_infos()["valves"]
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
        await wait_until(lambda: run.gateway.agent.status.state == "connected", "connected")
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
