"""Rendering one image: a person (identity + pose) in a camera's scene, through that camera's sensor.

Geometry is drawn once into a material map (:class:`~mult.data.synth.shapes.Layer`); the modality only
decides how materials turn into pixels. Visible: albedo x shading x illumination (brightness, colour cast,
gradient), gamma, loss of resolution, sensor noise. Infrared: per-material heat x shading over a cool
background, the camera's contrast response and vignetting, a softer image, noise with row banding; one
intensity replicated to three channels like SYSU-MM01's IR images. The body itself (lengths in body-height
units, 0 = top of head, 1 = soles, scaled by the pose) is drawn by :mod:`mult.data.synth.body`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mult.data.records import Modality
from mult.data.synth.body import ANKLE, draw_person  # noqa: F401  (ANKLE re-exported: it was defined here)
from mult.data.synth.cameras import VIEWS, CameraSpec
from mult.data.synth.identity import Identity, Material
from mult.data.synth.seeding import Stream, stream
from mult.data.synth.shapes import Layer

REFERENCE_HEIGHT = 288  # SYSU-MM01's usual crop height: camera resolution factors are relative to it


@dataclass(frozen=True)
class Occluder:
    """Something between camera and person: a box from the bottom (an object) or one side (a passer-by)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image
    colour: tuple[float, float, float]
    heat: float


@dataclass(frozen=True)
class Pose:
    """Per-image geometry, shared by the two cameras of a co-located pair (RegDB)."""

    view: str  # "front" | "back" | "side"
    phase: float  # walking phase in [-1, 1]: legs and arms swing with it
    flip: bool  # walking the other way / mirrored
    scale: float  # body height as a fraction of the image height
    top: float  # where the head starts, fraction of the free vertical room (may crop the feet slightly)
    centre: float  # horizontal offset of the body centre, fraction of the image width
    background: tuple[float, float]  # where the image's crop of the camera canvas starts (fractions)
    occluder: Occluder | None


def sample_pose(rng: np.random.Generator, view_weights: tuple[float, float, float], view: str | None = None) -> Pose:
    """Draw a pose; ``view`` forces the facing direction (RegDB ids walk one way)."""
    drawn_view = VIEWS[int(rng.choice(3, p=np.asarray(view_weights) / np.sum(view_weights)))]
    occluder = None
    if rng.random() < 0.2:
        grey = rng.uniform(0.1, 0.8)
        colour = tuple(float(0.6 * grey + 0.4 * c) for c in rng.uniform(0.05, 0.9, size=3))  # muted objects
        if rng.random() < 0.6:  # an object in the lower part of the frame
            x0 = rng.uniform(-0.3, 0.6)
            box = (x0, rng.uniform(0.72, 0.9), x0 + rng.uniform(0.4, 1.0), 1.0)
        else:  # a passer-by's shoulder or arm on one side
            width = rng.uniform(0.15, 0.3)
            x0 = 0.0 if rng.random() < 0.5 else 1.0 - width
            box = (x0, rng.uniform(0.0, 0.4), x0 + width, 1.0)
        occluder = Occluder(box=box, colour=colour, heat=float(rng.uniform(0.2, 0.85)))
    return Pose(
        view=view or drawn_view, phase=float(rng.uniform(-1.0, 1.0)), flip=bool(rng.random() < 0.5),
        scale=float(rng.uniform(0.8, 0.95)), top=float(rng.uniform(0.1, 1.25)), centre=float(rng.uniform(-0.09, 0.09)),
        background=(float(rng.random()), float(rng.random())), occluder=occluder,
    )


def _crop(canvas: np.ndarray, pose: Pose, h: int, w: int) -> np.ndarray:
    oy = int(pose.background[0] * (canvas.shape[0] - h))
    ox = int(pose.background[1] * (canvas.shape[1] - w))
    return canvas[oy:oy + h, ox:ox + w]


def _gamma_table(gamma: float) -> np.ndarray:
    return np.round((np.arange(256, dtype=np.float32) / 255.0) ** gamma * 255.0).astype(np.uint8)


