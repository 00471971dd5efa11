"""Painting a person into a material map: the body's geometry for one pose, drawn back to front.

Lengths are in body-height units (0 = top of head, 1 = soles), placed and scaled in the image by the pose
(:class:`~mult.data.synth.render.Pose`). :func:`draw_person` runs the named steps in painting order: what is
behind the body, the far arm (side view), the legs, the torso, what is carried, the arms, the head; then the
garment's pattern, the occluder and the mirror flip. :mod:`mult.data.synth.render` turns the map into pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mult.data.synth.identity import Hair, Identity, Lower, Material, Pattern, Sleeve
from mult.data.synth.shapes import Layer

if TYPE_CHECKING:  # render.py imports this module; a pose is only read here
    from mult.data.synth.render import Pose

ANKLE = 0.955  # ankle height in body units; shoes reach the soles at 1.0


@dataclass(frozen=True)
class _Body:
    """Where one body goes in the image and its proportions, in body-height units (see :func:`_body`)."""

    s: float  # body height in pixels
    top: float  # image row of the top of the head
    cx: float  # image column of the body's centre line
    side: bool
    back: bool
    front: bool
    narrow: float  # width factor of the view (side views are narrower)
    g: float  # girth
    head_rx: float
    head_ry: float
    head_cy: float
    shoulder_y: float
    hip_y: float
    waist_y: float
    sw: float  # shoulder, waist and hip half-widths, narrowed for the view
    ww: float
    hw: float
    arm_r: float
    leg_r: float
    phase: float

    def X(self, bx: float) -> float:
        return self.cx + bx * self.s

    def Y(self, by: float) -> float:
        return self.top + by * self.s


def _body(layer: Layer, who: Identity, pose: Pose) -> _Body:
    """Place ``who`` in the image for ``pose``: scale, position and the body's landmarks."""
    h, w = layer.height, layer.width
    s = pose.scale * h
    side = pose.view == "side"
    narrow = 0.62 if side else 1.0
    g = who.girth
    head_ry, head_rx = 0.062 * who.head, 0.047 * who.head * (0.92 if side else 1.0)
    head_cy = 0.006 + head_ry
    shoulder_y = head_cy + head_ry + 0.045
    hip_y = 1.0 - who.leg
    return _Body(
        s=s, top=pose.top * (h - s) - 0.02 * s, cx=w / 2 + pose.centre * w,
        side=side, back=pose.view == "back", front=pose.view == "front", narrow=narrow, g=g,
        head_rx=head_rx, head_ry=head_ry, head_cy=head_cy, shoulder_y=shoulder_y, hip_y=hip_y,
        waist_y=shoulder_y + 0.6 * (hip_y - shoulder_y),
        sw=who.shoulder * narrow, ww=who.waist * narrow, hw=who.hip * narrow,
        arm_r=0.029 * g, leg_r=0.043 * g, phase=pose.phase,
    )


def draw_person(layer: Layer, who: Identity, pose: Pose) -> None:
    """Paint ``who`` in ``pose`` into ``layer``, back to front, then apply the garment pattern and the flip."""
    b = _body(layer, who, pose)
    _draw_behind(layer, who, b)
    if b.side:
        _draw_arm(layer, who, b, -1)
    _draw_leg(layer, who, b, -1)
    _draw_leg(layer, who, b, +1)
    _draw_torso(layer, who, b)
    _draw_bags(layer, who, b)
    if b.side:
        _draw_arm(layer, who, b, +1)
    else:
        _draw_arm(layer, who, b, -1)
        _draw_arm(layer, who, b, +1)
    _draw_head(layer, who, b)
    _apply_pattern(layer, who, pose, b.X(-0.4), b.Y(b.shoulder_y - 0.02), b.X(0.4),
                   b.Y(max(who.hem, b.hip_y) + 0.01), b.cx, b.top, b.s, b.narrow, b.shoulder_y)
    if pose.occluder is not None:
        x0, y0, x1, y1 = pose.occluder.box
        layer.rect(x0 * layer.width, y0 * layer.height, x1 * layer.width, y1 * layer.height, Material.occluder)
    if pose.flip:
        layer.flip()


