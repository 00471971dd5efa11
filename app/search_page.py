"""``mult app``: the Gradio search page over a FAISS gallery (talks to mult.serving only).

Upload (or pick) a query photo, choose the direction, get the top-k gallery images with their rank, cosine
score, person id and camera. "visible → infrared" sends the query through the visible stem and ranks the
gallery's infrared images; "infrared → visible" the other way round. A gallery that holds one modality only
is searched whole either way (the page says so); the direction then only picks the query's stem. The "filters"
panel narrows the gallery (cameras, person id known or not, capture time) inside the FAISS search
(:class:`mult.serving.gallery.GalleryFilter`); the status line says how many images passed. "re-rank" re-orders
the index's top 100 by MULT's cross-modality k-reciprocal re-ranking (:mod:`mult.serving.gallery_rerank`).

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
    # filtered: cameras ticked, person id any/known/unknown, taken since / until (ISO 8601 or UNIX seconds)
    Client(...).predict(handle_file("me.jpg"), "visible → infrared", ["3", "6"], "unknown", "2026-12-03T20:00", "",
                        True, api_name="/search")                        # ... and re-ranked

Each hit's ``match`` is true or false when the query's person id is known (null otherwise).

Five-line use from Python::

    from mult.app.search_page import launch_app
    handle = launch_app("galleries/ir", local="model_repository")   # or server="127.0.0.1:8001"
    print(handle.url)                                                # http://127.0.0.1:7860/
    handle.close()

The search without Gradio (direction, upload checks, :class:`SearchService`) is :mod:`mult.app.search_service`;
the example queries and known identities are :mod:`mult.app.examples`. Their public names are importable from
here too.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from mult.app.examples import (  # noqa: F401  (re-exported: the page's public names live here too)
    N_EXAMPLES, ExampleSet, example_sets, folder_examples, gallery_dataset, gallery_examples, held_out_examples,
    spread_over_people,
)
from mult.app.search_service import (  # noqa: F401  (re-exported, as above)
    DEFAULT_DIRECTION, DIRECTIONS, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MISSING_TILE, SearchAnswer, SearchService,
    frame_width, match_summary, model_label, parse_direction, read_upload, upload_path,
)
from mult.errors import MultError
from mult.interrupts import sigterm_as_interrupt
from mult.io import PathLike
from mult.processes import exposure_note
from mult.serving.encoders import open_encoder
from mult.serving.gallery import Gallery, filter_from_options
from mult.serving.gallery_filter import IDENTITIES
from mult.serving.gallery_rerank import DEFAULT_TOP_N

log = logging.getLogger(__name__)

API_NAME = "search"
#: Gradio refuses larger uploads outright (its own 413); between the two the page explains the limit.
HARD_UPLOAD_BYTES = 4 * MAX_UPLOAD_BYTES
#: Searches run at once (the encoder batches on Triton anyway) and requests allowed to wait behind them.
CONCURRENCY = 2
QUEUE_SIZE = 16
#: Uploaded and result files in Gradio's cache are deleted after an hour (checked hourly).
CACHE_TTL_S = 3600
#: Result captions wrap instead of being cut to "#1 0.873 · id 1…" in narrow tiles.
PAGE_CSS = "#results .caption-label { white-space: normal; }"


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

    def run_search(upload: Any, direction: Optional[str], cameras: Optional[list] = None,
                   identity: Optional[str] = None, since: Optional[str] = None, until: Optional[str] = None,
                   rerank: bool = False):
        try:
            where = filter_from_options([int(c) for c in cameras or []], identity=identity, since=since, until=until)
            answer = service.search(upload, direction, where, rerank_top=DEFAULT_TOP_N if rerank else None)
        except MultError as err:  # a filter value the page cannot read: say which, as any other expected problem
            answer = SearchAnswer(status=f"⚠️ {err}", ok=False)
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
                rerank = gr.Checkbox(False, label=f"re-rank the top {DEFAULT_TOP_N} (MULT's cross-modality "
                                     "k-reciprocal re-ranking)", elem_id="rerank")
                with gr.Accordion("filters", open=False, elem_id="filters"):
                    cameras = gr.CheckboxGroup(sorted(gallery.info()["cameras"], key=int), value=[],
                                               label="cameras (none ticked: all)", elem_id="filter-cameras")
                    identity = gr.Radio(["any", *IDENTITIES], value="any", label="person id",
                                        elem_id="filter-identity")
                    since = gr.Textbox("", label="taken since", placeholder="2026-12-03T20:00 (local time)",
                                       elem_id="filter-since")
                    until = gr.Textbox("", label="taken until", placeholder="2026-12-04T06:00",
                                       elem_id="filter-until")
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
        gr.on([button.click, query.upload], run_search, inputs=[query, direction, cameras, identity, since, until, rerank],
              outputs=[results, status, hits],
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