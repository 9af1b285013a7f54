"""A small Sphinx extension for the book's figures: plotly.js served from the build, once.

The book's one interactive figure (chapter 02's slider) is a plotly figure written into the page
without its 4.6 MB library (``include_plotlyjs=False``). This extension copies the installed
plotly's ``plotly.min.js`` into the build's ``_static`` once, and links it only from the pages
that hold a plotly figure, so the figure works from disk with no kernel and no network. Clicking
a figure to enlarge it is _static/figure-zoom.js (Jupyter Book links every .js in _static).

Enabled in _config.yml (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import plotly

#: the plotly.js bundled with the installed plotly (the version its figures are written for)
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_MARKER = "plotly-graph-div"  # class of every div plotly's to_html writes


def _link_plotly(app: Any, pagename: str, templatename: str, context: dict, doctree) -> None:
    if PLOTLY_MARKER in context.get("body", ""):
        app.add_js_file("plotly.min.js")  # called here, it is linked from this page only


def _copy_plotly(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / PLOTLY_JS.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PLOTLY_JS, target)


def setup(app: Any) -> dict[str, Any]:
    """Sphinx entry point.

    Used by: _config.yml.
    """
    if not PLOTLY_JS.is_file():
        raise FileNotFoundError(
            f"{PLOTLY_JS} is missing: the book's interactive figure needs the plotly package "
            "of the [book] extra (pip install -e '.[book]')."
        )
    app.connect("html-page-context", _link_plotly)
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
