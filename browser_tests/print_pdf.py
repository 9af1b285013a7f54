"""Print the built book (_build/html) to one PDF with headless Debian chromium.

Usage: python browser_tests/print_pdf.py [BOOK_HTML_DIR] [OUT.pdf]   (defaults: _build/html,
_build/book.pdf)

The pages are taken in the order of _toc.yml. Each page's article (the text, figures and outputs,
not the navigation) is placed, one chapter per sheet, into a single page that keeps the book's own
styles. That page is printed once MathJax has typeset all the math and every image has loaded.
(Jupyter Book's ``--builder singlehtml`` would be simpler, but with myst-nb 1.4 it stops on
notebooks with hidden code cells: "unknown node type: HideCodeCellNode".) Solutions and hidden code
stay folded, as on the web.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import yaml
from browser import ROOT, WAIT_FOR_PAGE_JS, SetupError, find_mathjax, launch, route_offline, serve

PRINT_DIR = (
    "_print"  # a folder one level down, like book/ and notebooks/, so relative links still work
)


def toc_files(toc_path: Path) -> list[str]:
    """Every file of a jb-book _toc.yml in reading order, without its extension."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def article(html: str, where: str) -> str:
    """The page's main article, without the theme's navigation around it."""
    start = html.find('<article class="bd-article"')
    end = html.rfind("</article>")
    if start < 0 or end < start:
        raise SetupError(
            f'{where}: no <article class="bd-article"> found; was it built by this theme?'
        )
    return html[start : end + len("</article>")]


def whole_book(html_dir: Path, files: list[str]) -> str:
    """One HTML document: the root page's <head>, then every page's article, a sheet each."""
    pages = []
    for name in files:
        path = html_dir / f"{name}.html"
        if not path.is_file():
            raise SetupError(f"{path} is missing: build the book first (make book).")
        if name.count("/") != 1:
            raise SetupError(
                f"{name}: pages are expected one folder deep (book/..., notebooks/...)."
            )
        pages.append(article(path.read_text(encoding="utf-8"), str(path)))
    root = (html_dir / f"{files[0]}.html").read_text(encoding="utf-8")
    head = root[: root.find("<body")]
    sheet_break = '\n<div style="break-after: page"></div>\n'
    return (
        head + '<body>\n<main id="main-content" class="bd-main"><div class="bd-content">'
        '<div class="bd-article-container">\n'
        + sheet_break.join(pages)
        + "\n</div></div></main>\n</body>\n</html>\n"
    )


def count_pages(pdf: Path) -> int:
    """Number of pages of a PDF that chromium wrote (its page objects are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf.read_bytes()))


def print_pdf(html_dir: Path, pdf: Path, toc: Path) -> int:
    """Write ``pdf`` from the built book in ``html_dir``; return the number of pages."""
    from playwright.sync_api import sync_playwright

    combined = html_dir / PRINT_DIR / "book.html"
    combined.parent.mkdir(exist_ok=True)
    combined.write_text(whole_book(html_dir, toc_files(toc)), encoding="utf-8")
    failed: list[str] = []
    blocked: list[tuple[str, str]] = []
    try:
        with serve(html_dir) as base_url, sync_playwright() as pw:
            browser = launch(pw)
            context = browser.new_context()
            route_offline(context, base_url, find_mathjax(), blocked)
            page = context.new_page()
            page.on(
                "response", lambda r: r.status >= 400 and failed.append(f"HTTP {r.status} {r.url}")
            )
            page.goto(f"{base_url}{PRINT_DIR}/book.html", wait_until="load", timeout=120_000)
            state = page.evaluate(WAIT_FOR_PAGE_JS)
            if failed:
                raise RuntimeError("the book did not load completely:\n  " + "\n  ".join(failed))
            if state == "timeout":
                raise RuntimeError(
                    "math or images still loading after 20 s; the PDF would be incomplete."
                )
            pdf.parent.mkdir(parents=True, exist_ok=True)
            page.pdf(
                path=str(pdf),
                format="A4",
                print_background=True,
                margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"},
            )
            browser.close()
    finally:
        shutil.rmtree(combined.parent, ignore_errors=True)  # never publish or browser-test it
    for kind, url in blocked:
        print(f"note: not loaded (offline): {kind} {url}")
    return count_pages(pdf)


def main(argv: list[str]) -> int:
    html_dir = Path(argv[0]) if argv else ROOT / "_build" / "html"
    pdf = Path(argv[1]) if len(argv) > 1 else ROOT / "_build" / "book.pdf"
    toc = html_dir.resolve().parents[1] / "_toc.yml"
    start = time.time()
    try:
        pages = print_pdf(
            html_dir.resolve(), pdf.resolve(), toc if toc.is_file() else ROOT / "_toc.yml"
        )
    except (SetupError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = pdf.stat().st_size / 1e6
    print(f"wrote {pdf}: {pages} pages, {size:.1f} MB, printed in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
