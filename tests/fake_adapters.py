"""An in-process adapter for router tests: told per instance to deliver, fail, reject or hang.

Each target in a test names its own ``FakeAdapter`` (by adapter name), so behaviour is per target.
Tests wait for events (``await adapter.wait_until(...)``), never sleep.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from adapters.base import (
    Adapter,
    Delivered,
    Health,
    Message,
    Outcome,
    Rejected,
    RetryLater,
    TargetConfig,
)


class FakeAdapter(Adapter):
    """Records every attempt and delivery; behaviour set by attributes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: list[Message] = []
        self.delivered: list[Message] = []
        self.delivered_at: list[float] = []  # trio.current_time() of each delivery
        self.fail_next = 0  # this many attempts answer RetryLater
        self.failing = False  # every attempt answers RetryLater
        self.retry_after: float | None = None
        self.reject_bodies: set[bytes] = set()  # these answer Rejected
        self.hanging = False  # attempts block until release()
        self.running = False
        self._changed = trio.Event()
        self._release = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.running = False

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        self.attempts.append(message)
        self._poke()
        if self.hanging:
            await self._release.wait()
        if message.body in self.reject_bodies:
            return Rejected("fake rejection")
        if self.failing or self.fail_next > 0:
            self.fail_next = max(self.fail_next - 1, 0)
            return RetryLater("fake failure", self.retry_after)
        self.delivered.append(message)
        self.delivered_at.append(trio.current_time())
        self._poke()
        return Delivered()

    def health(self) -> Health:
        return Health(
            ok=not self.failing, state="fake", counters={"delivered": len(self.delivered)}
        )

    def release(self) -> None:
        """Let hung attempts finish (and stop hanging)."""
        self.hanging = False
        self._release.set()
        self._release = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked after every attempt and delivery."""
        while not predicate():
            changed = self._changed
            await changed.wait()

    def bodies(self) -> list[bytes]:
        """Bodies delivered, in order."""
        return [m.body for m in self.delivered]

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