def _to_uint8(values: np.ndarray, gamma: float) -> np.ndarray:
    """[0, 1] floats to uint8 through the camera's tone curve (a 256-entry lookup, no per-pixel power)."""
    index = np.clip(values * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return _gamma_table(gamma)[index]


def _soften(pixels: np.ndarray, resolution: float) -> np.ndarray:
    """Lose resolution like a low-resolution sensor whose crop was enlarged: shrink, then enlarge back.

    ``resolution`` is the sensor's effective fraction of a REFERENCE_HEIGHT-pixel crop, so a small requested
    image (already coarse) is not degraded twice."""
    h, w = pixels.shape[:2]
    resolution = resolution * REFERENCE_HEIGHT / h
    if resolution >= 0.999:
        return pixels
    image = Image.fromarray(pixels)
    small = image.resize((max(2, round(w * resolution)), max(2, round(h * resolution))), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def _add_noise(pixels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(pixels.astype(np.float32) + noise, 0.0, 255.0).astype(np.uint8)


def _illumination_ramp(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """A smooth light gradient across the frame (windows, street lights, vignetting), [h, w]."""
    a, b = rng.uniform(-strength, strength, size=2)
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    return 1.0 + a * ys + b * xs


def _paint_person(layer: Layer, pose: Pose, canvas: np.ndarray, table: np.ndarray, occluder_value: object,
                  ambient: float, diffuse: float) -> np.ndarray:
    """The camera's background crop with the person's pixels painted over it, float [h, w] or [h, w, c]: each
    pixel's material value from ``table`` (per material: an RGB albedo or a heat; the occluder's is
    ``occluder_value`` when the pose has one) x (``ambient`` + ``diffuse`` x the pixel's shading)."""
    table = table.copy()
    if pose.occluder is not None:
        table[Material.occluder] = occluder_value
    person = layer.mat > 0
    image = _crop(canvas, pose, layer.height, layer.width).copy()
    shading = ambient + diffuse * layer.shade[person]
    image[person] = table[layer.mat[person]] * (shading[:, None] if table.ndim > 1 else shading)
    return image


def render_visible(layer: Layer, who: Identity, pose: Pose, camera: CameraSpec, canvas: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 [h, w, 3] of a visible camera."""
    h, w = layer.height, layer.width
    colour = None if pose.occluder is None else pose.occluder.colour
    image = _paint_person(layer, pose, canvas, who.colours, colour, 0.55, 0.45)
    light = (np.asarray(camera.gains, np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
             * np.float32(camera.brightness * rng.uniform(0.8, 1.2)))
    image *= _illumination_ramp(rng, h, w, 0.35)[..., None]
    image *= light
    pixels = _to_uint8(image, camera.gamma * rng.uniform(0.92, 1.08))
    pixels = _soften(pixels, min(1.0, camera.resolution * rng.uniform(0.85, 1.15)))
    sigma = camera.noise * 255.0 * rng.uniform(0.7, 1.3)
    return _add_noise(pixels, rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma))


def render_infrared(layer: Layer, who: Identity, pose: Pose, camera: CameraSpec, canvas: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Heat-like intensity replicated to RGB uint8 [h, w, 3] of an infrared camera."""
    h, w = layer.height, layer.width
    heat = None if pose.occluder is None else pose.occluder.heat
    image = _paint_person(layer, pose, canvas, who.heat, heat, 0.7, 0.3)
    gain = camera.contrast * rng.uniform(0.88, 1.12)
    image = camera.offset + gain * image * _illumination_ramp(rng, h, w, 0.2)
    pixels = _to_uint8(image, camera.gamma * rng.uniform(0.9, 1.1))
    pixels = _soften(pixels, min(1.0, camera.resolution * rng.uniform(0.85, 1.15)))
    sigma = camera.noise * 255.0 * rng.uniform(0.7, 1.3)
    noise = rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)
    noise += rng.standard_normal((h, 1), dtype=np.float32) * np.float32(camera.row_noise * 255.0)
    return np.repeat(_add_noise(pixels, noise)[..., None], 3, axis=2)


def render_image(who: Identity, pose: Pose, camera: CameraSpec, canvas: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """The full pipeline for one image of ``camera``: geometry, then the camera's modality and sensor."""
    layer = Layer(camera.height, camera.width)
    draw_person(layer, who, pose)
    if camera.modality is Modality.infrared:
        return render_infrared(layer, who, pose, camera, canvas, rng)
    return render_visible(layer, who, pose, camera, canvas, rng)


def render_keyed(who: Identity, camera: CameraSpec, canvas: np.ndarray, seed: int, index: int, pose_key: int,
                 view: str | None = None) -> np.ndarray:
    """Image ``index`` of ``who`` in ``camera``, with its pose and sensor streams derived from its keys only
    (``pose_key`` is the camera's own key, or a key shared by a co-located pair)."""
    pose = sample_pose(stream(Stream.pose, seed, who.pid, pose_key, index), camera.view_weights, view)
    return render_image(who, pose, camera, canvas, stream(Stream.sensor, seed, who.pid, camera.key, index))
