"""House rules of the package: chapters named in docstrings exist, modules stay small, and tests
never write into the repository's results/."""

import importlib
import inspect
import pkgutil
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dpo_utils
from dpo_utils import results

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


def test_tests_write_results_to_a_temporary_folder(results_root):
    # conftest's autouse fixture: no unit test writes into the repository's results/
    assert results.results_dir("cpu") == results_root / "cpu"
    assert ROOT not in results.results_dir("cpu").parents


def test_version_comes_from_the_package_metadata():
    # pyproject.toml is the one place the version is written; the package reads it back
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dpo_utils.__version__ == project["version"]


def _constraints() -> dict:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req.specifier
    return pins


def test_every_pin_has_one_source_and_pyproject_agrees_with_it():
    pins = _constraints()
    assert all(str(s).startswith("==") for s in pins.values()), "constraints.txt pins exactly"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    disagree = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":  # pinned in constraints.txt only; pyproject names the series
            assert not str(req.specifier).startswith("=="), "torch's pin lives in constraints.txt"
            assert req.specifier.contains(str(pins["torch"])[2:])
        elif str(req.specifier).startswith("=="):
            if pins.get(name) != req.specifier:
                disagree.append(f"pyproject {text} vs constraints.txt {pins.get(name)}")
        else:
            assert name not in pins or req.specifier.contains(str(pins[name])[2:]), text
    assert not disagree, "\n".join(disagree)


def test_every_installer_reads_the_constraints_file():
    for path in ("Makefile", "environment.yml", ".binder/requirements.txt"):
        text = (ROOT / path).read_text()
        assert "constraints.txt" in text, f"{path} does not install with constraints.txt"
        assert "torch==" not in text, f"{path} repeats torch's pin"
