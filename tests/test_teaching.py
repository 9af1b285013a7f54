"""make student: solutions are removed, exercises stay, every other byte is unchanged."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

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
