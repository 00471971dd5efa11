"""Drive the search page in a real headless Chromium (Debian's /usr/bin/chromium through Playwright).

Used by the browser test and by `python -m mult.app.browser URL QUERY OUT.png`, which makes the screenshot in
docs/ from a running `mult app` / `mult demo` page. Never downloads a browser (ENVIRONMENT.md, "Browser tests").
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def screenshot(tab, out: Path) -> Path:
    with atomic_path(Path(out)) as tmp:
        tab.screenshot(path=str(tmp), type="png", full_page=True)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Search once on a running page and save a screenshot.")
    parser.add_argument("url")
    parser.add_argument("query", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--direction", default="visible → infrared")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args(argv)
    with open_page(args.url) as tab:
        upload_query(tab, args.query, args.direction)
        loaded_results(tab, args.top_k)
        print(screenshot(tab, args.out))


if __name__ == "__main__":
    main()
