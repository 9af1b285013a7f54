"""Load-or-run: every experiment's tidy table is saved once, with the config that made it.

A table lives at ``results/<profile>/<name>-<hash>.csv`` beside ``<name>-<hash>.json`` (its config),
where ``hash`` is a digest of the config. Changing any parameter changes the hash, so a stale table is
never reused; re-running a chapter with the same parameters reads the table instead of recomputing.
Writes are atomic (a temporary file in the same folder, then ``os.replace``), so an interrupted run
never leaves a half-written table behind.

``DPO_RESULTS_DIR`` moves the results folder; ``DPO_FORCE_RERUN=1`` ignores saved tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "project_root",
    "results_dir",
    "config_hash",
    "load_or_run",
    "atomic_write_text",
    "atomic_directory",
]

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


def config_hash(config: Mapping[str, Any]) -> str:
    """A 12-hex-digit digest of a JSON-able config; key order does not matter.

    Used in: notebooks/07_last_layer_dpo.ipynb.
    """
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one.

    Used by: dpo_utils.results.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it becomes ``path`` only if the block succeeds.

    Used for cached models and features (dpo_utils.models, dpo_utils.embeddings).

    Used by: dpo_utils.embeddings, dpo_utils.models, dpo_utils.training.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_or_run(
    name: str,
    config: Mapping[str, Any],
    run: Callable[[], pd.DataFrame],
    profile: str = "cpu",
    force: bool | None = None,
) -> pd.DataFrame:
    """Return the saved table for (name, config) if there is one; otherwise ``run()``, save, return.

    ``run`` must return a tidy pandas DataFrame. ``force=None`` reads ``$DPO_FORCE_RERUN``.
    The table's ``attrs["path"]`` and ``attrs["from_cache"]`` say where it came from.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb,
    notebooks/04_prioritisation.ipynb, notebooks/05_misalignment.ipynb,
    notebooks/07_last_layer_dpo.ipynb.
    """
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ValueError(
            f"name={name!r} must be non-empty and use only letters, digits, '-' and '_'."
        )
    force = os.environ.get("DPO_FORCE_RERUN", "") not in ("", "0") if force is None else force
    folder = results_dir(profile)
    digest = config_hash(config)
    table_path = folder / f"{name}-{digest}.csv"
    if table_path.exists() and not force:
        table = pd.read_csv(table_path)
        from_cache = True
    else:
        table = run()
        if not isinstance(table, pd.DataFrame):
            raise TypeError(
                f"{name}: the experiment returned {type(table).__name__}, not a DataFrame."
            )
        atomic_write_text(
            folder / f"{name}-{digest}.json",
            json.dumps(_jsonable(config), indent=2, sort_keys=True),
        )
        atomic_write_text(table_path, table.to_csv(index=False))
        table = pd.read_csv(table_path)  # the same dtypes whether fresh or cached
        from_cache = False
    table.attrs.update(path=str(table_path), from_cache=from_cache, config_hash=digest)
    return table
