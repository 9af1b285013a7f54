"""Last-token features: what hidden_states[-1] is, batching exactness, caching, and the properties
table."""

from __future__ import annotations

import copy

import pytest
import torch

from dpo_utils import (
    data,
    embeddings,
    metrics,
    models,
    pretraining,
    synthetic,
)


@pytest.fixture(scope="module")
def tokenizer():
    return models.train_tokenizer(pretraining.pretraining_text().texts[:3000])


@pytest.fixture(scope="module", params=["llama", "mistral"])
def model(request, tokenizer):
    m = models.tiny_model(request.param, tokenizer, seed=5)
    models.pretrain(
        m, tokenizer, pretraining.pretraining_text().texts[:200], steps=3, seed=5
    )  # move off init
    return m


@pytest.fixture(scope="module")
def persona():
    loaded = data.load_persona(data.corpus_dir(), [0, 1])
    return {name: rows[:40] for name, rows in loaded.items()}


def test_final_hidden_state_is_the_final_norm_output_and_feeds_lm_head(model, tokenizer):
    ids = torch.tensor(
        [tokenizer("Is the following statement something you would say?\n")["input_ids"]]
    )
    captured = {}
    hook = embeddings.final_norm(model).register_forward_hook(
        lambda mod, inp, out: captured.update(out=out)
    )
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hook.remove()
    assert torch.equal(
        out.hidden_states[-1], captured["out"]
    )  # transformers 5.24: already normalised
    feature = embeddings.last_token_features(model, tokenizer, [tokenizer.decode(ids[0, 1:])])
    assert torch.allclose(feature["final"][0], out.hidden_states[-1][0, -1], atol=1e-6)
    assert torch.allclose(model.lm_head(feature["final"][0]), out.logits[0, -1], atol=1e-5)
    # the authors' variant normalises once more: close to, but not the same as, the true feature
    again = embeddings.final_norm(model)(out.hidden_states[-1][0, -1])
    assert torch.allclose(feature["authors"][0], again, atol=1e-6)
    assert not torch.equal(feature["authors"][0], feature["final"][0])


def test_batched_features_equal_one_at_a_time(model, tokenizer, persona):
    texts = embeddings.prompt_texts([r for rows in persona.values() for r in rows])
    texts += [
        "Short?\n",
        "A much longer prompt than the others, with many more words in it than usual.\n",
    ]
    assert len({len(tokenizer(t)["input_ids"]) for t in texts}) > 3  # padding really happens
    batched = embeddings.last_token_features(model, tokenizer, texts, batch_size=16)
    single = embeddings.last_token_features(model, tokenizer, texts, batch_size=1)
    for variant in batched:
        assert (batched[variant] - single[variant]).abs().max() < 1e-5


def test_features_do_not_depend_on_the_number_of_torch_threads(model, tokenizer, persona):
    """Chapter 06's stand-ins have their features computed in a single-threaded worker (make
    book's background job, or the chapter's own workers) or, when one stand-in is left, in the
    notebook's process with every core's thread: both must give the same numbers, to the bit."""
    texts = embeddings.prompt_texts([r for rows in persona.values() for r in rows])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = embeddings.last_token_features(model, tokenizer, texts)
        torch.set_num_threads(2)
        two = embeddings.last_token_features(model, tokenizer, texts)
    finally:
        torch.set_num_threads(before)
    for variant in one:
        assert torch.equal(one[variant], two[variant])


