"""The search page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): load the page,
upload a query through the file input, and see the result gallery, captions, status line and warnings render.

``MULT_SCREENSHOT=docs/app_screenshot.png pytest tests/test_app_browser.py`` also saves a screenshot of the page
with results (the demo screenshot).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import write_crops
from mult.app.browser import CHROMIUM, TIMEOUT_MS, loaded_results, open_page, screenshot, upload_query
from mult.app.search_page import launch_app
from mult.serving.gallery import build_gallery, records_for_gallery
from mult.serving.onnx_local import OnnxEncoder
from mult.serving.triton_server import free_port

TOP_K = 5
CAPTION = re.compile(r"^#\d+ \d\.\d{3} · id \d+ · cam \d+$")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: install it with "
                                "`apt-get install -y chromium chromium-driver` (and `pip install playwright`)")


@pytest.fixture(scope="module")
def app(tiny_export, tmp_path_factory):
    """The page over 9 infrared crops (3 ids x 3) embedded with the tiny exported model, on a free port."""
    base = tmp_path_factory.mktemp("browser_app")
    write_crops(base / "ir", (3, 7, 12), per_pid=3, seed=0)
    with OnnxEncoder(tiny_export.repo) as encoder:
        build_gallery(records_for_gallery(images_dir=base / "ir", modality="infrared"), encoder, base / "gallery",
                      progress=False)
    with launch_app(base / "gallery", local=tiny_export.repo, port=free_port(), top_k=TOP_K) as handle:
        yield handle, base


@pytest.fixture(scope="module")
def page(app):
    with open_page(app[0].url) as tab:
        yield tab


def wait_status(tab, text: str) -> str:
    tab.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                          timeout=TIMEOUT_MS)
    return tab.locator("#status").inner_text()


def test_upload_search_and_messages_in_chromium(page, app):
    _, base = app
    assert "holds only infrared images" in page.locator("#gallery-summary").inner_text()

    # Upload through the file input: the upload itself runs the search (infrared stem: the image finds itself).
    upload_query(page, base / "ir" / "0007" / "1.png", "infrared → visible")
    loaded_results(page, TOP_K)
    captions = page.locator("#results .caption-label").all_inner_texts()
    assert len(captions) == TOP_K and all(CAPTION.match(c) for c in captions), captions
    assert captions[0] == "#1 1.000 · id 7 · cam 0"
    status = wait_status(page, "infrared stem")
    assert "top 5 of 9 gallery images" in status and "1.png" in status
    shot = os.environ.get("MULT_SCREENSHOT")
    if shot:
        screenshot(page, Path(shot))

    # An example from the gallery, the other direction, the Search button.
    page.get_by_label("visible → infrared").check()
    page.locator("#examples button.gallery-item").first.click()
    page.locator("#search-button").click()
    wait_status(page, "visible stem")
    loaded_results(page, TOP_K)

    # No image, then a file that is not an image: one clear line in the status and a warning toast.
    page.locator("#query button[aria-label='Remove Image']").click()
    page.locator("#search-button").click()
    assert wait_status(page, "no query image").startswith("⚠️")
    page.locator(".toast-body", has_text="no query image").first.wait_for()
    assert page.locator("#results .thumbnail-item img").count() == 0
    junk = base / "notes.png"
    junk.write_text("not a picture\n")
    page.locator("#query input[type=file]").set_input_files(str(junk))
    assert "notes.png: not a readable image" in wait_status(page, "not a readable image")
    assert "Traceback" not in page.content()
