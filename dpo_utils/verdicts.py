"""Seeds, counts, intervals and verdicts for the LLM chapters (07-12) and the book's claims table.

A claim is measured once per seed pair (pre-training seed of the stand-in, DPO seed), asserted as a
count, "holds in at least k of n", with k fixed before the runs, and summarised by an interval that
respects the small sample (Student's t quantile). Each chapter saves its
verdict rows under ``results/<profile>/verdicts/``; the intro page reads them back into one table.
Nothing here trains or plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .config import ExperimentConfig
from .results import atomic_write_text, results_dir

__all__ = [
    "VERDICTS",
    "CHAPTER_SEEDS",
    "seed_grid",
    "chapter_seeds",
    "over_seeds",
    "t_interval",
    "count_holds",
    "verdict",
    "claim_row",
    "data_label",
    "save_verdicts",
    "load_verdicts",
    "format_interval",
    "claims_table",
]

#: the three verdicts a claim can get, strongest first
VERDICTS = ("holds", "holds with a caveat", "does not hold at this scale")
_COLUMNS = ["chapter", "data", "claim", "setting", "measured", "verdict", "why", "command"]


def seed_grid(cfg: ExperimentConfig, n_pretrain: int, n_dpo: int) -> list[tuple[int, int]]:
    """The (pretrain_seed, dpo_seed) pairs of a seeded chapter: the first n_pretrain stand-in seeds
    (``cfg.pretrain_seed``, +1, ...) times the first n_dpo DPO seeds (``cfg.seed``, +1, ...).

    Used by: dpo_utils.verdicts.
    """
    for name, value in (("n_pretrain", n_pretrain), ("n_dpo", n_dpo)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 1.")
    return [(cfg.pretrain_seed + i, cfg.seed + j) for i in range(n_pretrain) for j in range(n_dpo)]


#: seeds of the LLM chapters' trl runs per profile kind: (stand-in pre-training seeds, DPO seeds).
#: On CPU, 3 stand-ins x 1 DPO seed keeps chapters 07-12 within their time budget; a stand-in's
#: seed moves the results more than the DPO seed (the batches) does. At 7B there is one model.
CHAPTER_SEEDS = {"tiny": (3, 1), "paper": (1, 1)}


def chapter_seeds(
    cfg: ExperimentConfig, n_pretrain: int | None = None, n_dpo: int | None = None
) -> list[tuple[int, int]]:
    """The seed pairs a chapter runs: :data:`CHAPTER_SEEDS` for the profile's kind of model unless
    ``n_pretrain`` / ``n_dpo`` say otherwise (a paper-scale model has one pre-training: n_pretrain
    1).

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb.
    """
    kind = "paper" if cfg.requires_gpu else "tiny"
    default_pretrain, default_dpo = CHAPTER_SEEDS[kind]
    if kind == "paper" and n_pretrain not in (None, 1):
        raise ValueError(
            f"n_pretrain={n_pretrain!r} is not allowed on profile {cfg.profile!r}: its model "
            "has one pre-training; vary n_dpo instead."
        )
    return seed_grid(
        cfg,
        default_pretrain if n_pretrain is None else n_pretrain,
        default_dpo if n_dpo is None else n_dpo,
    )


def over_seeds(
    run: Callable[[ExperimentConfig, int], pd.DataFrame],
    cfg: ExperimentConfig,
    seeds: Iterable[tuple[int, int]],
) -> pd.DataFrame:
    """``run(cfg with that pretrain_seed, dpo_seed)`` for every seed pair, stacked with columns
    ``pretrain_seed`` and ``dpo_seed`` (one tidy table).

    Used in: notebooks/08_full_and_lora_dpo.ipynb, notebooks/09_prioritisation_llm.ipynb,
    notebooks/10_misalignment_llm.ipynb, notebooks/11_embedding_geometry.ipynb.
    """
    tables = []
    for pretrain_seed, dpo_seed in seeds:
        table = run(cfg.replace(pretrain_seed=int(pretrain_seed)), int(dpo_seed))
        tables.append(table.assign(pretrain_seed=int(pretrain_seed), dpo_seed=int(dpo_seed)))
    if not tables:
        raise ValueError("seeds is empty; give at least one (pretrain_seed, dpo_seed) pair.")
    return pd.concat(tables, ignore_index=True)


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError(f"need at least 2 finite values for an interval; got {list(values)!r}.")
    return x


def t_interval(
    values: Sequence[float],
    level: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a two-sided Student's t interval on n - 1 degrees of
    freedom (for n = 3 the quantile is 4.30, not 2). ``bounds`` clips the interval to a statistic's
    range, e.g. (-1, 1) for a correlation.

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb.
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} is not allowed; it must be in (0, 1).")
    x = _values(values)
    mean = float(x.mean())
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def count_holds(values: Sequence[bool]) -> tuple[int, int]:
    """(k, n): how many of n per-seed (or per-behaviour) checks hold. NaN counts as not holding.

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb.
    """
    flags = [bool(v) if v is not None and not _isnan(v) else False for v in values]
    if not flags:
        raise ValueError("no checks to count; give at least one value.")
    return sum(flags), len(flags)


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def verdict(k: int, n: int, k_required: int, caveat: str | None = None) -> str:
    """The verdict of a claim that held in k of n checks, against the k_required fixed beforehand.

    "holds" if k >= k_required and there is no caveat; "holds with a caveat" if k >= k_required but
    ``caveat`` names a reason to read it with care; otherwise (fewer than required, whatever the
    reason) "does not hold at this scale".

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"k={k!r}, n={n!r} is not a count; need 0 <= k <= n and n >= 1.")
    if not 1 <= k_required <= n:
        raise ValueError(f"k_required={k_required!r} is not allowed; it must be in 1..{n}.")
    if k >= k_required:
        return VERDICTS[1] if caveat else VERDICTS[0]
    return VERDICTS[2]


