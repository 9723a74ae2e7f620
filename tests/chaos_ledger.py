"""What the chaos run sent and what the devices saw, and the reconciliation of the two (pure).

Each message carries its own sequence number in its plaintext (``chaos:<seq>:<padding>``), so a
delivery is matched to its send whatever id the gateway gave it. Times are ``time.monotonic()``
seconds of the driver process.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# A delivery observed this long after the message's TTL ran out counts as "expired but arrived".
# The gateway decides to deliver at most at expiry (Last-Modified and the service's TTL header are
# whole seconds, rounded down); the slack covers the frame or PUBLISH in flight and how often the
# driver looks at the device record.
EXPIRY_SLACK = 2.0
BODY_PREFIX = b"chaos:"


def make_body(seq: int, size: int) -> bytes:
    """The plaintext of message ``seq``, padded to ``size`` bytes (at least its header)."""
    head = BODY_PREFIX + str(seq).encode() + b":"
    return head + b"x" * max(0, size - len(head))


def parse_body(body: bytes) -> int | None:
    """The sequence number in a delivered body, or None if it is not one of ours."""
    if not body.startswith(BODY_PREFIX):
        return None
    number, sep, _ = body[len(BODY_PREFIX) :].partition(b":")
    return int(number) if sep and number.isdigit() else None


@dataclass
class Sent:
    """One message the driver tried to send."""

    seq: int
    route: str
    urgency: str
    topic: str | None
    ttl: int
    status: int | None = None  # HTTP status; None: no answer (connection failed)
    answered_at: float = 0.0  # when the 201/202 came back
    location: str = ""  # the push message resource the service created

    @property
    def accepted(self) -> bool:
        return self.status in (201, 202)

    @property
    def deadline(self) -> float:
        """Latest moment the message may still reach a device (its TTL counts from creation)."""
        return self.answered_at + self.ttl


@dataclass(frozen=True)
class Seen:
    """A device saw a message: which, under which gateway message id, where and when."""

    seq: int
    gateway_id: str
    device: str  # "serial" or "mqtt"
    at: float


@dataclass
class Report:
    """The reconciliation: counts, and the sequence numbers behind every discrepancy."""

    sent: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    delivered: int = 0
    expired: int = 0
    superseded: int = 0
    unaccepted_delivered: int = 0
    broker_duplicates: int = 0
    device_duplicates: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    expired_arrived: list[int] = field(default_factory=list)
    wrong_route: list[int] = field(default_factory=list)
    unknown: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.device_duplicates
            or self.expired_arrived
            or self.wrong_route
            or self.unknown
        )


@dataclass
class Ledger:
    """Collects sends and sightings; ``reconcile`` compares them."""

    sent: dict[int, Sent] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    unknown: int = 0

    def add_sent(self, message: Sent) -> None:
        self.sent[message.seq] = message

    def add_seen(self, body: bytes, gateway_id: str, device: str, at: float) -> None:
        seq = parse_body(body)
        if seq is None:
            self.unknown += 1
        else:
            self.seen.append(Seen(seq, gateway_id, device, at))

    def delivered_seqs(self) -> set[int]:
        return {s.seq for s in self.seen}

    def outstanding(self, now: float) -> list[int]:
        """Accepted messages neither seen, nor past their TTL, nor replaced by a later one."""
        seen = self.delivered_seqs()
        replaced = self._replaced(seen)
        return [
            m.seq
            for m in self.sent.values()
            if m.accepted and m.seq not in seen and m.seq not in replaced and now <= m.deadline
        ]

    def _replaced(self, seen: set[int]) -> set[int]:
        """Messages a later accepted message with the same route and Topic may have replaced.

        RFC 8030 §5.4: an undelivered message is replaced by a newer one with the same topic, so
        an unseen message is "superseded", not lost, when a later one with its topic exists.
        """
        latest: dict[tuple[str, str], int] = {}
        for m in self.sent.values():
            if m.accepted and m.topic is not None:
                key = (m.route, m.topic)
                latest[key] = max(latest.get(key, -1), m.seq)
        return {
            m.seq
            for m in self.sent.values()
            if m.accepted
            and m.topic is not None
            and m.seq not in seen
            and latest[(m.route, m.topic)] > m.seq
        }

    def reconcile(self, now: float, device_of_route: dict[str, str]) -> Report:
        """Compare sends and sightings at ``now`` (after everything drained)."""
        report = Report(sent=len(self.sent), unknown=self.unknown)
        report.accepted = sum(1 for m in self.sent.values() if m.accepted)
        for m in self.sent.values():
            if not m.accepted:
                report.refused[str(m.status) if m.status is not None else "no answer"] += 1
        by_seq: dict[int, list[Seen]] = {}
        for s in self.seen:
            by_seq.setdefault(s.seq, []).append(s)
        broker_copies = Counter((s.device, s.gateway_id) for s in self.seen if s.device == "mqtt")
        report.broker_duplicates = sum(n - 1 for n in broker_copies.values())
        replaced = self._replaced(set(by_seq))
        for seq, message in sorted(self.sent.items()):
            sightings = by_seq.get(seq, [])
            if not sightings:
                if not message.accepted:
                    continue
                if seq in replaced:
                    report.superseded += 1
                elif now > message.deadline:
                    report.expired += 1
                else:
                    report.lost.append(seq)
                continue
            if not message.accepted:
                report.unaccepted_delivered += 1
            else:
                report.delivered += 1
                if min(s.at for s in sightings) > message.deadline + EXPIRY_SLACK:
                    report.expired_arrived.append(seq)
            # Device-side dedupe: fbsim records a gateway id once, so a second serial sighting is
            # a second processing; MQTT copies of one gateway id are broker duplicates the
            # subscriber drops, while distinct gateway ids are two deliveries.
            serial = [s for s in sightings if s.device == "serial"]
            if len(serial) > 1 or len({s.gateway_id for s in sightings}) > 1:
                report.device_duplicates.append(seq)
            if any(s.device != device_of_route[message.route] for s in sightings):
                report.wrong_route.append(seq)
        for seq in by_seq:
            if seq not in self.sent:
                report.unknown += 1
        return report


def describe(ledger: Ledger, seq: int) -> str:
    """``seq`` with its route, TTL and the service's message id, for a discrepancy line."""
    m = ledger.sent.get(seq)
    if m is None:
        return f"{seq}(unknown)"
    late = ""
    seen = [s.at for s in ledger.seen if s.seq == seq]
    if seen and m.accepted:
        late = f", seen {min(seen) - m.deadline:+.1f} s after its TTL ran out"
    message_id = m.location.rsplit("/", 1)[-1]
    return f"{seq}({m.route}, ttl {m.ttl}, topic {m.topic}, {message_id}{late})"


