"""Open every page of the built book in headless chromium and check what a reader would see.

A page fails on: an uncaught JavaScript error or a console error; a local file (script, style,
image, font) that does not load; an image that does not display; math that MathJax did not render
or rendered as an error; an internal link to a missing page or a missing #anchor; a chapter page
without working Colab and Binder launch links; a page that scrolls sideways, at 1280 px or on a
390 px phone (wide tables, code and math must scroll inside their own boxes). A screenshot of each
page goes to _build/screenshots/ (the same relative path, .png), and one at 390 px to
_build/screenshots/390px/.

Two checks open the book from disk (file:// URLs) with every other request refused, as a reader
without a network would: math is typeset by the MathJax the build serves itself, and the status
page's check marks are drawn as glyphs, not as empty boxes.

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
from browser import (
    ROOT,
    WAIT_FOR_PAGE_JS,
    SetupError,
    build_mathjax,
    find_mathjax,
    launch,
    route_offline,
    serve,
)

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

# what makes the page wider than the window: elements reaching past its right edge that no
# scrolling box of their own clips (the theme's off-canvas sidebars and dialogs excepted)
SIDEWAYS_JS = """
() => {
  const width = document.documentElement.clientWidth;
  const culprits = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.bd-sidebar-secondary, .bd-sidebar-primary, dialog')) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let clipped = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const style = getComputedStyle(a);
      if (['auto', 'scroll', 'hidden', 'clip'].includes(style.overflowX) &&
          a.getBoundingClientRect().right <= width + 1) { clipped = true; break; }
    }
    if (!clipped) {
      culprits.push(`${el.tagName.toLowerCase()}.${String(el.className).split(' ')[0]} ` +
                    `reaches ${Math.round(box.right)} px: ` +
                    (el.textContent || '').trim().slice(0, 40));
    }
  }
  return {scroll: document.documentElement.scrollWidth, width: width, culprits: culprits};
}
"""

PHONE = {"width": 390, "height": 844}


def sideways_problems(page) -> list[str]:
    """Why ``page`` scrolls sideways at its current width (empty when it does not)."""
    found = page.evaluate(SIDEWAYS_JS)
    if found["scroll"] <= found["width"]:
        return []
    return [
        f"page is {found['scroll']} px wide in a {found['width']} px window; "
        + ("; ".join(found["culprits"][:4]) or "no single element found")
    ]


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
        # a book that serves its own MathJax must not need the CDN; otherwise answer the CDN's
        # requests from a local copy
        mathjax = None if build_mathjax(HTML_DIR) else find_mathjax()
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
        problems += sideways_problems(page)
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


@pytest.fixture(scope="session")
def phone(browser_session):
    """A 390 px wide window (an iPhone 12-14) on the same offline routes."""
    context, base_url, blocked = browser_session
    phone_context = context.browser.new_context(viewport=PHONE, service_workers="block")
    mathjax = None if build_mathjax(HTML_DIR) else find_mathjax()
    route_offline(phone_context, base_url, mathjax, blocked)
    yield phone_context, base_url
    phone_context.close()


@pytest.mark.parametrize("page_rel", PAGES or ["(no built book)"])
def test_page_fits_a_phone(phone, page_rel):
    """At 390 px nothing makes the page scroll sideways; screenshots go to screenshots/390px/."""
    context, base_url = phone
    if redirect_target(page_rel) is not None:
        return
    page = context.new_page()
    try:
        page.goto(base_url + page_rel, wait_until="load", timeout=30_000)
        page.evaluate(WAIT_FOR_PAGE_JS)
        problems = sideways_problems(page)
        shot = SHOTS_DIR / "390px" / re.sub(r"\.html$", ".png", page_rel)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    assert not problems, f"{page_rel} at 390 px:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="session")
def from_disk(browser_session):
    """A window that opens the book as files, with every request that is not a file refused."""
    context, _, _ = browser_session
    disk_context = context.browser.new_context(
        viewport={"width": 1280, "height": 900}, service_workers="block"
    )
    refused: list[str] = []

    def handle(route) -> None:
        if route.request.url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    disk_context.route("**/*", handle)
    yield disk_context, refused
    disk_context.close()


# pages that must hold typeset math: the notation page and the first chapter
MATH_PAGES = ["book/notation.html", "notebooks/01_dpo_single_token.html"]


@pytest.mark.parametrize("page_rel", MATH_PAGES)
def test_math_is_typeset_offline_from_disk(from_disk, page_rel):
    context, refused = from_disk
    path = HTML_DIR / page_rel
    assert path.is_file(), f"{page_rel} was not built"
    refused.clear()
    page = context.new_page()
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=30_000)
        state = page.evaluate(WAIT_FOR_PAGE_JS)
        typeset = page.evaluate("() => document.querySelectorAll('mjx-container').length")
        math = page.evaluate(RAW_MATH_JS)
    finally:
        page.close()
    hint = (
        "the build serves no MathJax of its own (no _static/mathjax/): install a local copy "
        "(`bash browser_tests/ensure_tools.sh` or `pip install django-static-mathjax`) and "
        "rebuild"
        if build_mathjax(HTML_DIR) is None
        else "MathJax is in _static/mathjax/ but did not typeset"
    )
    assert state == "typeset", f"{page_rel} offline: MathJax {state}; {hint}; refused {refused}"
    assert typeset > 0, f"{page_rel} offline: no mjx-container; {hint}"
    assert not math["unrendered"] and not math["errors"], f"{page_rel} offline: {math}"
    assert not [u for u in refused if "mathjax" in u.lower()], (
        f"MathJax from the network: {refused}"
    )


# draws a string in the font of the first table cell that holds it, beside two code points that no
# font has (U+10FFFC and U+10FFFD, private use): a glyph that is really drawn differs from them,
# while a missing one is drawn as the same empty box
GLYPH_JS = """
(text) => {
  const holder = Array.from(document.querySelectorAll('td'))
      .find(el => el.textContent.includes(text));
  if (!holder) return null;
  const font = getComputedStyle(holder).font;
  const draw = s => {
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 64;
    const g = canvas.getContext('2d');
    g.font = font;
    g.textBaseline = 'top';
    g.fillStyle = '#000';
    g.fillText(s, 4, 4);
    return Array.from(g.getImageData(0, 0, 64, 64).data).join(',');
  };
  const missing = [draw('\\u{10FFFC}'), draw('\\u{10FFFD}')];
  const drawn = draw(text);
  return {
    count: document.body.textContent.split(text).length - 1,
    same_as_missing: missing.includes(drawn),
    missing_look_alike: missing[0] === missing[1],
    blank: drawn === draw(''),
  };
}
"""


def test_status_page_check_marks_render_offline(from_disk):
    context, _ = from_disk
    path = HTML_DIR / "book" / "status.html"
    assert path.is_file(), "book/status.html was not built"
    page = context.new_page()
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=30_000)
        glyph = page.evaluate(GLYPH_JS, "\u2705")
    finally:
        page.close()
    assert glyph is not None, "the status page shows no check mark (its execution table is gone)"
    assert glyph["missing_look_alike"], f"cannot tell a missing glyph apart here: {glyph}"
    assert not glyph["same_as_missing"] and not glyph["blank"], (
        f"the status page's {glyph['count']} check marks are drawn as empty boxes: no font with "
        "U+2705; install one (Debian: apt-get install fonts-noto-color-emoji; "
        "browser_tests/ensure_tools.sh does)"
    )
