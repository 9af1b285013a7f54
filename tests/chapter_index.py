"""The chapter -> function index, read from the notebooks' code (never written by hand).

For each chapter, the ``dpo_utils`` functions and classes its code cells use: called directly
(``from dpo_utils.tables import early_slope``), as ``module.func`` (``from dpo_utils import
linear``, then ``linear.train(...)``), or passed as a value (``results.load_or_run("x",
linear.train, ...)``).
The same reading of the package's own modules gives, for each function, the package functions that
use it. tests/test_chapter_index.py checks every docstring's "Used in:" / "Used by:" line against
both.

Run ``python tests/chapter_index.py`` to print the index as a Markdown table, and
``python tests/chapter_index.py --fix`` to rewrite every public function's "Used in:" / "Used by:"
paragraph from the index (it leaves a paragraph alone when nothing in the package or the chapters
uses the function: write those by hand, e.g. "Used by: ``python -m dpo_utils.train``").
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dpo_utils"


def chapters() -> list[Path]:
    """Every executable chapter, in reading order."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def chapter_source(path: Path) -> str:
    """A notebook's code cells as one Python source (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"]
        text = "".join(source) if isinstance(source, list) else source
        lines += [ln for ln in text.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        lines.append("")
    return "\n".join(lines)


def _modules() -> set[str]:
    return {p.stem for p in (ROOT / PACKAGE).glob("*.py") if p.stem != "__init__"}


def uses(tree: ast.AST, own_module: str | None = None) -> set[str]:
    """``module.name`` of every dpo_utils attribute that ``tree`` refers to.

    ``own_module`` (for a package module) also counts bare names defined in that module.
    """
    modules = _modules()
    module_alias: dict[str, str] = {}  # local name -> dpo_utils module
    name_alias: dict[str, str] = {}  # local name -> "module.name"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level and own_module is not None:  # from . import x / from .x import y
                base = f"{PACKAGE}.{base}" if base else PACKAGE
            for alias in node.names:
                local = alias.asname or alias.name
                if base == PACKAGE and alias.name in modules:
                    module_alias[local] = alias.name
                elif base.startswith(PACKAGE + ".") and base.split(".")[1] in modules:
                    name_alias[local] = f"{base.split('.')[1]}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level and own_module is not None:
            for alias in node.names:  # from . import x
                if alias.name in modules:
                    module_alias[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) == 2 and parts[1] in modules:
                    module_alias[alias.asname or alias.name] = parts[1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            value = node.value
            if isinstance(value, ast.Name) and value.id in module_alias:
                found.add(f"{module_alias[value.id]}.{node.attr}")
            elif (  # dpo_utils.module.name
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Name)
                and value.value.id == PACKAGE
                and value.attr in modules
            ):
                found.add(f"{value.attr}.{node.attr}")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in name_alias:
                found.add(name_alias[node.id])
    return found


def chapter_index() -> dict[str, set[str]]:
    """``{"module.name": {"notebooks/NN_x.ipynb", ...}}`` for everything a chapter uses."""
    index: dict[str, set[str]] = defaultdict(set)
    for path in chapters():
        for name in uses(ast.parse(chapter_source(path))):
            index[name].add(f"notebooks/{path.name}")
    return dict(index)


def package_index() -> dict[str, set[str]]:
    """``{"module.name": {"dpo_utils.other", ...}}``: the package modules that use each name."""
    index: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / PACKAGE).glob("*.py")):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text())
        for name in uses(tree, own_module=path.stem):
            if not name.startswith(path.stem + "."):
                index[name].add(f"{PACKAGE}.{path.stem}")
        # within a module: a public name used by another function of the same module
        defined = {
            n.name
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        }
        for top in tree.body:
            if not isinstance(top, (ast.FunctionDef, ast.ClassDef)):
                continue
            names = {n.id for n in ast.walk(top) if isinstance(n, ast.Name) and n.id != top.name}
            for name in names & defined:
                index[f"{path.stem}.{name}"].add(f"{PACKAGE}.{path.stem}")
    return dict(index)


def markdown_table() -> str:
    """The index as a Markdown table: one row per chapter, the names it uses."""
    by_chapter: dict[str, list[str]] = defaultdict(list)
    for name, where in sorted(chapter_index().items()):
        for chapter in where:
            by_chapter[chapter].append(f"`{name}`")
    rows = ["| chapter | dpo_utils names its code uses |", "|---|---|"]
    rows += [f"| {c} | {', '.join(names)} |" for c, names in sorted(by_chapter.items())]
    return "\n".join(rows)


EVERY_CHAPTER = "every chapter"
_USED = re.compile(r"^\s*Used (in|by):")


def public_objects() -> list[tuple[str, object]]:
    """``("module.name", obj)`` for every public function and class defined in the package."""
    found = []
    for path in sorted((ROOT / PACKAGE).glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"{PACKAGE}.{path.stem}")
        for name, obj in inspect.getmembers(
            module, lambda o: inspect.isfunction(o) or inspect.isclass(o)
        ):
            if not name.startswith("_") and obj.__module__ == module.__name__:
                found.append((f"{path.stem}.{name}", obj))
    return found


def used_paragraph(doc: str) -> tuple[str, str]:
    """The docstring's "Used in:" and "Used by:" paragraphs (each up to a blank line), as text."""
    used = {"in": [], "by": []}
    current = None
    for line in doc.splitlines():
        match = _USED.match(line)
        if match:
            current = match.group(1)
        elif not line.strip():
            current = None
        if current:
            used[current].append(line.strip())
    return " ".join(used["in"]), " ".join(used["by"])


