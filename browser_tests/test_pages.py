"""Open every page of the built book in headless chromium and check what a reader would see.

A page fails on: an uncaught JavaScript error or a console error; a local file (script, style,
image, font) that does not load; an image that does not display; math that MathJax did not render
or rendered as an error; an internal link to a missing page or a missing #anchor; a chapter page
without working Colab and Binder launch links. A screenshot of each page goes to
_build/screenshots/ (the same relative path, .png).

Run with ``make test-browser`` after ``make book``. Not part of ``make test``: it needs a built
book, chromium and a local MathJax copy. Settings: BOOK_HTML (default _build/html), SCREENSHOTS
(default _build/screenshots), CHROMIUM, MATHJAX_DIR.
"""

from __future__ import annotations

import os
import re
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from browser import ROOT, WAIT_FOR_PAGE_JS, SetupError, find_mathjax, launch, route_offline, serve

HTML_DIR = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html")).resolve()
SHOTS_DIR = Path(os.environ.get("SCREENSHOTS", ROOT / "_build" / "screenshots")).resolve()
SKIP_DIRS = {
    "_static",
    "_sources",
    "_images",
    "_downloads",
    "reports",
    "_sphinx_design_static",
    "_print",
}


def book_pages() -> list[str]:
    """Every built HTML page, relative to HTML_DIR, in a stable order."""
    if not HTML_DIR.is_dir():
        return []
    return sorted(
        p.relative_to(HTML_DIR).as_posix()
        for p in HTML_DIR.rglob("*.html")
        if not SKIP_DIRS.intersection(p.relative_to(HTML_DIR).parts[:-1])
    )


PAGES = book_pages()

# Errors raised by the themes themselves on every page, not by the book. Each is matched exactly
# and must keep its reason; delete an entry when an upgrade fixes it.
KNOWN_THEME_ERRORS = {
    # sphinx-thebe 0.3.1 adds its inline `const THEBE_JS_URL = ...` script once per read phase, so
    # a page can carry it twice; the second copy throws, the first has already set everything up
    "JavaScript error: Identifier 'THEBE_JS_URL' has already been declared": (
        "sphinx-thebe declares its settings twice"
    ),
    # pydata-sphinx-theme reads the colour mode from localStorage, finds "" on a first visit, logs
    # this and falls back to "auto"; a fresh browser profile is always a first visit
    "console error: Got invalid theme mode: . Resetting to auto.": (
        "pydata-sphinx-theme on a first visit"
    ),
}

# text that should have become typeset math; code blocks are excluded in the page script below
RAW_MATH_JS = r"""
() => {
  const skip = new Set(
      ['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER', 'KBD', 'SAMP']);
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      for (let el = node.parentElement; el; el = el.parentElement) {
        if (skip.has(el.tagName) || el.classList.contains('highlight')) {
          return NodeFilter.FILTER_REJECT;
        }
      }
      return NodeFilter.FILTER_ACCEPT;
    }
  });
  // TeX delimiters left in the text, "$$", a "$...$" pair around TeX-looking content
  const raw = /\\\(|\\\[|\\begin\{|\$\$|\$[^$\s][^$]*[\\^_{][^$]*\$/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (raw.test(n.textContent)) found.push(n.textContent.trim().slice(0, 80));
  }
  // a stray "$" right beside typeset math: the markdown parser missed the math, MathJax caught
  // part of it
  for (const m of document.querySelectorAll('mjx-container')) {
    const inMath = m.parentElement && m.parentElement.classList.contains('math');
    const host = inMath ? m.parentElement : m;
    const before = host.previousSibling, after = host.nextSibling;
    if ((before && before.nodeType === 3 && /\$\s*$/.test(before.textContent)) ||
        (after && after.nodeType === 3 && /^\s*\$/.test(after.textContent))) {
      found.push('stray $ beside: ' + (host.parentElement.textContent || '').trim().slice(0, 80));
    }
  }
  const unrendered = Array.from(document.querySelectorAll('.math'))
      .filter(el => !el.querySelector('mjx-container'))
      .map(el => el.textContent.trim().slice(0, 80));
  const errors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]'))
      .map(el => (el.getAttribute('data-mjx-error') || el.textContent).slice(0, 120));
  return {raw: found, unrendered: unrendered, errors: errors};
}
"""

BROKEN_IMAGES_JS = """
() => Array.from(document.images)
    .filter(img => !(img.complete && img.naturalWidth > 0))
    .map(img => img.currentSrc || img.src || img.outerHTML.slice(0, 120))
"""


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@cache
def anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def broken_internal_links(hrefs: list[str], base_url: str) -> list[str]:
    """The links among ``hrefs`` that point into the book at a missing file or #anchor."""
    broken = []
    for href in sorted(set(hrefs)):
        if not href.startswith(base_url):
            continue  # external, mailto:, javascript:
        parts = urlsplit(href)
        rel = unquote(parts.path)[len(urlsplit(base_url).path) :]
        target = HTML_DIR / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} -> no file {target.relative_to(HTML_DIR)}")
        elif (
            parts.fragment
            and target.suffix == ".html"
            and unquote(parts.fragment) not in anchors(target)
        ):
            broken.append(
                f"{href} -> {target.relative_to(HTML_DIR)} has no id '{unquote(parts.fragment)}'"
            )
    return broken


