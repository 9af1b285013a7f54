"""Last-token, final-layer features of a causal LM: what the unembedding sees, per prompt.

For a prompt x (tokenised with the tokenizer's own BOS), e(x) is the last layer's output at the
last prompt token. Two variants, both computed in one forward pass:

* ``final``: the model's true final hidden state, the input of ``lm_head``. In transformers 5.24
the
  last entry of ``hidden_states`` (and the backbone's ``last_hidden_state``) is already the output
  of the final RMSNorm; the tests check this, and that ``lm_head(e)`` reproduces the model's
  logits.
* ``authors``: the authors' released code applies that RMSNorm once more to ``hidden_states[-1]``
  (its feature extraction script), so its features are normalised twice. Kept for comparison.
* ``authors_exact``: the authors' features exactly: normalised twice *and* read at the end of
  ``question`` without the trailing "\n" (their embedding_properties and priority_levels notebooks
  and last-layer scripts embed the bare question; only their UMAP notebook adds the newline). A
  second forward pass over the bare questions.

Prompts are processed in length-sorted batches, right-padded, and gathered at position length - 1,
which is exact: with right padding the real tokens' positions and attention are unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import PersonaDataError
from .fingerprint import code_fingerprint
from .models import answer_token_ids
from .results import (
    atomic_directory,
    cache_lock,
    config_hash,
    force_rerun,
    record_provenance,
    results_dir,
    trusted_cache,
)

__all__ = [
    "VARIANTS",
    "FeatureSet",
    "prompt_texts",
    "final_norm",
    "last_token_features",
    "persona_features",
    "check_prompt_lengths",
    "token_lengths",
    "features_cached",
]

VARIANTS = ("final", "authors", "authors_exact")
#: the variants one forward pass over the prompts gives (:func:`last_token_features`)
_PASS_VARIANTS = ("final", "authors")
_FORMAT_VERSION = 2  # 2: the authors_exact variant


def prompt_texts(rows: Sequence[Mapping]) -> list[str]:
    """The DPO prompts question + "\\n" of persona rows (the feature is read at that newline).

    Used by: dpo_utils.embeddings.
    """
    return [row["question"] + "\n" for row in rows]


#: token lengths already counted in this process: (tokenizer, texts) -> lengths
_LENGTHS: dict[tuple, tuple[int, ...]] = {}
_LENGTHS_KEPT = 16  # a chapter measures a handful of stand-ins; the oldest entry goes first


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """How many tokens ``tokenizer`` gives each text (special tokens included), as
    ``len(tokenizer(text)["input_ids"])``.

    A fast tokenizer counts through its Rust backend, skipping transformers' per-text Python
    conversion (64,000 prompts: 2.0 s instead of 3.4 s), and its counts are kept for the process:
    a chapter asks for the same prompts' lengths several times per stand-in and per trained run.
    Any other tokenizer is called as it is, every time.

    Used by: dpo_utils.embeddings, dpo_utils.llm_evidence, dpo_utils.measuring_experiments.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    texts = tuple(texts)
    # keyed by the tokenizer's full definition (vocabulary, merges, special tokens), so a trained
    # run's copy of a stand-in's tokenizer shares the stand-in's counts
    memo = (hashlib.sha256(backend.to_str().encode()).hexdigest(), texts)
    if memo not in _LENGTHS:
        if backend.truncation is None and backend.padding is None:
            found = tuple(len(e.ids) for e in backend.encode_batch(list(texts)))
        else:  # a backend left truncating or padding: transformers resets it per call
            found = tuple(len(ids) for ids in tokenizer(list(texts))["input_ids"])
        if len(_LENGTHS) >= _LENGTHS_KEPT:
            _LENGTHS.pop(next(iter(_LENGTHS)))
        _LENGTHS[memo] = found
    return list(_LENGTHS[memo])


