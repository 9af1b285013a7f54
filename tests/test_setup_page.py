"""book/setup.md's memory table is the code's arithmetic, not a typed guess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from dpo_utils import config, scale

PAGE = Path(__file__).resolve().parents[1] / "book" / "setup.md"
ROWS = {
    "policy weights": "policy weights, full DPO",
    "gradients": "gradients, full DPO",
    "AdamW moments": "AdamW moments, full DPO",
    "reference model": "reference model, full DPO",
    "total": "**total states, full DPO**",
}


def _table_gib(row_start: str) -> tuple[float, float]:
    for line in PAGE.read_text().splitlines():
        if line.startswith(f"| {row_start} |"):
            values = re.findall(r"([\d.]+) GiB", line)
            return float(values[0]), float(values[1])
    raise AssertionError(f"no row starting {row_start!r} in {PAGE.name}")


@pytest.mark.parametrize("profile", config.PAPER_PROFILES)
def test_memory_table_matches_the_code(profile):
    cfg = config.get_config(profile)
    llama = scale.full_dpo_state_gib(cfg, scale.PAPER_MODEL_PARAMETERS["Llama-2-7B"])
    mistral = scale.full_dpo_state_gib(cfg, scale.PAPER_MODEL_PARAMETERS["Mistral-7B"])
    for key, row in ROWS.items():
        # the page rounds to 0.1 GiB
        assert _table_gib(row) == (round(llama[key], 1), round(mistral[key], 1)), row


def test_the_table_counts_the_dtypes_the_code_uses():
    cfg = config.get_config("llama2-7b")
    tiny = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = scale.prepare_policy(LlamaForCausalLM(tiny).to(torch.bfloat16), "full")
    ref = scale.reference_copy(model, scale.reference_dtype(cfg))
    sizes = scale.full_dpo_state_bytes(cfg)
    assert sizes["policy weights"] == next(model.parameters()).element_size()
    assert sizes["reference model"] == next(ref.parameters()).element_size()


@pytest.mark.parametrize(
    ("name", "cls", "cfg"),
    [
        ("Llama-2-7B", LlamaForCausalLM, LlamaConfig(vocab_size=32000)),
        (
            "Mistral-7B",
            MistralForCausalLM,
            MistralConfig(vocab_size=32000, num_key_value_heads=8, intermediate_size=14336),
        ),
    ],
)
def test_parameter_counts_are_the_published_shapes(name, cls, cfg):
    with torch.device("meta"):
        model = cls(cfg)
    assert sum(p.numel() for p in model.parameters()) == scale.PAPER_MODEL_PARAMETERS[name]
