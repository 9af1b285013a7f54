"""The "Used in:" / "Used by:" lines of the package are checked against the chapters' code.

The index comes from the notebooks' code cells (tests/chapter_index.py), so a docstring that
names a chapter whose code never uses the function fails here; `python tests/chapter_index.py
--fix` rewrites the lines that fail.
"""

import ast

import chapter_index as ix


def test_every_used_in_line_matches_the_chapters_code():
    ci, pi = ix.chapter_index(), ix.package_index()
    found = [
        p
        for qualname, obj in ix.public_objects()
        for p in ix.problems(qualname, obj.__doc__ or "", ci, pi, isinstance(obj, type))
    ]
    assert not found, "fix with `python tests/chapter_index.py --fix`:\n" + "\n".join(found)


def test_index_reads_module_calls_imported_names_and_passed_functions():
    code = (
        "from dpo_utils import linear, results as r\n"
        "from dpo_utils.tables import early_slope as slope\n"
        "import dpo_utils.metrics\n"
        "linear.train_last_layer(x)\n"
        "r.load_or_run('name', dpo_utils.metrics.distinguishability, {})\n"
        "slope(df)\n"
        "def plot(ax):\n    ax.plot(linear)\n"
    )
    assert ix.uses(ast.parse(code)) == {
        "linear.train_last_layer",
        "results.load_or_run",
        "metrics.distinguishability",
        "tables.early_slope",
    }


def test_a_docstring_naming_a_chapter_that_never_calls_the_function_fails():
    # The check must be able to fail: chapter 01 does not use tables.early_slope (chapter 02 does).
    ci = {"tables.early_slope": {"notebooks/02_update_rate.ipynb"}}
    wrong = "Slope.\n\nUsed in: notebooks/01_dpo_single_token.ipynb."
    right = "Slope.\n\nUsed in: notebooks/02_update_rate.ipynb."
    assert ix.problems("tables.early_slope", wrong, ci, {}) == [
        "tables.early_slope: names notebooks/01_dpo_single_token.ipynb, whose code never uses it",
        "tables.early_slope: notebooks/02_update_rate.ipynb uses it but is not named",
    ]
    assert ix.problems("tables.early_slope", right, ci, {}) == []


def test_package_only_functions_say_used_by():
    pi = {"results.atomic_write_text": {"dpo_utils.results"}}
    assert ix.problems("results.atomic_write_text", "Write.", {}, pi) == [
        "results.atomic_write_text: used only by the package; say 'Used by: dpo_utils.X'",
        "results.atomic_write_text: no 'Used in:' or 'Used by:' line",
    ]
    assert (
        ix.problems("results.atomic_write_text", "W.\n\nUsed by: dpo_utils.results.", {}, pi) == []
    )
    assert ix.problems("results.atomic_write_text", "W.\n\nUsed by: dpo_utils.data.", {}, pi) == [
        "results.atomic_write_text: names dpo_utils.data, which never uses it"
    ]


def test_every_chapter_has_an_index_entry():
    ci = ix.chapter_index()
    used = set().union(*ci.values())
    assert used == {f"notebooks/{p.name}" for p in ix.chapters()}
    assert len(used) == 13  # chapters 01-12 and the claims page (13)
