"""Load-or-run: every experiment's tidy table is saved once, with the config that made it.

A table lives at ``results/<profile>/<name>-<hash>.csv`` beside ``<name>-<hash>.json`` (its config,
the code fingerprint and the table's size and checksum), where ``hash`` covers the config, a
fingerprint of the package source the experiment runs and the data it closes over
(:mod:`dpo_utils.fingerprint`). Changing a parameter, a default in the code or an input recomputes.
Writes are atomic and made under a lock per key, so concurrent writers and readers never see a
half-written result; a truncated or corrupt file is detected by its checksum and recomputed.

``DPO_RESULTS_DIR`` moves the results folder; ``DPO_FORCE_RERUN=1`` ignores every saved result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import pandas as pd

from .fingerprint import callable_fingerprint

__all__ = [
    "ResultFolderError",
    "project_root",
    "results_dir",
    "config_hash",
    "portable",
    "force_rerun",
    "load_or_run",
    "atomic_write_text",
    "atomic_directory",
    "cache_lock",
    "is_project_folder",
    "verify_folder",
    "trusted_cache",
    "provenance_log",
    "record_provenance",
    "check_output_folder",
]

MANIFEST = "MANIFEST.json"
_HASHED_UP_TO = 256 * 2**20  # files larger than this are checked by size only (model weights)
_LOG: list[dict] = []
_LISTENERS: list[Callable[[dict], None]] = []


class ResultFolderError(ValueError):
    """A folder the project will not write to or read from: a user's folder, a file, a bad run.

    Used by: dpo_utils.results, dpo_utils.train.
    """


_ROOT_MARKERS = ("_toc.yml", "pyproject.toml")


def project_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder upwards holding ``_toc.yml`` and ``pyproject.toml``.

    Falls back to the current folder (e.g. on Colab after ``pip install``).

    Used by: dpo_utils.data, dpo_utils.results.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in _ROOT_MARKERS):
            return folder
    return here


def results_dir(profile: str) -> Path:
    """``$DPO_RESULTS_DIR/<profile>`` or ``<project root>/results/<profile>``.

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.results, dpo_utils.run_cache.
    """
    base = os.environ.get("DPO_RESULTS_DIR")
    return (Path(base) if base else project_root() / "results") / profile


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    raise TypeError(
        f"config value {value!r} of type {type(value).__name__} cannot be saved as JSON."
    )


def portable(value: Any, profile: str = "cpu") -> Any:
    """``value`` (JSON-able) with absolute paths made relative to the results folder or the
    project root, so that a key survives a moved or copied checkout; other paths keep only their

    Used by: dpo_utils.results.
    last two parts (a tiny model's cache folder name carries its own hash)."""
    if isinstance(value, dict):
        return {k: portable(v, profile) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, profile) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and len(value) < 4096:
        path = Path(value)
        for base in (results_dir(profile), project_root()):
            if path.is_relative_to(base):
                return str(path.relative_to(base))
        return str(Path(*path.parts[-2:]))
    return value


def config_hash(config: Mapping[str, Any]) -> str:
    """A 12-hex-digit digest of a JSON-able config; key order does not matter.

    Used by: dpo_utils.embeddings, dpo_utils.feature_experiments, dpo_utils.models,
    dpo_utils.results, dpo_utils.run_cache.
    """
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def force_rerun(force: bool | None = None) -> bool:
    """``force`` if given, else whether ``$DPO_FORCE_RERUN`` is set (anything but "" or "0").

    The one reading of ``DPO_FORCE_RERUN`` for every cache: tables, runs, features, tiny models.

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.results, dpo_utils.run_cache.
    """
    if force is not None:
        return bool(force)
    return os.environ.get("DPO_FORCE_RERUN", "") not in ("", "0")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.<pid>.*.tmp`` siblings of ``path`` left by processes that no longer run."""
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid():
            if not _pid_alive(int(parts[0])):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)


_LOCKS: dict[str, filelock.FileLock] = {}


def cache_lock(path: Path) -> filelock.FileLock:
    """The lock (``.NAME.lock`` beside ``path``) that every writer and reader of ``path`` holds.

    One object per path in a process, so nested use (a cache around ``atomic_directory``)
    re-enters.

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.results, dpo_utils.run_cache.
    """
    lock_path = str(Path(path).parent / f".{Path(path).name}.lock")
    if lock_path not in _LOCKS:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _LOCKS[lock_path] = filelock.FileLock(lock_path, thread_local=False)
    return _LOCKS[lock_path]


def _temporary(path: Path, directory: bool) -> Path:
    prefix = f".{path.name}.{os.getpid()}."
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    return Path(name)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one.

    Used by: dpo_utils.results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = _temporary(path, directory=False)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_record(path: Path) -> dict:
    size = path.stat().st_size
    record: dict[str, Any] = {"bytes": size}
    if size <= _HASHED_UP_TO:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    return record


def _check_record(path: Path, record: Mapping) -> str | None:
    """None if ``path`` matches its record, else what is wrong (for the warning)."""
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size != record.get("bytes"):
        return f"{path} has {path.stat().st_size} bytes, {record.get('bytes')} were written"
    if "sha256" in record and _file_record(path).get("sha256") != record["sha256"]:
        return f"{path} does not match the checksum recorded when it was written"
    return None


def is_project_folder(path: Path) -> bool:
    """Whether ``path`` is a folder this project wrote (it holds ``meta.json`` or a manifest).

    Used by: dpo_utils.results.
    """
    path = Path(path)
    return path.is_dir() and ((path / "meta.json").is_file() or (path / MANIFEST).is_file())


def verify_folder(path: Path) -> list[str]:
    """Problems of a folder written by :func:`atomic_directory` (an empty list: intact).

    Every file listed in its manifest must have the recorded size (and checksum, below 256 MB).

    Used by: dpo_utils.results.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return [f"{path} has no {MANIFEST}"]
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError) as error:
        return [f"{path / MANIFEST} is unreadable ({error})"]
    return [p for name, rec in files.items() if (p := _check_record(path / name, rec))]


