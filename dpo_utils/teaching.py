"""Student copies of the chapters: the same notebooks with every exercise solution removed.

Two kinds of solution are removed:

* a ``{solution}`` block from sphinx-exercise inside a markdown cell, fenced with backticks or
  colons (```` ```{solution} ex-id ```` ... ```` ``` ````, or ``:::{solution}`` ... ``:::``), and
  the gated form ``{solution-start}`` ... ``{solution-end}``;
* any cell tagged ``solution``.

Every other cell is written back exactly as it was read, so a notebook without solutions is copied
byte for byte (notebooks are stored the way nbformat writes them: one-space indent, sorted keys).

Command line: ``python -m dpo_utils.teaching IN.ipynb OUT.ipynb`` or
``python -m dpo_utils.teaching IN_DIR OUT_DIR`` (every ``*.ipynb`` of IN_DIR).

The chapter table of the instructors' page (title, exercise count, measured run time and memory of
every chapter) is read from the notebooks and from ``book/chapter_times.json`` (written by
``benchmarks/chapter_times.py``), never typed: ``python -m dpo_utils.teaching --chapter-table
book/instructors.md`` rewrites it between its two marker comments, and tests/test_teaching.py fails
when the page and the notebooks disagree.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = [
    "CHAPTER_TABLE_MARKERS",
    "SolutionFenceError",
    "StudentCopyReport",
    "chapter_table",
    "chapter_table_markdown",
    "strip_solution_blocks",
    "student_copy",
    "sync_chapter_table",
    "main",
]

SOLUTION_TAG = "solution"
# an opening fence: indentation, three or more backticks or colons, then {solution...}
_OPEN = re.compile(
    r"^(?P<indent> {0,3})(?P<fence>`{3,}|:{3,})\{(?P<name>solution(?:-start|-end)?)\}"
)


ROOT = Path(__file__).resolve().parents[1]
CHAPTER_TIMES = ROOT / "book" / "chapter_times.json"
CHAPTER_TABLE_MARKERS = ("<!-- chapter-table:start -->", "<!-- chapter-table:end -->")
# an exercise directive of sphinx-exercise, either fence, one-block or gated form
_EXERCISE = re.compile(r"^ {0,3}(?:`{3,}|:{3,})\{exercise(?:-start)?\}", re.MULTILINE)
_HEADING = re.compile(r"^#\s+(?:\d+\.\s+)?(?P<title>.+?)\s*$", re.MULTILINE)


class SolutionFenceError(ValueError):
    """A ``{solution}`` fence that is never closed; removing it blindly could leak or lose text.

    Used by: dpo_utils.teaching.
    """


@dataclass
class StudentCopyReport:
    """What :func:`student_copy` removed from one notebook.

    Used by: dpo_utils.teaching.
    """

    blocks_removed: int = 0
    cells_removed: int = 0


def _closing_index(lines: list[str], start: int, fence: str) -> int:
    """Index of the line that closes the fence opened at ``lines[start]`` (CommonMark rules)."""
    char, width = fence[0], len(fence)
    closing = re.compile(rf"^ {{0,3}}{re.escape(char)}{{{width},}}\s*$")
    for i in range(start + 1, len(lines)):
        if closing.match(lines[i]):
            return i
    raise SolutionFenceError(
        f"the {{solution}} fence opened on line {start + 1} ({lines[start].strip()!r}) "
        "is never closed; "
        f"close it with a line of at least {width} {char!r} characters."
    )


def _solution_span(lines: list[str], start: int) -> tuple[int, int] | None:
    """(first, last) line indices of the solution starting at ``start``, or None if none starts
    there."""
    match = _OPEN.match(lines[start])
    if not match:
        return None
    name = match["name"]
    if name == "solution-end":
        raise SolutionFenceError(
            f"line {start + 1}: a {{solution-end}} without a {{solution-start}} before it."
        )
    end = _closing_index(lines, start, match["fence"])
    if name == "solution":
        return start, end
    for i in range(end + 1, len(lines)):  # gated form: run on to the {solution-end} fence
        closer = _OPEN.match(lines[i])
        if closer and closer["name"] == "solution-end":
            return start, _closing_index(lines, i, closer["fence"])
    raise SolutionFenceError(
        f"the {{solution-start}} on line {start + 1} has no matching {{solution-end}}."
    )


def strip_solution_blocks(markdown: str) -> tuple[str, int]:
    """Remove every ``{solution}`` block from MyST ``markdown``; return (text, blocks removed).

    A blank line left on both sides of a removed block is collapsed to one.

    Used by: dpo_utils.teaching.
    """
    lines = markdown.splitlines(keepends=True)
    kept: list[str] = []
    removed, i = 0, 0
    while i < len(lines):
        span = _solution_span(lines, i)
        if span is None:
            kept.append(lines[i])
            i += 1
            continue
        removed += 1
        i = span[1] + 1
        if kept and not kept[-1].strip() and i < len(lines) and not lines[i].strip():
            i += 1  # drop one of the two blank lines that surrounded the block
    text = "".join(kept)
    if removed and text.endswith("\n") and not markdown.endswith("\n"):
        text = text[:-1]
    return text, removed


def _source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _has_solution_tag(cell: dict) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_copy(notebook_in: str | Path, notebook_out: str | Path) -> StudentCopyReport:
    """Write ``notebook_out``: ``notebook_in`` without solution blocks and ``solution``-tagged
    cells.

    Cells without solutions are written back unchanged; a markdown cell that held nothing but
    solutions is dropped. Raises :class:`SolutionFenceError` (naming the cell) for an unclosed
    fence.

    Used by: dpo_utils.teaching.
    """
    notebook_in, notebook_out = Path(notebook_in), Path(notebook_out)
    raw = notebook_in.read_text(encoding="utf-8")
    nb = json.loads(raw)
    report, cells = StudentCopyReport(), []
    for index, cell in enumerate(nb.get("cells", [])):
        if _has_solution_tag(cell):
            report.cells_removed += 1
            continue
        if cell.get("cell_type") == "markdown":
            try:
                text, n = strip_solution_blocks(_source_text(cell))
            except SolutionFenceError as err:
                raise SolutionFenceError(f"{notebook_in}, cell {index}: {err}") from None
            if n:
                report.blocks_removed += n
                if not text.strip():
                    report.cells_removed += 1
                    continue
                source = cell["source"]
                cell = {
                    **cell,
                    "source": text.splitlines(keepends=True) if isinstance(source, list) else text,
                }
        cells.append(cell)
    notebook_out.parent.mkdir(parents=True, exist_ok=True)
    if report.blocks_removed == 0 and report.cells_removed == 0:
        notebook_out.write_text(raw, encoding="utf-8")  # nothing to remove: an exact copy
        return report
    nb["cells"] = cells
    notebook_out.write_text(
        json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return report


def _chapter_facts(path: Path) -> dict:
    """Title (the first ``#`` heading, its number dropped) and exercise count of one notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    texts = [_source_text(c) for c in cells if c.get("cell_type") == "markdown"]
    title = next((m["title"] for text in texts if (m := _HEADING.search(text))), None)
    if title is None:
        raise ValueError(f"{path}: no '# Title' heading in any markdown cell")
    exercises = sum(len(_EXERCISE.findall(text)) for text in texts)
    return {"chapter": path.stem.split("_", 1)[0], "title": title, "exercises": exercises}


def chapter_table(
    notebooks: str | Path = ROOT / "notebooks", times: str | Path | None = CHAPTER_TIMES
):
    """One row per chapter notebook (``NN_*.ipynb``, in order): chapter number, title, exercises
    and, from ``times`` (benchmarks/chapter_times.py's JSON; None or a missing file: left empty),
    the measured wall seconds and peak memory (MiB) of a cold run.

    Used by: book/status.ipynb, ``python -m dpo_utils.teaching --chapter-table``.
    """
    paths = sorted(Path(notebooks).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks (NN_*.ipynb) in {notebooks}")
    table = pd.DataFrame([{"file": p.stem, **_chapter_facts(p)} for p in paths])
    measured = {}
    if times is not None and Path(times).is_file():
        measured = {row["chapter"]: row for row in json.loads(Path(times).read_text())["chapters"]}
    for column in ("wall_s", "peak_rss_mib"):
        table[column] = [measured.get(f, {}).get(column, float("nan")) for f in table.file]
    return table


def chapter_table_markdown(table) -> str:
    """``table`` (from :func:`chapter_table`) as the Markdown table of the instructors' page.

    Used by: dpo_utils.teaching.
    """

    def measured(value: float, fmt: str) -> str:
        return "not measured" if value != value else format(value, fmt)  # NaN != NaN

    lines = [
        "| chapter | title | exercises | wall time, cold (s) | peak memory (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r.chapter} | {r.title} | {r.exercises} | {measured(r.wall_s, '.0f')} "
        f"| {measured(r.peak_rss_mib, '.0f')} |"
        for r in table.itertuples()
    ]
    return "\n".join(lines)


def sync_chapter_table(page: str | Path, table, check: bool = False) -> bool:
    """Put ``table`` between the chapter-table markers of ``page``; True if the page changed (with
    ``check``, report a difference without writing).

    Used by: ``python -m dpo_utils.teaching --chapter-table``, benchmarks/chapter_times.py.
    """
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    start, end = CHAPTER_TABLE_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{page} needs exactly one {start} followed by one {end}")
    head, rest = text.split(start)
    new = f"{head}{start}\n{chapter_table_markdown(table)}\n{end}{rest.split(end, 1)[1]}"
    if new != text and not check:
        page.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring. Returns the exit status.

    Used by: ``python -m dpo_utils.teaching`` (``make student``).
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--chapter-table":
        changed = sync_chapter_table(args[1], chapter_table())
        print(f"{args[1]}: chapter table {'rewritten' if changed else 'already up to date'}")
        return 0
    if len(args) != 2:
        print(
            "usage: python -m dpo_utils.teaching IN.ipynb OUT.ipynb | IN_DIR OUT_DIR\n"
            "       python -m dpo_utils.teaching --chapter-table PAGE.md",
            file=sys.stderr,
        )
        return 2
    src, dst = Path(args[0]), Path(args[1])
    if src.is_dir():
        pairs = [(nb, dst / nb.name) for nb in sorted(src.glob("*.ipynb"))]
        if not pairs:
            print(f"no notebooks (*.ipynb) found in {src}", file=sys.stderr)
            return 1
    elif src.is_file():
        pairs = [(src, dst)]
    else:
        print(f"{src} does not exist", file=sys.stderr)
        return 1
    for nb_in, nb_out in pairs:
        try:
            report = student_copy(nb_in, nb_out)
        except SolutionFenceError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(
            f"{nb_out}: removed {report.blocks_removed} solution block(s), "
            f"{report.cells_removed} cell(s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
