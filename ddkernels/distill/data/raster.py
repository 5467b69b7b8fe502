"""A tiny raster toolkit for the run outputs' PNGs (no imaging library needed): a 5×7 bitmap font
(upper case, digits and the punctuation class names and axis labels use) and a few drawing
primitives on an ``(H, W, 3)`` float canvas in [0, 1].

Lower-case letters are drawn as capitals; a character without a glyph is drawn as ``?``.
"""
from __future__ import annotations

import math

import numpy as np

# Each glyph: 7 rows of 5 bits, the most significant bit the leftmost column.
_GLYPHS = {
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F), "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E), "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11), "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11), "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A), "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04), "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    " ": (0, 0, 0, 0, 0, 0, 0), "-": (0, 0, 0, 0x1F, 0, 0, 0), "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08), ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03), "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02), ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "[": (0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E), "]": (0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0), "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    "±": (0x04, 0x04, 0x1F, 0x04, 0x04, 0, 0x1F), "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
    "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0), "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "*": (0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0), "&": (0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02), ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
}
GLYPH_W, GLYPH_H = 5, 7


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """``text`` as a boolean ``(7·scale, (6·len - 1)·scale)`` mask: 5×7 glyphs one column apart."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if not text:
        return np.zeros((GLYPH_H * scale, 0), bool)
    cols = []
    for i, ch in enumerate(text.upper()):
        rows = _GLYPHS.get(ch, _GLYPHS["?"])
        g = np.array([[(r >> (GLYPH_W - 1 - c)) & 1 for c in range(GLYPH_W)] for r in rows], bool)
        cols.append(g if i == 0 else np.concatenate([np.zeros((GLYPH_H, 1), bool), g], 1))
    m = np.concatenate(cols, 1)
    return m.repeat(scale, 0).repeat(scale, 1)


def text_width(text: str, scale: int = 1) -> int:
    return max(0, (6 * len(text) - 1) * scale)


class Canvas:
    """An ``(H, W, 3)`` float image in [0, 1] with clipped drawing; ``.image`` is the array."""

    def __init__(self, height: int, width: int, background=(1.0, 1.0, 1.0)):
        self.image = np.empty((height, width, 3), np.float32)
        self.image[:] = background

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    def _paint(self, y0: int, x0: int, mask: np.ndarray, colour, alpha: float = 1.0) -> None:
        h, w = mask.shape
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, self.height), min(x0 + w, self.width)
        if ya >= yb or xa >= xb:
            return
        m = mask[ya - y0:yb - y0, xa - x0:xb - x0]
        region = self.image[ya:yb, xa:xb]
        region[m] = (1 - alpha) * region[m] + alpha * np.asarray(colour, np.float32)

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour, alpha: float = 1.0) -> None:
        """Fill the pixels ``x0 ≤ x < x1``, ``y0 ≤ y < y1``."""
        if x1 > x0 and y1 > y0:
            self._paint(y0, x0, np.ones((y1 - y0, x1 - x0), bool), colour, alpha)

    def text(self, x: int, y: int, text: str, colour=(0, 0, 0), scale: int = 1, anchor: str = "left") -> None:
        """Draw ``text`` with its top at ``y``; ``anchor`` ``left``/``center``/``right`` places ``x``."""
        m = text_mask(text, scale)
        x = x - m.shape[1] // 2 if anchor == "center" else x - m.shape[1] if anchor == "right" else x
        self._paint(y, x, m, colour)

    def line(self, x0: float, y0: float, x1: float, y1: float, colour, thickness: int = 1) -> None:
        """A straight line, drawn as ``thickness``-wide squares every half pixel along it."""
        n = max(2, int(2 * math.hypot(x1 - x0, y1 - y0)) + 1)
        dot = np.ones((thickness, thickness), bool)
        for t in np.linspace(0.0, 1.0, n):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            self._paint(int(round(y)) - thickness // 2, int(round(x)) - thickness // 2, dot, colour)

    def point(self, x: float, y: float, colour, radius: int = 3) -> None:
        """A filled disc."""
        r = np.arange(-radius, radius + 1)
        disc = r[:, None] ** 2 + r[None, :] ** 2 <= radius * radius + radius
        self._paint(int(round(y)) - radius, int(round(x)) - radius, disc, colour)

    def band(self, xs, lows, highs, colour, alpha: float = 0.3, half_width: int = 6) -> None:
        """Shade between two polylines over the same ``xs`` (pixel coordinates, increasing): each
        column between two neighbouring xs once, between the linearly interpolated bounds; a single
        x gets a ``2·half_width + 1`` wide bar."""
        xs, lows, highs = list(xs), list(lows), list(highs)
        if len(xs) == 1:
            xs, lows, highs = [xs[0] - half_width, xs[0] + half_width], lows * 2, highs * 2
        cols = {}
        for i in range(len(xs) - 1):
            xa, xb = xs[i], xs[i + 1]
            for x in range(int(round(xa)), int(round(xb)) + 1):
                t = 0.0 if xb == xa else min(max((x - xa) / (xb - xa), 0.0), 1.0)
                cols[x] = (lows[i] + t * (lows[i + 1] - lows[i]), highs[i] + t * (highs[i + 1] - highs[i]))
        for x, (lo, hi) in cols.items():
            top, bottom = int(round(min(lo, hi))), int(round(max(lo, hi)))
            self._paint(top, x, np.ones((bottom - top + 1, 1), bool), colour, alpha)

__all__ = ["Canvas", "GLYPH_H", "GLYPH_W", "text_mask", "text_width"]
