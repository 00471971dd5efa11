"""Drive the search page in a real headless Chromium (Debian's /usr/bin/chromium through Playwright).

Used by the browser test and by ``python -m mult.app.browser URL OUT.png --example 1`` (or ``--query FILE``),
which makes the screenshot in docs/ from a running `mult app` / `mult demo` page: with an example, whose
person id the page knows, the hits show their green/red frames. Never downloads a browser (ENVIRONMENT.md,
"Browser tests").
"""

from __future__ import annotations

import argparse
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from mult.errors import MultError
from mult.io import atomic_path

CHROMIUM = Path("/usr/bin/chromium")
#: Never let Chromium fetch anything or update itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TIMEOUT_MS = 30_000


@contextmanager
def open_page(url: str, *, width: int = 1280, height: int = 900) -> Iterator[object]:
    """A Playwright page on ``url`` in headless Chromium; closed on exit."""
    if not CHROMIUM.exists():
        raise MultError(f"{CHROMIUM} not found; install Debian's browser with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(url)
            yield tab
        finally:
            browser.close()


def loaded_results(tab, n: int) -> None:
    """Wait until the result gallery shows ``n`` images that the browser actually decoded."""
    tab.wait_for_function(
        "n => [...document.querySelectorAll('#results .thumbnail-item img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === n", arg=n, timeout=TIMEOUT_MS)


def upload_query(tab, image: Path, direction: str) -> None:
    """Pick the direction, then upload ``image`` through the file input (the upload runs the search)."""
    tab.get_by_label(direction).check()
    tab.locator("#query input[type=file]").set_input_files(str(image))


def choose_example(tab, number: int = 1, modality: str = "visible") -> None:
    """Click example ``number`` (from 1) of the page's ``modality`` example queries (the click also sets the
    direction they are for), then Search. MultError when the page shows no such example. For a page that has
    no query image yet (it waits for the example to appear in the query box before it searches)."""
    tab.locator("#search-button").wait_for()  # the page has rendered, examples included
    examples = tab.locator(f"#examples-{modality} button.gallery-item")
    shown = examples.count()
    if shown == 0:
        raise MultError(f"the page shows no {modality} examples; they come with a gallery built from a dataset "
                        "(`mult index build --dataset sysu|regdb ...`, as `mult demo` does)")
    if not 1 <= number <= shown:
        raise MultError(f"there is no {modality} example {number}; the page shows examples 1 to {shown}")
    examples.nth(number - 1).click()
    tab.wait_for_function("() => document.querySelector('#query img') !== null", timeout=TIMEOUT_MS)
    tab.locator("#search-button").click()


#: Band of a displayed result image read for its frame colour: from 1 % to 3 % of the shorter side in from the
#: edge (2 pixels at least, clear of the edge's anti-aliasing), well inside the frame the page draws (1/16 of the
#: image's shorter side); and how much of the band must be one colour.
FRAME_BAND = (0.01, 0.03)
FRAME_SHARE = 0.6


def frame_colour_of(shot: Image.Image, natural: tuple[int, int]) -> Optional[str]:
    """"green", "red" or None: the colour of the frame of an image shown ``object-fit: contain`` in the
    screenshot ``shot`` of its element, when most of the band read is that colour. Only the left and right
    edges between a fifth and a half of the height are read: the gallery's label can cover the top of the first
    tile, and captions cover the bottom of every tile."""
    width, height = shot.size
    scale = min(width / natural[0], height / natural[1])
    w, h = round(natural[0] * scale), round(natural[1] * scale)
    x0, y0 = (width - w) // 2, (height - h) // 2
    pixels = shot.convert("RGB").crop((x0, y0, x0 + w, y0 + h)).load()
    inner, outer = (max(2, round(share * min(w, h))) for share in FRAME_BAND)
    columns = [*range(inner, outer + 1), *range(w - 1 - outer, w - inner)]
    ring = [pixels[x, y] for y in range(h // 5, h // 2) for x in columns]
    for name, test in (("green", lambda r, g, b: g > 160 and r < 100 and b < 100),
                       ("red", lambda r, g, b: r > 160 and g < 100 and b < 100)):
        if sum(test(*p) for p in ring) >= FRAME_SHARE * len(ring):
            return name
    return None


def result_frames(tab) -> list[Optional[str]]:
    """The frame colour of each result tile as the browser paints it ("green", "red", None for no frame)."""
    images = tab.locator("#results .thumbnail-item img")
    colours = []
    for i in range(images.count()):
        image = images.nth(i)
        natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        colours.append(frame_colour_of(Image.open(io.BytesIO(image.screenshot())), tuple(natural)))
    return colours


def screenshot(tab, out: Path) -> Path:
    with atomic_path(Path(out)) as tmp:
        tab.screenshot(path=str(tmp), type="png", full_page=True)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Search once on a running page and save a screenshot.")
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", type=Path, help="upload this image (its hits stay unframed)")
    what.add_argument("--example", type=int, metavar="N",
                      help="search with the page's example N (from 1): its hits get green/red frames")
    parser.add_argument("--example-modality", default="visible", choices=("visible", "infrared"),
                        help="which example set (visible: for visible → infrared)")
    parser.add_argument("--direction", default="visible → infrared", help="with --query")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        with open_page(args.url) as tab:
            if args.query is not None:
                upload_query(tab, args.query, args.direction)
            else:
                choose_example(tab, args.example, args.example_modality)
            loaded_results(tab, args.top_k)
            tab.wait_for_function("() => document.querySelector('#status').innerText.includes('stem')",
                                  timeout=TIMEOUT_MS)
            print(tab.locator("#status").inner_text())
            print("frames:", " ".join(c or "-" for c in result_frames(tab)))
            print(screenshot(tab, args.out))
    except MultError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
