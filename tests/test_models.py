"""Tokenizer, tiny stand-in models, their disk cache, and the GPU-profile loading path on a local
folder."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_utils import config, data, measuring_setup, models, pretraining
from dpo_utils import results as results_module

STEPS = 4  # enough to exercise the loop and the cache; the chapter uses cfg.pretrain_steps


@pytest.fixture(scope="module")
def tokenizer():
    return models.train_tokenizer(pretraining.pretraining_text().texts[:3000])


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    return tmp_path


def test_answers_are_single_tokens_appended_to_the_prompt(tokenizer):
    yes, no = models.answer_token_ids(tokenizer)
    assert yes != no and tokenizer.convert_ids_to_tokens([yes, no]) == ["ĠYes", "ĠNo"]
    for row in data.load_persona("persona", 84).popitem()[1][:50]:
        prompt = row["question"] + "\n"
        base = tokenizer(prompt)["input_ids"]
        assert base[0] == tokenizer.bos_token_id
        assert tokenizer(prompt + row["answer_matching_behavior"])["input_ids"] == base + [
            yes if row["answer_matching_behavior"] == " Yes" else no
        ]


def test_answer_ids_error_when_not_single_tokens():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(tk_models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import trainers

    core.train_from_iterator(
        ["abc def"],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    byte_level = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="' Yes' is not a single token"):
        models.answer_token_ids(byte_level)


@pytest.mark.parametrize(
    "arch, cls", [("llama", "LlamaForCausalLM"), ("mistral", "MistralForCausalLM")]
)
def test_tiny_model_shape_and_seed(tokenizer, arch, cls):
    a, b = models.tiny_model(arch, tokenizer, seed=3), models.tiny_model(arch, tokenizer, seed=3)
    assert type(a).__name__ == cls
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    # grouped-query attention in the Mistral stand-in only (2 key/value heads for 4 query heads)
    assert a.config.num_key_value_heads == (2 if arch == "mistral" else 4)
    assert (
        a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()
    )  # untied, as in Llama-2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = models.tiny_model(arch, tokenizer, seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    with pytest.raises(config.ConfigError, match="gpt2"):
        models.tiny_model("gpt2", tokenizer)


@pytest.mark.slow  # 40 pre-training steps: about a minute on 2 cores
def test_pretraining_lowers_the_loss(tokenizer):
    model = models.tiny_model("llama", tokenizer, seed=0)
    log = models.pretrain(
        model, tokenizer, pretraining.pretraining_text().texts[:1500], steps=40, seed=0
    )
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 1.0 and not model.training


@pytest.mark.slow  # builds the stand-in's corpus and tokenizer, then pre-trains twice
def test_pretrained_model_is_cached_by_config(results):
    model, tok = models.pretrained_tiny_model("llama", steps=STEPS)
    folder = models.tiny_model_dir("llama", steps=STEPS)
    assert folder.parent == results / "cpu" / "models" and (folder / "pretrain.json").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again, _ = models.pretrained_tiny_model("llama", steps=STEPS)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True)
    )
    assert (
        models.tiny_model_dir("llama", steps=STEPS + 1) != folder
    )  # another config, another entry
    info = json.loads((folder / "pretrain.json").read_text())
    assert len(info["log"]) == STEPS and info["key"]["arch"] == "llama"


def test_cache_key_covers_seed_source_and_texts(results, monkeypatch):
    base = models.tiny_model_dir("llama", steps=STEPS)
    assert models.tiny_model_dir("llama", steps=STEPS, seed=1235) != base
    assert models.tiny_model_dir("llama", steps=STEPS, source="corpus") != base
    built = pretraining.pretraining_text()
    changed = pretraining.PretrainingText(
        built.source, built.texts[1:], built.evaluation, built.format, built.counts
    )
    monkeypatch.setattr(models, "pretraining_text", lambda source: changed)
    assert models.tiny_model_dir("llama", steps=STEPS) != base  # other texts, other entry


def test_cache_key_holds_the_plain_values_it_held_before_the_dataclasses(monkeypatch):
    # the stand-ins' shape and optimiser settings became dataclasses; the key must still hold the
    # same plain values (the dicts of before, written out here) so that a saved stand-in keeps
    # its folder, and stay JSON-able (config_hash raises on a dataclass)
    monkeypatch.setattr(models, "code_fingerprint", lambda modules: "code")
    key = models._cache_key("mistral", 300, 1234, 2048, ["a text"], "persona")
    before = dict(
        kind="tiny-causal-lm",
        version=2,
        arch="mistral",
        shape=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        gqa_mistral=2,
        vocab_size=2048,
        pretrain_steps=300,
        seed=1234,
        optimizer=dict(
            lr=3e-3, betas=(0.9, 0.95), warmup=30, final_lr_fraction=0.1, batch_size=64
        ),
        source="persona",
        texts=results_module.config_hash({"texts": ["a text"]}),
        code="code",
    )
    assert key == before
    assert results_module.config_hash(key) == results_module.config_hash(before)


def test_cpu_profile_loads_the_cached_stand_in(results):
    cfg = config.get_config(
        "cpu", pretrain_steps=STEPS, model_name="tiny-mistral", model_arch="mistral"
    )
    model, tok = models.load_model_and_tokenizer(cfg, "cpu")
    assert type(model).__name__ == "MistralForCausalLM" and str(results) in model.name_or_path
    assert model.config.num_key_value_heads == 2
    record = models.pretrain_record(cfg)
    assert record["key"]["seed"] == cfg.pretrain_seed and record["key"]["source"] == "persona"
    other = cfg.replace(pretrain_seed=cfg.pretrain_seed + 1)
    assert models.pretrain_record(other) is None  # keyed by the pre-training seed, not cfg.seed
    with pytest.raises(config.ConfigError, match="model_arch"):
        models.load_model_and_tokenizer(cfg.replace(model_arch="llama"), "cpu")


def test_gpu_code_path_from_a_local_folder(tokenizer, tmp_path):
    """The hub-id branch (AutoModelForCausalLM/AutoTokenizer.from_pretrained) on a saved tiny
    model."""
    model = models.tiny_model("mistral", tokenizer, seed=1)
    models.save_model(model, tokenizer, tmp_path / "m")
    cfg = config.get_config("cpu", model_name=str(tmp_path / "m"), model_arch="mistral")
    loaded, tok = models.load_model_and_tokenizer(cfg, "cpu")
    assert type(loaded).__name__ == "MistralForCausalLM" and loaded.dtype == torch.float32
    assert models.answer_token_ids(tok) == models.answer_token_ids(tokenizer)
    ids = torch.tensor([tok("Is it?\n")["input_ids"]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)


def test_save_load_and_clone_rebuild_independent_models(tokenizer, tmp_path):
    model = models.tiny_model("llama", tokenizer, seed=2)
    loaded, tok = models.load_saved_model(models.save_model(model, tokenizer, tmp_path / "s"))
    clone = models.clone_model(model)
    for other in (loaded, clone):
        assert all(
            torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters(), strict=True)
        )
        assert all(
            p.data_ptr() != q.data_ptr()
            for p, q in zip(model.parameters(), other.parameters(), strict=True)
        )
    with torch.no_grad():
        clone.lm_head.weight.zero_()
    ids = torch.tensor([tok("Is it?\n")["input_ids"]])
    assert (
        torch.count_nonzero(clone(ids).logits) == 0 and torch.count_nonzero(model(ids).logits) > 0
    )
    with pytest.raises(FileNotFoundError, match="save_model"):
        models.load_saved_model(tmp_path / "empty")


def test_lora_config_follows_the_profile():
    cfg = config.get_config("llama2-7b")
    lora = models.lora_config(cfg)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (8, 32, 0.05, "none")
    assert set(lora.target_modules) == {"q_proj", "v_proj"}


@pytest.mark.slow  # spawns two workers that import torch and pre-train (~20 s)
def test_prepare_standins_pretrains_the_missing_ones_in_workers(results):
    configs = [
        config.get_config("cpu", pretrain_steps=STEPS, model_name=name, model_arch=tiny.arch)
        for name, tiny in models.TINY_MODELS.items()
    ]
    name = list(data.EVALUATION_BEHAVIORS)[0]
    persona = {n: rows[:20] for n, rows in data.load_persona("persona", [name]).items()}
    group = [(configs + configs[:1], persona)]  # a stand-in named twice is made ready once
    assert measuring_setup.prepare_standins(group, processes=2) == 2
    assert measuring_setup.prepare_standins(group, processes=2) == 0  # cached now
    for cfg in configs:
        record = models.pretrain_record(cfg)
        assert record["key"]["arch"] == cfg.model_arch and len(record["log"]) == STEPS
        assert record["torch_threads"] == 1
    # a worker's model equals the one the parent process trains with the same settings
    spawned, _ = models.load_model_and_tokenizer(configs[0], "cpu")
    again, _ = models.pretrained_tiny_model("llama", steps=STEPS, force=True)
    pairs = zip(spawned.parameters(), again.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
