"""House rules of the package: every public function says which chapter uses it, and that chapter exists."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import dpo_utils

ROOT = Path(__file__).resolve().parents[1]


def _public_functions():
    for info in pkgutil.iter_modules(dpo_utils.__path__):
        module = importlib.import_module(f"dpo_utils.{info.name}")
        for name, obj in inspect.getmembers(
            module, lambda o: inspect.isfunction(o) or inspect.isclass(o)
        ):
            if not name.startswith("_") and obj.__module__ == module.__name__:
                yield f"{info.name}.{name}", obj


def test_chapters_named_in_docstrings_exist():
    missing = []
    for qualname, obj in _public_functions():
        for path in re.findall(r"notebooks/[\w.-]+\.ipynb", inspect.getdoc(obj) or ""):
            if not (ROOT / path).exists():
                missing.append(f"{qualname} -> {path}")
    assert not missing, "docstrings name chapters that do not exist:\n" + "\n".join(missing)


def test_modules_stay_small():
    too_long = {
        p.name: n
        for p in (ROOT / "dpo_utils").glob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not too_long, f"modules over ~400 lines: {too_long}"
