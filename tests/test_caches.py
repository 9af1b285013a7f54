"""The features cache, the tiny-model cache and training's scratch folder (issue 10 items 4, 6, 7,
8, 13, 16): DPO_FORCE_RERUN bypasses them, a corrupt file is recomputed, keys hold no absolute
paths, torch.load is weights-only, nothing leaks."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import torch
from training_fixtures import tiny_llama, tiny_tokenizer, toy_pairs

from dpo_utils import config, data, embeddings, models, training


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return models.tiny_model("llama", tokenizer, seed=5)


@pytest.fixture
def persona():
    loaded = data.load_persona(data.corpus_dir(), [0])
    return {name: rows[:12] for name, rows in loaded.items()}


@pytest.fixture
def counted_features(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    calls = []
    real = embeddings.last_token_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(embeddings, "last_token_features", counting)
    return calls


def test_force_rerun_bypasses_the_features_cache(
    model, tokenizer, persona, counted_features, monkeypatch
):
    """Item 6: the old features cache ignored DPO_FORCE_RERUN."""
    embeddings.persona_features(model, tokenizer, persona, model_key="m")
    embeddings.persona_features(model, tokenizer, persona, model_key="m")
    assert len(counted_features) == 1
    monkeypatch.setenv("DPO_FORCE_RERUN", "1")
    embeddings.persona_features(model, tokenizer, persona, model_key="m")
    assert len(counted_features) == 2


def test_truncated_features_are_recomputed_with_a_warning(
    model, tokenizer, persona, counted_features, tmp_path
):
    """Item 8: the old cache crashed on (or served) a truncated features.pt."""
    first = embeddings.persona_features(model, tokenizer, persona, model_key="m")
    (saved,) = (tmp_path / "cpu" / "features").glob("*/features.pt")
    blob = saved.read_bytes()
    saved.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(UserWarning, match=r"features\.pt .*not trusted"):
        again = embeddings.persona_features(model, tokenizer, persona, model_key="m")
    assert len(counted_features) == 2
    assert torch.equal(first.features["final"], again.features["final"])


def test_features_cache_loads_weights_only(
    model, tokenizer, persona, counted_features, monkeypatch
):
    """Item 16: torch.load is told weights_only=True explicitly."""
    embeddings.persona_features(model, tokenizer, persona, model_key="m")
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    embeddings.persona_features(model, tokenizer, persona, model_key="m")
    assert seen == [{"weights_only": True}]


def test_a_moved_model_folder_keeps_its_features_key(
    model, tokenizer, persona, counted_features, tmp_path
):
    """Item 7: the key held the model's absolute path, so a moved checkout recomputed 06/07."""
    first = tmp_path / "checkout-a" / "tiny-llama-abc"
    models.save_model(model, tokenizer, first)
    second = tmp_path / "moved" / "elsewhere" / "tiny-llama-abc"
    shutil.copytree(first, second)
    embeddings.persona_features(model, tokenizer, persona, model_key=str(first))
    embeddings.persona_features(model, tokenizer, persona, model_key=str(second))
    assert len(counted_features) == 1
    keys = [p.read_bytes() for p in (tmp_path / "cpu" / "features").glob("*/features.pt")]
    assert len(keys) == 1 and str(tmp_path).encode() not in keys[0]


def test_a_prompt_longer_than_the_context_is_rejected_before_extraction(
    model, tokenizer, persona, counted_features
):
    """Item 13: a 2.4 MB line padded a batch to a 20 GB allocation."""
    name = next(iter(persona))
    rows = [dict(r) for r in persona[name]]
    rows[3]["question"] = "word " * (2 * model.config.max_position_embeddings)
    with pytest.raises(data.PersonaDataError, match=rf"context of \d+ tokens.*{name}.*row 3"):
        embeddings.persona_features(model, tokenizer, {name: rows}, model_key="m")
    assert counted_features == []


@pytest.mark.slow
def test_force_rerun_bypasses_the_tiny_model_cache(monkeypatch, tmp_path):
    """Item 6: the old tiny-model cache ignored DPO_FORCE_RERUN (its force defaulted to False)."""
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    calls = []
    real = models.pretrain
    monkeypatch.setattr(models, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    models.pretrained_tiny_model("llama", steps=1)
    models.pretrained_tiny_model("llama", steps=1)
    assert len(calls) == 1
    folder = models.tiny_model_dir("llama", steps=1)
    (folder / "pretrain.json").write_text("{}")  # corrupt: recomputed with a warning
    with pytest.warns(UserWarning, match="pretrain.json"):
        models.pretrained_tiny_model("llama", steps=1)
    assert len(calls) == 2
    monkeypatch.setenv("DPO_FORCE_RERUN", "1")
    models.pretrained_tiny_model("llama", steps=1)
    assert len(calls) == 3


def test_a_failed_check_leaves_no_scratch_folder(monkeypatch, tmp_path):
    """Item 4: /tmp/dpo-run-* leaked whenever validation failed after the folder was made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def bad_arguments(*args, **kwargs):
        raise config.ConfigError("dpo_batch_size=30 is not a multiple of 32")

    monkeypatch.setattr(training, "dpo_arguments", bad_arguments)
    tok = tiny_tokenizer()
    with pytest.raises(config.ConfigError):
        training.train_dpo(config.get_config("cpu"), tiny_llama(tok), tok, toy_pairs(4))
    assert list(tmp_path.glob("dpo-run-*")) == []
