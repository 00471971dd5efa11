"""Camera-specific background scenes.

Each camera gets one procedural canvas (indoor: walls, doors, posters, a tiled floor; outdoor: facades or
foliage over pavement, grass and road markings; infrared: a cool scene with a few warm objects), larger than
its images. Every image takes its own crop of it, so backgrounds are consistent within a camera, differ
between cameras, and never identify a person.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mult.data.records import Modality
from mult.data.synth.cameras import CameraSpec
from mult.data.synth.seeding import Stream, stream

CANVAS_SCALE = (1.3, 2.2)  # canvas size relative to the image (height, width): room for per-image crops


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid enlarged with bicubic interpolation."""
    coarse = rng.uniform(-1.0, 1.0, size=cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))


def _rows(ys: np.ndarray, xs: np.ndarray, horizon: float, above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """A [H, W, 3] canvas coloured ``above`` over the horizon row and ``below`` under it."""
    rows = np.where((ys < horizon)[..., None], above, below).astype(np.float32)  # [H, 1, 3]
    return np.repeat(rows, xs.shape[1], axis=1)


def _muted(rng: np.random.Generator, base: np.ndarray, amount: float) -> np.ndarray:
    """A random colour pulled towards ``base`` (scenes are mostly muted)."""
    return (1.0 - amount) * base + amount * rng.uniform(0.1, 0.9, size=3).astype(np.float32)


def _indoor_visible(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = ys.shape[0], xs.shape[1]
    wall = np.float32(rng.uniform(0.55, 0.85)) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    floor = np.float32(rng.uniform(0.3, 0.6)) * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    horizon = rng.uniform(0.45, 0.75) * H
    canvas = _rows(ys, xs, horizon, wall, floor)
    for _ in range(int(rng.integers(2, 7))):  # doors, pillars, posters, windows
        x0 = int(rng.uniform(-0.1, 1.0) * W)
        x1 = x0 + int(rng.uniform(0.1, 0.5) * w)
        y0 = int(rng.uniform(0.02, 0.4) * H)
        y1 = int(horizon) if rng.random() < 0.5 else int(y0 + rng.uniform(0.1, 0.3) * H)
        canvas[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = _muted(rng, wall, rng.uniform(0.3, 0.8))
    canvas[int(horizon - 0.02 * h):int(horizon)] *= 0.6  # skirting board
    tile = rng.uniform(0.15, 0.35) * w
    grout = ((xs % tile) < 1.0) | ((np.maximum(ys - horizon, 0.0) % (0.6 * tile)) < 1.0)
    canvas[grout & (ys > horizon)] *= 0.8
    return canvas * (1.0 + 0.15 * _smooth_noise(rng, H, W, (4, 6)))[..., None]


def _outdoor_visible(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = ys.shape[0], xs.shape[1]
    ground = np.float32(rng.uniform(0.3, 0.55)) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    horizon = rng.uniform(0.3, 0.6) * H
    if rng.random() < 0.5:  # building facade with a grid of windows
        top = np.float32(rng.uniform(0.4, 0.8)) * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
        canvas = _rows(ys, xs, horizon, top, ground)
        period = rng.uniform(0.2, 0.4) * w
        windows = ((xs % period) < 0.55 * period) & ((ys % period) < 0.6 * period) & (ys < horizon - 0.05 * h)
        canvas[windows] *= rng.uniform(0.3, 0.6)
    else:  # trees and bushes
        top = np.array([0.18, 0.35, 0.15], np.float32) * rng.uniform(0.7, 1.3)
        canvas = _rows(ys, xs, horizon, top, ground)
        leaves = _smooth_noise(rng, H, W, (max(2, h // 12), max(2, w // 10)))
        canvas[: int(horizon)] *= (1.0 + 0.5 * leaves[: int(horizon)])[..., None]
    for _ in range(int(rng.integers(1, 4))):  # grass patches, kerbs, parked things
        x0 = int(rng.uniform(-0.1, 1.0) * W)
        y0 = int(rng.uniform(horizon / H, 1.0) * H)
        colour = np.array([0.2, 0.42, 0.15], np.float32) if rng.random() < 0.5 else _muted(rng, ground, 0.6)
        canvas[y0:y0 + int(rng.uniform(0.05, 0.3) * H), max(x0, 0):max(x0 + int(rng.uniform(0.2, 0.8) * W), 0)] = colour
    stripe = rng.uniform(0.2, 0.5) * w
    marking = ((xs % stripe) < 0.5 * stripe) & (np.abs(ys - rng.uniform(0.7, 0.95) * H) < 0.012 * h)  # dashes
    canvas[marking] = 0.85
    return canvas * (1.0 + 0.25 * _smooth_noise(rng, H, W, (3, 5)))[..., None]  # sun and shadow


def _infrared(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, h: int, w: int, indoor: bool) -> np.ndarray:
    H, W = ys.shape[0], xs.shape[1]
    horizon = rng.uniform(0.45, 0.75) * H if indoor else rng.uniform(0.3, 0.6) * H
    # Backgrounds are much cooler than people and fairly uniform: walls and floor at nearly the same
    # temperature indoors, sun-warmed ground under a colder sky or foliage outdoors.
    top = rng.uniform(0.12, 0.26) if indoor else rng.uniform(0.08, 0.2)
    bottom = top + (rng.uniform(-0.04, 0.04) if indoor else rng.uniform(0.04, 0.12))
    canvas = np.where(ys < horizon, np.float32(top), np.float32(bottom)) + np.zeros_like(xs)
    for _ in range(int(rng.integers(1, 4))):  # lamps, radiators, screens, car bonnets: mildly warm
        x0 = int(rng.uniform(0.0, 1.0) * W)
        y0 = int(rng.uniform(0.05, 0.9) * H)
        y1, x1 = y0 + int(rng.uniform(0.03, 0.15) * H), x0 + int(rng.uniform(0.05, 0.3) * W)
        canvas[y0:y1, x0:x1] += rng.uniform(0.08, 0.2)
    canvas = canvas + (0.05 if indoor else 0.07) * _smooth_noise(rng, H, W, (4, 6))
    return canvas.astype(np.float32)


def background_canvas(camera: CameraSpec, seed: int) -> np.ndarray:
    """The canvas of ``camera``: float32 [Hc, Wc, 3] (visible) or [Hc, Wc] (infrared), values about 0..1."""
    rng = stream(Stream.scene, seed, camera.key)
    h, w = camera.height, camera.width
    H, W = int(np.ceil(CANVAS_SCALE[0] * h)), int(np.ceil(CANVAS_SCALE[1] * w))
    ys = np.arange(H, dtype=np.float32)[:, None]
    xs = np.arange(W, dtype=np.float32)[None, :]
    if camera.modality is Modality.infrared:
        return _infrared(rng, ys, xs, h, w, camera.indoor)
    make = _indoor_visible if camera.indoor else _outdoor_visible
    return np.clip(make(rng, ys, xs, h, w), 0.0, 1.0)
