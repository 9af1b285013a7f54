"""Persona behaviours (Anthropic model-written evaluations) as DPO preference pairs.

A persona *behaviour* is one ``.jsonl`` file of rows with five fields: ``question`` (the statement
wrapped in "Is the following statement something you would say?"), ``statement``,
``answer_matching_behavior`` and ``answer_not_matching_behavior`` (" Yes" / " No") and
``label_confidence``. The authors number the 135 upstream behaviours by their position in the
alphabetically sorted list of files (:data:`PERSONA_BEHAVIORS`), split each one 90/10 with
``random.seed(1234)`` and build pairs prompt = question + "\\n", chosen = the matching answer.

Sources: ``"persona"`` (32 real behaviours vendored under ``data/anthropic-persona/``,
gzip-compressed, Perez et al. 2022, CC BY 4.0; the CPU profile's default), ``"corpus"`` (the
project's designed corpus under ``data/persona/``), a local folder laid out as upstream
(``*.jsonl`` or ``*.jsonl.gz``, directly or under ``persona/``), or the hub id
``Anthropic/model-written-evals``.

Which behaviours the book features is named once here: :data:`AUTHORS_BEHAVIORS` (the eight of
the authors' released scripts), :data:`FORMAT_BEHAVIORS` (real behaviours whose *answered* rows
teach the CPU stand-ins the answer format and that no experiment uses) and
:data:`EVALUATION_BEHAVIORS` (the other vendored behaviours: the stand-ins saw their train-split
prompts only, never an answer).
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .persona_names import (
    AUTHORS_BEHAVIORS,
    EVALUATION_BEHAVIORS,
    FORMAT_BEHAVIORS,
    PERSONA_BEHAVIORS,
    VENDORED_BEHAVIORS,
)
from .results import project_root

__all__ = [
    "PERSONA_BEHAVIORS",
    "AUTHORS_BEHAVIORS",
    "FORMAT_BEHAVIORS",
    "EVALUATION_BEHAVIORS",
    "VENDORED_BEHAVIORS",
    "HUB_PERSONA_ID",
    "PERSONA_SOURCE",
    "CORPUS_SOURCE",
    "persona_dir",
    "source_folder",
    "PersonaDataError",
    "corpus_dir",
    "available_behaviors",
    "resolve_behaviors",
    "validate_row",
    "check_behavior_rows",
    "load_persona",
    "split_rows",
    "split_behaviors",
    "preference_pairs",
]

HUB_PERSONA_ID = "Anthropic/model-written-evals"
#: source names resolved to the repository's data folders (a config's ``persona_source``)
PERSONA_SOURCE = "persona"
CORPUS_SOURCE = "corpus"
FIELDS = (
    "question",
    "statement",
    "answer_matching_behavior",
    "answer_not_matching_behavior",
    "label_confidence",
)
ANSWERS = (" Yes", " No")
#: a behaviour needs a train and a test row after the 90/10 split, and both answer classes
MIN_ROWS = 2
#: upstream questions are under 1,000 characters; a far longer line is a broken file, and would pad
#: every batch it lands in to its length (a 2.4 MB line asked for a 20 GB allocation)
MAX_QUESTION_CHARS = 20_000
_HOW_TO_GET = (
    "Use the vendored real behaviours (source 'persona', data/anthropic-persona/), the project's "
    "own corpus (source 'corpus', dpo_utils.data.corpus_dir(); regenerate it with "
    "`python -m dpo_utils.corpus`), clone "
    "https://github.com/anthropics/evals and pass its persona/ folder, or pass the hub id "
    f"{HUB_PERSONA_ID!r} on a machine with network access."
)


class PersonaDataError(ValueError):
    """Persona data that cannot be used: missing, malformed, or an unknown behaviour.

    Used by: dpo_utils.data.
    """


def corpus_dir() -> Path:
    """The repository's ``data/`` folder, which holds the project's corpus under ``data/persona/``.

    Used by: dpo_utils.corpus, dpo_utils.data, dpo_utils.llm_evidence.
    """
    beside_package = Path(__file__).resolve().parent.parent / "data"
    if (beside_package / "persona").is_dir():
        return beside_package

    return project_root() / "data"


def persona_dir() -> Path:
    """The repository's ``data/anthropic-persona/`` folder: the 32 vendored real behaviours.

    Used by: dpo_utils.data.
    """
    return corpus_dir() / "anthropic-persona"


def _is_hub_id(source: str | Path) -> bool:
    return str(source) == HUB_PERSONA_ID


_SUFFIXES = (".jsonl", ".jsonl.gz")


def _behavior_files(folder: Path) -> dict[str, Path]:
    """{behaviour name: file} for the ``.jsonl`` and ``.jsonl.gz`` files directly in ``folder``."""
    files: dict[str, Path] = {}
    for suffix in _SUFFIXES:
        for path in folder.glob(f"*{suffix}"):
            name = path.name[: -len(suffix)]
            if name in files:
                raise PersonaDataError(
                    f"behaviour {name!r} is in {folder} twice "
                    f"({files[name].name} and {path.name}); "
                    "keep one of them."
                )
            files[name] = path
    return files


def source_folder(source: str | Path) -> Path:
    """The folder that holds a local source's behaviour files.

    ``"persona"`` names the vendored real behaviours, ``"corpus"`` the project's designed corpus;
    any other value is a folder holding ``.jsonl`` / ``.jsonl.gz`` files, directly or under
    ``persona/``.

    Used by: dpo_utils.data.
    """
    named = {PERSONA_SOURCE: persona_dir(), CORPUS_SOURCE: corpus_dir()}
    folder = named.get(str(source), Path(source))
    if not folder.is_dir():
        raise PersonaDataError(f"persona folder {str(folder)!r} does not exist. {_HOW_TO_GET}")
    if not _behavior_files(folder) and (folder / "persona").is_dir():
        folder = folder / "persona"
    if not _behavior_files(folder):
        raise PersonaDataError(
            f"persona folder {str(folder)!r} holds no .jsonl or .jsonl.gz files. {_HOW_TO_GET}"
        )
    return folder


def available_behaviors(source: str | Path) -> list[str]:
    """The behaviour names a source offers, sorted (the 135 upstream names for the hub id).

    Used by: dpo_utils.data, dpo_utils.run_cache.
    """
    if _is_hub_id(source):
        return list(PERSONA_BEHAVIORS)
    return sorted(_behavior_files(source_folder(source)))


def _numbering(available: Sequence[str]) -> Sequence[str]:
    """Numbers follow the authors' 135-name list when a source is upstream data, else sorted
    names."""
    if all(name in PERSONA_BEHAVIORS for name in available):
        return PERSONA_BEHAVIORS
    return sorted(available)


def resolve_behaviors(
    selection: Iterable[str | int] | str | int | None, available: Sequence[str] | None = None
) -> list[str]:
    """Turn names and/or numbers into behaviour names, checked against ``available``.

    Numbers are the authors' (index into :data:`PERSONA_BEHAVIORS`) for upstream data, and
    positions in the sorted list of files for another folder, such as the project's corpus.
    ``None`` or an empty selection means every available behaviour. An unknown name raises an error
    that lists the closest names.

    Used by: dpo_utils.chapter_parameters, dpo_utils.data, dpo_utils.llm_evidence,
    dpo_utils.pretraining, dpo_utils.run_cache, dpo_utils.train.
    """
    available = list(PERSONA_BEHAVIORS if available is None else available)
    if selection is None or isinstance(selection, (str, int)) and not isinstance(selection, bool):
        selection = [] if selection is None else [selection]
    elif isinstance(selection, (list, tuple, set, frozenset)):
        selection = list(selection)
    else:
        raise PersonaDataError(
            f"behaviors={selection!r} is not allowed; give a behaviour name (str), a number "
            "(int), a list of them, or None for all."
        )
    if not selection:
        return sorted(available)
    numbering = _numbering(available)
    names = []
    for item in selection:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(numbering):
                raise PersonaDataError(
                    f"behaviour number {item} is out of range; "
                    f"numbers run from 0 to {len(numbering) - 1}."
                )
            item = numbering[item]
        if not isinstance(item, str):
            raise PersonaDataError(
                f"behaviour {item!r} is not allowed; give a name (str) or a number (int) from 0 "
                f"to {len(numbering) - 1}."
            )
        if item not in available:
            close = difflib.get_close_matches(item, available, n=5, cutoff=0.0)
            raise PersonaDataError(
                f"unknown behaviour {item!r}; the closest available names are: {', '.join(close)}."
            )
        names.append(item)
    return names


def validate_row(row: object, where: str) -> dict:
    """Check one persona row's five fields; ``where`` (file:line) names it in the error.

    Used by: dpo_utils.data.
    """
    if not isinstance(row, dict):
        raise PersonaDataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise PersonaDataError(
            f"{where}: missing field(s) {missing}; a persona row needs {list(FIELDS)}."
        )
    for name in ("question", "statement"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise PersonaDataError(f"{where}: {name}={row[name]!r} must be a non-empty string.")
        if len(row[name]) > MAX_QUESTION_CHARS:
            raise PersonaDataError(
                f"{where}: {name} has {len(row[name])} characters; at most {MAX_QUESTION_CHARS} "
                "are allowed (upstream questions are under 1,000)."
            )
    match, other = row["answer_matching_behavior"], row["answer_not_matching_behavior"]
    if match not in ANSWERS or other not in ANSWERS or match == other:
        raise PersonaDataError(
            f"{where}: answers ({match!r}, {other!r}) must be one each of {list(ANSWERS)}."
        )
    confidence = row["label_confidence"]
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not (math.isfinite(confidence) and 0 <= confidence <= 1)
    ):
        raise PersonaDataError(
            f"{where}: label_confidence={confidence!r} must be a number in [0, 1]."
        )
    return {f: row[f] for f in FIELDS}


def check_behavior_rows(name: str, rows: Sequence[dict], where: str) -> list[dict]:
    """A behaviour's rows, if there are enough of them and both answer classes occur.

    Used by: dpo_utils.data.
    """
    yes = sum(r["answer_matching_behavior"] == " Yes" for r in rows)
    if len(rows) < MIN_ROWS or yes in (0, len(rows)):
        raise PersonaDataError(
            f"behaviour {name!r} ({where}) has {len(rows)} rows, {yes} matching ' Yes' and "
            f"{len(rows) - yes} matching ' No'; it needs at least {MIN_ROWS} rows and both "
            "answer classes."
        )
    return list(rows)


#: validated rows of each persona file read in this process, by (path, mtime, size): every
#: chapter and every stand-in's cache key reads the same 32 files many times
_READ: dict[tuple[str, int, int], tuple[dict, ...]] = {}


def _read_jsonl(path: Path) -> list[dict]:
    """A persona file's validated rows (copies: a caller may change them, the memo stays)."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if memo not in _READ:
        _READ[memo] = tuple(_parse_jsonl(path))
    return [dict(row) for row in _READ[memo]]


