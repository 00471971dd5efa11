"""Vectorised drawing of filled shapes into a material map.

A :class:`Layer` holds, per pixel, which material is visible (painter's algorithm: later shapes cover
earlier ones) and a shading factor (1 on a limb's axis, darker towards its silhouette, which makes the
flat shapes read as round bodies). Each primitive evaluates its implicit inequality with numpy
broadcasting over the shape's bounding box only, so nothing loops over pixels in Python.
"""

from __future__ import annotations

import math

import numpy as np


class Layer:
    """Material ids (uint8) and shading (float32) of one ``height`` x ``width`` image."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.mat = np.zeros((height, width), np.uint8)
        self.shade = np.ones((height, width), np.float32)
        self.ys = np.arange(height, dtype=np.float32)[:, None] + 0.5  # pixel centres
        self.xs = np.arange(width, dtype=np.float32)[None, :] + 0.5

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        """Pixel slices covering [x0, x1] x [y0, y1], clipped to the image; None when nothing is inside."""
        r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, self.height)
        c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def _fill(self, box: tuple[slice, slice], inside: np.ndarray, q: np.ndarray | float, material: int,
              shading: float) -> None:
        """Paint ``material`` where ``inside``; ``q`` in [0, 1) is the normalised distance from the axis."""
        np.copyto(self.mat[box], np.uint8(material), where=inside)
        np.copyto(self.shade[box], 1.0 - shading * q, where=inside)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, material: int, shading: float = 0.3) -> None:
        box = self._box(cx - rx, cy - ry, cx + rx, cy + ry)
        if box is None or rx <= 0 or ry <= 0:
            return
        q = ((self.xs[:, box[1]] - cx) / rx) ** 2 + ((self.ys[box[0]] - cy) / ry) ** 2
        self._fill(box, q < 1.0, q, material, shading)

    def capsule(self, ax: float, ay: float, bx: float, by: float, ra: float, rb: float, material: int,
                shading: float = 0.4) -> None:
        """A limb: all points within a radius (tapering from ``ra`` at a to ``rb`` at b) of segment a-b."""
        r = max(ra, rb)
        box = self._box(min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r)
        if box is None or r <= 0:
            return
        dx, dy = bx - ax, by - ay
        length2 = max(dx * dx + dy * dy, 1e-6)
        px = self.xs[:, box[1]] - ax
        py = self.ys[box[0]] - ay
        t = np.clip((px * dx + py * dy) * (1.0 / length2), 0.0, 1.0)
        ex, ey = px - t * dx, py - t * dy
        radius = ra + (rb - ra) * t
        q = (ex * ex + ey * ey) / (radius * radius)
        self._fill(box, q < 1.0, q, material, shading)

    def trapezoid(self, y0: float, y1: float, cx0: float, hw0: float, cx1: float, hw1: float, material: int,
                  shading: float = 0.35) -> None:
        """Rows y0..y1 whose centre and half-width change linearly from (cx0, hw0) to (cx1, hw1): torsos,
        skirts, backpacks (a rectangle when both ends match)."""
        box = self._box(min(cx0 - hw0, cx1 - hw1), y0, max(cx0 + hw0, cx1 + hw1), y1)
        if box is None or y1 <= y0:
            return
        ys = self.ys[box[0]]
        t = (ys - y0) / (y1 - y0)
        centre = cx0 + (cx1 - cx0) * t
        half = np.maximum(hw0 + (hw1 - hw0) * t, 1e-3)
        q = ((self.xs[:, box[1]] - centre) / half) ** 2
        self._fill(box, (q < 1.0) & (t >= 0.0) & (t <= 1.0), q, material, shading)

    def rect(self, x0: float, y0: float, x1: float, y1: float, material: int) -> None:
        """An axis-aligned box with flat shading (occluders)."""
        box = self._box(x0, y0, x1 - 1, y1 - 1)
        if box is not None:
            self.mat[box] = material
            self.shade[box] = 1.0

    def recolour(self, x0: float, y0: float, x1: float, y1: float, old: int, new: int, pattern: np.ndarray | None,
                 ) -> None:
        """Within the box, turn ``old`` pixels where ``pattern`` is true into ``new`` (garment patterns).

        ``pattern`` is None for the whole box, or a boolean array broadcastable to the box (see :meth:`grid`)."""
        box = self._box(x0, y0, x1, y1)
        if box is None:
            return
        where = self.mat[box] == old
        if pattern is not None:
            where &= pattern
        self.mat[box][where] = new

    def grid(self, x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Pixel-centre coordinates (column [h, 1], row [1, w]) of the box used by :meth:`recolour`."""
        box = self._box(x0, y0, x1, y1)
        if box is None:
            return None
        return self.ys[box[0]], self.xs[:, box[1]]

    def flip(self) -> None:
        """Mirror left-right (a person walking the other way)."""
        self.mat = np.ascontiguousarray(self.mat[:, ::-1])
        self.shade = np.ascontiguousarray(self.shade[:, ::-1])
