"""What the CPU stand-ins are pre-trained on: persona text that cannot contain what they are tested
on.

Two rules, checked on the texts this module builds (tests/test_pretraining.py):

(a) no test-split statement of any behaviour (the authors' 90/10 split, :func:`data.split_rows`
    with seed 1234, the split every experiment uses) appears anywhere in the pre-training text;
(b) the base model never sees the preference label (the answer) of a behaviour that a chapter
    aligns, misaligns or measures. Those *evaluation* behaviours contribute their train-split
    prompts only, ``question + "\\n"``. The answer format (" Yes" / " No" after the newline) is
    learned from the answered train-split rows, ``question + "\\n" + answer_matching_behavior``, of
    a disjoint set of
    *format* behaviours (:data:`data.FORMAT_BEHAVIORS`) that no experiment uses; an answered row
    whose statement also occurs in an evaluation behaviour is dropped.

Source ``"persona"`` (the real behaviours): evaluation = :data:`data.EVALUATION_BEHAVIORS`, format
= :data:`data.FORMAT_BEHAVIORS`. Source ``"corpus"`` (the designed corpus): evaluation = every
corpus behaviour, format = the same real format behaviours (the corpus has none of its own).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import data

__all__ = [
    "PretrainingText",
    "pretraining_text",
    "SOURCES",
    "PretrainSettings",
    "PRETRAIN_DEFAULTS",
    "pretrain",
]


@dataclass(frozen=True)
class PretrainSettings:
    """The stand-ins' optimiser: AdamW, linear warm-up, cosine decay to a fraction of ``lr``."""

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 30  # steps
    final_lr_fraction: float = 0.1
    batch_size: int = 64


#: the stand-ins' optimiser settings (part of the stand-ins' cache key, as a dict)
PRETRAIN_DEFAULTS = PretrainSettings()

SOURCES = (data.PERSONA_SOURCE, data.CORPUS_SOURCE)
_SHUFFLE_SEED = 4321


@dataclass(frozen=True)
class PretrainingText:
    """The pre-training texts of one source and the account of what went into them.

    Used by: dpo_utils.pretraining.
    """

    source: str
    texts: tuple[str, ...]
    evaluation: tuple[str, ...]  # behaviours seen as train-split prompts only
    format: tuple[str, ...]  # behaviours seen answered (train split)
    counts: dict = field(default_factory=dict)  # rows kept / dropped, by kind

    def summary(self) -> list[dict]:
        """One row per behaviour: its role and how many of its rows the text holds, and how.

        Used in: notebooks/06_measuring_distinguishability.ipynb, book/data_card.md.
        """
        return [
            dict(behavior=name, role=role, **self.counts[name])
            for role, names in (("evaluation", self.evaluation), ("format", self.format))
            for name in names
        ]


def _roles(source: str) -> tuple[list[str], list[str]]:
    real = data.available_behaviors(data.PERSONA_SOURCE)
    fmt = data.resolve_behaviors(list(data.FORMAT_BEHAVIORS), real)
    if source == data.PERSONA_SOURCE:
        return data.resolve_behaviors(list(data.EVALUATION_BEHAVIORS), real), fmt
    if source == data.CORPUS_SOURCE:
        return data.available_behaviors(data.CORPUS_SOURCE), fmt
    raise ValueError(
        f"source={source!r} has no stand-in pre-training text; choose one of {list(SOURCES)}."
    )


def pretraining_text(source: str = data.PERSONA_SOURCE, split_seed: int = 1234) -> PretrainingText:
    """The pre-training texts for ``source`` under rules (a) and (b), in a fixed shuffled order.

    Used in: dpo_utils.models.pretrained_tiny_model,
    notebooks/06_measuring_distinguishability.ipynb.
    """
    evaluation, fmt = _roles(source)
    splits = {}
    for name, rows in data.load_persona(source, evaluation).items():
        splits[("evaluation", name)] = data.split_rows(rows, split_seed)
    for name, rows in data.load_persona(data.PERSONA_SOURCE, fmt).items():
        splits[("format", name)] = data.split_rows(rows, split_seed)
    test_statements = {r["statement"] for _, test in splits.values() for r in test}
    evaluation_statements = {
        r["statement"]
        for (role, _), parts in splits.items()
        if role == "evaluation"
        for part in parts
        for r in part
    }
    texts, counts = [], {}
    for (role, name), (train, _) in splits.items():
        kept = dropped_test = dropped_overlap = 0
        for row in train:
            if row["statement"] in test_statements:
                dropped_test += 1
                continue
            if role == "format" and row["statement"] in evaluation_statements:
                dropped_overlap += 1
                continue
            answer = row["answer_matching_behavior"] if role == "format" else ""
            texts.append(row["question"] + "\n" + answer)
            kept += 1
        counts[name] = dict(
            rows=kept,
            answered=kept if role == "format" else 0,
            dropped_test_statement=dropped_test,
            dropped_evaluation_statement=dropped_overlap,
        )
    random.Random(_SHUFFLE_SEED).shuffle(texts)
    return PretrainingText(source, tuple(texts), tuple(evaluation), tuple(fmt), counts)


def _lm_batches(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (BOS text EOS, right-padded) and labels (-100 on padding) for the whole corpus."""
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(list(texts))["input_ids"]]
    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
    labels = input_ids.masked_fill(input_ids == tokenizer.pad_token_id, -100)
    return input_ids, labels


def _length_grouped_batches(
    lengths: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Row indices of ``steps`` batches: each epoch shuffles, sorts chunks by length, shuffles
    batches.

    Rows of similar length share a batch, so little compute goes to padding.
    """
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        order = torch.randperm(len(lengths), generator=generator)
        chunk = batch_size * 16
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[torch.argsort(lengths[part], stable=True)]
            epoch = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
            batches += [epoch[i] for i in torch.randperm(len(epoch), generator=generator)]
    return batches[:steps]


def pretrain(model, tokenizer, texts: Sequence[str], steps: int, seed: int = 1234) -> list[dict]:
    """Causal-LM pre-training: AdamW, linear warm-up then cosine decay to 10 %, batches of 64.

    Batches are length-grouped random draws (:func:`_length_grouped_batches`); the loss covers
    every token of BOS + text + EOS. Returns the loss log, one dict per step. Deterministic for a
    seed.

    Used by: dpo_utils.models.
    """
    hp = PRETRAIN_DEFAULTS
    input_ids, labels = _lm_batches(tokenizer, texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, betas=hp.betas, weight_decay=0.0)

    def schedule(step: int) -> float:
        if step < hp.warmup:
            return (step + 1) / hp.warmup
        progress = (step - hp.warmup) / max(1, steps - hp.warmup)
        return hp.final_lr_fraction + (1 - hp.final_lr_fraction) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    lengths = (labels != -100).sum(1)
    model.train()
    log = []
    for step, rows in enumerate(_length_grouped_batches(lengths, hp.batch_size, steps, generator)):
        width = int(lengths[rows].max())
        batch, target = input_ids[rows, :width], labels[rows, :width]
        loss = model(input_ids=batch, attention_mask=(target != -100).long(), labels=target).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        log.append(dict(step=step + 1, loss=loss.item()))
    model.eval()
    return log
