"""Hypothesis profiles: ``ci`` (default, deterministic, modest) and ``fuzz`` (``make fuzz``)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# ci: the same examples on every run (derandomize), few enough for `make test`.
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True)
# fuzz: random seeds and 50x the examples; `HYPOTHESIS_PROFILE=fuzz make fuzz`.
settings.register_profile(
    "fuzz",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
