"""The book attributes to the paper only what we know it says.

What the paper contains is listed in the project's notes on the paper; its theorem statements,
constants and reported numbers are unknown to us. The phrases below attributed such unknowns to the
paper (a sharper bound and why, how the accuracy bound depends on distinguishability, which claims
are theorems, what the paper's plots and pictures show, which experiment the paper ran). Each is
rephrased on the pages as what the authors' released code does, or as our own statement. The scan
reads every page's prose (``page_text``); chapters in ``page_text.PENDING`` are reported, not
enforced.
"""

from __future__ import annotations

import re

import pytest
from page_text import PAGES, PENDING, page_texts

FORBIDDEN = (
    "the paper's bound is sharper",
    "paper's sharper bound",
    "the paper proves a sharper",
    "sharper because it uses the data",
    "the bound improves with the distinguishability",
    "the paper states these",
    "in terms of the same distributional quantities",
    "the paper's plots show",
    "the paper's plots of",
    "the authors show it with umap",
    "as the paper's pictures suggest",
    "the paper's pictures",
    "their experiment trains",
    "the paper's experiment trains",
    "the paper's numbers show",
)


def forbidden_phrases(path) -> list[str]:
    hits = []
    for where, text in page_texts(path):
        flat = re.sub(r"\s+", " ", text).lower()
        hits += [f"{where}: {phrase!r}" for phrase in FORBIDDEN if phrase in flat]
    return hits


@pytest.mark.parametrize("path", [p for p in PAGES if p.name not in PENDING], ids=lambda p: p.name)
def test_no_unknown_attributed_to_the_paper(path):
    hits = forbidden_phrases(path)
    assert not hits, f"{path.name} attributes unknowns to the paper: {hits}"


@pytest.mark.parametrize("path", [p for p in PAGES if p.name in PENDING], ids=lambda p: p.name)
def test_pending_pages_are_still_pending(path):
    """Once a pending chapter passes both page scans it should leave page_text.PENDING."""
    from test_glued_numbers import unglued_numbers

    if not forbidden_phrases(path) and not unglued_numbers(path):
        pytest.fail(f"{path.name} passes both page scans: remove it from page_text.PENDING")


def test_the_scan_catches_the_phrases_the_review_found():
    samples = {
        "a.md": "The paper's bound is sharper because it uses the data's distribution.",
        "b.md": "The authors show it with UMAP pictures.",
    }
    for text in samples.values():
        flat = text.lower()
        assert any(phrase in flat for phrase in FORBIDDEN), text
