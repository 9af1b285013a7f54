"""The package's three layers: imports go one way, and the package docstring lists every module.

The order (also in CONTRIBUTING.md): mechanisms never import a chapter-experiment or a book module;
chapter experiments never import a book module; book infrastructure may import anything.
"""

import ast
import re

import chapter_index as ix
import pytest

import dpo_utils

MECHANISMS = {
    "config", "losses", "linear", "full_vocab", "synthetic", "feature_models", "metrics", "data",
    "corpus", "models", "embeddings", "probes", "training", "run_cache", "results", "runtime",
    "tables", "train", "fingerprint", "chapter_parameters", "saved_runs", "scale",
    "pretraining", "persona_names", "verdicts", "hh_rlhf", "stand_in", "worker_service",
}  # fmt: skip
EXPERIMENTS = {
    "synthetic_experiments", "priority_experiments", "feature_experiments", "llm_experiments",
    "measuring_experiments", "measuring_setup", "llm_evidence", "joint_runs",
}  # fmt: skip
BOOK = {"book", "book_assets", "plotting", "teaching"}
LAYER = {m: 0 for m in MECHANISMS} | {m: 1 for m in EXPERIMENTS} | {m: 2 for m in BOOK}
NAMES = ("mechanisms", "chapter experiments", "book infrastructure")
PACKAGE_DIR = ix.ROOT / "dpo_utils"


def _modules():
    return sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")


def imported_modules(source: str) -> set[str]:
    """The dpo_utils modules a module's source imports, at any depth (function-level too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if not node.level and not module.startswith("dpo_utils"):
                continue
            base = module if node.level else module.removeprefix("dpo_utils").lstrip(".")
            if base:
                found.add(base.split(".")[0])
            else:  # from . import x, y / from dpo_utils import x, y
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "dpo_utils" and len(parts) > 1:
                    found.add(parts[1])
    return found & set(_modules())


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER), (
        "put a new module in a layer here and in dpo_utils/__init__"
    )


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_go_from_book_to_experiments_to_mechanisms(module):
    imports = imported_modules((PACKAGE_DIR / f"{module}.py").read_text())
    upward = {m: NAMES[LAYER[m]] for m in imports if LAYER[m] > LAYER[module]}
    assert not upward, f"{module} ({NAMES[LAYER[module]]}) imports a later layer: {upward}"


def test_import_reader_sees_every_import_form():
    # the direction test above can only fail if this reader finds imports in all their forms
    source = (
        "from . import linear, metrics\nfrom .plotting import figure\nimport numpy\n"
        "def f():\n    from dpo_utils.book import start_chapter\n    import dpo_utils.tables\n"
    )
    assert imported_modules(source) == {"linear", "metrics", "plotting", "book", "tables"}


def _chapters(text: str) -> set[str]:
    found = set()
    for part in text.split():
        if "-" in part:
            lo, hi = part.split("-")
            found |= {f"{n:02d}" for n in range(int(lo), int(hi) + 1)}
        elif part.isdigit():
            found.add(part)
    return found


def test_package_docstring_lists_every_module_under_its_layer_with_its_chapters():
    by_module: dict[str, set[str]] = {}
    for qualname, where in ix.chapter_index().items():
        by_module.setdefault(qualname.split(".")[0], set()).update(w[10:12] for w in where)
    layer, listed = None, {}
    for line in dpo_utils.__doc__.splitlines():
        heading = next((i for i, n in enumerate(NAMES) if line.lower().startswith(n)), None)
        if heading is not None:
            layer = heading
        elif m := re.match(r"    (\w+)\s+.*\[(.*)\]$", line):
            listed[m.group(1)] = (layer, m.group(2))
    assert set(listed) == set(LAYER)
    for module, (layer, chapters) in listed.items():
        assert layer == LAYER[module], f"{module} is listed under {NAMES[layer]}"
        named = set() if chapters == "none" or chapters.startswith("via") else _chapters(chapters)
        expected = by_module.get(module, set())
        assert named == expected, f"{module}: docstring {sorted(named)}, code {sorted(expected)}"


def test_readme_lists_the_same_modules_layers_and_chapters_as_the_package_docstring():
    docstring, layer = {}, None
    for line in dpo_utils.__doc__.splitlines():
        heading = next((i for i, n in enumerate(NAMES) if line.lower().startswith(n)), None)
        if heading is not None:
            layer = heading
        elif m := re.match(r"    (\w+)\s+.*\[(.*)\]$", line):
            docstring[m.group(1)] = (layer, _chapters(m.group(2)))
    readme, layer = {}, None
    for line in (ix.ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*([a-z ]*?)\s*\| `(\w+)` \| .* \| (.*) \|$", line)
        if m:
            layer = NAMES.index(m.group(1)) if m.group(1) else layer
            readme[m.group(2)] = (layer, _chapters(m.group(3).replace(",", " ")))
    assert readme == docstring
