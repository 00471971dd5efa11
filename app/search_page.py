"""``mult app``: the Gradio search page over a FAISS gallery (talks to mult.serving only).

Upload (or pick) a query photo, choose the direction, get the top-k gallery images with their rank, cosine
score, person id and camera. "visible → infrared" sends the query through the visible stem and ranks the
gallery's infrared images; "infrared → visible" the other way round. A gallery that holds one modality only
is searched whole either way (the page says so); the direction then only picks the query's stem.

When the query's person id is known, each hit is framed green (the same person) or red (another one), as in
rank lists (:mod:`mult.serving.ranklist`), its caption says so in words, and the status line says where the
first correct match ranks. The id is known for the example queries and for any image of the dataset the gallery
was built from (by path, or as an identical copy: :mod:`mult.serving.query_ids`); a real upload stays unframed.
For such a gallery the examples are photos of people in it, held out of it: for the demo's infrared SYSU-MM01
gallery, visible test images of its people (:func:`held_out_examples`).

The upload is checked before anything decodes it: file size first (:data:`MAX_UPLOAD_BYTES`), then type and
pixel count from the header (:data:`MAX_UPLOAD_PIXELS`, :func:`mult.data.images.load_image_bytes`). Every
expected problem (no image, not an image, too big, the model server down) is a one-line status on the page and
a toast, never a traceback. The search is an API endpoint (``api_name="search"``)::

    from gradio_client import Client, handle_file
    gallery, status, hits = Client("http://127.0.0.1:7860/").predict(
        handle_file("me.jpg"), "visible → infrared", api_name="/search")

Each hit's ``match`` is true or false when the query's person id is known (null otherwise).

Five-line use from Python::

    from mult.app.search_page import launch_app
    handle = launch_app("galleries/ir", local="model_repository")   # or server="127.0.0.1:8001"
    print(handle.url)                                                # http://127.0.0.1:7860/
    handle.close()
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from mult.data.images import DEFAULT_MAX_BYTES, load_image, load_image_bytes, resize_uint8, scan_image_files
from mult.data.records import Modality, Record
from mult.errors import MultError, ServerUnavailable
from mult.interrupts import sigterm_as_interrupt
from mult.processes import exposure_note
from mult.serving.encoders import open_encoder
from mult.serving.gallery import Gallery, Hit, check_same_model, encoder_info
from mult.serving.query_ids import KnownImages, source_records
from mult.serving.ranklist import frame_colour, frame_image

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger(__name__)

#: Direction label -> (the query's stem, the gallery modality it is matched against).
DIRECTIONS: dict[str, tuple[Modality, Modality]] = {
    "visible → infrared": (Modality.visible, Modality.infrared),
    "infrared → visible": (Modality.infrared, Modality.visible),
}
DEFAULT_DIRECTION = "visible → infrared"
API_NAME = "search"
#: Upload limits, checked before decoding: 20 MiB on disk, 20 Mpixel in the header.
MAX_UPLOAD_BYTES = DEFAULT_MAX_BYTES
MAX_UPLOAD_PIXELS = 20_000_000
#: Gradio refuses larger uploads outright (its own 413); between the two the page explains the limit.
HARD_UPLOAD_BYTES = 4 * MAX_UPLOAD_BYTES
#: Searches run at once (the encoder batches on Triton anyway) and requests allowed to wait behind them.
CONCURRENCY = 2
QUEUE_SIZE = 16
N_EXAMPLES = 4
#: Uploaded and result files in Gradio's cache are deleted after an hour (checked hourly).
CACHE_TTL_S = 3600
#: Result captions wrap instead of being cut to "#1 0.873 · id 1…" in narrow tiles.
PAGE_CSS = "#results .caption-label { white-space: normal; }"
#: Result tiles for images that vanished from disk since the gallery was built.
MISSING_TILE = (64, 128)


# ---- the search, without Gradio ---------------------------------------------------------------------------


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


def spread_over_people(records: Sequence[Record], n: int) -> list[Record]:
    """Up to ``n`` of ``records``, one per person id, the ids evenly spread over their sorted order.

    Each chosen person's image is taken at a different place in its own list (SYSU-MM01 lists a person camera by
    camera), so the picks also vary in camera. Deterministic: the same records give the same picks.
    """
    by_pid: dict[int, list[Record]] = {}
    for record in records:
        if record.pid is not None:
            by_pid.setdefault(int(record.pid), []).append(record)
    pids = sorted(by_pid)
    if not pids or n < 1:
        return []
    chosen = np.unique(np.linspace(0, len(pids) - 1, num=min(n, len(pids))).round().astype(int))
    picked = []
    for j, row in enumerate(chosen.tolist()):
        images = sorted(by_pid[pids[row]], key=lambda r: r.path)
        picked.append(images[(j * len(images)) // len(chosen)])
    return picked


def held_out_examples(gallery: Gallery, dataset: Sequence[Record], direction: str = DEFAULT_DIRECTION,
                      n: int = N_EXAMPLES) -> list[Record]:
    """Example queries for ``direction``: ``dataset`` images of its query modality, of people the search can find
    in the gallery, that are not in the gallery themselves. Up to ``n``, spread over people.

    ``dataset`` is what the gallery was built from (:func:`mult.serving.query_ids.source_records`). "People the
    search can find" are the ids of the gallery's images of the target modality (of all its images when it holds
    one modality, as the search then ranks them all). An example must be held out, or the demo would show an
    image finding itself: so an infrared SYSU-MM01 gallery, which holds every infrared test image, has visible
    examples only.
    """
    query_modality, target = parse_direction(direction)
    mixed = len(gallery.modalities) > 1
    findable = {r.pid for r in gallery.records if r.pid is not None and (not mixed or r.modality == target)}
    indexed = {os.path.abspath(r.path) for r in gallery.records}
    candidates = [r for r in dataset if r.modality == query_modality and r.pid in findable
                  and os.path.abspath(r.path) not in indexed and os.path.isfile(r.path)]
    return spread_over_people(candidates, n)


def gallery_examples(gallery: Gallery, n: int = N_EXAMPLES) -> list[Record]:
    """Up to ``n`` example queries from the gallery's own images, spread over distinct person ids: the fallback
    for a gallery that knows no dataset (a plain folder), which has no other images of its people to offer.

    Visible images when the gallery also holds infrared ones (queries for the default direction), else its
    images of the one modality it holds (which then find themselves). Files that are gone are skipped.
    """
    records = gallery.records
    if not records or n < 1:
        return []
    is_visible = np.fromiter((r.modality == Modality.visible for r in records), bool, len(records))
    candidates = np.flatnonzero(is_visible) if 0 < is_visible.sum() < len(records) else np.arange(len(records))
    picked: list[Record] = []
    seen: set[Optional[int]] = set()
    for row in np.unique(np.linspace(0, len(candidates) - 1, num=min(len(candidates), 8 * n)).astype(int)):
        record = records[int(candidates[row])]
        if (record.pid is None or record.pid not in seen) and os.path.isfile(record.path):
            seen.add(record.pid)
            picked.append(record)
            if len(picked) == n:
                break
    return picked


def gallery_dataset(gallery: Gallery) -> Optional[list[Record]]:
    """The records of the dataset the gallery was built from (:func:`source_records`), or None.

    None too when that dataset cannot be read any more (moved, say): the page then still works, like a page
    over a plain folder, and the log says why it knows no identities.
    """
    try:
        return source_records(gallery.manifest.get("source") or {})
    except MultError as err:
        log.warning("%s: no example queries or known identities from the gallery's dataset (%s)",
                    gallery.directory, err)
        return None


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


def folder_examples(folder: PathLike, n: int = N_EXAMPLES) -> list[str]:
    """The first ``n`` image files (sorted) directly inside ``folder`` (regular files only, so a FIFO named
    ``*.jpg`` is never opened)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MultError(f"{root}: no examples folder here; pass a folder of query images")
    return [str(root / name) for name in scan_image_files(root, recursive=False).files][:n]


