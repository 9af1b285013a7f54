"""What a cached result depends on: the package source it runs and the data it is handed.

A cache key that hashes only a call's parameters serves stale numbers after the code changes (a new
default in a sampler) or when an input is built outside the call (features made at another width).
:func:`code_fingerprint` hashes the source of the ``dpo_utils`` modules an experiment imports,
directly or through other package modules; :func:`callable_fingerprint` finds those modules and the
data a callable closes over (a notebook's ``lambda: experiment(**params)``) and hashes both.
"""

from __future__ import annotations

import ast
import hashlib
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["package_dir", "module_dependencies", "code_fingerprint", "callable_fingerprint"]

PACKAGE = __name__.rsplit(".", 1)[0]
_PARSED: dict[tuple[str, int, int], frozenset[str]] = {}


def package_dir() -> Path:
    """The folder of the ``dpo_utils`` sources that are fingerprinted.

    Used by: dpo_utils.fingerprint.
    """
    return Path(__file__).resolve().parent


def _module_names(root: Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.py"))


def _direct_imports(path: Path, known: set[str]) -> frozenset[str]:
    stat = path.stat()
    memo = (str(path), stat.st_mtime_ns, stat.st_size)
    if memo not in _PARSED:
        found = set()
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(PACKAGE + ".")
            ):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
        _PARSED[memo] = frozenset(found)
    return frozenset(_PARSED[memo] & known)


def module_dependencies(modules: Iterable[str], root: Path | None = None) -> list[str]:
    """``modules`` and every package module they import, directly or not, sorted.

    Used by: dpo_utils.fingerprint.
    """
    root = root or package_dir()
    known = set(_module_names(root))
    todo = [m.rsplit(".", 1)[-1] for m in modules]
    unknown = sorted(set(todo) - known)
    if unknown:
        raise ValueError(f"modules {unknown} are not in {root}; known modules: {sorted(known)}.")
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_direct_imports(root / f"{name}.py", known) - seen)
    return sorted(seen)


def code_fingerprint(modules: Iterable[str] | None = None, root: Path | None = None) -> str:
    """12 hex digits over the source of ``modules`` and their package imports (None: all modules).

    Cheap (a few files read and hashed) and deterministic: it depends only on the source bytes.

    Used by: dpo_utils.embeddings, dpo_utils.fingerprint, dpo_utils.models, dpo_utils.run_cache.
    """
    root = root or package_dir()
    names = _module_names(root) if modules is None else module_dependencies(modules, root)
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + (root / f"{name}.py").read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _update_with_value(digest, value: Any, depth: int = 0) -> bool:
    """Feed ``value`` into ``digest``; False if it is not plain data (a model, an open file...)."""
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
        return True
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().contiguous().numpy()
    if hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):
        digest.update(f"array{value.dtype}{tuple(value.shape)}".encode() + value.tobytes())
        return True
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return all(_update_with_value(digest, (k, v), depth + 1) for k, v in items)
    if isinstance(value, (list, tuple)):
        digest.update(f"seq{len(value)}".encode())
        return all(_update_with_value(digest, v, depth + 1) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        digest.update(type(value).__qualname__.encode())
        fields = {k: getattr(value, k) for k in value.__dataclass_fields__}
        return _update_with_value(digest, fields, depth + 1)
    return False


def _is_array(value: Any) -> bool:
    return (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and (hasattr(value, "tobytes") or hasattr(value, "detach"))
    )


def _holds_arrays(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is or holds (in lists, dicts, dataclasses) a tensor or an array."""
    if depth > 8 or isinstance(value, (str, bytes)):
        return False
    if _is_array(value):
        return True
    if isinstance(value, dict):
        return any(_holds_arrays(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_arrays(v, depth + 1) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return any(_holds_arrays(getattr(value, k), depth + 1) for k in value.__dataclass_fields__)
    return False


def _referenced(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _referenced(const)
    return names


def callable_fingerprint(run: Callable) -> dict[str, Any]:
    """``{"code": ..., "inputs": ...}`` for a callable that computes a result.

    ``code`` fingerprints the package modules it uses: its own module when that is a package
    module, else the package modules it names (``priority_experiments`` in a notebook's lambda);
    when it names none, the whole package. ``inputs`` hashes the array data it closes over or reads
    from globals (tensors and arrays, alone or in lists, dicts, dataclasses: features or behaviours
    built before the call); plain numbers and strings belong in the config. ``skipped`` lists the
    referenced objects that are neither (a model, say) and so are not part of the key.

    Used by: dpo_utils.results.
    """
    module = getattr(run, "__module__", "") or ""
    code = getattr(run, "__code__", None)
    scope: dict[str, Any] = dict(getattr(run, "__globals__", {}) or {})
    closure = getattr(run, "__closure__", None)
    if code is not None and closure:
        for name, cell in zip(code.co_freevars, closure, strict=True):
            try:
                scope[name] = cell.cell_contents
            except ValueError:  # an empty cell
                continue
    names = sorted(_referenced(code)) if code is not None else []
    used = {n for n in names if isinstance(scope.get(n), types.ModuleType)}
    modules = {scope[n].__name__ for n in used if scope[n].__name__.startswith(PACKAGE + ".")}
    for n in names:
        owner = getattr(scope.get(n), "__module__", "") or ""
        if n not in used and owner.startswith(PACKAGE + ".") and callable(scope.get(n)):
            modules.add(owner)
    if module.startswith(PACKAGE + "."):
        modules.add(module)
    digest, skipped = hashlib.sha256(), []
    for n in names:
        value = scope.get(n, _MISSING)
        if value is _MISSING or isinstance(value, (types.ModuleType, type, *_CODE)):
            continue
        if _holds_arrays(value):
            if not _update_with_value(digest, (n, value)):
                skipped.append(n)
        elif not _update_with_value(hashlib.sha256(), value):
            skipped.append(n)
    return dict(
        code=code_fingerprint(sorted(modules) if modules else None),
        inputs=digest.hexdigest()[:12],
        skipped=skipped,
    )


_MISSING = object()
_CODE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)