def claim_row(
    chapter: str,
    data: str,
    claim: str,
    measured: str,
    verdict_: str,
    why: str,
    setting: str = "",
    command: str = "",
) -> dict:
    """One verdict row; ``data`` names the persona source it was measured on (:func:`data_label`),
    ``setting`` the authors' setting of the claim, ``command`` how to run it at paper scale;
    ``verdict_`` must be one of :data:`VERDICTS`.

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    if verdict_ not in VERDICTS:
        raise ValueError(f"verdict={verdict_!r} is not allowed; choose one of {list(VERDICTS)}.")
    return dict(
        chapter=chapter,
        data=data,
        claim=claim,
        setting=setting,
        measured=measured,
        verdict=verdict_,
        why=why,
        command=command,
    )


def data_label(persona_source: str) -> str:
    """A short name for a persona source: "controlled corpus" for the project's designed corpus,
    "real behaviours" for anything else (the vendored Anthropic persona files or the hub).

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    return "controlled corpus" if persona_source == "corpus" else "real behaviours"


def save_verdicts(chapter: str, rows: Sequence[dict], profile: str = "cpu") -> pd.DataFrame:
    """Write a chapter's verdict rows to ``results/<profile>/verdicts/<chapter>-<data>.json``
    (replacing that chapter's earlier rows on the same data) and return them as a table.

    Used in: notebooks/07_last_layer_dpo.ipynb, notebooks/08_full_and_lora_dpo.ipynb,
    notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb,
    notebooks/11_embedding_geometry.ipynb, notebooks/12_faq_rewards_go_down.ipynb.
    """
    if not rows:
        raise ValueError(f"chapter {chapter!r} gave no verdict rows.")
    table = pd.DataFrame(list(rows), columns=_COLUMNS)
    if set(table["chapter"]) != {chapter}:
        raise ValueError(f"rows name chapters {sorted(set(table['chapter']))}, not {chapter!r}.")
    sources = set(table["data"])
    if len(sources) != 1:
        raise ValueError(f"rows mix data sources {sorted(sources)}; save one source at a time.")
    tag = sources.pop().replace(" ", "-")
    path = results_dir(profile) / "verdicts" / f"{chapter}-{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table.to_dict("records"), indent=1))
    return table


def load_verdicts(profile: str = "cpu") -> pd.DataFrame:
    """Every chapter's saved verdict rows, in chapter order (an empty table if none are saved).

    Used in: notebooks/13_claims_and_verdicts.ipynb (pasted into book/intro.md).
    """
    folder = results_dir(profile) / "verdicts"
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        rows += json.loads(path.read_text())
    return pd.DataFrame(rows, columns=_COLUMNS)


def format_interval(interval: tuple[float, float, float], digits: int = 2) -> str:
    """ "m [lo, hi]" for a (mean, low, high) triple, for tables (prose glues the three numbers).

    Used in: notebooks/09_prioritisation_llm.ipynb, notebooks/10_misalignment_llm.ipynb.
    """
    mean, low, high = interval
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def claims_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The book's claims table from the chapters' verdict rows: one row per (chapter, claim) with
    the authors' setting, what the CPU stand-in measured on the real behaviours and on the
    controlled corpus (each with its verdict; "not run in this build" where a source has no rows),
    the verdict on the real behaviours (else the corpus's), and the paper-scale command.

    Used in: notebooks/13_claims_and_verdicts.ipynb (pasted into book/intro.md).
    """
    out = []
    for (chapter, claim), group in verdicts.groupby(["chapter", "claim"], sort=False):
        by_data = {row["data"]: row for _, row in group.iterrows()}
        cells = {
            source: (
                f"{by_data[source]['measured']} ({by_data[source]['verdict']})"
                if source in by_data
                else "not run in this build"
            )
            for source in ("real behaviours", "controlled corpus")
        }
        main = by_data.get("real behaviours", by_data.get("controlled corpus"))
        if main is None:
            raise ValueError(
                f"chapter {chapter} claim {claim!r} has rows for {sorted(by_data)} only; the "
                "claims table needs 'real behaviours' or 'controlled corpus'."
            )
        out.append(
            {
                "chapter": chapter,
                "claim": claim,
                "the authors' setting": main["setting"],
                "CPU stand-in, real behaviours": cells["real behaviours"],
                "controlled corpus": cells["controlled corpus"],
                "verdict": main["verdict"],
                "paper-scale command": main["command"],
            }
        )
    return pd.DataFrame(out)
