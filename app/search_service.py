"""The search behind the page, without Gradio: the direction, the upload checks and :class:`SearchService`.

The upload is checked before anything decodes it: file size first (:data:`MAX_UPLOAD_BYTES`), then type and
pixel count from the header (:data:`MAX_UPLOAD_PIXELS`, :func:`mult.data.images.load_image_bytes`). Every
expected problem (no image, not an image, too big, the model server down) comes back as one line
(``SearchAnswer.ok`` false), never a traceback. The page itself is :mod:`mult.app.search_page`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from mult.data.images import DEFAULT_MAX_BYTES, load_image, load_image_bytes, resize_uint8
from mult.data.records import Modality
from mult.errors import MultError, ServerUnavailable
from mult.serving.gallery import Gallery, GalleryFilter, Hit, check_same_model, encoder_info
from mult.serving.gallery_rerank import cross_modality_hits
from mult.serving.query_ids import KnownImages
from mult.serving.ranklist import frame_colour, frame_image

#: Direction label -> (the query's stem, the gallery modality it is matched against).
DIRECTIONS: dict[str, tuple[Modality, Modality]] = {
    "visible → infrared": (Modality.visible, Modality.infrared),
    "infrared → visible": (Modality.infrared, Modality.visible),
}
DEFAULT_DIRECTION = "visible → infrared"
#: Upload limits, checked before decoding: 20 MiB on disk, 20 Mpixel in the header.
MAX_UPLOAD_BYTES = DEFAULT_MAX_BYTES
MAX_UPLOAD_PIXELS = 20_000_000
#: Result tiles for images that vanished from disk since the gallery was built.
MISSING_TILE = (64, 128)


def parse_direction(direction: Optional[str]) -> tuple[Modality, Modality]:
    """``"visible → infrared"`` -> (visible, infrared); anything else is a MultError listing the choices."""
    if direction is None or direction == "":
        direction = DEFAULT_DIRECTION
    try:
        return DIRECTIONS[str(direction).strip()]
    except KeyError:
        raise MultError(f"unknown direction {direction!r}; use one of: {', '.join(DIRECTIONS)}") from None


def upload_path(upload: Any) -> tuple[str, str]:
    """(path on this machine, name to show) of an upload: a Gradio FileData dict/object or a plain path."""
    if isinstance(upload, dict):
        path, name = upload.get("path"), upload.get("orig_name")
    elif isinstance(upload, (str, os.PathLike)):
        path, name = os.fspath(upload), None
    else:
        path, name = getattr(upload, "path", None), getattr(upload, "orig_name", None)
    if not path:
        raise MultError("no query image: upload a photo of a person (or pick an example), then search")
    path = os.fspath(path)
    # The name comes from the user's browser: only a short, plain version of it is ever shown on the page.
    shown = re.sub(r"[^\w.\- ]", "_", os.path.basename(str(name or path)))[:80] or "upload"
    if not os.path.isfile(path):
        raise MultError(f"{shown}: the upload is gone from the server; upload it again")
    return path, shown


def read_upload(path: str, name: str, *, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """The upload as RGB, after checking its size on disk, then its type and pixel count, before decoding."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise MultError(f"{name}: the file is {size:,} bytes, above the upload limit of {max_bytes:,} bytes "
                        f"({max_bytes / 2**20:g} MB); upload a smaller photo (a person crop is well under 1 MB)")
    with open(path, "rb") as handle:
        data = handle.read()
    return load_image_bytes(data, name, max_bytes=max_bytes, max_pixels=max_pixels)


def model_label(encoder: Any) -> str:
    """``"mult v1 · ONNX Runtime in-process"`` / ``"mult (newest) · Triton at 127.0.0.1:8001"`` for the status."""
    version = getattr(encoder, "version", None)
    shown = f"v{version}" if version not in (None, "") else "(newest)"
    url = getattr(encoder, "url", None)
    where = f"Triton at {url}" if url else "ONNX Runtime in-process"
    return f"mult {shown} · {getattr(encoder, 'embedding_size', '?')}-d · {where}"


def match_summary(query_pid: int, hit_pids: Sequence[Optional[int]]) -> str:
    """``"person 7: first correct match at rank 2 of 10"`` or ``"person 7: no correct match in the top 10"``."""
    rank = next((i for i, pid in enumerate(hit_pids, start=1) if pid is not None and int(pid) == int(query_pid)),
                None)
    if rank is None:
        return f"person {query_pid}: no correct match in the top {len(hit_pids)}"
    return f"person {query_pid}: first correct match at rank {rank} of {len(hit_pids)}"


