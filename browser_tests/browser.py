"""Headless Debian chromium for the built book, offline.

The book serves MathJax 3 from its own ``_static/mathjax`` when the build found a local copy
(book/_ext/offline_mathjax.py); otherwise its HTML loads MathJax from a CDN. For such a build,
every request for the CDN's MathJax is answered from a local copy of the npm package
``mathjax@3`` (``make test-browser`` puts it in ``~/.cache/dpo-companion/mathjax``, outside the
book's sources).
Every other request that leaves the local server is blocked and recorded.

Used by browser_tests/test_pages.py (``make test-browser``) and browser_tests/print_pdf.py
(``make pdf``).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Sphinx 7's default mathjax_path; jsdelivr also answers the unversioned "mathjax/" path
MATHJAX_CDN_PREFIXES = (
    "https://cdn.jsdelivr.net/npm/mathjax@3/",
    "https://cdn.jsdelivr.net/npm/mathjax/",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

WAIT_FOR_PAGE_JS = """
async () => {
  const timeout = ms => new Promise(done => setTimeout(() => done('timeout'), ms));
  const ready = async () => {
  // lazy images would never load in a screenshot of an unscrolled page
  const imgs = Array.from(document.images);
  imgs.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(done => {
        img.addEventListener('load', done);
        img.addEventListener('error', done);
      })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
    return 'typeset';
  }
  return window.MathJax ? 'mathjax-not-started' : 'no-mathjax';
  };
  return Promise.race([ready(), timeout(20000)]);
}
"""


class SetupError(RuntimeError):
    """Something the browser check needs is missing; the message says how to get it."""


def find_chromium() -> str:
    """Path of Debian's chromium (or $CHROMIUM); raises :class:`SetupError` naming the install
    command."""
    for candidate in (
        os.environ.get("CHROMIUM"),
        "chromium",
        "chromium-browser",
        "/usr/bin/chromium",
    ):
        if candidate and (path := shutil.which(candidate)):
            return path
    raise SetupError(
        "chromium not found: install it with `apt-get install -y chromium` "
        "(make test-browser does this) or set CHROMIUM=/path/to/chromium."
    )


# Outside the repository on purpose: the book's root is the repository's, and Sphinx would build
# every README.md of an npm package that sat inside it into a page of the book.
MATHJAX_PREFIX = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dpo-companion" / "mathjax"
)


def find_mathjax() -> Path:
    """Folder of the npm package mathjax@3 (holding es5/tex-mml-chtml.js); $MATHJAX_DIR
    overrides."""
    folder = Path(os.environ.get("MATHJAX_DIR") or MATHJAX_PREFIX / "node_modules" / "mathjax")
    if not (folder / "es5" / "tex-mml-chtml.js").is_file():
        raise SetupError(
            f"no local MathJax 3 in {folder}: run `bash browser_tests/ensure_tools.sh` "
            "(make test-browser does this) or set MATHJAX_DIR to a folder with "
            "es5/tex-mml-chtml.js."
        )
    return folder


def build_mathjax(html_dir: Path) -> Path | None:
    """The MathJax that the built book serves itself (``_static/mathjax/tex-mml-chtml.js``), or
    None when the build loads it from the CDN."""
    local = Path(html_dir) / "_static" / "mathjax" / "tex-mml-chtml.js"
    return local if local.is_file() else None


class _QuietHandler(SimpleHTTPRequestHandler):
    # noqa: A002 - the base class's name
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL ending in
    '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def launch(playwright):
    """Launch Debian's chromium headless through playwright (never playwright's own browser)."""
    return playwright.chromium.launch(
        executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS
    )


def route_offline(
    context, base_url: str, mathjax_dir: Path | None, blocked: list[tuple[str, str]]
) -> None:
    """Answer MathJax CDN requests from ``mathjax_dir`` (None: block them too), pass local ones,
    block and record the rest.

    ``blocked`` receives (resource type, url) for every request that would have left the machine.
    """

    def handle(route) -> None:
        url = route.request.url
        if url.startswith(base_url) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
            return
        for prefix in MATHJAX_CDN_PREFIXES if mathjax_dir is not None else ():
            if url.startswith(prefix):
                local = mathjax_dir / url[len(prefix) :].split("?")[0].split("#")[0]
                if local.is_file():
                    route.fulfill(path=str(local))
                else:
                    route.fulfill(status=404, body=f"not in the local MathJax copy: {local}")
                return
        blocked.append((route.request.resource_type, url))
        route.abort("internetdisconnected")

    context.route("**/*", handle)
