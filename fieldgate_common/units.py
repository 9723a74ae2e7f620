"""Durations and sizes as people write them in a configuration file.

Durations: ``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` and combinations such as
``"1h30m"``; a bare number (TOML integer or float, or a string without a unit) is seconds, as in
systemd. Sizes: a whole number of bytes (``4096``) or a number with a unit, ``"64KiB"``,
``"16MiB"``, ``"1GB"`` (SI units are powers of 1000, IEC units powers of 1024).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}
# Nothing in the gateway waits longer than this; a bigger figure is a typo, and capping it keeps
# every duration a finite float that trio can sleep on.
MAX_DURATION_SECONDS = 100 * 365 * 86400.0
# A size above this (1 PiB) cannot be meant for a field gateway's disk or memory.
MAX_SIZE_BYTES = 1024**5

_DURATION_EXAMPLES = '"500ms", "30s", "5m", "2h", "1d" or "1h30m"'
_SIZE_EXAMPLES = '4096, "64KiB", "16MiB" or "1GB"'
_NUMBER_AND_UNIT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


class UnitError(ValueError):
    """A duration or size that cannot be read; the message says what was expected."""


def _shown(value: object) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``"1h30m"``-style text or a bare number of seconds.

    Raises :class:`UnitError` for negative, zero (unless ``allow_zero``), non-finite, too large
    or unreadable values.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"expected a duration such as {_DURATION_EXAMPLES}, found {_shown(value)}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnitError(f"expected a finite duration, found {value!r}")
        if value > MAX_DURATION_SECONDS:
            raise UnitError(f"duration {_shown(value)} is longer than 100 years")
        seconds = float(value)
    else:
        seconds = _duration_from_text(value)
    if seconds < 0:
        raise UnitError(f"negative duration {_shown(value)}: durations must be positive")
    if seconds == 0 and not allow_zero:
        raise UnitError(f"duration {_shown(value)} must be greater than zero")
    if seconds > MAX_DURATION_SECONDS:
        raise UnitError(f"duration {_shown(value)} is longer than 100 years")
    return seconds


def _duration_from_text(text: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise UnitError(f"negative duration {_shown(text)}: durations must be positive")
    if not stripped:
        raise UnitError(f"expected a duration such as {_DURATION_EXAMPLES}, found an empty string")
    total = 0.0
    seen: set[str] = set()
    position = 0
    while position < len(text):
        match = _NUMBER_AND_UNIT.match(text, position)
        if match is None or match.end() == position:
            raise UnitError(
                f"expected a duration such as {_DURATION_EXAMPLES}, found {_shown(text)}"
            )
        number, unit = match.group(1), match.group(2)
        if unit == "" and position == 0 and match.end() == len(text):
            unit = "s"  # a bare number is seconds, as in systemd
        if unit not in DURATION_UNITS:
            units = ", ".join(DURATION_UNITS)
            shown_unit = f'"{unit}"' if unit else "no unit"
            raise UnitError(f"{shown_unit} in duration {_shown(text)}: the units are {units}")
        if unit in seen:
            raise UnitError(f'unit "{unit}" appears twice in duration {_shown(text)}')
        seen.add(unit)
        total += float(number) * DURATION_UNITS[unit]
        position = match.end()
    return total


def parse_size(value: object, *, allow_zero: bool = False) -> int:
    """Bytes from an integer or ``"64KiB"``-style text; raises :class:`UnitError`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UnitError(f"expected a size such as {_SIZE_EXAMPLES}, found {_shown(value)}")
    size = value if isinstance(value, int) else _size_from_text(value)
    if size < 0:
        raise UnitError(f"negative size {_shown(value)}: sizes must be positive")
    if size == 0 and not allow_zero:
        raise UnitError(f"size {_shown(value)} must be greater than zero")
    if size > MAX_SIZE_BYTES:
        raise UnitError(f"size {_shown(value)} is larger than 1 PiB")
    return size


def _size_from_text(text: str) -> int:
    if text.strip().startswith("-"):
        raise UnitError(f"negative size {_shown(text)}: sizes must be positive")
    match = _NUMBER_AND_UNIT.fullmatch(text)
    if match is None:
        raise UnitError(f"expected a size such as {_SIZE_EXAMPLES}, found {_shown(text)}")
    number, unit = match.group(1), match.group(2).lower() or "b"
    if unit not in SIZE_UNITS:
        raise UnitError(
            f'unknown unit "{match.group(2)}" in size {_shown(text)}: the units are B, kB, KiB, '
            "MB, MiB, GB, GiB, TB, TiB"
        )
    try:
        exact = Decimal(number) * SIZE_UNITS[unit]
    except InvalidOperation as error:  # cannot happen for the digits the pattern admits
        raise UnitError(f"unreadable size {_shown(text)}") from error
    if exact > MAX_SIZE_BYTES:
        raise UnitError(f"size {_shown(text)} is larger than 1 PiB")
    if exact != exact.to_integral_value():
        raise UnitError(f"size {_shown(text)} is not a whole number of bytes")
    return int(exact)


def format_duration(seconds: float) -> str:
    """The shortest ``"1h30m"``-style text for ``seconds`` (milliseconds precision)."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        step = round(DURATION_UNITS[unit] * 1000)
        count, millis = divmod(millis, step)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """``"16MiB"`` when ``size`` is a whole number of an IEC unit, else ``"1234B"``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        step = SIZE_UNITS[unit.lower()]
        if size and size % step == 0:
            return f"{size // step}{unit}"
    return f"{size}B"