@dataclass(frozen=True)
class ExampleSet:
    """Example queries shown together: label, element id, image paths, and the direction a click also sets
    (None: the click leaves the direction as it is)."""

    label: str
    elem_id: str
    paths: list[str]
    direction: Optional[str] = None


def example_sets(gallery: Gallery, examples: Union[None, PathLike, Sequence[PathLike]],
                 dataset: Optional[Sequence[Record]]) -> tuple[list[ExampleSet], KnownImages]:
    """The page's example queries, and the images whose person id the page knows.

    ``examples`` None: with the gallery's ``dataset`` (:func:`gallery_dataset`), one labelled set per direction
    that has held-out images (:func:`held_out_examples`; a click also sets the direction), and every image of the
    dataset is known; without one, the gallery's own images (:func:`gallery_examples`), known by its metadata.
    A folder takes its first images, a list is used as is, an empty list shows none; their ids are known only
    when they are images of the gallery's dataset.
    """
    known = KnownImages(dataset or [])
    if examples is not None:
        is_folder = isinstance(examples, (str, os.PathLike))
        paths = folder_examples(examples) if is_folder else [os.fspath(p) for p in examples]
        return ([ExampleSet("example queries", "examples", paths)] if paths else []), known
    if dataset is None:
        records = gallery_examples(gallery)
        sets = [ExampleSet("example queries (images from the gallery itself)", "examples", [r.path for r in records])]
        return (sets if records else []), KnownImages(records)
    sets = []
    for direction, (query_modality, _) in DIRECTIONS.items():
        records = held_out_examples(gallery, dataset, direction)
        if records:
            sets.append(ExampleSet(f"examples for {direction} ({query_modality.value} photos of people in the "
                                   "gallery)", f"examples-{query_modality.value}", [r.path for r in records],
                                   direction))
    return sets, known


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

    def _rank(self, embedding: np.ndarray, target: Modality) -> list[Hit]:
        """Top-k hits among the gallery's ``target`` images (all images when it holds one modality only).

        Searching k + (images of other modalities) deep guarantees k target hits survive the filter.
        """
        counts = self.gallery.modalities
        if len(counts) < 2 or counts.get(target.value, 0) == 0:
            return self.gallery.search(embedding, self.top_k)[0]
        others = len(self.gallery) - counts[target.value]
        hits = [h for h in self.gallery.search(embedding, self.top_k + others)[0] if h.modality == target.value]
        return [replace(h, rank=rank) for rank, h in enumerate(hits[:self.top_k], start=1)]

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
    def search(self, upload: Any, direction: Optional[str]) -> SearchAnswer:
        """Run one search; expected problems come back as ``ok=False`` with the message as status."""
        try:
            query_modality, target = parse_direction(direction)
            path, name = upload_path(upload)
            image = read_upload(path, name, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
            started = time.perf_counter()
            embedding = self._embed(image, query_modality)
            embed_s = time.perf_counter() - started
            self._refresh_gallery()
            started = time.perf_counter()
            hits = self._rank(embedding, target)
            search_s = time.perf_counter() - started
        except MultError as err:
            return SearchAnswer(status=f"⚠️ {err}", ok=False)
        query_pid = self.known.pid_of(path)
        held = self.gallery.modalities.get(target.value, 0) if len(self.gallery.modalities) > 1 else len(self.gallery)
        ranked = target.value if len(self.gallery.modalities) > 1 else "gallery"
        status = (f"top {len(hits)} of {held:,} {ranked} images (gallery {len(self.gallery):,}) · query `{name}` "
                  f"through the {query_modality.value} stem · embed {embed_s * 1e3:.0f} ms, search "
                  f"{search_s * 1e3:.1f} ms · model {model_label(self.encoder)}")
        if query_pid is not None:
            status = f"**{match_summary(query_pid, [h.pid for h in hits])}** · {status}"
        hit_rows = [{"rank": h.rank, "id": h.id, "score": round(h.score, 6), "pid": h.pid, "camid": h.camid,
                     "modality": h.modality, "file": os.path.basename(h.path),
                     "match": None if query_pid is None or h.pid is None else int(h.pid) == int(query_pid)}
                    for h in hits]
        return SearchAnswer([self._tile(h, query_pid) for h in hits], status, hit_rows)


# ---- the page ---------------------------------------------------------------------------------------------


def build_page(gallery_dir: Union[PathLike, Gallery], encoder: Any, *, top_k: int = 10,
               examples: Union[None, PathLike, Sequence[PathLike]] = None,
               max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS, about: str = ""):
    """The search page as a ``gr.Blocks`` (queued, API endpoint ``/search``); launch it with :func:`launch_app`.

    ``examples``: None picks photos of people in the gallery (held out of it when the gallery was built from a
    dataset), a folder takes its first images, a list is used as is, an empty list shows none
    (:func:`example_sets`). ``about``: Markdown shown under the gallery summary (what data and model these are,
    how accurate; ``mult demo`` states its SynthVI setting and measured accuracy there).
    """
    import gradio as gr

    gallery = gallery_dir if isinstance(gallery_dir, Gallery) else Gallery.open(gallery_dir)
    sets, known = example_sets(gallery, examples, gallery_dataset(gallery))
    service = SearchService(gallery, encoder, top_k=top_k, max_bytes=max_bytes, max_pixels=max_pixels, known=known)

    def run_search(upload: Any, direction: Optional[str]):
        try:
            answer = service.search(upload, direction)
        except Exception as err:  # a bug, not a user mistake: full traceback to the log, one line to the page
            log.exception("search failed")
            answer = SearchAnswer(status=f"⚠️ internal error ({type(err).__name__}); see the app's log", ok=False)
        if not answer.ok:
            gr.Warning(answer.status.removeprefix("⚠️ "))
        return answer.tiles, answer.status, answer.hits

    with gr.Blocks(title="mult · person search", analytics_enabled=False,
                   delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as page:
        gr.Markdown("## mult · visible ↔ infrared person search")
        gr.Markdown(service.summary(), elem_id="gallery-summary")
        if about:
            gr.Markdown(about, elem_id="about")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                query = gr.Image(label="query photo", type="filepath", sources=["upload", "clipboard"],
                                 image_mode=None, height=320, elem_id="query")
                direction = gr.Radio(list(DIRECTIONS), value=DEFAULT_DIRECTION, label="direction",
                                     elem_id="direction")
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                for example_set in sets:
                    if example_set.direction is None:
                        gr.Examples([[p] for p in example_set.paths], inputs=[query], label=example_set.label,
                                    elem_id=example_set.elem_id)
                    else:  # the hidden second column sets the direction the examples are for
                        gr.Examples([[p, example_set.direction] for p in example_set.paths], inputs=[query, direction],
                                    visible_columns=[0], label=example_set.label, elem_id=example_set.elem_id)
            with gr.Column(scale=3):
                results = gr.Gallery(label=f"top {service.top_k}", columns=5, object_fit="contain",
                                     format="png", interactive=False, elem_id="results")
                status = gr.Markdown("Upload a photo of a person, choose the direction, press Search.",
                                     label="status", elem_id="status")
                with gr.Accordion("hits (JSON)", open=False):
                    hits = gr.JSON(label="hits", elem_id="hits")
        # preprocess=False: the handler gets the upload's path unopened, so size and type are checked before
        # any decoding (Gradio's own Image preprocessing would open the file first).
        gr.on([button.click, query.upload], run_search, inputs=[query, direction], outputs=[results, status, hits],
              api_name=API_NAME, preprocess=False, concurrency_limit=CONCURRENCY)
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    page.mult_service = service  # for callers that want the gallery / encoder behind a page
    return page


def page_theme():
    """Gradio's default look with system fonts: the page makes no requests to font CDNs (works offline)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


@dataclass
class AppHandle:
    """A running page: its URL, the Gradio Blocks and the encoder it owns. ``close()`` stops both."""

    url: str
    blocks: Any
    encoder: Any
    share_url: Optional[str] = None

    def close(self) -> None:
        try:
            self.blocks.close()
        finally:
            self.encoder.close()

    def __enter__(self) -> "AppHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch_app(gallery_dir: PathLike, *, server: Optional[str] = None, local: Optional[PathLike] = None,
               host: str = "127.0.0.1", port: Optional[int] = 7860, top_k: int = 10, share: bool = False,
               open_browser: bool = False, examples: Union[None, PathLike, Sequence[PathLike]] = None,
               quiet: bool = True, about: str = "") -> AppHandle:
    """Open the encoder (``server`` gRPC URL or ``local`` model repository) and the gallery, and serve the page
    on ``host:port`` in a background thread. Returns an :class:`AppHandle`; call ``close()`` when done."""
    import gradio as gr  # noqa: F401  (fail here, before the encoder opens, when gradio is missing)

    encoder = open_encoder(server=server, local=local)
    try:
        page = build_page(gallery_dir, encoder, top_k=top_k, examples=examples, about=about)
        try:
            _, url, share_url = page.launch(
                server_name=host, server_port=port, share=share, inbrowser=open_browser, prevent_thread_lock=True,
                quiet=quiet, show_error=False, max_file_size=HARD_UPLOAD_BYTES, theme=page_theme(), css=PAGE_CSS,
                footer_links=["api"])
        except OSError:  # Gradio's "Cannot find empty port in range: ..." (or an address it cannot bind)
            page.close()
            raise MultError(f"cannot serve the page on {host}:{port}: the port is in use or the address is not "
                            "on this machine; choose another --port (or --host), or stop what uses it") from None
    except BaseException:
        encoder.close()
        raise
    return AppHandle(url, page, encoder, share_url)


def run_app(gallery_dir: PathLike, *, server: Optional[str] = None, local: Optional[PathLike] = None,
            host: str = "127.0.0.1", port: int = 7860, top_k: int = 10, share: bool = False,
            open_browser: bool = False, examples: Union[None, PathLike, Sequence[PathLike]] = None,
            echo: Callable[[str], None] = print) -> int:
    """``mult app``: serve the page until Ctrl-C / SIGTERM, then stop cleanly. Returns 0."""
    handle = launch_app(gallery_dir, server=server, local=local, host=host, port=port, top_k=top_k, share=share,
                        open_browser=open_browser, examples=examples)
    with sigterm_as_interrupt():
        try:
            echo(f"search page at {handle.url}" + (f" (public link {handle.share_url})" if handle.share_url else ""))
            echo("  " + re.sub(r"[*`]", "", handle.blocks.mult_service.summary().splitlines()[0]))
            note = exposure_note(host, "the page")
            if note:
                echo(f"  {note}")
            echo("Press Ctrl-C to stop.")
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            echo("Stopping the search page...")
            return 0
        finally:
            handle.close()