def _draw_behind(layer: Layer, who: Identity, b: _Body) -> None:
    """Things behind the body: long hair (front view), the backpack's edges."""
    s, X, Y = b.s, b.X, b.Y
    if who.hair is Hair.long and not b.back:
        off = -0.012 if b.side else 0.0
        layer.trapezoid(Y(b.head_cy), Y(b.shoulder_y + 0.07), X(off), b.head_rx * 1.1 * s, X(off),
                        b.head_rx * 1.35 * s, Material.hair)
    if who.backpack and b.front:
        layer.trapezoid(Y(b.shoulder_y + 0.01), Y(b.waist_y + 0.03), X(0), b.sw * 0.95 * s, X(0), b.sw * 0.95 * s,
                        Material.bag, 0.2)
    if who.backpack and b.side:
        pack_x = X(-b.sw - 0.03)  # on the back, which faces -x before the flip
        layer.trapezoid(Y(b.shoulder_y + 0.01), Y(b.waist_y + 0.04), pack_x, 0.05 * s, pack_x, 0.05 * s,
                        Material.bag, 0.2)


def _draw_arm(layer: Layer, who: Identity, b: _Body, sign: int) -> None:
    """One arm (``sign`` -1: the far / left one), swinging with the walking phase; sleeves per the garment."""
    s, X, Y, phase, arm_r = b.s, b.X, b.Y, b.phase, b.arm_r
    skin, upper = Material.skin, Material.upper
    if b.side:
        swing = -0.5 * phase * sign
        sx, sy = 0.0, b.shoulder_y + 0.015
        elbow_angle, fore_angle = swing, swing + 0.25
    else:
        spread = 0.07 + 0.03 * abs(phase)
        sx, sy = sign * (b.sw - arm_r * 0.7), b.shoulder_y + 0.012
        elbow_angle, fore_angle = sign * spread, sign * spread * 0.6
    shorten = 1.0 if b.side else 1.0 - 0.08 * max(0.0, sign * phase)
    ex = sx + 0.17 * shorten * math.sin(elbow_angle)
    ey = sy + 0.17 * shorten * math.cos(elbow_angle)
    wx = ex + 0.155 * shorten * math.sin(fore_angle)
    wy = ey + 0.155 * shorten * math.cos(fore_angle)
    upper_mat = skin if who.sleeve is Sleeve.none else upper
    fore_mat = upper if who.sleeve is Sleeve.long else skin
    sleeve_r = 1.12 if who.sleeve is not Sleeve.none else 1.0
    layer.capsule(X(sx), Y(sy), X(ex), Y(ey), arm_r * sleeve_r * s, arm_r * 0.9 * sleeve_r * s, upper_mat)
    layer.capsule(X(ex), Y(ey), X(wx), Y(wy), arm_r * 0.85 * s, arm_r * 0.7 * s, fore_mat)
    layer.ellipse(X(wx), Y(wy + 0.018), 0.02 * b.g * s, 0.026 * s, skin)


def _draw_leg(layer: Layer, who: Identity, b: _Body, sign: int) -> None:
    """One leg with its shoe, striding with the walking phase; trousers, shorts or bare per the garment."""
    s, X, Y, phase, leg_r, hip_y = b.s, b.X, b.Y, b.phase, b.leg_r, b.hip_y
    lower, skin = Material.lower, Material.skin
    if b.side:
        thigh = 0.42 * phase * sign
        shin = thigh - 0.6 * max(0.0, -thigh) - 0.05
        hx, foot_dx = 0.012 * sign, 0.022
    else:
        thigh = shin = sign * 0.035
        hx, foot_dx = sign * (b.hw - leg_r * 0.9), 0.0
    lift = 0.0 if b.side else 0.03 * max(0.0, sign * phase)
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
    shoe_rx = 0.055 if b.side else 0.032
    layer.ellipse(X(ax + foot_dx), Y(ay + 0.022), shoe_rx * s, 0.024 * s, Material.shoes, 0.2)


