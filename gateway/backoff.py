"""Exponential backoff with full jitter (a fleet must not reconnect in step)."""

from __future__ import annotations

import random


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
        window = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        delay = self._rng.uniform(0.0, window)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def reset(self) -> None:
        """Back to the first attempt (after a healthy period)."""
        self.attempt = 0
