"""What the push service counts, for ``/metrics`` (Prometheus) and the benchmarks.

The registry and the text format are the gateway's (:mod:`gateway.metrics`); the names here
carry the ``fieldgate_push_`` prefix.
"""

from __future__ import annotations

from fieldgate_common.metrics import Metrics

# Store calls: a loopback PostgreSQL answers in ~0.1-1 ms, a loaded one in tens of ms.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class ServiceMetrics:
    """The push service's counters and gauges, registered once per service."""

    def __init__(self, registry: Metrics | None = None) -> None:
        r = registry or Metrics()
        self.registry = r
        self.connections = r.gauge("fieldgate_push_connections", "Open client connections")
        self.monitors = r.gauge("fieldgate_push_monitors", "Monitoring GETs held open")
        self.accepted = r.counter(
            "fieldgate_push_messages_accepted_total", "Messages stored (201/202 answered)"
        )
        self.refused = r.counter(
            "fieldgate_push_requests_refused_total",
            "Requests refused by a limit or an unavailable store",
            ["reason"],
        )
        self.delivered = r.counter(
            "fieldgate_push_messages_delivered_total", "Messages pushed to a monitor"
        )
        self.acknowledged = r.counter(
            "fieldgate_push_messages_acknowledged_total", "Messages deleted by their user agent"
        )
        self.expired = r.counter(
            "fieldgate_push_messages_expired_total", "Messages given up after their TTL"
        )
        self.redelivered = r.counter(
            "fieldgate_push_messages_redelivered_total", "Pushes due again unacknowledged"
        )
        self.receipts = r.counter(
            "fieldgate_push_receipts_pushed_total", "Receipts pushed to a receipt monitor"
        )
        self.store_seconds = r.histogram(
            "fieldgate_push_store_seconds",
            "Time of one store call (worker thread included)",
            ["operation"],
            STORE_BUCKETS,
        )
        self.store_errors = r.counter(
            "fieldgate_push_store_errors_total", "Store calls that failed (database unreachable)"
        )
        self.store_up = r.gauge(
            "fieldgate_push_store_up", "1 while the database answers, 0 when it does not"
        )
        self.round_trips = r.gauge(
            "fieldgate_push_store_round_trips", "Statements sent to the database since start"
        )

    def render(self) -> str:
        """The Prometheus text exposition."""
        return self.registry.render()