def trusted_cache(folder: Path, marker: str, what: str, redo: str, stacklevel: int = 3) -> bool:
    """Whether a cached ``folder`` holds ``marker`` and matches its manifest; when the marker is
    there but :func:`verify_folder` finds problems, a warning names them and ``redo``.

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.run_cache.
    """
    problems = verify_folder(folder) if (Path(folder) / marker).is_file() else None
    if problems:
        msg = f"cached {what} {Path(folder) / marker} is not trusted ({'; '.join(problems[:3])})"
        warnings.warn(f"{msg}; {redo}.", stacklevel=stacklevel)
    return problems == []


def _write_manifest(folder: Path) -> None:
    files = {
        str(p.relative_to(folder)): _file_record(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def check_output_folder(path: Path, overwrite: bool = False) -> None:
    """Raise :class:`ResultFolderError` unless a result may be written to ``path``.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a folder this
    project wrote. A file, a user's non-empty folder, or an earlier run without ``overwrite`` is
    refused: nothing that the project did not create is ever deleted.

    Used by: dpo_utils.results, dpo_utils.train.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ResultFolderError(
            f"output {str(path)!r} is an existing file; give a new or empty folder."
        )
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not is_project_folder(path):
        raise ResultFolderError(
            f"output folder {str(path)!r} is not empty and is not a run this project wrote "
            "(no meta.json); give a new or empty folder. Nothing in it was changed."
        )
    if not overwrite:
        raise ResultFolderError(
            f"output folder {str(path)!r} already holds a run; pass --overwrite (overwrite=True) "
            "to replace it, or give a new folder."
        )


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it becomes ``path`` only if the block succeeds.

    On success a manifest (sizes, checksums) is written into it and it replaces ``path`` under
    :func:`cache_lock`: an earlier result at ``path`` is moved aside and removed only after the new
    one is in place. A file or a user's non-empty folder at ``path`` is refused before the block
    runs. Temporary folders left by killed processes are removed.

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.saved_runs.
    """
    path = Path(path)
    try:
        check_output_folder(path, overwrite=True)
    except (ResultFolderError, FileNotFoundError):  # or it vanished mid-check: a swap under way
        if not (path.parent / f".{path.name}.lock").exists():
            raise  # not a cache this project writes to: refused, nothing created
        with cache_lock(path):  # a project writer may have been swapping it: look again
            check_output_folder(path, overwrite=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = _temporary(path, directory=True)
    try:
        yield tmp
        _write_manifest(tmp)
        with cache_lock(path):
            check_output_folder(path, overwrite=True)
            old = None
            if path.is_dir():
                old = _temporary(path, directory=True)
                os.replace(path, old)  # old is an empty folder: rename over it
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _record(entry: dict) -> None:
    _LOG.append(entry)
    for listener in list(_LISTENERS):
        listener(entry)


def provenance_log(listener: Callable[[dict], None] | None = None) -> list[dict]:
    """Every result this process loaded or computed: ``{"kind", "name", "key", "from_cache"}``.

    ``listener`` (optional) replaces any earlier listener and is called with each new entry;
    dpo_utils.book uses it to keep a chapter's provenance banner current.

    Used by: dpo_utils.book.
    """
    if listener is not None:
        _LISTENERS[:] = [listener]
    return list(_LOG)


def record_provenance(kind: str, name: str, key: str, from_cache: bool) -> None:
    """Add one entry to :func:`provenance_log` (for caches outside this module).

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.results, dpo_utils.run_cache.
    """
    _record(dict(kind=kind, name=name, key=key, from_cache=bool(from_cache)))


def _read_verified(table_path: Path, meta_path: Path) -> pd.DataFrame | None:
    """The cached table if its sidecar records it and it matches; else None, with a warning."""
    if not table_path.is_file():
        return None
    try:
        record = json.loads(meta_path.read_text())["table"]
    except (OSError, ValueError, KeyError, TypeError):
        record = None
    problem = "its record is missing" if record is None else _check_record(table_path, record)
    if problem is None:
        try:
            return pd.read_csv(table_path)
        except (ValueError, OSError) as error:
            problem = f"it cannot be read ({error})"
    warnings.warn(
        f"cached table {table_path} is not trusted ({problem}); recomputing it.", stacklevel=3
    )
    return None


def load_or_run(
    name: str,
    config: Mapping[str, Any],
    run: Callable[[], pd.DataFrame],
    profile: str = "cpu",
    force: bool | None = None,
) -> pd.DataFrame:
    """The saved table for (name, config) if there is one; otherwise ``run()``, saved, returned.

    ``run`` must return a tidy pandas DataFrame. The key covers ``config`` (absolute paths in it
    made relative, :func:`portable`), a fingerprint of the package code ``run`` uses and of the
    data it closes over (:func:`~dpo_utils.fingerprint.callable_fingerprint`). ``force=None``
    reads ``$DPO_FORCE_RERUN``. The table's ``attrs["path"]``, ``attrs["from_cache"]`` and
    ``attrs["config_hash"]`` say where it came from.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb,
    notebooks/04_prioritisation.ipynb, notebooks/05_misalignment.ipynb.
    """
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ValueError(
            f"name={name!r} must be non-empty and use only letters, digits, '-' and '_'."
        )
    prints = callable_fingerprint(run)
    key = {
        "config": portable(_jsonable(config), profile),
        "code": prints["code"],
        "inputs": prints["inputs"],
    }
    folder = results_dir(profile)
    digest = config_hash(key)
    table_path = folder / f"{name}-{digest}.csv"
    meta_path = folder / f"{name}-{digest}.json"
    folder.mkdir(parents=True, exist_ok=True)
    with cache_lock(table_path):
        table = None if force_rerun(force) else _read_verified(table_path, meta_path)
        from_cache = table is not None
        if table is None:
            table = run()
            if not isinstance(table, pd.DataFrame):
                raise TypeError(
                    f"{name}: the experiment returned {type(table).__name__}, not a DataFrame."
                )
            atomic_write_text(table_path, table.to_csv(index=False))
            sidecar = dict(key, table=_file_record(table_path), not_hashed=prints["skipped"])
            atomic_write_text(meta_path, json.dumps(sidecar, indent=2, sort_keys=True))
            table = pd.read_csv(table_path)  # the same dtypes whether fresh or cached
    table.attrs.update(path=str(table_path), from_cache=from_cache, config_hash=digest)
    record_provenance("table", name, digest, from_cache)
    return table
