"""make student: solutions are removed, exercises stay, every other byte is unchanged; the
instructors' chapter table is read from the notebooks; benchmarks/chapter_times.py measures."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dpo_utils import teaching
from dpo_utils.teaching import SolutionFenceError, main, strip_solution_blocks, student_copy

INTRO = "# 2. Update rate\n\nThe first step is set by $\\|\\delta\\|$."
EXERCISE = (
    "```{exercise} Double beta\n:label: ex-beta\n\nDouble $\\beta$. Predict the first step.\n```"
)
SOLUTION = (
    "```{solution} ex-beta\n:class: dropdown\n\n"
    "It doubles: $u_1 - u_0 = \\eta\\beta\\,\\overline{se}$.\n```"
)
COLON_SOLUTION = ":::{solution} ex-eta\n:class: dropdown\n\nThe answer is `lr * 2`.\n:::"
# a four-backtick solution with a code block nested inside it
NESTED_SOLUTION = "````{solution} ex-code\n```python\nprint('secret')\n```\n````"
GATED_SOLUTION = (
    "```{solution-start} ex-gated\n:class: dropdown\n```\nThe gated answer.\n\n"
    "```{code-cell}\nprint('gated secret')\n```\n```{solution-end}\n```"
)


def _cells():
    """The notebook's cells, each as (cell with solutions, expected cell without them or None)."""
    params = new_code_cell('profile = os.environ.get("DPO_PROFILE", "cpu")\nbeta = None')
    params.metadata["tags"] = ["parameters"]
    colab = new_code_cell("import os, subprocess, sys")
    colab.metadata["tags"] = ["remove-cell"]
    tagged = new_code_cell("answer = 2 * first_step  # the solution")
    tagged.metadata["tags"] = ["solution", "hide-input"]
    tagged_md = new_markdown_cell("Worked solution in prose.")
    tagged_md.metadata["tags"] = ["solution"]
    pairs = [
        (new_markdown_cell(INTRO), "same"),
        (colab, "same"),
        (params, "same"),
        (new_code_cell("first_step = 0.5\nprint(first_step)"), "same"),
        (
            new_markdown_cell(f"## Exercises\n\n{EXERCISE}\n\n{SOLUTION}\n\nNext exercise below."),
            f"## Exercises\n\n{EXERCISE}\n\nNext exercise below.",
        ),
        (tagged, None),
        (new_markdown_cell(f"{SOLUTION}\n\n{COLON_SOLUTION}"), None),  # nothing but solutions
        (
            new_markdown_cell(f"Intro.\n\n{NESTED_SOLUTION}\n\n{GATED_SOLUTION}\n\nEnd."),
            "Intro.\n\nEnd.",
        ),
        (tagged_md, None),
        (
            new_markdown_cell(
                "Inline `{solution}` is just text, and so is\n\n```python\n# {solution}\n```"
            ),
            "same",
        ),
    ]
    for i, (cell, _) in enumerate(pairs):
        cell.id = f"cell-{i}"  # fixed ids, so the two notebooks below differ only where intended
    return pairs


def _write(path, cells):
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook(tmp_path):
    pairs = _cells()
    source = _write(tmp_path / "chapter.ipynb", [cell for cell, _ in pairs])
    expected_cells = []
    for cell, want in pairs:
        if want == "same":
            expected_cells.append(cell)
        elif want is not None:
            expected_cells.append(nbformat.from_dict({**cell, "source": want}))
    expected = _write(tmp_path / "expected.ipynb", expected_cells)
    return source, expected


def test_student_copy_removes_solutions_and_keeps_everything_else_byte_identical(
    notebook, tmp_path
):
    source, expected = notebook
    out = tmp_path / "student" / "chapter.ipynb"
    report = student_copy(source, out)
    assert out.read_bytes() == expected.read_bytes()
    text = out.read_text()
    for secret in (
        "It doubles",
        "lr * 2",
        "secret",
        "gated answer",
        "the solution",
        "Worked solution",
    ):
        assert secret not in text
    assert "{exercise} Double beta" in text and "Next exercise below." in text
    assert (report.blocks_removed, report.cells_removed) == (5, 3)
    nbformat.validate(nbformat.read(out, as_version=4))


def test_notebook_without_solutions_is_copied_exactly(tmp_path):
    source = _write(
        tmp_path / "plain.ipynb",
        [new_markdown_cell(f"# Title\n\n{EXERCISE}"), new_code_cell("x = 1")],
    )
    out = tmp_path / "out.ipynb"
    report = student_copy(source, out)
    assert out.read_bytes() == source.read_bytes()
    assert (report.blocks_removed, report.cells_removed) == (0, 0)


def test_blank_lines_around_a_removed_block_collapse_to_one():
    text, n = strip_solution_blocks(f"Before.\n\n{SOLUTION}\n\nAfter.\n")
    assert (text, n) == ("Before.\n\nAfter.\n", 1)


@pytest.mark.parametrize(
    "broken",
    [
        "Text\n\n```{solution} ex\nnever closed",
        "````{solution} ex\nclosed by a shorter fence\n```",
        "```{solution-start} ex\n```\ngated, but no end",
        "```{solution-end}\n```",
    ],
)
def test_unclosed_solution_fences_fail_loudly(tmp_path, broken):
    with pytest.raises(SolutionFenceError):
        strip_solution_blocks(broken)
    source = _write(
        tmp_path / "broken.ipynb", [new_markdown_cell("ok"), new_markdown_cell(broken)]
    )
    with pytest.raises(SolutionFenceError, match="cell 1"):
        student_copy(source, tmp_path / "out.ipynb")


def test_command_line_copies_a_directory(notebook, tmp_path, capsys):
    source, expected = notebook
    out_dir = tmp_path / "student_dir"
    assert main([str(source.parent), str(out_dir)]) == 0
    assert (out_dir / "chapter.ipynb").read_bytes() == expected.read_bytes()
    assert "removed 5 solution block(s), 3 cell(s)" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), str(out_dir)]) == 1


