"""Structure of every chapter notebook (their execution is tested by `pytest --nbval-lax
notebooks`)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_parameters_cell_reading_the_profile(path):
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    assert tagged[0]["cell_type"] == "code"
    assert source.splitlines()[0] == 'profile = os.environ.get("DPO_PROFILE", "cpu")'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} has stored outputs"
            assert cell.get("execution_count") is None, f"{path.name} has execution counts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_starts_chapter_and_ends_with_exercises(path):
    cells = _cells(path)
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "start_chapter(" in code, f"{path.name} never calls book.start_chapter"
    assert "{exercise}" in text and "{solution}" in text, (
        f"{path.name} has no exercises with solutions"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_a_caption_and_alt_text(path):
    """A cell that shows a figure carries myst-nb metadata: mystnb.figure.caption and
    mystnb.image.alt."""
    missing = []
    for index, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code" or "plt.show()" not in "".join(cell["source"]):
            continue
        meta = cell.get("metadata", {}).get("mystnb", {})
        caption = meta.get("figure", {}).get("caption", "")
        alt = meta.get("image", {}).get("alt", "")
        if len(caption) < 20 or len(alt) < 20:
            missing.append(index)
    assert not missing, (
        f"{path.name}: figure cells {missing} lack a caption or alt text (mystnb metadata)"
    )


TAKEAWAY = "## What you should take away"
CHAPTERS = [p for p in NOTEBOOKS if p.name[:2].isdigit()]
# what may carry a digit in a take-away: glued values, math, code, cross-references, (D1)-(D7)
_NOT_TYPED = re.compile(r"\{glue(?::\w+)?\}`[^`]*`|\{doc\}`[^`]*`|\$[^$]*\$|`[^`]*`|\(D\d\)")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_ends_with_takeaways_then_exercises(path):
    """A "What you should take away" cell of 3-5 bullets after the last code cell, then the
    exercises; its numbers are glued (d2l's habit, issue 14 item 11)."""
    cells = _cells(path)
    texts = ["".join(c["source"]) for c in cells]
    found = [i for i, t in enumerate(texts) if t.startswith(TAKEAWAY)]
    assert len(found) == 1, f"{path.name}: {len(found)} '{TAKEAWAY}' cells, want one"
    i = found[0]
    last_code = max(j for j, c in enumerate(cells) if c["cell_type"] == "code")
    assert i > last_code, f"{path.name}: the take-away comes before the last code cell"
    rest = texts[i + 1 :]
    assert rest and rest[0].startswith("## Exercises"), (
        f"{path.name}: the exercises must follow the take-away"
    )
    bullets = re.findall(r"^- ", texts[i], flags=re.MULTILINE)
    assert 3 <= len(bullets) <= 5, f"{path.name}: {len(bullets)} take-away bullets, want 3-5"
    typed = re.findall(r"\d", _NOT_TYPED.sub("", texts[i]))
    assert not typed, f"{path.name}: a typed number in the take-away; glue it or leave it out"
