"""Benchmarks: each figure printed beside its floor measured in the same run."""
