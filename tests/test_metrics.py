"""The metrics registry and its Prometheus text."""

from __future__ import annotations

import math
import random

import pytest

from fieldgate_common.metrics import Metrics


def test_counters_gauges_and_histograms_render_in_the_text_format():
    metrics = Metrics()
    received = metrics.counter("fieldgate_x_total", "X things", ["route"])
    received.inc(route="valves")
    received.inc(2, route="valves")
    depth = metrics.gauge("fieldgate_depth", "Depth")
    depth.set(7)
    latency = metrics.histogram("fieldgate_latency_seconds", "L", buckets=(0.1, 1.0))
    latency.observe(0.05)
    latency.observe(0.5)
    text = metrics.render()
    assert '# TYPE fieldgate_x_total counter\nfieldgate_x_total{route="valves"} 3\n' in text
    assert "fieldgate_depth 7\n" in text
    assert 'fieldgate_latency_seconds_bucket{le="0.1"} 1\n' in text
    assert 'fieldgate_latency_seconds_bucket{le="1"} 2\n' in text
    assert 'fieldgate_latency_seconds_bucket{le="+Inf"} 2\n' in text
    assert "fieldgate_latency_seconds_count 2\n" in text


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.counter("c_total", "c", ["reason"]).inc(reason='bad "quote"\nline')
    assert 'c_total{reason="bad \\"quote\\"\\nline"} 1' in metrics.render()


def test_registering_again_returns_the_same_metric_and_a_different_shape_is_refused():
    metrics = Metrics()
    first = metrics.counter("c_total", "c", ["a"])
    assert metrics.counter("c_total", "c", ["a"]) is first
    with pytest.raises(ValueError):
        metrics.gauge("c_total", "c", ["a"])
    with pytest.raises(ValueError):
        metrics.counter("c_total", "c", ["b"])


def test_wrong_labels_are_refused():
    counter = Metrics().counter("c_total", "c", ["route"])
    for wrong in ({"adapter": "x"}, {}, {"route": "r", "adapter": "x"}):
        with pytest.raises(ValueError):
            counter.inc(**wrong)
    counter.inc(route="r")
    assert counter.get(route="r") == 1


def test_histogram_buckets_are_cumulative_counts_of_value_at_most_each_bound():
    bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
    latency = Metrics().histogram("h_seconds", "h", ["route"], buckets=bounds)
    rng = random.Random(7)
    values = [*bounds, 0.0, -1.0, 11.0, math.inf, math.nan]
    values += [rng.choice((rng.uniform(0, 12), rng.choice(bounds))) for _ in range(2000)]
    for v in values:
        latency.observe(v, route="r")
    buckets = {}
    for line in latency.render():
        if line.startswith("h_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[math.inf if le == "+Inf" else float(le)] = int(line.rsplit(" ", 1)[1])
    # Each bound counts the values at most it; +Inf counts every observation, NaN included.
    assert buckets == {b: sum(1 for v in values if v <= b) for b in bounds} | {
        math.inf: len(values)
    }
    assert latency.count(route="r") == len(values)
    assert f'h_seconds_count{{route="r"}} {len(values)}' in latency.render()


def test_histogram_bounds_must_ascend_and_none_leaves_only_inf():
    metrics = Metrics()
    for bad in ((1.0, 0.5), (0.1, 0.1)):
        with pytest.raises(ValueError):
            metrics.histogram("bad_seconds", "b", buckets=bad)
    only_inf = metrics.histogram("inf_seconds", "i", buckets=())
    only_inf.observe(3.0)
    assert only_inf.count() == 1
    assert 'inf_seconds_bucket{le="+Inf"} 1' in only_inf.render()


def test_capability_urls_are_redacted_for_logs():
    from fieldgate_common.logs import redact_url

    assert (
        redact_url("https://push.example.net/set/s3cr3t-t0ken") == "https://push.example.net/set/…"
    )
    assert "s3cr3t" not in redact_url("http://127.0.0.1:8/message/s3cr3t?x=1")
    assert redact_url("https://h.example") == "https://h.example/"