def final_norm(model) -> torch.nn.Module:
    """The final normalisation layer of a decoder-only model (``model.model.norm`` for
    Llama/Mistral).

    Used by: dpo_utils.embeddings.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise TypeError(
            f"{type(model).__name__} has no final norm at .get_decoder().norm; "
            "the authors' variant needs a Llama/Mistral-style model."
        )
    return norm


def _padded(
    encoded: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(ids) for ids in encoded])
    ids = torch.full((len(encoded), int(lengths.max())), pad_id, dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return ids.to(device), mask.to(device), lengths.to(device)


@torch.no_grad()
def last_token_features(
    model, tokenizer, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None
) -> dict[str, torch.Tensor]:
    """Features of each text at its last token, two variants: ``{"final": (n, d), "authors": (n,
    d)}`` (``authors_exact`` is ``authors`` of the bare questions, see :func:`persona_features`).

    fp32 on the CPU whatever the model's dtype and device. ``progress=None`` shows a tqdm bar only
    on a terminal. ``batch_size=1`` is the one-at-a-time reference (no padding at all).

    Used by: dpo_utils.embeddings.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    encoded = tokenizer(list(texts))["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("every text must give at least one token.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    backbone, norm = model.get_decoder(), final_norm(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # little padding per batch
    dim = model.config.hidden_size
    out = {v: torch.empty(len(encoded), dim, dtype=torch.float32) for v in _PASS_VARIANTS}
    starts = range(0, len(order), batch_size)
    for start in tqdm(
        starts, desc="features", disable=(None if progress is None else not progress), leave=False
    ):
        index = order[start : start + batch_size]
        ids, mask, lengths = _padded([encoded[i] for i in index], pad_id, device)
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(index), device=device), lengths - 1]
        out["final"][index] = last.float().cpu()
        out["authors"][index] = norm(last).float().cpu()
    return out


@dataclass
class FeatureSet:
    """Features of persona prompts: per row its behaviour and sign (+1 when " Yes" matches).

    Used by: dpo_utils.embeddings, dpo_utils.feature_experiments, dpo_utils.llm_experiments.
    """

    behaviors: list[str]
    signs: torch.Tensor  # (n,) float64, +1 / -1
    features: dict[str, torch.Tensor]  # variant -> (n, d)
    answer_margin: torch.Tensor  # (n,) logit(" Yes") - logit(" No") of the model itself

    def select(self, behavior: str, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, signs) of one behaviour in one variant."""
        if variant not in self.features:
            raise ValueError(
                f"variant={variant!r} is not available; choose one of {list(self.features)}."
            )
        mask = torch.tensor([b == behavior for b in self.behaviors])
        if not mask.any():
            raise ValueError(
                f"behaviour {behavior!r} is not in this feature set; "
                f"it has {sorted(set(self.behaviors))}."
            )
        return self.features[variant][mask].double(), self.signs[mask]

    def groups(self, variant: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{behaviour: (features, signs)} in first-seen order, for metrics.properties_table."""
        return {name: self.select(name, variant) for name in dict.fromkeys(self.behaviors)}

    def answer_accuracy(self) -> dict[str, float]:
        """Per behaviour, how often the model itself ranks the matching answer first (its LM
        accuracy)."""
        correct = (torch.sign(self.answer_margin.double()) == self.signs).double()
        return {
            name: float(correct[torch.tensor([b == name for b in self.behaviors])].mean())
            for name in dict.fromkeys(self.behaviors)
        }


def _answer_margin(model, tokenizer, final: torch.Tensor) -> torch.Tensor:

    yes, no = answer_token_ids(tokenizer)
    head = model.get_output_embeddings().weight
    direction = (head[yes] - head[no]).detach().float().cpu()
    return final @ direction


