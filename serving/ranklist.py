"""Rank-list images: the query and its top-k gallery hits in one row, torchreid style.

Each image is resized to a fixed tile and framed; when the query's person id is known, a hit's frame is
green if it is the same person and red if not (grey when either id is unknown). Under each tile a caption
gives rank and cosine score, then person id and camera. The PNG is written atomically.

    save_ranklist("me.jpg", gallery.search(query_embedding, k=10)[0], "out/me_top10.png", query_pid=12)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from PIL import Image, ImageDraw, ImageFont, ImageOps

from mult.data.images import load_image
from mult.errors import MultError
from mult.io import atomic_path, write_failure_as_error

if TYPE_CHECKING:
    from mult.serving.gallery import Hit

RGB = tuple[int, int, int]
GREEN: RGB = (0, 255, 0)
RED: RGB = (255, 0, 0)
UNKNOWN: RGB = (160, 160, 160)
QUERY: RGB = (0, 0, 0)
BACKGROUND: RGB = (255, 255, 255)
MISSING_TILE: RGB = (220, 220, 220)


@dataclass(frozen=True)
class RanklistStyle:
    """Geometry of a rank list (pixels). Defaults follow torchreid's 128x256 tiles and 10 px spacing."""

    tile_width: int = 128
    tile_height: int = 256
    border: int = 4
    spacing: int = 10
    query_gap: int = 40
    margin: int = 10
    caption_height: int = 34
    font_size: int = 12

    @property
    def cell_width(self) -> int:
        return self.tile_width + 2 * self.border

    @property
    def cell_height(self) -> int:
        return self.tile_height + 2 * self.border

    def canvas_size(self, hits: int) -> tuple[int, int]:
        """``(width, height)`` of a rank list with ``hits`` results."""
        width = 2 * self.margin + self.cell_width
        if hits:
            width += self.query_gap + hits * self.cell_width + (hits - 1) * self.spacing
        return width, 2 * self.margin + self.cell_height + self.caption_height

    def cell_origin(self, position: int) -> tuple[int, int]:
        """Top-left corner of a cell's frame: position 0 is the query, 1..k the hits."""
        x = self.margin
        if position > 0:
            x += self.cell_width + self.query_gap + (position - 1) * (self.cell_width + self.spacing)
        return x, self.margin


def _field(hit: Union["Hit", Mapping[str, Any]], name: str) -> Any:
    """A hit's field, from a :class:`~mult.serving.gallery.Hit` or its ``as_dict()`` form (e.g. parsed JSON)."""
    return hit[name] if isinstance(hit, Mapping) else getattr(hit, name)


def frame_colour(query_pid: Optional[int], hit_pid: Optional[int]) -> RGB:
    """Green for the same person, red for another one, grey when either id is unknown."""
    if query_pid is None or hit_pid is None:
        return UNKNOWN
    return GREEN if int(hit_pid) == int(query_pid) else RED


def frame_image(image: Image.Image, colour: RGB, border: int) -> Image.Image:
    """``image`` inside a ``border``-pixel frame of ``colour``: how a hit looks in rank lists and on the page."""
    return ImageOps.expand(image.convert("RGB"), border=int(border), fill=colour)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _tile(path: str, style: RanklistStyle) -> Image.Image:
    """The image resized to the tile; a grey 'missing' tile for a gallery image that can no longer be read."""
    try:
        image = load_image(path)
    except MultError:
        tile = Image.new("RGB", (style.tile_width, style.tile_height), MISSING_TILE)
        ImageDraw.Draw(tile).text((6, style.tile_height // 2 - 6), "missing", fill=(90, 90, 90), font=_font(style.font_size))
        return tile
    return image.resize((style.tile_width, style.tile_height), Image.BILINEAR)


def _paste_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, position: int, tile: Image.Image, colour: RGB,
                caption: Sequence[str], style: RanklistStyle, font: ImageFont.ImageFont) -> None:
    x, y = style.cell_origin(position)
    canvas.paste(frame_image(tile, colour, style.border), (x, y))
    line_height = style.caption_height // max(1, len(caption))
    for i, text in enumerate(caption):
        draw.text((x, y + style.cell_height + 2 + i * line_height), text, fill=(0, 0, 0), font=font)


def render_ranklist(query_path: Union[str, os.PathLike], hits: Sequence[Union["Hit", Mapping[str, Any]]], *,
                    query_pid: Optional[int] = None, query_caption: str = "query",
                    style: RanklistStyle = RanklistStyle()) -> Image.Image:
    """The rank-list image (query first, then the hits in rank order). MultError if the query cannot be read."""
    query_image = load_image(os.fspath(query_path)).resize((style.tile_width, style.tile_height), Image.BILINEAR)
    canvas = Image.new("RGB", style.canvas_size(len(hits)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(style.font_size)
    query_lines = [query_caption, "id ?" if query_pid is None else f"id {query_pid}"]
    _paste_cell(canvas, draw, 0, query_image, QUERY, query_lines, style, font)
    for position, hit in enumerate(hits, start=1):
        pid = _field(hit, "pid")
        lines = [f"#{_field(hit, 'rank')}  {float(_field(hit, 'score')):.3f}",
                 f"id {'?' if pid is None else pid} · cam {_field(hit, 'camid')}"]
        _paste_cell(canvas, draw, position, _tile(str(_field(hit, "path")), style), frame_colour(query_pid, pid),
                    lines, style, font)
    return canvas


def save_ranklist(query_path: Union[str, os.PathLike], hits: Sequence[Union["Hit", Mapping[str, Any]]],
                  out_png: Union[str, os.PathLike], *, query_pid: Optional[int] = None, query_caption: str = "query",
                  style: RanklistStyle = RanklistStyle()) -> Path:
    """Render the rank list and write it as a PNG at ``out_png`` (temporary name, then rename). Returns the path."""
    out = check_ranklist_path(out_png)
    image = render_ranklist(query_path, hits, query_pid=query_pid, query_caption=query_caption, style=style)
    try:
        with write_failure_as_error(out, "no rank list was written"), atomic_path(out) as tmp:
            image.save(tmp, format="PNG")
    except OSError as err:  # e.g. permissions, or the folder vanished: the temporary file is gone already
        raise MultError(f"{out}: cannot write the rank-list image ({err.strerror or type(err).__name__}); "
                        "choose another path") from None
    return out


def check_ranklist_path(out_png: Union[str, os.PathLike]) -> Path:
    """``out_png`` if a PNG can be written there, else one MultError line; cheap, so callers check first.

    Missing folders are fine: they are created, as for every path mult writes (:func:`mult.io.atomic_path`,
    ``mult train --out``, ``mult index build --out``). A file where a folder should be, or a folder where
    the file should be, is the user's mistake to fix.
    """
    out = Path(out_png).expanduser()
    if out.is_dir():
        raise MultError(f"{out}: is a folder; pass a file name for the rank-list image, e.g. {out / 'ranklist.png'}")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:  # the nearest folder that is already there
        existing = existing.parent
    if not existing.is_dir():
        raise MultError(f"{out}: cannot write the rank-list image there: {existing} is a file, not a folder; "
                        "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MultError(f"{out}: cannot write the rank-list image there: {existing} is not writable; "
                        "choose another path")
    return out