def _draw_torso(layer: Layer, who: Identity, b: _Body) -> None:
    """Hips and crotch in the lower garment (a skirt flares out over the thighs), the neck, and the upper
    garment: chest to waist, waist to hem (coats flare over the thighs), rounded shoulders."""
    s, X, Y, sw, ww, hw, hip_y, waist_y = b.s, b.X, b.Y, b.sw, b.ww, b.hw, b.hip_y, b.waist_y
    lower, upper = Material.lower, Material.upper
    if who.lower is Lower.skirt:
        layer.trapezoid(Y(waist_y), Y(hip_y + who.skirt_length), X(0), ww * s, X(0), hw * 1.6 * s, lower, 0.25)
    else:
        layer.trapezoid(Y(waist_y), Y(hip_y + 0.035), X(0), ww * 1.02 * s, X(0), hw * 1.02 * s, lower)
    layer.capsule(X(0), Y(b.head_cy + b.head_ry * 0.6), X(0), Y(b.shoulder_y + 0.01), 0.021 * s, 0.024 * s,
                  Material.skin, 0.2)
    layer.trapezoid(Y(b.shoulder_y - 0.008), Y(waist_y), X(0), sw * 0.98 * s, X(0), ww * 1.05 * s, upper)
    hem_width = hw * (1.05 + 2.0 * max(0.0, who.hem - hip_y))
    layer.trapezoid(Y(waist_y), Y(who.hem), X(0), ww * 1.05 * s, X(0), hem_width * s, upper)
    if not b.side:
        for sign in (-1, 1):
            layer.ellipse(X(sign * (sw - b.arm_r * 0.9)), Y(b.shoulder_y + 0.014), b.arm_r * 1.12 * s,
                          b.arm_r * 1.05 * s, Material.skin if who.sleeve is Sleeve.none else upper)


def _draw_bags(layer: Layer, who: Identity, b: _Body) -> None:
    """What is carried over the torso: a backpack seen from behind, a shoulder bag, a backpack's front straps."""
    s, X, Y, sw, shoulder_y, hip_y, bag = b.s, b.X, b.Y, b.sw, b.shoulder_y, b.hip_y, Material.bag
    if who.backpack and b.back:
        layer.trapezoid(Y(shoulder_y + 0.015), Y(b.waist_y + 0.05), X(0), sw * 0.78 * s, X(0), sw * 0.82 * s, bag,
                        0.25)
    if who.shoulder_bag:
        bx = 0.0 if b.side else who.bag_side * (b.hw + 0.035)
        if not b.side:
            layer.capsule(X(-who.bag_side * sw * 0.6), Y(shoulder_y), X(bx), Y(hip_y - 0.06), 0.008 * s, 0.008 * s,
                          bag, 0.0)
        layer.trapezoid(Y(hip_y - 0.075), Y(hip_y + 0.035), X(bx), 0.042 * s, X(bx), 0.045 * s, bag, 0.2)
    if who.backpack and b.front:
        for sign in (-1, 1):
            layer.capsule(X(sign * sw * 0.55), Y(shoulder_y), X(sign * sw * 0.5), Y(b.waist_y - 0.02), 0.011 * s,
                          0.011 * s, bag, 0.0)


def _draw_head(layer: Layer, who: Identity, b: _Body) -> None:
    """Head and hat: the face shows from the front and side; from the back the hair covers it."""
    s, X, Y, head_rx, head_ry, head_cy = b.s, b.X, b.Y, b.head_rx, b.head_ry, b.head_cy
    hair, skin = Material.hair, Material.skin
    has_hair = who.hair is not Hair.bald
    if b.back:
        layer.ellipse(X(0), Y(head_cy), head_rx * s, head_ry * s, hair if has_hair else skin)
        if who.hair is Hair.long:
            layer.trapezoid(Y(head_cy), Y(b.shoulder_y + 0.1), X(0), head_rx * 0.95 * s, X(0), head_rx * 1.2 * s,
                            hair)
    else:
        shift = 0.006 if b.side else 0.0
        if has_hair and b.front:
            layer.ellipse(X(0), Y(head_cy - 0.12 * head_ry), head_rx * 1.08 * s, head_ry * 0.95 * s, hair)
        layer.ellipse(X(shift), Y(head_cy + 0.06 * head_ry), head_rx * 0.97 * s, head_ry * 0.93 * s, skin)
        if has_hair and b.side:
            layer.ellipse(X(-0.3 * head_rx), Y(head_cy - 0.15 * head_ry), head_rx * 0.85 * s, head_ry * 0.85 * s,
                          hair)
    if who.hat:
        layer.ellipse(X(0), Y(head_cy - head_ry * 0.55), head_rx * 1.12 * s, head_ry * 0.55 * s, Material.hat, 0.2)
        if not b.back:
            bx = 0.3 * head_rx if b.side else 0.0
            layer.trapezoid(Y(head_cy - head_ry * 0.42), Y(head_cy - head_ry * 0.28), X(bx), head_rx * 1.2 * s,
                            X(bx), head_rx * 1.2 * s, Material.hat, 0.0)


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
