"""One look for every figure: a seaborn theme, a colour-blind-safe palette, and a provenance label.

Every figure in the book carries a small footer that says what produced it (profile, model, steps),
so a tiny model's output is never mistaken for a 7B model's.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns

__all__ = ["PALETTE", "set_theme", "sequential_colors", "label_figure", "figure"]

#: seaborn's colour-blind-safe qualitative palette (Okabe-Ito-like)
PALETTE = sns.color_palette("colorblind")


def set_theme() -> None:
    """Apply the book's theme; call once per notebook.

    Used by: dpo_utils.book.
    """
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=1.0)
    mpl.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "figure.constrained_layout.use": True,
            "axes.titleweight": "bold",
            "axes.titlesize": 12,
            "legend.frameon": False,
            "lines.linewidth": 2.0,
        }
    )


def sequential_colors(n: int, name: str = "viridis") -> list[tuple[float, float, float]]:
    """``n`` ordered colours for a quantity that varies (e.g. distinguishability); perceptually
    uniform.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb.
    """
    return sns.color_palette(name, n_colors=n)


def label_figure(fig: plt.Figure, **provenance: Any) -> plt.Figure:
    """Write 'profile=cpu · model=... · steps=...' in small grey type at the figure's bottom right.

    Used in: notebooks/01_dpo_single_token.ipynb, notebooks/02_update_rate.ipynb,
    notebooks/03_training_accuracy.ipynb, notebooks/04_prioritisation.ipynb,
    notebooks/05_misalignment.ipynb, notebooks/06_measuring_distinguishability.ipynb,
    notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    text = " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in provenance.items())
    footer = 0.2 / fig.get_figheight()  # about 0.2 inch kept free below the axes for the label
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        # constrained/tight layout engines take rect; the base class's signature does not say so
        engine.set(rect=(0, footer, 1, 1 - footer))  # type: ignore[call-arg]
    else:
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, footer + 0.1))
    fig.text(0.995, 0.004, text, ha="right", va="bottom", fontsize=7, color="0.4")
    return fig


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, **kwargs: Any):
    """``plt.subplots`` sized for page width: ``width`` x ``height`` inches per panel.

    Used in: notebooks/01_dpo_single_token.ipynb, notebooks/02_update_rate.ipynb,
    notebooks/03_training_accuracy.ipynb, notebooks/04_prioritisation.ipynb,
    notebooks/05_misalignment.ipynb, notebooks/06_measuring_distinguishability.ipynb,
    notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows + 0.25), **kwargs
    )
    return fig, axes
