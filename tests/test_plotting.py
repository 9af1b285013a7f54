"""The plotting theme: figures drawn at the column's width with legible fonts, the recorded
legibility data, and the one distinguishability colour scale."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from PIL import Image  # noqa: E402

from dpo_utils import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def theme():
    plotting.set_theme()
    yield
    plt.close("all")


def _three_panel_figure():
    fig, axes = plotting.figure(ncols=3, width=3.4, height=3.0, sharey=True)
    for ax in axes:
        ax.plot([0, 1, 2], [0, 1, 4], label="a line")
        ax.set(title="a panel", xlabel="step", ylabel="value")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", title="legend")
    plotting.label_figure(fig, profile="cpu", model="tiny", steps=100)
    return fig


def test_wide_grid_is_shrunk_to_the_column():
    fig, _ = plotting.figure(ncols=3, width=4.0, height=3.0)
    # 3 x 4 in asked for; the main column is COLUMN_WIDTH wide
    assert fig.get_figwidth() <= plotting.COLUMN_WIDTH
    assert fig.get_figwidth() == pytest.approx(plotting.COLUMN_WIDTH - 0.2)
    # heights are kept: the labels need room however narrow the panel
    assert fig.get_figheight() == pytest.approx(3.0)


def test_small_figure_is_left_alone():
    fig, _ = plotting.figure(width=4.6, height=3.6)
    assert fig.get_size_inches() == pytest.approx((4.6, 3.6))


def test_too_many_columns_are_refused_unless_full_width():
    with pytest.raises(ValueError, match="ncols=4"):
        plotting.figure(ncols=4)
    fig, axes = plotting.figure(ncols=4, width=3.0, full_width=True)
    assert len(axes) == 4
    assert fig.get_figwidth() <= plotting.FULL_WIDTH


def test_saved_png_records_legibility_and_keeps_text_legible():
    fig = _three_panel_figure()
    info = plotting.figure_info(plotting.figure_png(fig))
    assert info is not None
    assert info["dpi"] == plotting.DPI
    # every text of a figure drawn with the theme's defaults (ticks, legend, footer) is >= 9 pt
    assert info["min_font_pt"] >= plotting.MIN_FONT_PT
    # the saved image (tight box, outside legend included) is at most the column's width, so
    # shown in the 672 px column its text is at least its nominal size
    assert info["width_in"] <= plotting.COLUMN_WIDTH
    assert info["width_px"] == pytest.approx(info["width_in"] * plotting.DPI)


def test_footer_goes_below_an_outside_legend():
    fig, axes = plotting.figure(ncols=3, width=3.4, height=3.0)
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="a line")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center")
    plotting.label_figure(fig, profile="cpu", steps=100)
    with_footer = Image.open(io.BytesIO(plotting.figure_png(fig)))
    footer = next(t for t in fig.texts if t.get_gid() == plotting.FOOTER_GID)
    footer.set_visible(False)
    without = Image.open(io.BytesIO(plotting.figure_png(fig)))
    # the footer is a strip of its own under the figure, as wide, holding one line of 9 pt
    # text (at most 0.3 inch)
    assert with_footer.width == without.width
    assert 0 < with_footer.height - without.height <= 0.3 * plotting.DPI
    strip = with_footer.convert("L").crop((0, without.height, without.width, with_footer.height))
    assert strip.getextrema()[0] < 160  # grey text drawn in the strip


def test_long_footer_wraps_inside_the_figure_width():
    fig, ax = plotting.figure(width=3.0, height=2.5)
    plotting.label_figure(fig, **{f"key_{k}": "a fairly long value" for k in range(6)})
    png = Image.open(io.BytesIO(plotting.figure_png(fig)))
    assert png.width <= 3.1 * plotting.DPI
    assert png.height > 2.5 * plotting.DPI + 2 * 0.15 * plotting.DPI  # two lines at least


def test_smallest_font_sees_a_small_legend():
    fig = _three_panel_figure()
    fig.axes[0].legend(fontsize=6)
    assert plotting.smallest_font_pt(fig) == 6


def test_png_without_record_reads_as_none():
    fig, ax = plt.subplots()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert plotting.figure_info(buf.getvalue()) is None


def test_dist_colors_are_ordered_and_adjacent_levels_differ():
    gaps = [1.0, 1.5, 2.0, 3.0]
    colors = plotting.dist_colors(gaps)
    # darker = more distinguishable: luminance falls along the ranks
    lum = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in colors]
    assert all(a > b for a, b in zip(lum, lum[1:], strict=False))
    # adjacent levels at least 0.15 apart in RGB (chapter 2's gaps were nearly equal colours
    # with viridis sampled by value); threshold chosen before looking: a clear visible step
    steps = [np.linalg.norm(np.subtract(a, b)) for a, b in zip(colors, colors[1:], strict=False)]
    assert min(steps) > 0.15
    # equal values, equal colours; order of the input does not matter
    assert plotting.dist_colors([3.0, 1.0, 3.0]) == [colors[3], colors[0], colors[3]]


def test_dist_colors_never_use_the_pale_end():
    # the least distinguishable colour must stand out on white: not near-white
    assert sum(plotting.dist_colors([0.0, 1.0])[0]) < 2.6


def test_dist_colors_bad_input():
    with pytest.raises(ValueError, match="finite"):
        plotting.dist_colors([1.0, float("nan")])


def test_no_answer_is_not_background_grey():
    grey = np.array(to_rgb("0.5"))
    for color in plotting.ANSWER_COLORS.values():
        rgb = np.array(color)
        assert rgb.max() - rgb.min() > 0.3  # a saturated colour, not a grey
    assert np.linalg.norm(np.subtract(*plotting.ANSWER_COLORS.values())) > 0.5
    assert np.linalg.norm(np.array(plotting.ANSWER_COLORS["No"]) - grey) > 0.3
