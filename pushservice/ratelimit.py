"""Token buckets per key (client address, push resource): sans-IO, the caller passes ``now``."""

from __future__ import annotations

from collections import OrderedDict

# Keys remembered at once; the least recently seen is forgotten first (a forgotten key starts
# with a full bucket, so forgetting errs on the side of letting a client through).
MAX_KEYS = 100_000


class RateLimiter:
    """``rate`` requests per second per key, bursts up to one second's worth; 0 turns it off."""

    def __init__(self, rate: float, *, max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def check(self, key: str, now: float) -> float | None:
        """Take one token: None if allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return None
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate
