"""Cameras: what each synthetic camera sees (modality, indoor/outdoor, native size) and how its sensor behaves.

SYSU-MM01 has six cameras: visible cam1, cam2 (indoor) and cam4, cam5 (outdoor); infrared cam3 (indoor) and
cam6 (outdoor). Native image size differs a little per camera, as in the real set. RegDB has one co-located
visible/thermal pair (camid 1 and 2) with a fixed image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mult.data.records import Modality
from mult.data.synth.seeding import Stream, stream

# (camid, folder, modality, indoor) of the real SYSU-MM01 cameras.
SYSU_LAYOUT: tuple[tuple[int, str, Modality, bool], ...] = (
    (1, "cam1", Modality.visible, True),
    (2, "cam2", Modality.visible, True),
    (3, "cam3", Modality.infrared, True),
    (4, "cam4", Modality.visible, False),
    (5, "cam5", Modality.visible, False),
    (6, "cam6", Modality.infrared, False),
)
REGDB_LAYOUT: tuple[tuple[int, str, Modality, bool], ...] = (
    (1, "Visible", Modality.visible, False),
    (2, "Thermal", Modality.infrared, False),
)
VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class CameraSpec:
    """One camera. Photometric fields apply to the modality that uses them (``gains`` only to visible,
    ``contrast``/``offset``/``row_noise`` only to infrared)."""

    camid: int
    key: int  # random-stream key, unique across formats: SYSU camid, RegDB 100 + camid
    folder: str
    modality: Modality
    indoor: bool
    height: int
    width: int
    view_weights: tuple[float, float, float]  # how often people face it front / back / side
    brightness: float
    gains: tuple[float, float, float]  # colour cast of the light and white balance
    gamma: float
    noise: float  # sensor noise standard deviation, fraction of full scale
    resolution: float  # effective resolution: the image is shrunk to this fraction and enlarged back
    contrast: float  # infrared: gain from heat to intensity
    offset: float  # infrared: intensity of zero heat
    row_noise: float  # infrared: per-row banding, a common artefact of IR sensors


def _camera(rng: np.random.Generator, key: int, camid: int, folder: str, modality: Modality, indoor: bool,
            height: int, width: int) -> CameraSpec:
    views = rng.dirichlet([3.0, 3.0, 1.6])
    if modality is Modality.visible:
        warm = (rng.uniform(1.0, 1.1), rng.uniform(0.95, 1.03), rng.uniform(0.78, 0.95))
        cool = (rng.uniform(0.9, 1.0), rng.uniform(0.97, 1.05), rng.uniform(1.0, 1.12))
        gains = warm if indoor else cool
        brightness = rng.uniform(0.75, 0.95) if indoor else rng.uniform(0.95, 1.15)
        noise = rng.uniform(0.012, 0.025)
        resolution = rng.uniform(0.55, 0.85)
    else:
        gains = (1.0, 1.0, 1.0)
        brightness = 1.0
        noise = rng.uniform(0.02, 0.035)
        resolution = rng.uniform(0.4, 0.6)  # IR sensors have fewer pixels: softer images
    return CameraSpec(
        camid=camid, key=key, folder=folder, modality=modality, indoor=indoor, height=height, width=width,
        view_weights=tuple(float(v) for v in views), brightness=float(brightness),
        gains=tuple(float(g) for g in gains), gamma=float(rng.uniform(0.85, 1.15)), noise=float(noise),
        resolution=float(resolution), contrast=float(rng.uniform(0.8, 1.1)), offset=float(rng.uniform(0.0, 0.1)),
        row_noise=float(rng.uniform(0.004, 0.015)),
    )


def sysu_cameras(seed: int, height: int, width: int) -> dict[int, CameraSpec]:
    """The six SYSU-MM01 cameras; each has its own native size within about 8% of ``height`` x ``width``."""
    cameras = {}
    for camid, folder, modality, indoor in SYSU_LAYOUT:
        rng = stream(Stream.camera, seed, camid)
        h = max(16, int(round(height * rng.uniform(0.92, 1.08))))
        w = max(8, int(round(width * rng.uniform(0.92, 1.08))))
        cameras[camid] = _camera(rng, camid, camid, folder, modality, indoor, h, w)
    return cameras


def regdb_cameras(seed: int, height: int, width: int) -> dict[int, CameraSpec]:
    """RegDB's co-located visible (camid 1) and thermal (camid 2) cameras, both exactly ``height`` x ``width``.

    Their stream keys are offset by 100 so a RegDB camera never shares parameters with a SYSU camera."""
    return {
        camid: _camera(stream(Stream.camera, seed, 100 + camid), 100 + camid, camid, folder, modality, indoor,
                       height, width)
        for camid, folder, modality, indoor in REGDB_LAYOUT
    }
