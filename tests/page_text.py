"""The prose a reader sees on each page of the book, for the page-scanning tests.

Markdown cells of the chapter notebooks, the captions and alt texts of their figures, and the
book's markdown pages; without code, glued values, citations, cross-references and link targets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.glob("notebooks/*.ipynb")) + sorted(ROOT.glob("book/*.md"))
# Chapters being rewritten by another helper ("Real behaviours, an honest stand-in"): the
# page
# scans report them but do not enforce; each scan fails once a pending page passes, so the set
# shrinks
PENDING: set[str] = set()

# fenced blocks: ```lang ... ``` is code (dropped); ```{directive} ... ``` is prose (kept)
_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
_ROLES = re.compile(r"\{[a-zA-Z:-]+\}`[^`]*`")  # {glue:text}`x`, {cite}`y`, {doc}`z`, ...
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_OPTION = re.compile(r"^:[a-z-]+:.*$")  # directive options such as ":label: ex-01"


def _strip(text: str) -> str:
    out, in_code, directives = [], False, 0
    for line in text.splitlines():
        match = _FENCE.match(line.strip())
        if match:
            info = match.group(2).strip()
            if in_code:
                in_code = info != ""  # only a bare fence closes a code block
            elif info.startswith("{"):
                directives += 1  # {exercise}, {solution}, {note}, ...: prose, kept
            elif info == "" and directives:
                directives -= 1
            else:
                in_code = True  # ```bash, ```python or a bare ``` block: code, dropped
            continue
        if in_code or _OPTION.match(line.strip()):
            continue
        out.append(line)
    text = "\n".join(out)
    for pattern, repl in ((_ROLES, " "), (_INLINE_CODE, " "), (_LINK, r"\1"), (_URL, " ")):
        text = pattern.sub(repl, text)
    return text


def page_texts(path: Path) -> list[tuple[str, str]]:
    """(where, prose) pairs of one page: each markdown cell, figure caption and alt text."""
    if path.suffix == ".md":
        return [("page", _strip(path.read_text()))]
    cells = json.loads(path.read_text())["cells"]
    texts = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            texts.append((f"cell {index}", _strip("".join(cell["source"]))))
        meta = cell.get("metadata", {}).get("mystnb", {})
        caption = meta.get("figure", {}).get("caption")
        alt = meta.get("image", {}).get("alt")
        if caption:
            texts.append((f"cell {index} caption", _strip(caption)))
        if alt:
            texts.append((f"cell {index} alt text", _strip(alt)))
    return texts


def sentences(text: str) -> list[str]:
    """Split prose into sentences (at . ! ? before a capital, headings, lists, tables)."""
    text = re.sub(r"\n(?=\s*(?:#|[-*+] |\d+\. |\|))", "\n\n", text)
    text = re.sub(r"\s+", " ", text.replace("\n\n", " \u2029 "))
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z*(\"\u201c])|\u2029", text)
    return [p.strip() for p in parts if p.strip()]
