"""Exponential backoff with full jitter (a fleet must not reconnect in step)."""

from __future__ import annotations

import random
from collections.abc import Callable


def full_jitter(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """One delay for retry number ``attempt`` (0 for the first): ``rand()`` (uniform in [0, 1))
    times the window ``min(cap, base * 2**attempt)``."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), 62)) * rand()


class Backoff:
    """Delays for successive retries: uniform in ``[0, min(cap, base * 2**attempt)]``.

    "Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015) spreads a fleet
    that lost its upstream at the same moment evenly over the window instead of in waves. A
    ``Retry-After`` from the server is a floor: we never come back earlier than asked.
    """

    def __init__(self, base: float, cap: float, *, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The delay before the next try; counts the attempt."""
        delay = full_jitter(self.attempt, self.base, self.cap, self._rng.random)
        self.attempt += 1
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def reset(self) -> None:
        """Back to the first attempt (after a healthy period)."""
        self.attempt = 0