def test_output_is_valid_json_with_nbformat_layout(notebook, tmp_path):
    source, _ = notebook
    out = tmp_path / "o.ipynb"
    student_copy(source, out)
    raw = out.read_text()
    assert raw == json.dumps(json.loads(raw), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


# --- the chapter table of the instructors' page (issue 14 item 9) -------------------------------

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTORS = ROOT / "book" / "instructors.md"


def _chapter(path, title, *markdown):
    cells = [new_markdown_cell(f"# {title}\n\nIntro."), new_code_cell("x = 1")]
    cells += [new_markdown_cell(text) for text in markdown]
    return _write(path, cells)


def test_chapter_table_reads_titles_exercises_and_measured_times(tmp_path):
    gated = "```{exercise-start}\n:label: ex-g\n```\nText.\n```{exercise-end}\n```"
    _chapter(
        tmp_path / "01_one.ipynb",
        "1. First chapter",
        f"## Exercises\n\n{EXERCISE}\n\n{SOLUTION}\n\n{COLON_SOLUTION}",
        ":::{exercise}\n:label: ex-colon\nColon fence.\n:::\n\n" + gated,
    )
    _chapter(tmp_path / "02_two.ipynb", "Second: a `code` title", "No exercises here.")
    _write(tmp_path / "notes.ipynb", [new_markdown_cell("# not a chapter")])
    times = tmp_path / "times.json"
    times.write_text(
        json.dumps({"chapters": [{"chapter": "01_one", "wall_s": 12.3, "peak_rss_mib": 456.7}]})
    )
    table = teaching.chapter_table(tmp_path, times)
    assert list(table.chapter) == ["01", "02"]
    assert list(table.title) == ["First chapter", "Second: a `code` title"]
    assert list(table.exercises) == [3, 0]  # backticks, colons, gated; solutions not counted
    assert table.wall_s.iloc[0] == 12.3 and table.peak_rss_mib.iloc[0] == 456.7
    assert table.wall_s.isna().iloc[1]  # not measured: left empty, never made up
    markdown = teaching.chapter_table_markdown(table)
    assert "| 01 | First chapter | 3 | 12 | 457 |" in markdown
    assert "| 02 | Second: a `code` title | 0 | not measured | not measured |" in markdown


def test_chapter_table_fails_clearly_without_chapters_or_titles(tmp_path):
    with pytest.raises(FileNotFoundError, match="no chapter notebooks"):
        teaching.chapter_table(tmp_path, None)
    _write(tmp_path / "01_x.ipynb", [new_markdown_cell("No heading.")])
    with pytest.raises(ValueError, match="01_x.ipynb: no '# Title' heading"):
        teaching.chapter_table(tmp_path, None)


def test_sync_rewrites_only_between_the_markers(tmp_path):
    start, end = teaching.CHAPTER_TABLE_MARKERS
    page = tmp_path / "page.md"
    page.write_text(f"Before.\n\n{start}\nold table\n{end}\n\nAfter.\n")
    (tmp_path / "nb").mkdir()
    _chapter(tmp_path / "nb" / "01_a.ipynb", "1. A")
    table = teaching.chapter_table(tmp_path / "nb", None)
    assert teaching.sync_chapter_table(page, table, check=True)  # differs, not written
    assert "old table" in page.read_text()
    assert teaching.sync_chapter_table(page, table)
    text = page.read_text()
    assert text.startswith("Before.\n\n") and text.endswith(f"{end}\n\nAfter.\n")
    assert "old table" not in text and "| 01 | A | 0 |" in text
    assert not teaching.sync_chapter_table(page, table)  # now in step
    page.write_text("no markers")
    with pytest.raises(ValueError, match="needs exactly one"):
        teaching.sync_chapter_table(page, table)


def test_instructors_chapter_table_matches_the_notebooks():
    """Fails when a chapter's title, its exercises or book/chapter_times.json change and the
    page was not regenerated."""
    stale = teaching.sync_chapter_table(INSTRUCTORS, teaching.chapter_table(), check=True)
    assert not stale, (
        "book/instructors.md's chapter table is out of date: run "
        "`python -m dpo_utils.teaching --chapter-table book/instructors.md`"
    )


def test_instructors_learning_goals_name_every_chapter_by_its_title():
    text = INSTRUCTORS.read_text()
    goals = re.findall(r"^\| \*\*(\d\d) (.+?)\*\* \|", text, flags=re.MULTILINE)
    table = teaching.chapter_table(times=None)
    assert goals == list(zip(table.chapter, table.title, strict=True)), (
        "the learning-goals table must list every chapter, in order, by its notebook's title"
    )


# --- benchmarks/chapter_times.py (issue 14 item 10) ---------------------------------------------


def _chapter_times_module():
    spec = importlib.util.spec_from_file_location(
        "chapter_times", ROOT / "benchmarks" / "chapter_times.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chapter_times_measures_wall_time_and_kernel_memory(tmp_path):
    chapter_times = _chapter_times_module()
    # the kernel holds 200 MiB of written bytes for a second: the poll must see them
    notebook = _write(
        tmp_path / "01_mem.ipynb",
        [
            new_markdown_cell("# 1. Memory"),
            new_code_cell("import time\nblock = b'x' * (200 * 2**20)\ntime.sleep(1.0)"),
        ],
    )
    row = chapter_times.run_chapter(notebook, tmp_path, dict(os.environ))
    assert row["chapter"] == "01_mem"
    assert row["wall_s"] >= 1.0  # the cell sleeps for a second
    assert row["peak_rss_mib"] >= 200  # the buffer alone is 200 MiB
    machine = chapter_times.machine()
    assert {"cpu", "logical_cores", "ram_gib", "date", "git_commit"} <= machine.keys()


def test_chapter_times_names_a_failing_chapter(tmp_path):
    chapter_times = _chapter_times_module()
    notebook = _write(
        tmp_path / "02_fails.ipynb",
        [new_markdown_cell("# 2. Fails"), new_code_cell("raise ValueError('broken')")],
    )
    with pytest.raises(RuntimeError, match="02_fails.ipynb failed"):
        chapter_times.run_chapter(notebook, tmp_path, dict(os.environ))
