"""Human-readable renderings of /status values, shared by the HTML page and ``fieldgate status``.

Every function accepts whatever JSON gave it (the document may come from another version of the
gateway) and never raises on an unexpected type.
"""

from __future__ import annotations

import math

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: object) -> str:
    """``3d 4h``, ``5m 12s``, ``40s``, ``0.3s``; ``-`` for null or nonsense."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
    ):
        return "-"
    if seconds < 0:
        return "-"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    whole = int(seconds)
    parts: list[str] = []
    for suffix, size in _UNITS:
        if whole >= size or (suffix == "s" and not parts):
            parts.append(f"{whole // size}{suffix}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def format_ago(timestamp: object, now: float) -> str:
    """``5m 12s ago`` for a Unix time; ``never`` for null."""
    if timestamp is None:
        return "never"
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return "-"
    return f"{format_duration(max(0.0, now - timestamp))} ago"


def format_since(timestamp: object, now: float) -> str:
    """``for 5m 12s`` for a state entered at a Unix time; empty when unknown."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return ""
    return f"for {format_duration(max(0.0, now - timestamp))}"


def format_value(value: object) -> str:
    """A scalar for a table cell: ``-`` for null, integers without ``.0``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
