"""The stand-ins' pre-training text obeys the two rules, read from the texts the code really
builds."""

from __future__ import annotations

import pytest

from dpo_utils import corpus, data, models, pretraining


@pytest.fixture(scope="module", params=pretraining.SOURCES)
def built(request):
    return pretraining.pretraining_text(request.param)


def _quoted(text):
    """The quoted statement of a pre-training text: question prefix, "statement", newline,
    answer."""
    return text[len(corpus.QUESTION_PREFIX) :].rsplit("\n", 1)[0]


def _split_statements(source, names):
    persona = data.load_persona(source, names)
    return {name: data.split_rows(rows, 1234) for name, rows in persona.items()}


def test_no_test_split_statement_of_any_behaviour_is_in_the_text(built):
    """Rule (a), on every behaviour that could be used: threshold zero, since one leak is a
    leak."""
    splits = _split_statements(built.source, list(built.evaluation))
    splits |= _split_statements(data.PERSONA_SOURCE, list(built.format))
    quoted = {f'"{r["statement"]}"' for _, test in splits.values() for r in test}
    assert all(t.startswith(corpus.QUESTION_PREFIX) for t in built.texts)  # the layout read below
    leaks = [t for t in built.texts if _quoted(t) in quoted]
    assert leaks == []
    # the same check by substring on every test statement, for a random fifth of the texts
    sample = built.texts[::5]
    assert not [q for q in quoted if any(q in t for t in sample)]


def test_no_answer_of_an_evaluation_behaviour_is_in_the_text(built):
    """Rule (b): every answered text is a format behaviour's train row, and no evaluation statement
    appears with an answer (zero allowed)."""
    evaluation_rows = [
        r
        for rows in data.load_persona(built.source, list(built.evaluation)).values()
        for r in rows
    ]
    evaluation_statements = {f'"{r["statement"]}"' for r in evaluation_rows}
    answered = [t for t in built.texts if t.endswith(("\n Yes", "\n No"))]
    prompts_only = [t for t in built.texts if t.endswith("\n")]
    assert len(answered) + len(prompts_only) == len(built.texts)  # nothing else in the text
    leaked = [t for t in answered if _quoted(t) in evaluation_statements]
    assert leaked == []
    format_train = {
        r["question"] + "\n" + r["answer_matching_behavior"]
        for train, _ in _split_statements(data.PERSONA_SOURCE, list(built.format)).values()
        for r in train
    }
    assert set(answered) <= format_train
    assert not set(built.evaluation) & set(built.format)
    counts = {r["behavior"]: r for r in built.summary()}
    assert all(counts[name]["answered"] == 0 for name in built.evaluation)
    assert sum(counts[name]["answered"] for name in built.format) == len(answered)


def test_roles_are_the_packages_lists():
    built = pretraining.pretraining_text(data.PERSONA_SOURCE)
    available = data.available_behaviors(data.PERSONA_SOURCE)
    assert list(built.evaluation) == data.resolve_behaviors(
        list(data.EVALUATION_BEHAVIORS), available
    )
    assert list(built.format) == data.resolve_behaviors(list(data.FORMAT_BEHAVIORS), available)
    assert not set(built.evaluation) & set(
        data.resolve_behaviors(list(data.FORMAT_BEHAVIORS), available)
    )
    # every evaluation behaviour contributes (almost) its whole train split as prompts
    counts = {r["behavior"]: r for r in built.summary()}
    assert all(counts[name]["rows"] >= 880 for name in built.evaluation)
    with pytest.raises(ValueError, match="persona"):
        pretraining.pretraining_text("elsewhere")


def test_answers_are_single_tokens_for_a_tokenizer_trained_on_the_text():
    built = pretraining.pretraining_text(data.PERSONA_SOURCE)
    tokenizer = models.train_tokenizer(built.texts)
    yes, no = models.answer_token_ids(tokenizer)
    assert tokenizer.convert_ids_to_tokens([yes, no]) == ["ĠYes", "ĠNo"]
    assert len(tokenizer) == models.VOCAB_SIZE


def test_data_card_states_what_each_stand_in_saw():
    """The data card's counts and role table are the code's, not typed guesses."""
    from pathlib import Path

    card = (Path(__file__).resolve().parents[1] / "book" / "data_card.md").read_text()
    built = pretraining.pretraining_text(data.PERSONA_SOURCE)
    rows = built.summary()
    prompts = sum(r["rows"] for r in rows if r["role"] == "evaluation")
    answered = sum(r["answered"] for r in rows)
    assert f"{len(built.texts):,} texts: {prompts:,} prompts without answer" in card
    assert f"{answered:,} answered format rows" in card
    for r in rows:
        number = data.PERSONA_BEHAVIORS.index(r["behavior"])
        assert f"| {number} | {r['behavior']} | {r['role']} |" in card, r["behavior"]
    corpus_built = pretraining.pretraining_text(data.CORPUS_SOURCE)
    corpus_rows = corpus_built.summary()
    assert f"({sum(r['rows'] for r in corpus_rows if r['role'] == 'evaluation'):,} texts" in card
    assert f"({sum(r['answered'] for r in corpus_rows):,} texts)" in card
