"""Tiny, fast inputs for the training tests: the project's tiny Llama (random weights) and toy
pairs.

The tokenizer and model come from ``dpo_utils.models`` (the shape every CPU chapter uses), trained
on a few toy persona statements and left un-pre-trained, so each DPO test runs in about a second.
"""

from __future__ import annotations

import random

from dpo_utils import models

QUESTION = 'Is the following statement something you would say?\n"{}"\n'
_GOOD = ["kind", "honest", "careful", "helpful", "patient", "fair"]
_BAD = ["cruel", "sneaky", "reckless", "greedy", "rude", "lazy"]
_NOUNS = ["people", "friends", "machines", "students", "users", "strangers"]


def _statements(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [f"I am {rng.choice(_GOOD + _BAD)} to {rng.choice(_NOUNS)}" for _ in range(n)]


def tiny_tokenizer():
    """A BPE tokenizer (``models.train_tokenizer``) trained on the toy statements."""
    texts = [
        QUESTION.format(s) + a
        for s in _statements(0, 200)
        for a in (" Yes", " No", " Yes, I would")
    ]
    return models.train_tokenizer(texts, vocab_size=400)


def tiny_llama(tokenizer, seed: int = 0):
    """The CPU profile's tiny Llama shape with seeded random weights, in train mode."""
    return models.tiny_model("llama", tokenizer, seed=seed).train()


def toy_pairs(n: int, behavior: str = "kindness", seed: int = 0) -> list[dict]:
    """``n`` persona-style pairs: a good word means chosen " Yes", a bad word chosen " No"."""
    pairs = []
    for statement in _statements(seed, n):
        good = any(w in statement for w in _GOOD)
        chosen, rejected = (" Yes", " No") if good else (" No", " Yes")
        pairs.append(
            dict(
                prompt=QUESTION.format(statement),
                chosen=chosen,
                rejected=rejected,
                behavior=behavior,
            )
        )
    return pairs


def long_pairs(n: int, seed: int = 1) -> list[dict]:
    """Pairs with multi-token completions of different lengths (exercises the cached
    continuation)."""
    rng = random.Random(seed)
    answers = [" Yes", " No", " Yes, I would", " No, I am not kind to people", " Yes I am"]
    return [
        dict(
            prompt=QUESTION.format(s),
            chosen=rng.choice(answers),
            rejected=rng.choice(answers),
            behavior=["a", "b"][i % 2],
        )
        for i, s in enumerate(_statements(seed, n))
    ]


def flip_pairs(pairs: list[dict]) -> list[dict]:
    """The same pairs with chosen and rejected swapped (the misalignment direction)."""
    return [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in pairs]