def frame_width(image: Image.Image) -> int:
    """Width in pixels of a result tile's frame: thick enough to see once Gradio scales the image into its tile
    (1/16 of the shorter side, at least 3 pixels)."""
    return max(3, min(image.size) // 16)


@dataclass
class SearchAnswer:
    """What one search shows: result tiles ``(image, caption)``, the status line and the hits as plain dicts."""

    tiles: list[tuple[Image.Image, str]] = field(default_factory=list)
    status: str = ""
    hits: list[dict[str, Any]] = field(default_factory=list)
    ok: bool = True


class SearchService:
    """Query photo -> embedding through the chosen stem -> top-k of the gallery's other modality.

    Shared by all page sessions: the gallery is read-only here and both encoders are thread-safe. Each search
    first takes up a newer version of the gallery if `mult index add` wrote one since.
    """

    def __init__(self, gallery: Gallery, encoder: Any, *, top_k: int = 10, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_UPLOAD_PIXELS, known: Optional[KnownImages] = None) -> None:
        if isinstance(top_k, bool) or int(top_k) < 1:
            raise MultError(f"--top-k {top_k!r} must be a positive integer")
        check_same_model(gallery.manifest.get("model", {}), encoder_info(encoder), gallery.directory)
        self.gallery = gallery
        self.encoder = encoder
        self.top_k = int(top_k)
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.known = known if known is not None else KnownImages([])  # images whose person id is known

    # -- pieces --
    def summary(self) -> str:
        """One markdown paragraph about the gallery, with the single-modality note when it applies."""
        counts = self.gallery.modalities
        held = ", ".join(f"{n:,} {m}" for m, n in counts.items()) or "no images"
        text = (f"**Gallery** `{self.gallery.directory.name}`: {len(self.gallery):,} images ({held}) · "
                f"model {model_label(self.encoder)} · top {self.top_k}")
        if len(counts) == 1:
            only = next(iter(counts))
            text += (f"\n\n*This gallery holds only {only} images: every search ranks all of them; the direction "
                     "only picks the stem the query goes through.*")
        return text

    def _embed(self, image: Image.Image, modality: Modality) -> np.ndarray:
        pixels = resize_uint8(image, self.encoder.height, self.encoder.width)
        try:
            return self.encoder.encode_array(pixels[None], modality)
        except ServerUnavailable:
            url = getattr(self.encoder, "url", "")
            port = url.rsplit(":", 1)[-1]
            raise MultError(f"the model server at {url} is not answering; start it with `mult serve --repo "
                            f"model_repository --grpc-port {port}` and search again") from None

    def _refresh_gallery(self) -> None:
        try:
            self.gallery = self.gallery.latest()
        except MultError:
            pass  # caught mid-update (or broken on disk): the version in memory still answers correctly

    @staticmethod
    def _tile(hit: Hit, query_pid: Optional[int] = None) -> tuple[Image.Image, str]:
        """The hit's image and caption; framed green/red, and the caption saying so, when the query's id is known."""
        try:
            image, caption = load_image(hit.path), hit.caption
        except MultError:
            image, caption = Image.new("RGB", MISSING_TILE, (128, 128, 128)), f"{hit.caption} · file missing"
        if query_pid is None:
            return image, caption
        if hit.pid is not None:  # in words too: the colours alone say nothing to a colour-blind user
            caption += " · ✓ same person" if int(hit.pid) == int(query_pid) else " · ✗ another person"
        return frame_image(image, frame_colour(query_pid, hit.pid), frame_width(image)), caption

    # -- the whole search --
    def search(self, upload: Any, direction: Optional[str], where: Optional[GalleryFilter] = None,
               rerank_top: Optional[int] = None) -> SearchAnswer:
        """Run one search among the gallery images ``where`` lets through (all when None), re-ranking the index's
        top ``rerank_top`` when given; expected problems come back as ``ok=False`` with the message as status."""
        where = where or GalleryFilter()
        try:
            query_modality, target = parse_direction(direction)
            path, name = upload_path(upload)
            image = read_upload(path, name, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
            started = time.perf_counter()
            embedding = self._embed(image, query_modality)
            embed_s = time.perf_counter() - started
            self._refresh_gallery()
            started = time.perf_counter()
            hits = cross_modality_hits(self.gallery, embedding, self.top_k, query_modality, target, where=where,
                                       rerank_top=rerank_top)
            search_s = time.perf_counter() - started
        except MultError as err:
            return SearchAnswer(status=f"⚠️ {err}", ok=False)
        query_pid = self.known.pid_of(path)
        held = self.gallery.modalities.get(target.value, 0) if len(self.gallery.modalities) > 1 else len(self.gallery)
        ranked = target.value if len(self.gallery.modalities) > 1 else "gallery"
        if where.active:  # how many images the filter left to rank, and what it asked
            modality = target if len(self.gallery.modalities) > 1 else None
            held = int(self.gallery.filter_mask(where.with_modality(modality)).sum())
            ranked += f" images passing the filter ({where.describe()}),"
        else:
            ranked += " images"
        reranked = f" including re-ranking the top {rerank_top}" if rerank_top else ""
        status = (f"top {len(hits)} of {held:,} {ranked} (gallery {len(self.gallery):,}) · query `{name}` "
                  f"through the {query_modality.value} stem · embed {embed_s * 1e3:.0f} ms, search "
                  f"{search_s * 1e3:.1f} ms{reranked} · model {model_label(self.encoder)}")
        if query_pid is not None:
            status = f"**{match_summary(query_pid, [h.pid for h in hits])}** · {status}"
        hit_rows = [{"rank": h.rank, "id": h.id, "score": round(h.score, 6), "pid": h.pid, "camid": h.camid,
                     "modality": h.modality, "file": os.path.basename(h.path),
                     "match": None if query_pid is None or h.pid is None else int(h.pid) == int(query_pid),
                     **({} if h.distance is None else {"reranked_distance": round(h.distance, 6)})}
                    for h in hits]
        return SearchAnswer([self._tile(h, query_pid) for h in hits], status, hit_rows)

