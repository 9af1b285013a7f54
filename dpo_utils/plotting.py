"""One look for every figure: a theme sized for the book's column, one colour scheme for
distinguishability, and a provenance label.

Figures are drawn at the size the book shows them. The main column of the book's theme is about
672 CSS px wide at a 1280 px screen, i.e. 7.0 inches at the browser's 96 px per inch, so a figure
drawn :data:`COLUMN_WIDTH` inches wide is shown at about its natural size and its fonts at their
nominal point size; the smallest font of the theme is :data:`MIN_FONT_PT` (9 pt). :func:`figure`
keeps every grid within that width (at most :data:`MAX_COLUMNS` panels a row, or
:data:`FULL_WIDTH` inches for a figure the chapter marks ``full-width``).

When a notebook shows a figure, :func:`set_theme`'s PNG formatter writes a ``dpo-figure`` text
chunk into the image (its dpi and the smallest font size it contains), which the browser check
(browser_tests/test_figures.py) reads to compute the text size a reader sees.

Every figure carries a footer that says what produced it (profile, model, steps), so a tiny model's
output is never mistaken for a 7B model's.
"""

from __future__ import annotations

import base64
import io
import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from PIL.PngImagePlugin import PngInfo

try:  # IPython is there in a notebook; the package works without it
    from IPython import get_ipython
except ImportError:  # pragma: no cover - plain Python without Jupyter
    get_ipython = None

__all__ = [
    "PALETTE",
    "ANSWER_COLORS",
    "DIST_CMAP",
    "COLUMN_WIDTH",
    "FULL_WIDTH",
    "MAX_COLUMNS",
    "MIN_FONT_PT",
    "DPI",
    "FIGURE_INFO_KEY",
    "set_theme",
    "dist_colors",
    "dist_colorbar",
    "sequential_colors",
    "label_figure",
    "figure",
    "smallest_font_pt",
    "figure_png",
    "figure_info",
]

#: seaborn's colour-blind-safe qualitative palette (Okabe-Ito-like)
PALETTE = sns.color_palette("colorblind")
#: the two answers of a persona statement: blue and vermillion, never the background grey
ANSWER_COLORS = {"Yes": PALETTE[0], "No": PALETTE[3]}
#: the book's one scale for distinguishability: pale orange = least, dark indigo = most
#: (plasma without its pale-yellow end, reversed so that "more" is darker everywhere)
DIST_CMAP = LinearSegmentedColormap.from_list(
    "distinguishability", plt.get_cmap("plasma")(np.linspace(0.82, 0.0, 256))
)
#: width of the theme's main column in inches at 96 CSS px per inch (672 px at a 1280 px screen)
COLUMN_WIDTH = 7.0
#: width of a figure tagged ``full-width`` (sphinx-book-theme spreads it into the margin)
FULL_WIDTH = 9.5
#: panels a row in the main column; a wider grid must be split, or marked full width
MAX_COLUMNS = 3
_SLACK = 0.2
#: smallest font size of the theme, in points at the displayed size
MIN_FONT_PT = 9.0
#: resolution of the PNGs the notebooks show (120 px per inch: a 7 in figure is 840 px wide)
DPI = 120
#: gid of label_figure's footer
FOOTER_GID = "dpo-provenance"
#: PNG text chunk holding the figure's dpi and smallest font size (read by the browser check)
FIGURE_INFO_KEY = "dpo-figure"


def set_theme() -> None:
    """Apply the book's theme (fonts >= 9 pt, line widths to match); call once per notebook.

    In a notebook it also makes every figure shown carry its legibility record (see
    :func:`figure_png`).

    Used by: dpo_utils.book.
    """
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=1.0)
    mpl.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "figure.constrained_layout.use": True,
            "font.size": 10,
            "axes.titlesize": 10.5,
            "axes.titleweight": "bold",
            "axes.labelsize": 10,
            "xtick.labelsize": MIN_FONT_PT,
            "ytick.labelsize": MIN_FONT_PT,
            "legend.fontsize": MIN_FONT_PT,
            "legend.title_fontsize": MIN_FONT_PT,
            "figure.titlesize": 11,
            "legend.frameon": False,
            "lines.linewidth": 1.8,
            "lines.markersize": 5,
            "axes.linewidth": 0.8,
            "grid.linewidth": 0.6,
        }
    )
    _use_recording_formatter()


