"""Tiny, fast stand-ins for the training tests: a word-level tokenizer, a 2-layer Llama and toy pairs.

They are built from config in well under a second, so each DPO test trains in about a second on CPU.
Once ``dpo_utils.models`` offers tiny models, these fixtures can switch to it; the tests only need
*some* tokenizer with an EOS token and *some* causal LM.
"""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

QUESTION = 'Is the following statement something you would say?\n"{}"\n'
_GOOD = ["kind", "honest", "careful", "helpful", "patient", "fair"]
_BAD = ["cruel", "sneaky", "reckless", "greedy", "rude", "lazy"]
_NOUNS = ["people", "friends", "machines", "students", "users", "strangers"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the toy statements; " Yes" and " No" are single tokens."""
    texts = [QUESTION.format(s) + a for s in _statements(0, 200) for a in (" Yes", " No")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A hidden-64, 2-layer Llama built from config with seeded random weights."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def _statements(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = rng.choice(_GOOD + _BAD)
        out.append(f"I am {word} to {rng.choice(_NOUNS)}")
    return out


def toy_pairs(n: int, behavior: str = "kindness", seed: int = 0) -> list[dict]:
    """``n`` persona-style pairs: a good word means chosen " Yes", a bad word chosen " No"."""
    pairs = []
    for statement in _statements(seed, n):
        good = any(w in statement for w in _GOOD)
        chosen, rejected = (" Yes", " No") if good else (" No", " Yes")
        pairs.append(dict(prompt=QUESTION.format(statement), chosen=chosen, rejected=rejected, behavior=behavior))
    return pairs


def flip_pairs(pairs: list[dict]) -> list[dict]:
    """The same pairs with chosen and rejected swapped (the misalignment direction)."""
    return [dict(p, chosen=p["rejected"], rejected=p["chosen"]) for p in pairs]