def test_features_are_cached_on_disk(model, tokenizer, persona, tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    first = embeddings.persona_features(model, tokenizer, persona, model_key="unit-test-model")
    assert list((tmp_path / "cpu" / "features").glob("*/features.pt"))

    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(embeddings, "last_token_features", fail)
    second = embeddings.persona_features(model, tokenizer, persona, model_key="unit-test-model")
    assert all(torch.equal(first.features[v], second.features[v]) for v in embeddings.VARIANTS)
    with pytest.raises(AssertionError, match="recomputed"):  # another key is another cache entry
        embeddings.persona_features(model, tokenizer, persona, model_key="other-model")


def test_features_cached_says_what_persona_features_will_do(
    model, tokenizer, persona, tmp_path, monkeypatch
):
    """Chapter 06 starts workers only for stand-ins whose features are not cached: the check is
    False before the features are computed, True after, False for a forced rerun."""
    monkeypatch.setenv("DPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("DPO_FORCE_RERUN", raising=False)
    monkeypatch.setattr(model, "name_or_path", "unit-test-cached-check")
    assert not embeddings.features_cached(model, persona)
    embeddings.persona_features(model, tokenizer, persona)
    assert embeddings.features_cached(model, persona)
    assert not embeddings.features_cached(model, dict(list(persona.items())[:1]))  # other rows
    monkeypatch.setenv("DPO_FORCE_RERUN", "1")
    assert not embeddings.features_cached(model, persona)


def test_authors_exact_variant_is_the_bare_question_normalised_twice(model, tokenizer, persona):
    """The authors embed ``question`` without the trailing newline and re-apply the final norm;
    the project's "authors" variant reads the DPO prompt (with the newline)."""
    fs = embeddings.persona_features(model, tokenizer, persona, cache=False)
    assert set(fs.features) == set(embeddings.VARIANTS)
    row = next(iter(persona.values()))[0]
    assert not row["question"].endswith("\n")
    ids = torch.tensor([tokenizer(row["question"])["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
    expected = embeddings.final_norm(model)(hidden)
    # threshold: the same arithmetic, batched (right padding) against one prompt alone
    assert torch.allclose(fs.features["authors_exact"][0], expected, atol=1e-5)
    assert not torch.allclose(fs.features["authors_exact"], fs.features["authors"], atol=1e-3)


def test_answer_margin_is_the_models_own_yes_minus_no_logit(model, tokenizer, persona):
    fs = embeddings.persona_features(model, tokenizer, persona, cache=False)
    yes, no = models.answer_token_ids(tokenizer)
    row = next(iter(persona.values()))[0]
    ids = torch.tensor([tokenizer(row["question"] + "\n")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    assert abs(float(logits[yes] - logits[no]) - float(fs.answer_margin[0])) < 1e-4
    assert set(fs.answer_accuracy()) == set(persona)


def test_properties_table_recovers_a_known_gap_and_flags_no_signal():
    signal = synthetic.sample_behavior(400, 16, mean_gap=3.0, seed=1)
    noise = synthetic.sample_behavior(400, 16, mean_gap=0.0, seed=2)
    table = metrics.properties_table(
        {"signal": (signal.features, signal.signs), "noise": (noise.features, noise.signs)}
    )
    by = table.set_index("behavior")
    assert abs(by.loc["signal", "distinguishability"] - 3.0) < 0.4
    assert by.loc["signal", "snr"] > 10 and by.loc["noise", "snr"] < 3
    assert by.loc["signal", "probe_accuracy"] > 0.9 and by.loc["noise", "probe_accuracy"] < 0.6
    assert (
        abs(by.loc["signal", "covariance_trace"] - 16) < 3
        and by.loc["signal", "concentration"] < 2
    )


def test_token_lengths_equal_the_tokenizers_own_count_and_are_kept(tokenizer, monkeypatch):
    """The fast path (the Rust backend, kept per process) counts exactly what
    ``len(tokenizer(text)["input_ids"])`` counts, special tokens included."""
    texts = ['Is the following statement something you would say?\n"I like tea"\n', "a", ""]
    monkeypatch.setattr(embeddings, "_LENGTHS", {})  # this test's entries only
    expected = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert embeddings.token_lengths(tokenizer, texts) == expected
    assert list(embeddings._LENGTHS.values()) == [tuple(expected)]  # kept
    assert embeddings.token_lengths(tokenizer, texts) == expected  # from the memo, a new list
    copied = copy.deepcopy(tokenizer)  # a run's copy of the stand-in's tokenizer: the same counts
    copied.name_or_path = "some/run"
    assert embeddings.token_lengths(copied, texts) == expected
    assert len(embeddings._LENGTHS) == 1  # the copy shares the stand-in's entry
    kept = len(embeddings._LENGTHS)
    other = models.train_tokenizer(pretraining.pretraining_text().texts[:3000], vocab_size=1024)
    assert embeddings.token_lengths(other, texts) == [
        len(ids) for ids in other(texts)["input_ids"]
    ]
    assert len(embeddings._LENGTHS) == kept + 1  # another tokenizer: its own entry, not a hit
