"""Identities: the fixed latent appearance of one synthetic person.

An identity is drawn once from ``(seed, pid)`` and never changes between images or cameras. It fixes the
body build, the clothing layout and pattern, the accessories, a visible albedo per material and, separately,
an infrared "heat" per material. Heat is drawn independently of colour (it stands for emissivity and fabric
thickness), so infrared intensity cannot be predicted from visible colour; only shape, layout, pattern and
accessories carry over between modalities. ``heat_from_colour`` (0 by default) narrows that gap for controlled
experiments: it mixes each non-skin material's heat towards a function of its visible luminance.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

import numpy as np

from mult.data.synth.seeding import Stream, stream


class Material(IntEnum):
    """Index of a material in the per-image material map; row of the colour and heat tables."""

    background = 0
    skin = 1
    hair = 2
    upper = 3
    upper_alt = 4  # the second colour of a patterned upper garment
    lower = 5
    shoes = 6
    bag = 7
    hat = 8
    occluder = 9  # per image: an object or a passer-by in front of the person


N_MATERIALS = len(Material)


class Pattern(str, Enum):
    solid = "solid"
    hstripes = "horizontal stripes"
    vstripes = "vertical stripes"
    checks = "checks"
    logo = "logo"
    two_tone = "two-tone"


class Sleeve(str, Enum):
    long = "long"
    short = "short"
    none = "sleeveless"


class Lower(str, Enum):
    trousers = "trousers"
    shorts = "shorts"
    skirt = "skirt"


class Hair(str, Enum):
    short = "short"
    long = "long"
    bald = "bald"


# Clothing colours (RGB in [0, 1]) with how common they are; dark and neutral dominate, as in surveillance
# footage. Colours are drawn after all geometry, so editing the palettes never changes anyone's build or clothes.
_GARMENT_COLOURS = np.array(
    [
        (0.07, 0.07, 0.08), (0.24, 0.24, 0.26), (0.50, 0.50, 0.52), (0.90, 0.90, 0.88),
        (0.10, 0.13, 0.33), (0.15, 0.30, 0.70), (0.50, 0.65, 0.85), (0.25, 0.35, 0.55),
        (0.75, 0.12, 0.12), (0.45, 0.08, 0.10), (0.90, 0.55, 0.65), (0.90, 0.50, 0.10),
        (0.92, 0.82, 0.20), (0.15, 0.50, 0.20), (0.40, 0.42, 0.20), (0.70, 0.62, 0.45),
        (0.40, 0.26, 0.15), (0.40, 0.20, 0.55), (0.10, 0.50, 0.50),
    ],
    dtype=np.float32,
)
_GARMENT_WEIGHTS = np.array([4, 2, 1.5, 2, 2, 1.5, 1, 1.5, 1, 0.7, 0.7, 0.5, 0.6, 0.7, 0.6, 1, 0.8, 0.5, 0.4])
_HAIR_COLOURS = np.array(
    [(0.05, 0.04, 0.04), (0.20, 0.12, 0.08), (0.40, 0.26, 0.15), (0.80, 0.68, 0.40), (0.62, 0.62, 0.62),
     (0.55, 0.15, 0.10)],
    dtype=np.float32,
)
_HAIR_WEIGHTS = np.array([4, 3, 1, 0.5, 0.4, 0.2])
_SKIN_LIGHT = np.array([0.95, 0.80, 0.70], dtype=np.float32)
_SKIN_DARK = np.array([0.33, 0.21, 0.14], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Identity:
    """Fixed appearance of one person. Lengths are in body-height units (0 = top of head, 1 = soles)."""

    pid: int
    gender: str  # "male" | "female" (RegDB file names carry it; it shifts build, hair and clothing odds)
    head: float  # head size factor
    shoulder: float  # shoulder half-width
    waist: float  # waist half-width
    hip: float  # hip half-width
    girth: float  # limb thickness factor (thin .. heavy)
    leg: float  # leg length (hip height above the soles)
    hair: Hair
    sleeve: Sleeve
    lower: Lower
    hem: float  # where the upper garment ends (longer for coats)
    skirt_length: float
    pattern: Pattern
    pattern_period: float  # stripe/check period
    pattern_split: float  # two-tone split height, logo size
    backpack: bool
    shoulder_bag: bool
    bag_side: int  # +1 / -1: which hip the shoulder bag hangs on
    hat: bool
    colours: np.ndarray  # [N_MATERIALS, 3] visible albedo (occluder row is set per image)
    heat: np.ndarray  # [N_MATERIALS] infrared intensity before the camera's response

    def describe(self) -> dict[str, object]:
        """A JSON-able summary of the discrete attributes (for docs and debugging)."""
        return {
            "pid": self.pid, "gender": self.gender, "hair": self.hair.value, "sleeve": self.sleeve.value,
            "lower": self.lower.value, "pattern": self.pattern.value, "backpack": self.backpack,
            "shoulder_bag": self.shoulder_bag, "hat": self.hat,
        }


def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def _garment_colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A palette colour with a small per-identity tint; ``avoid`` keeps a pattern's two colours apart."""
    for _ in range(8):
        base = _GARMENT_COLOURS[_pick(rng, _GARMENT_WEIGHTS)]
        if avoid is None or np.abs(base - avoid).sum() > 0.45:
            break
    tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32) * rng.uniform(0.85, 1.1)
    return np.clip(base * tint, 0.02, 0.98)


