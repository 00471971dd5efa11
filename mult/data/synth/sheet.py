"""Contact sheets: a grid of SynthVI images (rows: identities; columns: cameras) for eyeballing the data.

The images come from the same keyed pipeline as :func:`~mult.data.synth.synthesize` (before JPEG/BMP
encoding), so a sheet shows what the dataset files contain.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw

from mult.data.synth.cameras import sysu_cameras
from mult.data.synth.identity import sample_identity
from mult.data.synth.render import render_keyed
from mult.data.synth.scene import background_canvas

# Visible cameras first, then infrared, so the modality boundary is one vertical line.
SHEET_CAMERAS = (1, 2, 4, 5, 3, 6)


def contact_sheet(pids: Sequence[int], *, seed: int = 0, height: int = 288, width: int = 144,
                  images: int = 1, tile: tuple[int, int] = (96, 48)) -> Image.Image:
    """One row per identity, ``images`` per SYSU camera (visible cams 1, 2, 4, 5 then infrared 3, 6), each
    resized to ``tile`` (height, width), with camera labels on top."""
    cameras = sysu_cameras(seed, height, width)
    canvases = {camid: background_canvas(cameras[camid], seed) for camid in SHEET_CAMERAS}
    th, tw = tile
    label = 12
    sheet = Image.new("RGB", (tw * images * len(SHEET_CAMERAS), label + th * len(pids)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, camid in enumerate(SHEET_CAMERAS):
        draw.text((column * images * tw + 2, 0), f"cam{camid}", fill=(0, 0, 0))
    for row, pid in enumerate(pids):
        who = sample_identity(seed, pid)
        for column, camid in enumerate(SHEET_CAMERAS):
            for k in range(images):
                camera = cameras[camid]
                pixels = render_keyed(who, camera, canvases[camid], seed, k + 1, camera.key)
                sheet.paste(Image.fromarray(pixels).resize((tw, th), Image.BILINEAR),
                            ((column * images + k) * tw, label + row * th))
    return sheet
