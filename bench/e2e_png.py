"""A tiny PNG line chart (zlib + struct, no plotting library): latency against offered load.

Axes, tick marks with numbers, one polyline with square markers per series and a legend, all
drawn on an RGB canvas with a 5x7 bitmap font (digits, lowercase letters and a few signs).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]

# 5x7 glyphs, one 5-bit row per entry (the HD44780 character ROM's shapes).
FONT: dict[str, tuple[int, ...]] = {
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    " ": (0, 0, 0, 0, 0, 0, 0),
    "a": (0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F),
    "b": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E),
    "c": (0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E),
    "d": (0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F),
    "e": (0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E),
    "f": (0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08),
    "g": (0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "h": (0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11),
    "i": (0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E),
    "k": (0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12),
    "l": (0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "m": (0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11),
    "n": (0, 0, 0x16, 0x19, 0x11, 0x11, 0x11),
    "o": (0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E),
    "p": (0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10),
    "q": (0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01),
    "r": (0, 0, 0x16, 0x19, 0x10, 0x10, 0x10),
    "s": (0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E),
    "t": (0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06),
    "u": (0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D),
    "v": (0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "w": (0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A),
    "x": (0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11),
    "y": (0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E),
    "z": (0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F),
}
GLYPH_W, GLYPH_H, ADVANCE = 5, 7, 6
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GRID: Color = (225, 225, 225)


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Filled, corners inclusive."""
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.dot(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        """Bresenham; ``width`` > 1 draws a square brush."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            self.rect(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK) -> None:
        """Top-left at (x, y); characters not in the font are left blank."""
        for n, ch in enumerate(text.lower()):
            for row, bits in enumerate(FONT.get(ch, FONT[" "])):
                for col in range(GLYPH_W):
                    if bits & (1 << (GLYPH_W - 1 - col)):
                        self.dot(x + n * ADVANCE + col, y + row, color)

    def png(self) -> bytes:
        """The image as PNG bytes (8-bit RGB, no filtering)."""
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack("!I", len(data)) + body + struct.pack("!I", zlib.crc32(body))

        header = struct.pack("!IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


@dataclass(frozen=True)
class Series:
    """One line of the chart: (x, y) points in data units."""

    label: str
    color: Color
    points: Sequence[tuple[float, float]]


def nice_step(span: float, ticks: int = 5) -> float:
    """A 1/2/5 x 10^n step giving about ``ticks`` intervals over ``span``."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)


def _label(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def line_chart(
    path: Path,
    series: Sequence[Series],
    *,
    title: str,
    x_title: str,
    y_title: str,
    width: int = 720,
    height: int = 420,
    y_log: bool = False,
) -> None:
    """Write a PNG line chart of ``series`` to ``path``. The x axis starts at 0; the y axis
    too, or is logarithmic (decades) with ``y_log``, for values spanning several of them."""
    left, right, top, bottom = 60, 20, 40, 50
    canvas = Canvas(width, height)
    xs = [x for s in series for x, _ in s.points] or [1.0]
    ys = [y for s in series for _, y in s.points] or [1.0]
    x_step = nice_step(max(xs))
    x_max = math.ceil(max(xs) / x_step) * x_step
    plot_w, plot_h = width - left - right, height - top - bottom
    if y_log:
        lo = math.floor(math.log10(max(min(ys), 1e-3)))
        hi = max(lo + 1, math.ceil(math.log10(max(max(ys), 1e-3))))
        y_ticks = [10.0**e for e in range(lo, hi + 1)]

        def y_frac(y: float) -> float:
            return (math.log10(max(y, 10.0**lo)) - lo) / (hi - lo)
    else:
        y_step = nice_step(max(ys))
        y_max = math.ceil(max(ys) / y_step) * y_step
        y_ticks = [i * y_step for i in range(round(y_max / y_step) + 1)]

        def y_frac(y: float) -> float:
            return y / y_max

    def px(x: float, y: float) -> tuple[int, int]:
        return left + round(x / x_max * plot_w), top + plot_h - round(y_frac(y) * plot_h)

    tick = 0.0
    while tick <= x_max + 1e-9:
        x, _ = px(tick, 0)
        canvas.line(x, top, x, top + plot_h, GRID)
        canvas.line(x, top + plot_h, x, top + plot_h + 4, BLACK)
        text = _label(tick)
        canvas.text(x - len(text) * ADVANCE // 2, top + plot_h + 8, text)
        tick += x_step
    for tick in y_ticks:
        _, y = px(0, tick)
        canvas.line(left, y, left + plot_w, y, GRID)
        canvas.line(left - 4, y, left, y, BLACK)
        text = _label(tick)
        canvas.text(left - 7 - len(text) * ADVANCE, y - GLYPH_H // 2, text)
    canvas.line(left, top, left, top + plot_h, BLACK)
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h, BLACK)
    canvas.text(left, 12, title)
    canvas.text(left + plot_w - len(x_title) * ADVANCE, height - 16, x_title)
    canvas.text(8, top - 14, y_title)
    for n, s in enumerate(series):
        points = [px(x, y) for x, y in sorted(s.points)]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(x0, y0, x1, y1, s.color, width=2)
        for x, y in points:
            canvas.rect(x - 3, y - 3, x + 3, y + 3, s.color)
        lx, ly = left + 12, top + 8 + n * 12
        canvas.rect(lx, ly, lx + 14, ly + 6, s.color)
        canvas.text(lx + 20, ly, s.label)
    path.write_bytes(canvas.png())
