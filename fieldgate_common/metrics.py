"""Counters, gauges and histograms for ``/metrics`` (Prometheus text exposition 0.0.4).

One :class:`Metrics` registry per gateway process, passed to whoever counts (no global state).
Metric and label names follow Prometheus conventions: ``fieldgate_`` prefix, ``_total`` on
counters, base units (seconds, bytes).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import TypeVar

LabelValues = tuple[str, ...]
_M = TypeVar("_M", "Counter", "Gauge", "Histogram")

# Delivery latency buckets in seconds: 1 ms to 5 min covers an MQTT PUBACK on loopback up to a
# device that was offline for minutes.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _format_number(value: float) -> str:
    if math.isnan(value):  # Prometheus' text format spells it so (int() would raise)
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass
class _Metric:
    name: str
    help: str
    labelnames: tuple[str, ...]

    def _key(self, labels: dict[str, str]) -> LabelValues:
        # Every name present and no other: a length and a lookup each, no sets (several calls
        # a message).
        if len(labels) == len(self.labelnames):
            try:
                return tuple(str(labels[n]) for n in self.labelnames)
            except KeyError:
                pass
        raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")


@dataclass
class Counter(_Metric):
    """A monotonically increasing count."""

    values: dict[LabelValues, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (never negative) to the series with these labels."""
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(
                f"{self.name}{_format_labels(self.labelnames, key)} {_format_number(value)}"
            )
        return lines


@dataclass
class Gauge(_Metric):
    """A value that goes up and down."""

    values: dict[LabelValues, float] = field(default_factory=dict)

    def set(self, value: float, **labels: str) -> None:
        """Set the series with these labels."""
        self.values[self._key(labels)] = value

    def get(self, **labels: str) -> float:
        """The current value of one series (0 when never set)."""
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for key, value in sorted(self.values.items()):
            lines.append(
                f"{self.name}{_format_labels(self.labelnames, key)} {_format_number(value)}"
            )
        return lines


@dataclass
class Histogram(_Metric):
    """Observations counted into cumulative buckets."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS  # ascending
    # Per series, observations in each bucket alone (the last: above every bound, or NaN);
    # render() accumulates them into Prometheus' cumulative buckets.
    counts: dict[LabelValues, list[int]] = field(default_factory=dict)
    sums: dict[LabelValues, float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.buckets) + 1)
        # The first bound >= value (past the last: above every bound); NaN, which compares
        # false with every bound, counts above them too.
        counts[len(self.buckets) if math.isnan(value) else bisect_left(self.buckets, value)] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        """How many observations one series has."""
        return sum(self.counts.get(self._key(labels), ()))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            cumulative = list(accumulate(counts))
            for bound, n in zip((*self.buckets, math.inf), cumulative, strict=True):
                le = f'le="{_format_number(bound)}"'
                lines.append(f"{self.name}_bucket{_format_labels(self.labelnames, key, le)} {n}")
            labels = _format_labels(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {_format_number(self.sums[key])}")
            lines.append(f"{self.name}_count{labels} {cumulative[-1]}")
        return lines


class Metrics:
    """The registry: create each metric once, then count through the returned object."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}

    def _register(self, metric: _M) -> _M:
        # Registering the same metric again returns the existing one, so that parts rebuilt on
        # a configuration reload (router, adapters) keep counting into the same series.
        existing = self._metrics.get(metric.name)
        if existing is None:
            self._metrics[metric.name] = metric
            return metric
        if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
            raise ValueError(f"metric {metric.name} registered twice with different shapes")
        return existing

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter (name should end in ``_total``), or return the existing one."""
        return self._register(Counter(name, help, tuple(labelnames)))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register a gauge, or return the existing one."""
        return self._register(Gauge(name, help, tuple(labelnames)))

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Register a histogram (bounds strictly ascending), or return the existing one."""
        bounds = tuple(buckets)
        if any(not a < b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must ascend strictly, got {bounds}")
        return self._register(Histogram(name, help, tuple(labelnames), bounds))

    def get(self, name: str) -> Counter | Gauge | Histogram:
        """A registered metric by name (KeyError when unknown)."""
        return self._metrics[name]

    def render(self) -> str:
        """The whole registry in the Prometheus text format."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