def _parse_jsonl(path: Path) -> list[dict]:
    rows = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PersonaDataError(
                    f"{where}: not UTF-8 (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); persona files must be UTF-8 JSON lines."
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PersonaDataError(f"{where}: not valid JSON ({error.msg}).") from None
            rows.append(validate_row(row, where))
    if not rows:
        raise PersonaDataError(f"{path} holds no rows. {_HOW_TO_GET}")
    return check_behavior_rows(
        path.name.removesuffix(".gz").removesuffix(".jsonl"), rows, str(path)
    )


def _read_hub(name: str) -> list[dict]:
    try:
        import datasets

        table = datasets.load_dataset(
            HUB_PERSONA_ID, data_files=f"persona/{name}.jsonl", split="train"
        )
    except Exception as error:  # offline, no access, or a changed hub layout
        raise PersonaDataError(
            f"could not load persona/{name}.jsonl from {HUB_PERSONA_ID!r} ({error}). {_HOW_TO_GET}"
        ) from error
    rows = [
        validate_row(row, f"{HUB_PERSONA_ID}/persona/{name}.jsonl:{i + 1}")
        for i, row in enumerate(table)
    ]
    return check_behavior_rows(name, rows, f"{HUB_PERSONA_ID}/persona/{name}.jsonl")


def load_persona(
    source: str | Path, behaviors: Iterable[str | int] | str | int | None = None
) -> dict[str, list[dict]]:
    """Load persona behaviours as ``{name: rows in file order}`` with every row validated.

    ``source`` is ``"persona"`` (the vendored real behaviours), ``"corpus"`` (the project's
    corpus), a local folder laid out as upstream or the hub id ``Anthropic/model-written-evals``;
    ``behaviors`` are names or numbers (see :func:`resolve_behaviors`), ``None`` for all of them.

    Used by: dpo_utils.llm_experiments, dpo_utils.measuring_setup, dpo_utils.pretraining,
    dpo_utils.run_cache.
    """
    names = resolve_behaviors(behaviors, available_behaviors(source))
    if _is_hub_id(source):
        return {name: _read_hub(name) for name in names}
    files = _behavior_files(source_folder(source))
    return {name: _read_jsonl(files[name]) for name in names}


_Row = TypeVar("_Row")  # a persona row, or anything split the same way (feature indices)


def split_rows(rows: Sequence[_Row], seed: int = 1234) -> tuple[list[_Row], list[_Row]]:
    """The authors' split: ``random.seed(seed)``, shuffle the rows in file order, first 90 % train.

    The global ``random`` state is restored afterwards, so calling this has no side effect.

    Used in: notebooks/12_faq_rewards_go_down.ipynb.
    """
    state = random.getstate()
    try:
        random.seed(seed)
        shuffled = list(rows)
        random.shuffle(shuffled)
    finally:
        random.setstate(state)
    cut = int(0.9 * len(shuffled))
    return shuffled[:cut], shuffled[cut:]


def split_behaviors(
    persona: Mapping[str, Sequence[dict]], seed: int = 1234, chained: bool = False
) -> dict[str, tuple[list[dict], list[dict]]]:
    """Each behaviour's (train, test) split. ``chained=False``: :func:`split_rows` per behaviour,
    so a behaviour splits the same alone and in any joint run. ``chained=True``: as the authors'
    DPO_training.py and multi_last_layer_training.py do, ``random.seed(seed)`` once, then each
    behaviour shuffled in the order given (so a later behaviour's split depends on the earlier
    ones; the first one's equals its own). The global ``random`` state is restored.

    Used by: dpo_utils.run_cache.
    """
    if not chained:
        return {name: split_rows(rows, seed) for name, rows in persona.items()}
    state, out = random.getstate(), {}
    try:
        random.seed(seed)
        for name, rows in persona.items():
            shuffled = list(rows)
            random.shuffle(shuffled)
            cut = int(0.9 * len(shuffled))
            out[name] = (shuffled[:cut], shuffled[cut:])
    finally:
        random.setstate(state)
    return out


def preference_pairs(rows: Iterable[dict], behavior: str, flip: bool = False) -> list[dict]:
    """DPO pairs: prompt = question + "\\n", chosen = the matching answer (the other one if
    ``flip``).

    Used in: notebooks/12_faq_rewards_go_down.ipynb.
    """
    pairs = []
    for row in rows:
        chosen, rejected = row["answer_matching_behavior"], row["answer_not_matching_behavior"]
        if flip:
            chosen, rejected = rejected, chosen
        pairs.append(
            dict(
                prompt=row["question"] + "\n", chosen=chosen, rejected=rejected, behavior=behavior
            )
        )
    return pairs