#: Materials whose heat ``heat_from_colour`` ties to their visible luminance (skin stays the hottest thing).
COUPLED_MATERIALS = (Material.hair, Material.upper, Material.upper_alt, Material.lower, Material.shoes,
                     Material.bag, Material.hat)


def luminance_heat(colour: np.ndarray) -> float:
    """The heat a material would have if it followed its visible luminance (Rec. 601), within clothing's range."""
    return 0.3 + 0.5 * float(np.dot(colour.clip(0.0, 1.0), (0.299, 0.587, 0.114)))


def sample_identity(seed: int, pid: int, heat_from_colour: float = 0.0) -> Identity:
    """Draw identity ``pid``'s fixed appearance from its own stream of ``seed``.

    ``heat_from_colour`` in [0, 1] mixes the independent heat of each material in ``COUPLED_MATERIALS`` with
    ``luminance_heat`` of its colour (0: the default, independent; 1: infrared follows visible luminance).
    The random draws are the same for every value, so only the infrared images change."""
    rng = stream(Stream.identity, seed, pid)
    female = bool(rng.random() < 0.5)
    # Geometry first, colours after, so the two kinds of draw stay aligned across versions of the palettes.
    head = rng.uniform(0.9, 1.12)
    girth = rng.uniform(0.85, 1.3)
    shoulder = (rng.uniform(0.095, 0.118) if female else rng.uniform(0.11, 0.14)) * (0.8 + 0.2 * girth)
    waist = (rng.uniform(0.068, 0.08) if female else rng.uniform(0.075, 0.09)) * girth
    hip = (rng.uniform(0.088, 0.112) if female else rng.uniform(0.082, 0.1)) * (0.75 + 0.25 * girth)
    leg = rng.uniform(0.46, 0.52)
    hair = [Hair.short, Hair.long, Hair.bald][_pick(rng, np.array([0.36, 0.64, 0.0] if female else [0.74, 0.1, 0.16]))]
    sleeve = [Sleeve.long, Sleeve.short, Sleeve.none][_pick(rng, np.array([0.45, 0.43, 0.12]))]
    lower_odds = [0.5, 0.15, 0.35] if female else [0.8, 0.2, 0.0]
    lower = [Lower.trousers, Lower.shorts, Lower.skirt][_pick(rng, np.array(lower_odds))]
    coat = rng.random() < 0.12
    hem = rng.uniform(0.64, 0.74) if coat else rng.uniform(0.5, 0.58)
    skirt_length = rng.uniform(0.12, 0.24)
    pattern = list(Pattern)[_pick(rng, np.array([0.42, 0.12, 0.08, 0.1, 0.16, 0.12]))]
    pattern_period = rng.uniform(0.03, 0.07)
    pattern_split = rng.uniform(0.3, 0.4) if pattern is Pattern.two_tone else rng.uniform(0.035, 0.06)
    backpack = bool(rng.random() < 0.3)
    shoulder_bag = bool(rng.random() < (0.3 if female else 0.15))
    bag_side = 1 if rng.random() < 0.5 else -1
    hat = bool(rng.random() < 0.12)

    colours = np.zeros((N_MATERIALS, 3), np.float32)
    colours[Material.skin] = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.beta(1.3, 1.6)
    colours[Material.skin] *= rng.uniform(0.95, 1.05, size=3)
    colours[Material.hair] = _HAIR_COLOURS[_pick(rng, _HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
    colours[Material.upper] = _garment_colour(rng)
    colours[Material.upper_alt] = _garment_colour(rng, avoid=colours[Material.upper])
    colours[Material.lower] = _garment_colour(rng)
    colours[Material.shoes] = _garment_colour(rng) * rng.uniform(0.4, 1.0)
    colours[Material.bag] = _garment_colour(rng) * rng.uniform(0.5, 1.0)
    colours[Material.hat] = _garment_colour(rng)

    heat = np.zeros(N_MATERIALS, np.float32)
    heat[Material.skin] = rng.uniform(0.82, 0.96)  # exposed skin is the hottest thing in the frame
    heat[Material.hair] = rng.uniform(0.35, 0.55)
    heat[Material.upper] = rng.uniform(0.38, 0.8)  # emissivity/thickness: unrelated to the visible colour
    # A pattern's two fabrics differ a little in emissivity, so the pattern survives as weak texture.
    heat[Material.upper_alt] = heat[Material.upper] + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.12)
    heat[Material.lower] = rng.uniform(0.35, 0.75)
    heat[Material.shoes] = rng.uniform(0.2, 0.45)
    heat[Material.bag] = rng.uniform(0.15, 0.4)  # carried items are not body-warmed: a cold silhouette
    heat[Material.hat] = rng.uniform(0.3, 0.6)
    if heat_from_colour:
        for material in COUPLED_MATERIALS:
            heat[material] = (1 - heat_from_colour) * heat[material] + heat_from_colour * luminance_heat(colours[material])

    return Identity(
        pid=pid, gender="female" if female else "male", head=head, shoulder=shoulder, waist=waist, hip=hip,
        girth=girth, leg=leg, hair=hair, sleeve=sleeve, lower=lower, hem=hem, skirt_length=skirt_length,
        pattern=pattern, pattern_period=pattern_period, pattern_split=pattern_split, backpack=backpack,
        shoulder_bag=shoulder_bag, bag_side=bag_side, hat=hat, colours=colours, heat=np.clip(heat, 0.0, 1.0),
    )
