"""Rendering one image: a person (identity + pose) in a camera's scene, through that camera's sensor.

Geometry is drawn once into a material map (:class:`~mult.data.synth.shapes.Layer`); the modality only
decides how materials turn into pixels. Visible: albedo x shading x illumination (brightness, colour cast,
gradient), gamma, loss of resolution, sensor noise. Infrared: per-material heat x shading over a cool
background, the camera's contrast response and vignetting, a softer image, noise with row banding; one
intensity replicated to three channels like SYSU-MM01's IR images. Lengths in body drawing are in
body-height units (0 = top of head, 1 = soles) and scaled by the pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mult.data.records import Modality
from mult.data.synth.cameras import VIEWS, CameraSpec
from mult.data.synth.identity import Hair, Identity, Lower, Material, Pattern, Sleeve
from mult.data.synth.seeding import Stream, stream
from mult.data.synth.shapes import Layer

ANKLE = 0.955  # ankle height in body units; shoes reach the soles at 1.0
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


def draw_person(layer: Layer, who: Identity, pose: Pose) -> None:
    """Paint ``who`` in ``pose`` into ``layer``, back to front, then apply the garment pattern and the flip."""
    h, w = layer.height, layer.width
    s = pose.scale * h
    top = pose.top * (h - s) - 0.02 * s
    cx = w / 2 + pose.centre * w

    def X(bx: float) -> float:
        return cx + bx * s

    def Y(by: float) -> float:
        return top + by * s

    side, back, front = pose.view == "side", pose.view == "back", pose.view == "front"
    narrow = 0.62 if side else 1.0
    g = who.girth
    head_ry, head_rx = 0.062 * who.head, 0.047 * who.head * (0.92 if side else 1.0)
    head_cy = 0.006 + head_ry
    shoulder_y = head_cy + head_ry + 0.045
    hip_y = 1.0 - who.leg
    waist_y = shoulder_y + 0.6 * (hip_y - shoulder_y)
    sw, ww, hw = who.shoulder * narrow, who.waist * narrow, who.hip * narrow
    arm_r, leg_r = 0.029 * g, 0.043 * g
    phase = pose.phase
    M = Material
    upper, lower, skin, hair, bag = M.upper, M.lower, M.skin, M.hair, M.bag

    # Things behind the body: long hair (front view), the backpack's edges, the far arm in side view.
    if who.hair is Hair.long and not back:
        off = -0.012 if side else 0.0
        layer.trapezoid(Y(head_cy), Y(shoulder_y + 0.07), X(off), head_rx * 1.1 * s, X(off), head_rx * 1.35 * s, hair)
    if who.backpack and front:
        layer.trapezoid(Y(shoulder_y + 0.01), Y(waist_y + 0.03), X(0), sw * 0.95 * s, X(0), sw * 0.95 * s, bag, 0.2)
    if who.backpack and side:
        pack_x = X(-sw - 0.03)  # on the back, which faces -x before the flip
        layer.trapezoid(Y(shoulder_y + 0.01), Y(waist_y + 0.04), pack_x, 0.05 * s, pack_x, 0.05 * s, bag, 0.2)

    def arm(sign: int) -> None:
        if side:
            swing = -0.5 * phase * sign
            sx, sy = 0.0, shoulder_y + 0.015
            elbow_angle, fore_angle = swing, swing + 0.25
        else:
            spread = 0.07 + 0.03 * abs(phase)
            sx, sy = sign * (sw - arm_r * 0.7), shoulder_y + 0.012
            elbow_angle, fore_angle = sign * spread, sign * spread * 0.6
        shorten = 1.0 if side else 1.0 - 0.08 * max(0.0, sign * phase)
        ex = sx + 0.17 * shorten * math.sin(elbow_angle)
        ey = sy + 0.17 * shorten * math.cos(elbow_angle)
        wx = ex + 0.155 * shorten * math.sin(fore_angle)
        wy = ey + 0.155 * shorten * math.cos(fore_angle)
        upper_mat = skin if who.sleeve is Sleeve.none else upper
        fore_mat = upper if who.sleeve is Sleeve.long else skin
        sleeve_r = 1.12 if who.sleeve is not Sleeve.none else 1.0
        layer.capsule(X(sx), Y(sy), X(ex), Y(ey), arm_r * sleeve_r * s, arm_r * 0.9 * sleeve_r * s, upper_mat)
        layer.capsule(X(ex), Y(ey), X(wx), Y(wy), arm_r * 0.85 * s, arm_r * 0.7 * s, fore_mat)
        layer.ellipse(X(wx), Y(wy + 0.018), 0.02 * g * s, 0.026 * s, skin)

    def leg(sign: int) -> None:
        if side:
            thigh = 0.42 * phase * sign
            shin = thigh - 0.6 * max(0.0, -thigh) - 0.05
            hx, foot_dx = 0.012 * sign, 0.022
        else:
            thigh = shin = sign * 0.035
            hx, foot_dx = sign * (hw - leg_r * 0.9), 0.0
        lift = 0.0 if side else 0.03 * max(0.0, sign * phase)
        half = (ANKLE - hip_y) / 2 * (1.0 - lift)
        kx, ky = hx + half * math.sin(thigh), hip_y + half * math.cos(thigh)
        ax, ay = kx + half * math.sin(shin), ky + half * math.cos(shin)
        trousers = who.lower is Lower.trousers
        layer.capsule(X(hx), Y(hip_y), X(kx), Y(ky), leg_r * s * (1.1 if trousers else 0.85), leg_r * 0.9 * s,
                      lower if trousers else skin)
        layer.capsule(X(kx), Y(ky), X(ax), Y(ay), leg_r * 0.85 * s, leg_r * (0.75 if trousers else 0.6) * s,
                      lower if trousers else skin)
        if who.lower is Lower.shorts:
            sx, sy = hx + 0.7 * (kx - hx), hip_y + 0.7 * (ky - hip_y)
            layer.capsule(X(hx), Y(hip_y), X(sx), Y(sy), leg_r * 1.15 * s, leg_r * 1.05 * s, lower)
        shoe_rx = 0.055 if side else 0.032
        layer.ellipse(X(ax + foot_dx), Y(ay + 0.022), shoe_rx * s, 0.024 * s, M.shoes, 0.2)

    if side:
        arm(-1)
    leg(-1)
    leg(+1)
    # Hips and crotch in the lower garment; a skirt flares out over the thighs.
    if who.lower is Lower.skirt:
        layer.trapezoid(Y(waist_y), Y(hip_y + who.skirt_length), X(0), ww * s, X(0), hw * 1.6 * s, lower, 0.25)
    else:
        layer.trapezoid(Y(waist_y), Y(hip_y + 0.035), X(0), ww * 1.02 * s, X(0), hw * 1.02 * s, lower)
    layer.capsule(X(0), Y(head_cy + head_ry * 0.6), X(0), Y(shoulder_y + 0.01), 0.021 * s, 0.024 * s, skin, 0.2)
    # Upper garment: chest to waist, waist to hem (coats flare over the thighs), rounded shoulders.
    layer.trapezoid(Y(shoulder_y - 0.008), Y(waist_y), X(0), sw * 0.98 * s, X(0), ww * 1.05 * s, upper)
    hem_width = hw * (1.05 + 2.0 * max(0.0, who.hem - hip_y))
    layer.trapezoid(Y(waist_y), Y(who.hem), X(0), ww * 1.05 * s, X(0), hem_width * s, upper)
    if not side:
        for sign in (-1, 1):
            layer.ellipse(X(sign * (sw - arm_r * 0.9)), Y(shoulder_y + 0.014), arm_r * 1.12 * s, arm_r * 1.05 * s,
                          skin if who.sleeve is Sleeve.none else upper)
    if who.backpack and back:
        layer.trapezoid(Y(shoulder_y + 0.015), Y(waist_y + 0.05), X(0), sw * 0.78 * s, X(0), sw * 0.82 * s, bag, 0.25)
    if who.shoulder_bag:
        bx = 0.0 if side else who.bag_side * (hw + 0.035)
        if not side:
            layer.capsule(X(-who.bag_side * sw * 0.6), Y(shoulder_y), X(bx), Y(hip_y - 0.06), 0.008 * s, 0.008 * s,
                          bag, 0.0)
        layer.trapezoid(Y(hip_y - 0.075), Y(hip_y + 0.035), X(bx), 0.042 * s, X(bx), 0.045 * s, bag, 0.2)
    if who.backpack and front:
        for sign in (-1, 1):
            layer.capsule(X(sign * sw * 0.55), Y(shoulder_y), X(sign * sw * 0.5), Y(waist_y - 0.02), 0.011 * s,
                          0.011 * s, bag, 0.0)
    if side:
        arm(+1)
    else:
        arm(-1)
        arm(+1)

    # Head: the face shows from the front and side; from the back the hair covers it.
    has_hair = who.hair is not Hair.bald
    if back:
        layer.ellipse(X(0), Y(head_cy), head_rx * s, head_ry * s, hair if has_hair else skin)
        if who.hair is Hair.long:
            layer.trapezoid(Y(head_cy), Y(shoulder_y + 0.1), X(0), head_rx * 0.95 * s, X(0), head_rx * 1.2 * s, hair)
    else:
        shift = 0.006 if side else 0.0
        if has_hair and front:
            layer.ellipse(X(0), Y(head_cy - 0.12 * head_ry), head_rx * 1.08 * s, head_ry * 0.95 * s, hair)
        layer.ellipse(X(shift), Y(head_cy + 0.06 * head_ry), head_rx * 0.97 * s, head_ry * 0.93 * s, skin)
        if has_hair and side:
            layer.ellipse(X(-0.3 * head_rx), Y(head_cy - 0.15 * head_ry), head_rx * 0.85 * s, head_ry * 0.85 * s, hair)
    if who.hat:
        layer.ellipse(X(0), Y(head_cy - head_ry * 0.55), head_rx * 1.12 * s, head_ry * 0.55 * s, M.hat, 0.2)
        if not back:
            bx = 0.3 * head_rx if side else 0.0
            layer.trapezoid(Y(head_cy - head_ry * 0.42), Y(head_cy - head_ry * 0.28), X(bx), head_rx * 1.2 * s,
                            X(bx), head_rx * 1.2 * s, M.hat, 0.0)

    _apply_pattern(layer, who, pose, X(-0.4), Y(shoulder_y - 0.02), X(0.4), Y(max(who.hem, hip_y) + 0.01), cx, top, s,
                   narrow, shoulder_y)
    if pose.occluder is not None:
        x0, y0, x1, y1 = pose.occluder.box
        layer.rect(x0 * w, y0 * h, x1 * w, y1 * h, M.occluder)
    if pose.flip:
        layer.flip()


def _apply_pattern(layer: Layer, who: Identity, pose: Pose, x0: float, y0: float, x1: float, y1: float, cx: float,
                   top: float, s: float, narrow: float, shoulder_y: float) -> None:
    """Recolour the upper garment's pixels with the identity's pattern, in body coordinates."""
    if who.pattern is Pattern.solid or (who.pattern is Pattern.logo and pose.view != "front"):
        return
    grid = layer.grid(x0, y0, x1, y1)
    if grid is None:
        return
    ys, xs = grid
    u = (xs - cx) / (s * narrow)
    v = (ys - top) / s
    period = who.pattern_period
    if who.pattern is Pattern.hstripes:
        mask = (v / period) % 1.0 < 0.5
    elif who.pattern is Pattern.vstripes:
        mask = (u / period + 0.25) % 1.0 < 0.5
    elif who.pattern is Pattern.checks:
        mask = ((v / (1.4 * period)) % 1.0 < 0.5) ^ ((u / (1.4 * period) + 0.25) % 1.0 < 0.5)
    elif who.pattern is Pattern.two_tone:
        mask = v > who.pattern_split
    else:  # a chest logo
        size = who.pattern_split
        mask = (np.abs(u) < size) & (np.abs(v - shoulder_y - 0.09) < 0.8 * size)
    layer.recolour(x0, y0, x1, y1, Material.upper, Material.upper_alt, mask)


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


def render_visible(layer: Layer, who: Identity, pose: Pose, camera: CameraSpec, canvas: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 [h, w, 3] of a visible camera."""
    h, w = layer.height, layer.width
    albedo = who.colours.copy()
    if pose.occluder is not None:
        albedo[Material.occluder] = pose.occluder.colour
    person = layer.mat > 0
    image = _crop(canvas, pose, h, w).copy()
    image[person] = albedo[layer.mat[person]] * (0.55 + 0.45 * layer.shade[person])[:, None]
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
    heat = who.heat.copy()
    if pose.occluder is not None:
        heat[Material.occluder] = pose.occluder.heat
    person = layer.mat > 0
    image = _crop(canvas, pose, h, w).copy()
    image[person] = heat[layer.mat[person]] * (0.7 + 0.3 * layer.shade[person])
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