def _use_recording_formatter() -> None:
    # In a notebook, show figures through figure_png. matplotlib_inline registers its own PNG
    # formatter when the backend first loads (at the first figure), replacing ours, so this runs
    # again in figure(), after plt.subplots has loaded the backend.
    shell = get_ipython() if get_ipython is not None else None
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, _png_base64)


def dist_colors(values: Sequence[float]) -> list[tuple[float, float, float]]:
    """The book's colours for distinguishability: one colour per value, darker = more
    distinguishable, spaced by rank so that neighbouring levels (say gaps 1, 1.5, 2, 3) differ as
    much as the ends do. Equal values get equal colours.

    Used in: notebooks/02_update_rate.ipynb, notebooks/08_full_and_lora_dpo.ipynb.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"values must be a flat sequence of finite numbers, got {values!r}.")
    levels = np.unique(arr)
    pos = np.linspace(0.0, 1.0, len(levels)) if len(levels) > 1 else np.ones(1)
    rank = {v: p for v, p in zip(levels, pos, strict=True)}
    colors = [DIST_CMAP(rank[v]) for v in arr]
    return [(float(r), float(g), float(b)) for r, g, b, _ in colors]


def dist_colorbar(fig: Figure, axes: Any, norm: Normalize, label: str = "distinguishability"):
    """A horizontal colour bar of the book's distinguishability scale under ``axes``: for many
    behaviours coloured by value, in place of a legend that would cover the curves.

    Used in: notebooks/07_last_layer_dpo.ipynb.
    """
    mappable = ScalarMappable(norm=norm, cmap=DIST_CMAP)
    return fig.colorbar(
        mappable, ax=axes, location="bottom", shrink=0.6, aspect=40, pad=0.02, label=label
    )


def sequential_colors(n: int) -> list[tuple[float, float, float]]:
    """``n`` ordered colours on the book's distinguishability scale, least to most.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return dist_colors(list(range(n)))


def label_figure(fig: Figure, **provenance: Any) -> Figure:
    """Write 'profile: cpu · model: ... · steps: ...' in grey type at the figure's bottom right,
    at the theme's smallest font size.

    Used in: notebooks/01_dpo_single_token.ipynb, notebooks/02_update_rate.ipynb,
    notebooks/03_training_accuracy.ipynb, notebooks/04_prioritisation.ipynb,
    notebooks/05_misalignment.ipynb, notebooks/06_measuring_distinguishability.ipynb,
    notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    text = " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in provenance.items())
    # in the figure for plain savefig; figure_png (what a notebook shows) draws it in a strip
    # of its own below everything else, so it never overlaps the data or a legend
    fig.text(
        0.995,
        0.004,
        text,
        ha="right",
        va="bottom",
        fontsize=MIN_FONT_PT,
        color="0.35",
        wrap=True,
        gid=FOOTER_GID,
    )
    return fig


def figure(
    ncols: int = 1,
    nrows: int = 1,
    width: float = 4.2,
    height: float = 3.2,
    *,
    full_width: bool = False,
    **kwargs: Any,
):
    """``plt.subplots`` sized for the page: ``width`` x ``height`` inches per panel, the widths
    shrunk to fit :data:`COLUMN_WIDTH`, or :data:`FULL_WIDTH`
    with ``full_width=True`` (then tag the cell ``full-width``). More than :data:`MAX_COLUMNS`
    panels a row are refused in the main column: their text could not stay legible.

    Used in: notebooks/01_dpo_single_token.ipynb, notebooks/02_update_rate.ipynb,
    notebooks/03_training_accuracy.ipynb, notebooks/04_prioritisation.ipynb,
    notebooks/05_misalignment.ipynb, notebooks/06_measuring_distinguishability.ipynb,
    notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    if ncols < 1 or nrows < 1:
        raise ValueError(f"ncols and nrows must be at least 1, got ncols={ncols}, nrows={nrows}.")
    if ncols > MAX_COLUMNS and not full_width:
        raise ValueError(
            f"ncols={ncols}: at most {MAX_COLUMNS} panels a row fit the main column legibly; "
            "split the grid into more rows or figures, or pass full_width=True and tag the cell "
            "'full-width'."
        )
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}.")
    # the tight bounding box of the saved PNG adds up to ~0.1 inch: keep that much slack
    limit = (FULL_WIDTH if full_width else COLUMN_WIDTH) - _SLACK
    scale = min(1.0, limit / (width * ncols))
    # heights are kept: 9 pt labels, titles and a legend below need the room whatever the
    # panel's width (a narrowed panel is taller than wide, which line plots bear well)
    figsize = (width * ncols * scale, height * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **kwargs)
    _use_recording_formatter()
    return fig, axes


