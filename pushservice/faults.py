"""Fault injection for the gateway's reliability tests (Python API and ``--control`` JSON API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from pushservice.hostile import Hostility

# Resource kinds a fail_requests rule can match ("*" matches all).
RESOURCE_KINDS = ("subscribe", "subscription", "set", "push", "message", "receipt", "*")


class FaultTarget(Protocol):
    """What the faults act on (the service's FaultActions)."""

    def drop_connections(self) -> None:
        """Abort every HTTP/2 connection."""
        ...

    def goaway(self, last_stream_id: int | None) -> None:
        """Answer monitors 204, GOAWAY every HTTP/2 connection."""
        ...

    def expire_sets(self) -> None:
        """Delete every set (monitors 404)."""
        ...

    def invalidate_set_links(self) -> None:
        """Make every existing set refuse new members."""
        ...


@dataclass
class FailureRule:
    """Answer the next ``count`` matching requests with ``status``."""

    status: int
    count: int
    retry_after: int | None
    methods: tuple[str, ...]
    paths: str


class Faults:
    """Switches the tests flip; each method is documented by its effect on user agents."""

    def __init__(self, target: FaultTarget) -> None:
        self._target = target
        self._failures: list[FailureRule] = []
        self.resets_pending = 0
        self.push_delay = 0.0
        self.frozen = False
        self._thawed = trio.Event()
        self._thawed.set()
        self.hostility = Hostility()

    def drop_connections(self) -> None:
        """Close every user-agent (HTTP/2) connection abruptly (TCP close, no GOAWAY)."""
        self._target.drop_connections()

    def goaway(self, *, last_stream_id: int | None = None) -> None:
        """GOAWAY to every UA connection; monitors are answered 204; close when streams finish."""
        self._target.goaway(last_stream_id)

    def reset_pushes(self, count: int) -> None:
        """RST_STREAM (CANCEL) the next ``count`` pushed streams right after their PUSH_PROMISE."""
        if count < 0:
            raise ValueError("count must not be negative")
        self.resets_pending = count

    def fail_requests(
        self,
        status: int,
        *,
        count: int,
        retry_after: int | None = None,
        methods: tuple[str, ...] = ("POST",),
        paths: str = "subscribe",
    ) -> None:
        """Answer the next ``count`` requests with this method and resource kind ``status``."""
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if paths not in RESOURCE_KINDS:
            raise ValueError(f"paths must be one of {RESOURCE_KINDS}")
        if count < 0:
            raise ValueError("count must not be negative")
        rule = FailureRule(status, count, retry_after, tuple(m.upper() for m in methods), paths)
        self._failures.append(rule)

    def expire_sets(self) -> None:
        """Forget every set and its subscriptions; open monitors are answered 404."""
        self._target.expire_sets()

    def delay_pushes(self, seconds: float) -> None:
        """Hold each push this long before sending its PUSH_PROMISE (0 turns it off)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.push_delay = seconds

    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) reading and writing UA connections; sockets stay open."""
        self.frozen = frozen
        if frozen:
            if self._thawed.is_set():
                self._thawed = trio.Event()
        else:
            self._thawed.set()

    def invalidate_set_links(self) -> None:
        """Subscribe requests naming any set that exists now get 400 from now on."""
        self._target.invalidate_set_links()

    def hostile(self, kind: str | None) -> None:
        """Misbehave on every connection (see pushservice.hostile); None behaves again."""
        self.hostility.set(kind)

    # -- used by the service -----------------------------------------------------------------
    async def wait_thawed(self) -> None:
        """Return once the service is not frozen."""
        while self.frozen:
            await self._thawed.wait()

    def take_failure(self, method: str, kind: str) -> FailureRule | None:
        """Consume one matching failure rule, if any."""
        for rule in self._failures:
            if rule.count > 0 and method in rule.methods and rule.paths in (kind, "*"):
                rule.count -= 1
                return rule
        self._failures = [r for r in self._failures if r.count > 0]
        return None

    def take_reset(self) -> bool:
        """Consume one pending push reset."""
        if self.resets_pending > 0:
            self.resets_pending -= 1
            return True
        return False
