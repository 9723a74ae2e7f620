"""The monitor registry: which held-open GETs this node serves, by target and by connection."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pushservice.http import Request
from pushservice.model import Urgency
from pushservice.session_api import PushTarget
from pushservice.store import ResourceKind


@dataclass(frozen=True, eq=False)
class Monitor:
    """A held-open monitoring GET on an HTTP/2 stream (identity is the object)."""

    session: PushTarget
    stream_id: int
    kind: ResourceKind  # "subscription", "set" or "receipt"
    target_id: str
    request: Request
    min_urgency: Urgency | None

    def accepts(self, urgency: Urgency) -> bool:
        """RFC 8030 §5.3: never deliver below the monitor's Urgency."""
        return self.min_urgency is None or urgency >= self.min_urgency

    @property
    def live(self) -> bool:
        """Whether pushes can still go out on it."""
        return not self.session.goaway_sent and self.session.stream_open(self.stream_id)


class MonitorRegistry:
    """Monitors by (kind, target) and by connection; no I/O."""

    def __init__(self) -> None:
        self._by_target: dict[tuple[ResourceKind, str], list[Monitor]] = {}
        self._by_session: dict[PushTarget, list[Monitor]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_target.values())

    def add(self, monitor: Monitor) -> None:
        """Register a monitor."""
        self._by_target.setdefault((monitor.kind, monitor.target_id), []).append(monitor)
        self._by_session.setdefault(monitor.session, []).append(monitor)

    def remove(self, monitor: Monitor) -> None:
        """Forget one monitor (no-op if unknown)."""
        key = (monitor.kind, monitor.target_id)
        found = self._by_target.get(key, [])
        if monitor in found:
            found.remove(monitor)
            if not found:
                del self._by_target[key]
        held = self._by_session.get(monitor.session, [])
        if monitor in held:
            held.remove(monitor)
            if not held:
                del self._by_session[monitor.session]

    def of_target(self, kind: ResourceKind, target_id: str) -> list[Monitor]:
        """Monitors of one target, oldest first."""
        return list(self._by_target.get((kind, target_id), ()))

    def live_for(self, set_id: str, sub_id: str, urgency: Urgency) -> Monitor | None:
        """The first live monitor that wants a message of this set and subscription."""
        keys: tuple[tuple[ResourceKind, str], ...] = (("subscription", sub_id), ("set", set_id))
        for key in keys:
            for monitor in self._by_target.get(key, ()):
                if monitor.live and monitor.accepts(urgency):
                    return monitor
        return None

    def of_session(self, session: PushTarget) -> list[Monitor]:
        """Monitors held on one connection."""
        return list(self._by_session.get(session, ()))

    def on_stream(self, session: PushTarget, stream_id: int) -> Monitor | None:
        """The monitor on one stream, if any."""
        return next(
            (m for m in self._by_session.get(session, ()) if m.stream_id == stream_id), None
        )

    def pop_target(self, kind: ResourceKind, target_id: str) -> list[Monitor]:
        """Remove and return every monitor of a target."""
        found = self.of_target(kind, target_id)
        for monitor in found:
            self.remove(monitor)
        return found

    def drop_session(self, session: PushTarget) -> None:
        """Forget every monitor of a finished connection."""
        for monitor in self.of_session(session):
            self.remove(monitor)

    def targets(self, kind: ResourceKind) -> list[str]:
        """Every target of a kind with at least one monitor."""
        return [t for (k, t) in self._by_target if k == kind]

    def sessions(self) -> Iterator[PushTarget]:
        """Connections holding monitors."""
        return iter(list(self._by_session))

    def all(self) -> list[Monitor]:
        """Every monitor."""
        return [m for found in self._by_target.values() for m in found]
