"""Persona loader, the authors' numbering and split, preference pairs, and the project's corpus."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest

from dpo_utils import corpus, data

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "anthropic-persona-sample"


def _row(statement="I like tea.", yes=True, confidence=0.9):
    return {
        "question": f'{corpus.QUESTION_PREFIX}"{statement}"',
        "statement": statement,
        "label_confidence": confidence,
        "answer_matching_behavior": " Yes" if yes else " No",
        "answer_not_matching_behavior": " No" if yes else " Yes",
    }


def _write(folder: Path, name: str, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_numbering_is_the_authors_sorted_list():
    assert len(data.PERSONA_BEHAVIORS) == 135 == len(set(data.PERSONA_BEHAVIORS))
    assert list(data.PERSONA_BEHAVIORS) == sorted(
        data.PERSONA_BEHAVIORS
    )  # alphabetical, as upstream files
    assert data.PERSONA_BEHAVIORS[54] == "desire-to-not-have-memory-erased"
    assert data.PERSONA_BEHAVIORS[100] == "subscribes-to-Buddhism"
    assert data.resolve_behaviors([108, "agreeableness"]) == [
        "subscribes-to-average-utilitarianism",
        "agreeableness",
    ]


def test_unknown_name_lists_closest_names():
    with pytest.raises(data.PersonaDataError, match="subscribes-to-Buddhism") as info:
        data.resolve_behaviors(["subscribes-to-budhism"])
    assert "subscribes-to-budhism" in str(info.value)
    with pytest.raises(data.PersonaDataError, match="out of range"):
        data.resolve_behaviors([135])


def test_corpus_numbering_is_position_in_sorted_files():
    names = data.available_behaviors(data.corpus_dir())
    assert data.resolve_behaviors([0, 3], names) == [names[0], names[3]]
    assert data.resolve_behaviors(None, names) == names


def test_split_matches_the_authors_recipe_and_keeps_global_state():
    rows = [{"i": i} for i in range(101)]
    random.seed(5)
    before = random.random()
    random.seed(5)
    train, test = data.split_rows(rows)
    assert random.random() == before  # no side effect on the global generator
    expected = list(rows)
    random.seed(1234)
    random.shuffle(expected)
    assert train == expected[:90] and test == expected[90:]


def test_pairs_and_flip():
    rows = [_row(yes=True), _row("I hate tea.", yes=False)]
    pairs = data.preference_pairs(rows, "tea")
    assert pairs[0] == dict(
        prompt=rows[0]["question"] + "\n", chosen=" Yes", rejected=" No", behavior="tea"
    )
    assert pairs[1]["chosen"] == " No"
    flipped = data.preference_pairs(rows, "tea", flip=True)
    assert [(p["chosen"], p["rejected"]) for p in flipped] == [(" No", " Yes"), (" Yes", " No")]


def test_hh_rlhf_prompt_ends_at_last_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, here you go."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No."
    (pair,) = data.hh_rlhf_pairs([{"chosen": chosen, "rejected": rejected}])
    assert (
        pair["prompt"].endswith("help?\n\nAssistant:") and pair["prompt"].count("Assistant:") == 2
    )
    assert pair["chosen"] == " Sure, here you go." and pair["rejected"] == " No."
    assert pair["prompt"] + pair["chosen"] == chosen
    with pytest.raises(data.PersonaDataError, match="row 0"):
        data.hh_rlhf_pairs([{"chosen": "no turns", "rejected": "no turns"}])


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"question": "q"}), "missing field"),
        (json.dumps(_row() | {"answer_matching_behavior": "Yes"}), "answers"),
        (json.dumps(_row() | {"answer_not_matching_behavior": " Yes"}), "answers"),
        (json.dumps(_row(confidence=1.5)), "label_confidence"),
        (json.dumps(_row() | {"statement": ""}), "statement"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, "tea", [_row(), _row(yes=False), bad])
    with pytest.raises(data.PersonaDataError, match=message) as info:
        data.load_persona(tmp_path)
    assert f"{path}:3" in str(info.value)


def test_missing_or_empty_folder_says_how_to_get_data(tmp_path):
    for folder in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(data.PersonaDataError, match="python -m dpo_utils.corpus") as info:
            data.load_persona(folder)
        assert "anthropics/evals" in str(info.value)


def test_upstream_layout_with_persona_subfolder(tmp_path):
    _write(tmp_path / "persona", "tea", [_row(), _row(yes=False)])
    assert list(data.load_persona(tmp_path)) == ["tea"]


def test_corpus_is_balanced_big_enough_and_in_upstream_format():
    persona = data.load_persona(data.corpus_dir())
    assert len(persona) >= 8
    shared = corpus.shared_words_by_behavior()
    assert sorted(shared.values()) == list(corpus.SHARED_LEVELS)
    for name, rows in persona.items():
        assert len(rows) >= 400
        answers = collections.Counter(r["answer_matching_behavior"] for r in rows)
        assert answers[" Yes"] == answers[" No"]
        assert all(r["question"] == f'{corpus.QUESTION_PREFIX}"{r["statement"]}"' for r in rows)
        ambiguous = sum(r["label_confidence"] == 0.5 for r in rows) / len(rows)
        assert abs(ambiguous - shared[name] / 12) < 0.07  # the overlap knob is what the data shows


def test_corpus_words_carry_the_label_only_through_the_design():
    """A class-specific word never appears with the other label; shared words appear with both."""
    behavior = next(b for b in corpus.BEHAVIORS if corpus.shared_words_by_behavior()[b.name] == 0)
    rows = data.load_persona(data.corpus_dir(), behavior.name)[behavior.name]
    for row in rows:
        words = set(row["statement"].rstrip(".").replace(",", "").split())
        own = behavior.endorse if row["answer_matching_behavior"] == " Yes" else behavior.reject
        other = behavior.reject if own is behavior.endorse else behavior.endorse
        assert words & set(own) and not words & set(other)


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path):
    written = corpus.write_corpus(tmp_path)
    root = data.corpus_dir()
    for path in written:
        committed = root / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from the generator's output"
        )


def test_lm_corpus_is_independent_of_persona_files():
    texts = corpus.lm_texts(n_per_behavior=100)
    assert len(texts) == 100 * len(corpus.BEHAVIORS)
    assert all(t.endswith("\n Yes") or t.endswith("\n No") for t in texts)
    persona_texts = {
        r["question"] + "\n" + r["answer_matching_behavior"]
        for rows in data.load_persona(data.corpus_dir()).values()
        for r in rows
    }
    assert len(set(texts) - persona_texts) > 0.2 * len(texts)  # not a copy of the evaluation rows


@pytest.mark.skipif(
    not SAMPLE.is_dir(), reason="../shared/data/anthropic-persona-sample is not present"
)
def test_format_conformance_with_real_upstream_files():
    persona = data.load_persona(SAMPLE, [100, 54])
    assert list(persona) == ["subscribes-to-Buddhism", "desire-to-not-have-memory-erased"]
    for name, rows in persona.items():
        assert len(rows) == 1000
        assert collections.Counter(r["answer_matching_behavior"] for r in rows) == {
            " Yes": 500,
            " No": 500,
        }
        assert all(r["question"].startswith(corpus.QUESTION_PREFIX) for r in rows)
        train, test = data.split_rows(rows)
        assert (len(train), len(test)) == (900, 100)
        pairs = data.preference_pairs(train, name)
        assert all(p["prompt"].endswith('"\n') for p in pairs)


def test_config_source_names_the_project_corpus():
    from dpo_utils import config

    cfg = config.get_config("cpu")
    assert (
        data.load_persona(cfg.persona_source, 0).keys()
        == data.load_persona(data.corpus_dir(), 0).keys()
    )
    assert config.get_config("mistral-7b").persona_source == data.HUB_PERSONA_ID


def test_data_card_table_matches_the_corpus():
    card = (Path(__file__).resolve().parents[1] / "book" / "data_card.md").read_text()
    persona = data.load_persona(data.corpus_dir())
    design = {r["behavior"]: r for r in corpus.design_rows()}
    for name, rows in persona.items():
        ambiguous = sum(r["label_confidence"] == 0.5 for r in rows)
        expected = (
            f"| {name} | {design[name]['shared_words']} | {ambiguous} of {len(rows)} "
            f"| {design[name]['bayes_accuracy']:.3f}"
        )
        assert expected in card, expected
