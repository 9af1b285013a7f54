"""Print the single-page HTML build of the book to one PDF with headless Debian chromium.

Usage: python browser_tests/print_pdf.py [_build/singlehtml/index.html] [_build/book.pdf]

MathJax is served from the local copy (see browser.py) and the script waits until the math is
typeset and every image has loaded before printing, so the PDF matches the web pages. Solutions stay
folded, as on the web.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from browser import ROOT, WAIT_FOR_PAGE_JS, SetupError, find_mathjax, launch, route_offline, serve


def count_pages(pdf: Path) -> int:
    """Number of pages of a PDF that chromium wrote (its page objects are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf.read_bytes()))


def whole_book_page(index_html: Path) -> Path:
    """The page that holds the whole book, placed where its relative links work.

    jupyter-book's singlehtml index.html only redirects to the root page (e.g. book/intro.html),
    whose links to _static/ and _images/ are written relative to the output folder, not to book/.
    A copy of it beside index.html therefore loads with all its styles and images.
    """
    match = re.search(r'http-equiv="Refresh" content="0; url=([^"#]+)', index_html.read_text(), re.IGNORECASE)
    if not match:
        return index_html
    target = index_html.parent / match[1]
    if target.parent == index_html.parent:
        return target
    copy = index_html.parent / "_whole_book.html"
    copy.write_text(target.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


def print_pdf(index_html: Path, pdf: Path) -> int:
    """Write ``pdf`` from ``index_html``; return the number of pages."""
    from playwright.sync_api import sync_playwright

    if not index_html.is_file():
        raise SetupError(f"{index_html} not found: build it with `jupyter-book build . --builder singlehtml`.")
    page_path = whole_book_page(index_html)
    failed: list[str] = []
    blocked: list[tuple[str, str]] = []
    with serve(index_html.parent) as base_url, sync_playwright() as pw:
        browser = launch(pw)
        context = browser.new_context()
        route_offline(context, base_url, find_mathjax(), blocked)
        page = context.new_page()
        # the singlehtml builder writes no search index, though the theme asks for one
        page.on("response", lambda r: r.status >= 400 and not r.url.endswith("/searchindex.js")
                and failed.append(f"HTTP {r.status} {r.url}"))
        page.goto(base_url + page_path.relative_to(index_html.parent).as_posix(), wait_until="load", timeout=120_000)
        state = page.evaluate(WAIT_FOR_PAGE_JS)
        if failed:
            raise RuntimeError("the page did not load completely:\n  " + "\n  ".join(failed))
        if state == "timeout":
            raise RuntimeError("math or images still loading after 20 s; the PDF would be incomplete.")
        pdf.parent.mkdir(parents=True, exist_ok=True)
        page.pdf(path=str(pdf), format="A4", print_background=True,
                 margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"})
        browser.close()
    for kind, url in blocked:
        print(f"note: not loaded (offline): {kind} {url}")
    return count_pages(pdf)


def main(argv: list[str]) -> int:
    index_html = Path(argv[0]) if argv else ROOT / "_build" / "singlehtml" / "index.html"
    pdf = Path(argv[1]) if len(argv) > 1 else ROOT / "_build" / "book.pdf"
    start = time.time()
    try:
        pages = print_pdf(index_html.resolve(), pdf.resolve())
    except (SetupError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = pdf.stat().st_size / 1e6
    print(f"wrote {pdf}: {pages} pages, {size:.1f} MB, printed in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
