"""Serve MathJax 3 from the built book, so its math renders with no network (issue 14 item 7).

At the start of the build this extension looks for a local copy of MathJax 3 (a folder holding
``es5/tex-mml-chtml.js``), in this order:

1. ``$MATHJAX_DIR``;
2. the pip package ``django-static-mathjax`` (it ships MathJax 3.2.2 as the importable package
   ``mathjax``, files under ``mathjax/static/mathjax``; it depends on nothing, Django included);
3. the npm copy that ``browser_tests/ensure_tools.sh`` installs, in
   ``~/.cache/dpo-companion/mathjax/node_modules/mathjax`` (``$XDG_CACHE_HOME`` respected).

If one is found, Sphinx's ``mathjax_path`` points at ``_static/mathjax/tex-mml-chtml.js`` and, when
the build finishes, the files MathJax needs are copied there: the combined TeX/MathML/CHTML
component, the TeX extensions it loads on demand, its CHTML fonts, its menu and accessibility
components, and its licence (about 4 MB). If none is found the book still builds, with MathJax from
the CDN (Sphinx's default), and a line saying so is printed (not a Sphinx warning, so that ``-W``
does not fail the build for want of an optional copy).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from sphinx.application import Sphinx

MAIN = "tex-mml-chtml.js"
LOCAL_PATH = "mathjax/" + MAIN  # relative to _static, as Sphinx reads a relative mathjax_path
# what tex-mml-chtml.js loads at run time, relative to its es5/ folder
NEEDED = [MAIN, "input/tex/extensions", "output/chtml/fonts", "ui", "a11y"]


def candidates() -> list[tuple[str, Path]]:
    """(where it came from, folder holding es5/) for each place a MathJax copy may be."""
    found = []
    if os.environ.get("MATHJAX_DIR"):
        found.append(("$MATHJAX_DIR", Path(os.environ["MATHJAX_DIR"])))
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.append(("pip package django-static-mathjax", Path(location) / "static/mathjax"))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    found.append(("npm copy", cache / "dpo-companion/mathjax/node_modules/mathjax"))
    return found


def find_mathjax() -> tuple[str, Path] | None:
    """The first candidate that holds es5/tex-mml-chtml.js, or None."""
    for origin, folder in candidates():
        if (folder / "es5" / MAIN).is_file():
            return origin, folder
    return None


def _use_local_copy(app: Sphinx, config) -> None:
    found = find_mathjax()
    app.offline_mathjax = found  # type: ignore[attr-defined]
    if found is None:
        tried = ", ".join(str(folder) for _, folder in candidates())
        print(
            "offline_mathjax: no local MathJax 3 found (tried "
            f"{tried}); the book will load MathJax from {config.mathjax_path}, so its math "
            "needs a network. For offline math: pip install django-static-mathjax==3.2.2.1, "
            "or run `bash browser_tests/ensure_tools.sh`.",
            file=sys.stderr,
        )
        return
    config.mathjax_path = LOCAL_PATH
    print(f"offline_mathjax: serving MathJax from the build ({found[0]}: {found[1]})")


def _copy_files(app: Sphinx, exception: Exception | None) -> None:
    found = getattr(app, "offline_mathjax", None)
    if exception is not None or found is None or app.builder.format != "html":
        return
    es5 = found[1] / "es5"
    target = Path(app.outdir) / "_static" / "mathjax"
    for name in NEEDED:
        source = es5 / name
        if source.is_dir():
            shutil.copytree(source, target / name, dirs_exist_ok=True)
        elif source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    licence = found[1] / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, target / "LICENSE")


def setup(app: Sphinx) -> dict:
    # after sphinx.ext.mathjax has registered mathjax_path, before any page is written
    app.connect("config-inited", _use_local_copy, priority=900)
    app.connect("build-finished", _copy_files)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