def launch_link_problems(page_rel: str, hrefs: list[str]) -> list[str]:
    """For an executable page: its Colab link must open a notebook (.ipynb) that is in the
    repository, and its Binder link must name the page's source file."""
    stem = page_rel[: -len(".html")]
    if not (HTML_DIR / "_sources" / (stem + ".ipynb")).is_file():
        return []  # not executable: the theme shows no launch buttons
    source = next(
        (stem + ext for ext in (".ipynb", ".md") if (ROOT / (stem + ext)).is_file()), None
    )
    colab = [
        unquote(h) for h in hrefs if h.startswith("https://colab.research.google.com/github/")
    ]
    binder = [unquote(h) for h in hrefs if "mybinder.org/v2/gh/" in h]
    problems = []
    if source is None:
        problems.append(
            f"no {stem}.ipynb or {stem}.md in the repository for the launch buttons to open"
        )
    elif source.endswith(".md"):
        problems.append(
            f"{source} is a MyST-markdown notebook: its Colab button opens the .md file, which "
            "Colab cannot open; make the page an .ipynb, or move its code out of the page"
        )
    elif not any(h.endswith("/" + source) for h in colab):
        problems.append(f"no Colab launch link to {source} (found {colab or 'none'})")
    if source and not any(source in h for h in binder):
        problems.append(f"no Binder launch link to {source} (found {binder or 'none'})")
    return problems


REFRESH = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.IGNORECASE)


def redirect_target(page_rel: str) -> str | None:
    """The target of a redirect-only page (jupyter-book's root index.html), else None."""
    text = (HTML_DIR / page_rel).read_text(encoding="utf-8", errors="replace")
    match = REFRESH.search(text)
    return match[1] if match and len(text) < 500 else None


@pytest.fixture(scope="session")
def browser_session():
    if not PAGES:
        pytest.skip(f"no built book in {HTML_DIR}: run `make book` first")
    try:
        mathjax = find_mathjax()
        from playwright.sync_api import sync_playwright
    except (SetupError, ImportError) as err:
        pytest.fail(f"browser test not set up: {err}. `make test-browser` installs what it needs.")
    with serve(HTML_DIR) as base_url, sync_playwright() as pw:
        browser = launch(pw)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, service_workers="block"
        )
        blocked: list[tuple[str, str]] = []
        route_offline(context, base_url, mathjax, blocked)
        yield context, base_url, blocked
        context.close()
        browser.close()


@pytest.mark.parametrize("page_rel", PAGES or ["(no built book)"])
def test_page(browser_session, page_rel):
    context, base_url, blocked = browser_session
    if (target := redirect_target(page_rel)) is not None:
        resolved = (HTML_DIR / page_rel).parent / target.split("#")[0]
        assert resolved.is_file(), f"{page_rel} redirects to {target}, which was not built"
        return
    blocked.clear()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"JavaScript error: {err}"))
    page.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and not msg.text.startswith("Failed to load resource")
            and problems.append(f"console error: {msg.text}")
        ),
    )
    page.on(
        "response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status} for {r.url}")
    )
    page.on(
        "requestfailed",
        lambda r: (
            r.url.startswith(base_url) and problems.append(f"failed to load {r.url}: {r.failure}")
        ),
    )
    try:
        page.goto(base_url + page_rel, wait_until="load", timeout=30_000)
        math_state = page.evaluate(WAIT_FOR_PAGE_JS)
        math = page.evaluate(RAW_MATH_JS)
        if math["unrendered"] and math_state != "typeset":
            problems.append(
                f"{len(math['unrendered'])} math element(s) but MathJax did not run ({math_state})"
            )
        problems += [f"math not rendered: {m!r}" for m in math["unrendered"][:5]]
        problems += [f"raw TeX in the text: {m!r}" for m in math["raw"][:5]]
        problems += [f"MathJax error: {m!r}" for m in math["errors"][:5]]
        problems += [f"image does not load: {src}" for src in page.evaluate(BROKEN_IMAGES_JS)]
        problems += [
            f"image from the network (blocked offline): {url}"
            for kind, url in blocked
            if kind == "image"
        ]
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.href)")
        problems += [f"broken internal link: {b}" for b in broken_internal_links(hrefs, base_url)]
        problems += launch_link_problems(page_rel, hrefs)
        shot = SHOTS_DIR / re.sub(r"\.html$", ".png", page_rel)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    problems = [p for p in problems if p not in KNOWN_THEME_ERRORS]
    assert not problems, f"{page_rel}:\n  " + "\n  ".join(problems)
