"""An in-process adapter for router tests: told per instance to deliver, fail, reject or hang.

Each target in a test names its own ``FakeAdapter`` (by adapter name), so behaviour is per target.
Tests wait for events (``await adapter.wait_until(...)``), never sleep.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from adapters.base import (
    Adapter,
    Confirmation,
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


class _HeldConfirmation(Confirmation):
    def __init__(self, adapter: PipelinedAdapter, message: Message) -> None:
        self.adapter, self.message = adapter, message
        self.answered = trio.Event()
        self.answer: Outcome = Delivered()

    async def outcome(self) -> Outcome:
        await self.answered.wait()
        if isinstance(self.answer, Delivered):
            self.adapter.delivered.append(self.message)
        self.adapter._poke()
        return self.answer


class PipelinedAdapter(FakeAdapter):
    """A transport with a window (as MQTT's Receive Maximum): ``send`` returns at once, each
    confirmation waits until the test answers it (``answer``, in any order)."""

    def __init__(self, name: str, window: int) -> None:
        super().__init__(name)
        self._window = window
        self.sent: list[Message] = []
        self.waiting: list[_HeldConfirmation] = []  # not answered yet, in sending order
        self.max_waiting = 0

    def window(self, target: TargetConfig) -> int:
        return self._window

    async def send(self, message: Message, target: TargetConfig) -> Confirmation:
        self.sent.append(message)
        held = _HeldConfirmation(self, message)
        self.waiting.append(held)
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        self._poke()
        return held

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        return await (await self.send(message, target)).outcome()

    def answer(self, index: int = 0, outcome: Outcome | None = None) -> None:
        """Answer the ``index``-th confirmation still waiting (0: the oldest)."""
        held = self.waiting.pop(index)
        held.answer = outcome or Delivered()
        held.answered.set()