def format_report(
    report: Report,
    faults: Counter[str],
    elapsed: float,
    ledger: Ledger | None = None,
    problems: tuple[str, ...] = (),
    findings: tuple[str, ...] = (),
) -> str:
    """The summary; ``problems`` fail the run, ``findings`` are noted only."""
    """The human-readable summary the driver prints."""
    lines = [
        f"chaos run: {elapsed:.1f} s",
        f"  sent                 {report.sent}",
        f"  accepted (201/202)   {report.accepted}",
        "  not accepted         "
        + (", ".join(f"{k}: {v}" for k, v in sorted(report.refused.items())) or "0"),
        "  faults injected      "
        + (", ".join(f"{k}: {v}" for k, v in sorted(faults.items())) or "none"),
        f"  delivered            {report.delivered}",
        f"  expired (TTL)        {report.expired}",
        f"  superseded (Topic)   {report.superseded}",
        f"  unaccepted delivered {report.unaccepted_delivered} (answer lost, message stored)",
        f"  broker duplicates    {report.broker_duplicates} (deduped by message-id)",
        f"  device duplicates    {len(report.device_duplicates)}",
        f"  expired but arrived  {len(report.expired_arrived)}",
        f"  wrong device         {len(report.wrong_route)}",
        f"  unknown payloads     {report.unknown}",
        f"  lost                 {len(report.lost)}",
    ]
    for name, seqs in (
        ("lost", report.lost),
        ("device duplicates", report.device_duplicates),
        ("expired but arrived", report.expired_arrived),
        ("wrong device", report.wrong_route),
    ):
        if seqs:
            shown = ", ".join(describe(ledger, s) if ledger else str(s) for s in seqs[:50])
            more = f" ... (+{len(seqs) - 50})" if len(seqs) > 50 else ""
            lines.append(f"  {name} message seqs: {shown}{more}")
    lines += [f"  FAILURE: {p}" for p in problems]
    lines += [f"  finding: {f}" for f in findings]
    lines.append("RESULT: " + ("OK" if report.ok and not problems else "FAILED"))
    return "\n".join(lines)
