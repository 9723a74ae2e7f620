"""Backoff: full jitter within the window, Retry-After as a floor, reset."""

from __future__ import annotations

import random

import pytest

from fieldgate_common.backoff import Backoff


def test_delays_stay_within_the_doubling_window_up_to_the_cap():
    backoff = Backoff(1.0, 10.0, rng=random.Random(1))
    for attempt in range(8):
        window = min(10.0, 2.0**attempt)
        assert 0.0 <= backoff.next_delay() <= window


def test_full_jitter_spreads_delays():
    delays = [Backoff(1.0, 64.0, rng=random.Random(seed)).next_delay() for seed in range(200)]
    assert min(delays) < 0.1 and max(delays) > 0.9  # not all in step


def test_retry_after_is_a_floor():
    backoff = Backoff(1.0, 2.0, rng=random.Random(2))
    assert backoff.next_delay(retry_after=30.0) == 30.0


def test_reset_returns_to_the_first_window():
    backoff = Backoff(1.0, 1000.0, rng=random.Random(3))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError):
        Backoff(5.0, 1.0)
