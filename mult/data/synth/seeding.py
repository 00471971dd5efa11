"""Independent, reproducible random streams for every latent and nuisance variable.

Each stream is keyed by a tag (what it is for) plus integers (seed, pid, camera, image index), so an image
depends only on its own keys: the files are identical whatever the number of workers or the order in which
images are rendered, and adding identities never changes the images of the existing ones.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a random stream drives. The tag leads the key, so streams of different kinds never collide."""

    identity = 1  # an identity's fixed appearance (build, clothes, colours, heat)
    camera = 2  # a camera's sensor and scene parameters
    scene = 3  # a camera's background canvas
    pose = 4  # per image geometry: view, walking phase, scale, position, crop, occluder
    sensor = 5  # per image photometry: illumination, blur, noise
    plan = 6  # which identity is seen by which camera, and how many images
    split = 7  # train/val/test id splits (RegDB: one stream per split)


def stream(kind: Stream, seed: int, *keys: int) -> np.random.Generator:
    """A generator for ``kind`` keyed by ``seed`` and ``keys`` (all non-negative integers)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(kind), int(seed), *map(int, keys)])))
