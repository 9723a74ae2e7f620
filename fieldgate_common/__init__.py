"""Leaf helpers shared by ``gateway``, ``adapters`` and ``pushservice``.

Logging, metrics, backoff, units and the configuration-file machinery (value converters, key
paths, problems). It imports nothing of ours, so every other package may import it without a
cycle.
"""
