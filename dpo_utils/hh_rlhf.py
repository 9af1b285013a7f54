"""Anthropic's HH-RLHF transcripts as DPO preference pairs (chapter 10's experiment on it).

As the authors' ``create_dpo_hhrlhf.py`` does, the prompt is everything up to and including the
last "\\n\\nAssistant:" of the *chosen* transcript; chosen and rejected are what follows it in each
transcript. A row whose two transcripts differ before that point (the two answers continue
different conversations), or that has no assistant turn, cannot be one preference pair: it is
skipped and counted, never allowed to abort a whole load (a few such rows exist upstream).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from .data import PersonaDataError

__all__ = ["HH_SEPARATOR", "HHPairs", "HHUnavailable", "hh_rlhf_pairs", "load_hh_rlhf"]

HH_SEPARATOR = "\n\nAssistant:"


class HHUnavailable(PersonaDataError):
    """HH-RLHF could not be reached (offline, no connection, no cached or local copy): chapter 10
    skips its experiment on it and says why, on any profile. Other loading failures raise
    :class:`~dpo_utils.data.PersonaDataError` and stop the chapter.

    Used in: notebooks/10_misalignment_llm.ipynb.
    """


@dataclass
class HHPairs:
    """Pairs that could be built, and the rows skipped, by reason ("no assistant turn",
    "transcripts differ before the last turn") as row indices.

    Used by: dpo_utils.hh_rlhf, dpo_utils.llm_evidence.
    """

    pairs: list[dict]
    skipped: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return sum(map(len, self.skipped.values()))

    def report(self) -> str:
        """One line: how many rows were used and how many skipped, per reason."""
        why = "; ".join(f"{len(rows)} {reason}" for reason, rows in self.skipped.items() if rows)
        return (
            f"{len(self.pairs)} pairs built, {self.n_skipped} rows skipped"
            + (f" ({why})" if why else "")
            + "."
        )


def _split(text: str) -> tuple[str, str] | None:
    cut = text.rfind(HH_SEPARATOR)
    if cut < 0:
        return None
    end = cut + len(HH_SEPARATOR)
    return text[:end], text[end:]


def hh_rlhf_pairs(rows: Iterable[dict]) -> HHPairs:
    """HH-RLHF rows (``chosen`` and ``rejected`` transcripts) as prompt / chosen / rejected pairs,
    the prompt ending at the last "\\n\\nAssistant:". Rows that cannot be a pair are skipped and
    counted (:class:`HHPairs`); if none is left, PersonaDataError.

    Used by: dpo_utils.hh_rlhf.
    """
    out = HHPairs([], {"no assistant turn": [], "transcripts differ before the last turn": []})
    for i, row in enumerate(rows):
        chosen, rejected = _split(row["chosen"]), _split(row["rejected"])
        if chosen is None or rejected is None:
            out.skipped["no assistant turn"].append(i)
        elif chosen[0] != rejected[0]:
            out.skipped["transcripts differ before the last turn"].append(i)
        else:
            out.pairs.append(dict(prompt=chosen[0], chosen=chosen[1], rejected=rejected[1]))
    if not out.pairs:
        raise PersonaDataError(f"no HH-RLHF row could be made a preference pair: {out.report()}")
    return out


def load_hh_rlhf(
    split: str = "train", source: str = "Anthropic/hh-rlhf", limit: int | None = None
) -> HHPairs:
    """HH-RLHF pairs from the hub (or a local dataset folder) through ``datasets``; skipped rows
    are counted in the result and named in a warning.

    Used by: dpo_utils.llm_evidence.
    """
    if split not in ("train", "test"):
        raise PersonaDataError(f"split={split!r} is not allowed; choose 'train' or 'test'.")
    try:
        import datasets

        table = datasets.load_dataset(source, split=split)
    except Exception as error:
        # unreachable (offline mode, no connection, no cached or local copy): the chapter skips
        # experiment D; any other failure (a bad schema, a full disk) stops it with its cause
        offline = isinstance(error, (ConnectionError, TimeoutError, FileNotFoundError)) or (
            "offline" in f"{type(error).__name__} {error}".lower()
        )
        kind = HHUnavailable if offline else PersonaDataError
        raise kind(
            f"could not load {source!r} ({type(error).__name__}: {error}); HH-RLHF needs network "
            "access or a local copy of the dataset."
        ) from error
    rows = table if limit is None else table.select(range(min(limit, len(table))))
    result = hh_rlhf_pairs(rows)
    if result.n_skipped:
        warnings.warn(f"HH-RLHF {split}: {result.report()}", stacklevel=2)
    return result