def persona_features(
    model,
    tokenizer,
    persona: Mapping[str, Sequence[Mapping]],
    *,
    profile: str = "cpu",
    model_key: str | None = None,
    batch_size: int = 256,
    cache: bool = True,
) -> FeatureSet:
    """Every feature variant (:data:`VARIANTS`) of every persona prompt, cached under
    ``results/<profile>/features/``.

    The cache key is the model (``model_key``, default its ``name_or_path``; a local folder is
    keyed by its name and its files' names and sizes, never by its absolute path, so a moved
    checkout keeps its cache), its dtype, every prompt and label, and a fingerprint of this
    module's code; a model without a name is not cached. ``$DPO_FORCE_RERUN`` recomputes; a
    truncated or corrupt ``features.pt`` is detected (manifest sizes and checksums) and recomputed.
    A prompt longer than the model's context is rejected before any extraction.

    Used by: dpo_utils.feature_experiments, dpo_utils.llm_experiments.
    """
    names = [name for name, rows in persona.items() for _ in rows]
    rows = [row for rows in persona.values() for row in rows]
    texts = prompt_texts(rows)
    signs = torch.tensor(
        [1.0 if r["answer_matching_behavior"] == " Yes" else -1.0 for r in rows],
        dtype=torch.float64,
    )
    check_prompt_lengths(model, tokenizer, texts, names)
    key = _features_key(model, persona, model_key) if cache else None
    if key is None:
        features = _all_variants(model, tokenizer, texts, rows, batch_size)
        return FeatureSet(
            names, signs, features, _answer_margin(model, tokenizer, features["final"])
        )
    folder = results_dir(profile) / "features" / config_hash(key)
    with cache_lock(folder):
        if not force_rerun() and trusted_cache(
            folder, "features.pt", "features", "recomputing them"
        ):
            saved = torch.load(folder / "features.pt", weights_only=True)
            record_provenance("features", "features", folder.name, True)
            return FeatureSet(names, signs, saved["features"], saved["answer_margin"])
        features = _all_variants(model, tokenizer, texts, rows, batch_size)
        margin = _answer_margin(model, tokenizer, features["final"])
        with atomic_directory(folder) as tmp:
            torch.save(dict(features=features, answer_margin=margin, key=key), tmp / "features.pt")
    record_provenance("features", "features", folder.name, False)
    return FeatureSet(names, signs, features, margin)


def _features_key(model, persona: Mapping[str, Sequence[Mapping]], model_key: str | None):
    """The features cache key of ``model`` on ``persona`` (None: a model without a name)."""
    key_name = model_key or getattr(model, "name_or_path", "") or ""
    if not key_name:
        return None
    names = [name for name, rows in persona.items() for _ in rows]
    rows = [row for rows in persona.values() for row in rows]
    signs = [1.0 if r["answer_matching_behavior"] == " Yes" else -1.0 for r in rows]
    return dict(
        version=_FORMAT_VERSION,
        model=_model_key(str(key_name)),
        dtype=str(next(model.parameters()).dtype),
        texts=config_hash({"t": prompt_texts(rows), "b": names, "s": signs}),
        code=code_fingerprint(["embeddings"]),
    )


def features_cached(
    model, persona: Mapping[str, Sequence[Mapping]], *, profile: str = "cpu"
) -> bool:
    """Whether :func:`persona_features` of ``model`` would load its features from the disk cache
    (a saved file is there and ``$DPO_FORCE_RERUN`` is off); it does not check the file's
    manifest, which :func:`persona_features` does.

    Used by: dpo_utils.measuring_setup.
    """
    key = _features_key(model, persona, None)
    if key is None or force_rerun():
        return False
    return (results_dir(profile) / "features" / config_hash(key) / "features.pt").is_file()


def _all_variants(model, tokenizer, texts, rows, batch_size) -> dict[str, torch.Tensor]:
    """One extraction over the prompts and the bare questions (the authors' text: no newline)."""
    bare = [row["question"] for row in rows]
    both = last_token_features(model, tokenizer, list(texts) + bare, batch_size=batch_size)
    n = len(texts)
    features = {v: both[v][:n].clone() for v in _PASS_VARIANTS}  # not views: saved alone
    features["authors_exact"] = both["authors"][n:].clone()
    return features


def _model_key(name: str) -> str:
    """A hub id as it is; a local folder by its name and its files (never its absolute path)."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size};".encode())
    return f"local:{folder.name}:{digest.hexdigest()[:12]}"


def check_prompt_lengths(model, tokenizer, texts: Sequence[str], names: Sequence[str]) -> None:
    """Reject a prompt longer than the model's context (``max_position_embeddings``), naming it.

    Used by: dpo_utils.embeddings.
    """
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not context:
        return
    lengths = token_lengths(tokenizer, texts)
    too_long = [i for i, n in enumerate(lengths) if n > context]
    if too_long:
        i = too_long[0]
        raise PersonaDataError(
            f"{len(too_long)} prompt(s) exceed the model's context of {context} tokens; "
            "the first, "
            f"of behaviour {names[i]!r} (row {i}), has {lengths[i]} tokens. Shorten or drop them: "
            "features are read at the last prompt token, so they cannot be truncated."
        )