def named_chapters(used_in: str) -> set[str]:
    """The chapters a "Used in:" paragraph names ("every chapter" names them all)."""
    if EVERY_CHAPTER in used_in:
        return {f"notebooks/{p.name}" for p in chapters()}
    return set(re.findall(r"notebooks/[\w.-]+\.ipynb", used_in))


def named_modules(text: str) -> set[str]:
    """The package modules a paragraph names (``dpo_utils.models.f`` names ``dpo_utils.models``).

    A command line (``python -m dpo_utils.train``) names an entry point, not a user.
    """
    return {f"{PACKAGE}.{m}" for m in re.findall(r"(?<!-m )" + PACKAGE + r"\.(\w+)", text)}


def problems(qualname: str, doc: str, ci: dict, pi: dict, is_class: bool = False) -> list[str]:
    """What is wrong with ``qualname``'s "Used in:"/"Used by:" lines, checked against the index.

    * a chapter named under "Used in:" must use it (the chapter's code refers to it);
    * every chapter that uses it must be named ("every chapter" when all do);
    * a package module named (``dpo_utils.X``) must use it;
    * a function that no chapter uses but the package does says "Used by: dpo_utils.X";
    * a public function says at least one of them (a class that nothing uses may say neither).
    """
    used_in, used_by = used_paragraph(doc)
    named = named_chapters(used_in)
    actual = ci.get(qualname, set())
    found = [f"{qualname}: names {c}, whose code never uses it" for c in sorted(named - actual)]
    found += [f"{qualname}: {c} uses it but is not named" for c in sorted(actual - named)]
    found += [
        f"{qualname}: names {m}, which never uses it"
        for m in sorted(named_modules(used_in + " " + used_by) - pi.get(qualname, set()))
    ]
    if not actual and pi.get(qualname) and not used_by:
        found.append(f"{qualname}: used only by the package; say 'Used by: dpo_utils.X'")
    if not (used_in or used_by) and not is_class:
        found.append(f"{qualname}: no 'Used in:' or 'Used by:' line")
    return found


def expected_paragraph(qualname: str, ci: dict, pi: dict) -> str | None:
    """The generated "Used in:"/"Used by:" text for ``qualname``; None when nothing uses it."""
    used_in = ci.get(qualname, set())
    if used_in == {f"notebooks/{p.name}" for p in chapters()}:
        return f"Used in: {EVERY_CHAPTER}."
    if used_in:
        return "Used in: " + ", ".join(sorted(used_in)) + "."
    if pi.get(qualname):
        return "Used by: " + ", ".join(sorted(pi[qualname])) + "."
    return None


def fix_docstrings() -> list[str]:
    """Rewrite from the index each "Used in:"/"Used by:" paragraph that :func:`problems` rejects.

    Top-level public functions and classes only; returns what it changed.
    """
    ci, pi = chapter_index(), package_index()
    changed = []
    for path in sorted((ROOT / PACKAGE).glob("*.py")):
        lines = path.read_text().splitlines(keepends=True)
        tree = ast.parse("".join(lines))
        edits = []
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name[0] == "_":
                continue
            doc = ast.get_docstring(node)
            if doc is None:
                continue
            qualname = f"{path.stem}.{node.name}"
            has_line = any(_USED.match(ln) for ln in doc.splitlines())
            if not problems(qualname, doc, ci, pi, isinstance(node, ast.ClassDef)):
                continue
            text = expected_paragraph(qualname, ci, pi)
            if text is None:
                continue
            edits.append((node.body[0], text, has_line))
        for expr, text, has_line in reversed(edits):
            start, end = expr.lineno - 1, expr.end_lineno - 1
            indent = " " * expr.col_offset
            wrapped = [
                indent + ln + "\n"
                for ln in textwrap.wrap(
                    text, 99 - len(indent), break_long_words=False, break_on_hyphens=False
                )
            ]
            block = lines[start : end + 1]
            if has_line:
                first = next(i for i, ln in enumerate(block) if _USED.match(ln))
                last = first
                while (
                    last + 1 < len(block)
                    and block[last + 1].strip()
                    and block[last + 1].strip() != '"""'
                    and not block[last + 1].strip().endswith('"""')
                ):
                    last += 1
                if block[last].rstrip().endswith('"""') and block[last].strip() != '"""':
                    wrapped.append(indent + '"""\n')
                if "".join(block[first : last + 1]) == "".join(wrapped):
                    continue
                block[first : last + 1] = wrapped
            elif len(block) == 1:  # a one-line docstring
                body = block[0].rstrip()[: -len('"""')]
                block = [body + "\n", "\n", *wrapped, indent + '"""\n']
            else:
                block[-1:-1] = ["\n", *wrapped]
            lines[start : end + 1] = block
            changed.append(f"{path.stem}: {text}")
        path.write_text("".join(lines))
    return changed


if __name__ == "__main__":
    if "--fix" in sys.argv:
        print("\n".join(fix_docstrings()))
    else:
        print(markdown_table())
