"""The search page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): load the page,
upload a query through the file input, and see the result gallery, captions, status line and warnings render;
over a gallery built from a (tiny) SYSU-MM01 tree, click a visible example and see each hit framed green or red
in the pixels the browser paints.

``MULT_SCREENSHOT=docs/app_screenshot.png pytest tests/test_app_browser.py`` also saves a screenshot of the page
with results (the demo screenshot).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import build_sysu_tree, write_crops
from mult.app.browser import (CHROMIUM, TIMEOUT_MS, choose_example, loaded_results, open_page, result_frames,
                              screenshot, upload_query)
from mult.app.search_page import gallery_dataset, held_out_examples, launch_app
from mult.serving.gallery import Gallery, build_gallery, records_for_gallery
from mult.serving.gallery_commands import index_build
from mult.serving.onnx_local import OnnxEncoder
from mult.serving.triton_server import free_port

TOP_K = 5
CAPTION = re.compile(r"^#\d+ \d\.\d{3} · id \d+ · cam \d+$")
KNOWN_CAPTION = re.compile(r"^#(\d+) \d\.\d{3} · id (\d+) · cam \d+ · (✓ same person|✗ another person)$")
#: Infrared images of the tiny SYSU-MM01 tree's test ids 2, 4, 6 (conftest.build_sysu_tree): the whole gallery.
SYSU_IR_IMAGES = 18

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


@pytest.fixture
def page(app):
    """A Chromium tab on the page, for one test (Playwright's sync API runs one browser session at a time)."""
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


@pytest.fixture(scope="module")
def sysu_app(tiny_export, tmp_path_factory):
    """The page over the infrared test images of a tiny SYSU-MM01 tree, as `mult demo` builds its gallery, showing
    every gallery image per search: whatever the (random) model ranks first, the query's person is among them."""
    base = tmp_path_factory.mktemp("browser_sysu")
    tree = build_sysu_tree(base / "SYSU-MM01", train=(1,), val=(3,), test=(2, 4, 6))
    with OnnxEncoder(tiny_export.repo) as encoder:
        index_build(encoder, base / "gallery", dataset="sysu", data_root=tree.root, modality="infrared",
                    progress=False)
    with launch_app(base / "gallery", local=tiny_export.repo, port=free_port(), top_k=SYSU_IR_IMAGES) as handle:
        yield handle, base / "gallery"


def test_visible_example_frames_hits_green_or_red_in_chromium(sysu_app):
    handle, gallery_dir = sysu_app
    gallery = Gallery.open(gallery_dir)
    examples = held_out_examples(gallery, gallery_dataset(gallery))
    with open_page(handle.url) as tab:
        tab.locator("#search-button").wait_for()
        assert tab.locator("#examples-visible button.gallery-item").count() == len(examples) == 3
        assert tab.locator("#examples-infrared").count() == 0  # every infrared test image is in the gallery
        tab.get_by_label("infrared → visible").check()
        assert examples[1].pid == 4
        choose_example(tab, 2)  # person 4, a visible photo: the click also sets its direction back
        loaded_results(tab, SYSU_IR_IMAGES)
        status = wait_status(tab, "correct match")
        assert tab.get_by_label("visible → infrared").is_checked() and "visible stem" in status

        captions = [KNOWN_CAPTION.match(c) for c in tab.locator("#results .caption-label").all_inner_texts()]
        assert len(captions) == SYSU_IR_IMAGES and all(captions), captions
        same = [int(c[2]) == examples[1].pid for c in captions]
        assert [c[3].startswith("✓") for c in captions] == same
        assert f"person {examples[1].pid}: first correct match at rank {same.index(True) + 1} of 18" in status
        # The frames as painted: green exactly for the hits of the example's person (3 per IR camera), red elsewhere.
        assert result_frames(tab) == ["green" if s else "red" for s in same] and sum(same) == 6

        # An upload of an unknown photo: no frames, no match line.
        crop = write_crops(gallery_dir.parent / "crops", (1,), per_pid=1, seed=5, mode="RGB")[0]
        stranger = crop.rename(crop.with_name("stranger.png"))
        upload_query(tab, stranger, "visible → infrared")
        status = wait_status(tab, "stranger.png")
        loaded_results(tab, SYSU_IR_IMAGES)
        assert "correct match" not in status
        assert result_frames(tab) == [None] * SYSU_IR_IMAGES

        # The filters panel (issue 17): camera 6 only, applied inside the FAISS search. Half the 18 images pass
        # (3 per person per infrared camera) and every caption says cam 6.
        tab.locator("#filters").get_by_text("filters").first.click()
        tab.locator("#filter-cameras").get_by_label("6", exact=True).check()
        tab.locator("#search-button").click()
        status = wait_status(tab, "passing the filter (camera 6)")
        assert "top 9 of 9 gallery images" in status
        loaded_results(tab, 9)
        captions = tab.locator("#results .caption-label").all_inner_texts()
        assert len(captions) == 9 and all(c.endswith("· cam 6") for c in captions), captions