def smallest_font_pt(fig: Figure) -> float:
    """Smallest font size (points, at the figure's own size) of any visible, non-empty text.

    Used by: dpo_utils.plotting.
    """
    fig.canvas.draw()  # lays out tick labels, so the ones shown are known
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and _is_drawn(t)
    ]
    return float(min(sizes)) if sizes else float("nan")


def _is_drawn(text: Text) -> bool:
    # tick labels outside the axis's view limits are kept but never drawn
    axes = text.axes
    return axes is None or axes.get_visible()


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of ``fig`` as a notebook shows it (tight bounding box, :data:`DPI`), with
    label_figure's footer in a strip of its own below everything else (an outside legend
    included, so the two never overlap) and a ``dpo-figure`` text chunk:
    {"dpi", "min_font_pt", "fig_width_in"}.

    Used by: dpo_utils.plotting (the notebooks' PNG formatter).
    """
    info = {
        "dpi": float(fig.dpi),
        "min_font_pt": smallest_font_pt(fig),
        "fig_width_in": float(fig.get_figwidth()),
    }
    footers = [t for t in fig.texts if t.get_gid() == FOOTER_GID and t.get_visible()]
    for t in footers:
        t.set_visible(False)
    try:
        buf = io.BytesIO()
        fig.savefig(
            buf,
            format="png",
            dpi=fig.dpi,
            bbox_inches="tight",
            pad_inches=0.04,
            facecolor="white",
        )
    finally:
        for t in footers:
            t.set_visible(True)
    body = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if footers:
        strip = _footer_strip(" · ".join(t.get_text() for t in footers), body.width, fig.dpi)
        image = Image.new("RGB", (body.width, body.height + strip.height), "white")
        image.paste(body, (0, 0))
        image.paste(strip, (0, body.height))
    else:
        image = body
    meta = PngInfo()
    meta.add_text(FIGURE_INFO_KEY, json.dumps(info))
    out = io.BytesIO()
    image.save(out, format="png", pnginfo=meta, dpi=(fig.dpi, fig.dpi))
    return out.getvalue()


def _footer_strip(text: str, width_px: int, dpi: float) -> Image.Image:
    """The provenance text in grey, right-aligned, wrapped to ``width_px``."""
    width_in = width_px / dpi
    probe = Figure(figsize=(width_in, 1), dpi=dpi)
    canvas = FigureCanvasAgg(probe)
    extent = probe.text(0, 0, text, fontsize=MIN_FONT_PT).get_window_extent(canvas.get_renderer())
    n_lines = max(1, math.ceil(extent.width / (0.97 * width_px)))
    lines = textwrap.wrap(text, math.ceil(len(text) / n_lines) + 2) if n_lines > 1 else [text]
    line_in = 1.35 * MIN_FONT_PT / 72
    strip = Figure(figsize=(width_in, line_in * len(lines) + 0.04), dpi=dpi, facecolor="white")
    FigureCanvasAgg(strip)
    strip.text(
        0.995,
        0.5,
        "\n".join(lines),
        ha="right",
        va="center",
        fontsize=MIN_FONT_PT,
        color="0.35",
        multialignment="right",
    )
    buf = io.BytesIO()
    strip.savefig(buf, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image.resize((width_px, image.height))


def _png_base64(fig: Figure) -> str:
    return base64.b64encode(figure_png(fig)).decode("ascii")


def figure_info(png: bytes) -> dict[str, float] | None:
    """Read back what :func:`figure_png` recorded, plus the image's pixel size and its width in
    inches; None for a PNG without the record.

    Used by: browser_tests/test_figures.py.
    """
    with Image.open(io.BytesIO(png)) as image:
        raw = image.info.get(FIGURE_INFO_KEY)
        width_px, height_px = image.size
    if raw is None:
        return None
    info = json.loads(raw)
    info.update(
        width_px=float(width_px), height_px=float(height_px), width_in=width_px / info["dpi"]
    )
    return info
