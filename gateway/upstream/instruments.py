"""The upstream side's series in the gateway's metrics registry."""

from __future__ import annotations

from dataclasses import dataclass

from fieldgate_common.metrics import Counter, Gauge, Histogram, Metrics


@dataclass(frozen=True)
class UpstreamInstruments:
    """Every metric the upstream side moves (names as /metrics shows them)."""

    received: Counter
    acked: Counter
    ack_failed: Counter
    dead: Counter
    reconnects: Counter
    subscribes: Counter
    commit_failed: Counter
    deferred: Counter
    pushes_refused: Counter
    connected: Gauge
    acks_owed: Gauge
    batch: Histogram

    @classmethod
    def register(cls, m: Metrics) -> UpstreamInstruments:
        """Register the series in ``m``."""
        return cls(
            received=m.counter(
                "fieldgate_messages_received_total", "Pushed messages received", ["route"]
            ),
            acked=m.counter(
                "fieldgate_messages_acknowledged_total",
                "Push messages acknowledged upstream (the service no longer holds them)",
            ),
            ack_failed=m.counter(
                "fieldgate_ack_failures_total", "Acknowledgements the push service did not accept"
            ),
            dead=m.counter(
                "fieldgate_messages_poison_total",
                "Pushed messages dead-lettered on arrival",
                ["reason"],
            ),
            reconnects=m.counter(
                "fieldgate_reconnects_total",
                "Connections to the push service opened after the first",
            ),
            subscribes=m.counter(
                "fieldgate_subscriptions_created_total", "Push subscriptions created", ["route"]
            ),
            commit_failed=m.counter(
                "fieldgate_journal_commit_failures_total", "Journal transactions that failed"
            ),
            deferred=m.counter(
                "fieldgate_messages_deferred_total",
                "Pushed messages left unacknowledged because the journal was behind",
            ),
            pushes_refused=m.counter(
                "fieldgate_pushes_refused_total",
                "Server pushes refused because too many were open at once",
            ),
            connected=m.gauge(
                "fieldgate_upstream_connected", "1 while connected to the push service"
            ),
            acks_owed=m.gauge(
                "fieldgate_acks_owed", "Acknowledgements owed to the push service, not yet done"
            ),
            batch=m.histogram(
                "fieldgate_commit_batch_messages",
                "Messages per journal transaction (group commit)",
                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            ),
        )


class AutopushStats:
    """What the status page shows of the autopush side, across connections (mutated by the
    autopush connection only)."""

    def __init__(self) -> None:
        self.last_hello_at: float | None = None
        self.notifications = 0
        self.uaid_resets = 0
