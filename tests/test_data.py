"""Persona loader, the authors' numbering and split, preference pairs, and the project's corpus."""

from __future__ import annotations

import collections
import gzip
import json
import random
from pathlib import Path

import pytest

from dpo_utils import corpus, data, hh_rlhf

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
    (pair,) = hh_rlhf.hh_rlhf_pairs([{"chosen": chosen, "rejected": rejected}]).pairs
    assert (
        pair["prompt"].endswith("help?\n\nAssistant:") and pair["prompt"].count("Assistant:") == 2
    )
    assert pair["chosen"] == " Sure, here you go." and pair["rejected"] == " No."
    assert pair["prompt"] + pair["chosen"] == chosen
    with pytest.raises(data.PersonaDataError, match="0 pairs built, 1 rows skipped"):
        hh_rlhf.hh_rlhf_pairs([{"chosen": "no turns", "rejected": "no turns"}])


def test_hh_rlhf_rows_that_cannot_be_a_pair_are_skipped_and_counted():
    """One row whose transcripts differ before the last turn used to abort the whole load."""
    good = dict(chosen="\n\nHuman: a\n\nAssistant: yes", rejected="\n\nHuman: a\n\nAssistant: no")
    forked = dict(
        chosen="\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: yes",
        rejected="\n\nHuman: a\n\nAssistant: y\n\nHuman: b\n\nAssistant: no",
    )
    broken = dict(chosen="\n\nHuman: a", rejected="\n\nHuman: a\n\nAssistant: no")
    result = hh_rlhf.hh_rlhf_pairs([good, forked, good, broken, good])
    assert len(result.pairs) == 3 and result.n_skipped == 2
    assert result.skipped == {
        "no assistant turn": [3],
        "transcripts differ before the last turn": [1],
    }
    assert result.report() == (
        "3 pairs built, 2 rows skipped (1 no assistant turn; "
        "1 transcripts differ before the last turn)."
    )


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
    persona = data.load_persona(data.CORPUS_SOURCE)
    assert len(persona) == len(corpus.DESIGN) == 8
    for name, rows in persona.items():
        assert len(rows) >= 400
        answers = collections.Counter(r["answer_matching_behavior"] for r in rows)
        assert answers[" Yes"] == answers[" No"]
        assert all(r["question"] == f'{corpus.QUESTION_PREFIX}"{r["statement"]}"' for r in rows)
        share = corpus.DESIGN[name][1]
        for answer in (" Yes", " No"):  # the ambiguous share is the design's, in each class
            in_class = [r for r in rows if r["answer_matching_behavior"] == answer]
            ambiguous = sum(r["label_confidence"] == 0.5 for r in in_class)
            assert ambiguous == round(share * len(in_class))


def _words(statement):
    return set(statement.rstrip(".").replace(",", "").split())


def test_corpus_knobs_are_what_the_statements_hold():
    """Informative statements hold exactly n own-class words and no other-class word; ambiguous
    ones only neutral words; each behaviour uses only its own two templates."""
    for behavior in corpus.BEHAVIORS:
        n, _, _ = corpus.DESIGN[behavior.name]
        index = corpus.BEHAVIORS.index(behavior)
        templates = corpus.TEMPLATES[2 * index : 2 * index + 2]
        rows = data.load_persona(data.CORPUS_SOURCE, behavior.name)[behavior.name]
        for row in rows:
            words = _words(row["statement"])
            yes = row["answer_matching_behavior"] == " Yes"
            own, other = (
                (behavior.endorse, behavior.reject) if yes else (behavior.reject, behavior.endorse)
            )
            expected = 0 if row["label_confidence"] == 0.5 else n
            assert len(words & set(own)) == expected and not words & set(other)
            assert len(words & set(behavior.neutral)) == corpus.SLOTS - expected
            assert any(row["statement"].startswith(t.split("{")[0]) for t in templates), row[
                "statement"
            ]


def test_corpus_design_separates_the_two_knobs():
    """Along 'distinguishability' the ambiguous share is fixed; along 'ambiguity' (1 - a) n = 1."""
    rows = corpus.design_rows()
    by_knob = collections.defaultdict(list)
    for r in rows:
        by_knob[r["knob"]].append(r)
    reference = by_knob["reference"][0]
    first = by_knob["distinguishability"] + [reference]
    assert {r["ambiguous_share"] for r in first} == {0.0}
    assert sorted(r["label_words"] for r in first) == [1, 2, 3]
    second = by_knob["ambiguity"] + [reference]
    assert all(abs((1 - r["ambiguous_share"]) * r["label_words"] - 1) < 1e-3 for r in second)
    assert len({r["ambiguous_share"] for r in second}) == 3
    assert [r["bayes_accuracy"] for r in by_knob["null"]] == [0.5]


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path):
    written = corpus.write_corpus(tmp_path)
    root = data.corpus_dir()
    for path in written:
        committed = root / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from the generator's output"
        )


def _sums():
    lines = (data.persona_dir() / "SHA256SUMS.uncompressed").read_text().splitlines()
    out = {}
    for line in lines:
        digest, name, _, number = line.replace("(behaviour ", "( ").split()[:4]
        out[name] = (digest, int(number.rstrip(")")))
    return out


def test_vendored_files_are_the_upstream_files_byte_for_byte():
    import gzip
    import hashlib

    sums = _sums()
    files = sorted(p.name for p in data.persona_dir().glob("*.jsonl.gz"))
    assert files == sorted(f"{name}.gz" for name in sums) and len(files) == 32
    for name, (digest, _) in sums.items():
        raw = gzip.decompress((data.persona_dir() / f"{name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest, name
    for extra in ("LICENSE-CC-BY-4.0.txt", "README.md"):
        assert (data.persona_dir() / extra).is_file()
    readme = (data.persona_dir() / "README.md").read_text()
    assert "84fcc677e52e1902d696c32cd1a6b663e70d3993" in readme and "2212.09251" in readme


def test_vendored_numbering_is_the_authors():
    """The SHA256SUMS file's numbers are the authors' numbers, and they resolve in this folder."""
    available = data.available_behaviors(data.PERSONA_SOURCE)
    for name, (_, number) in _sums().items():
        assert data.resolve_behaviors(number, available) == [name[: -len(".jsonl")]]
    assert data.resolve_behaviors(list(data.AUTHORS_BEHAVIORS), available) == [
        "desire-to-cooperate-with-different-AIs-to-achieve-its-goals",
        "desire-to-not-have-memory-erased",
        "okay-with-building-an-AI-with-different-goals-to-accomplish-its-task",
        "optionality-increasing",
        "subscribes-to-Buddhism",
        "subscribes-to-average-utilitarianism",
        "willingness-to-be-non-HHH-to-not-have-current-goals-changed-by-training",
        "willingness-to-make-acausal-trades-with-other-AIs-to-help-humanity",
    ]
    assert set(data.VENDORED_BEHAVIORS) == {n for _, n in _sums().values()}


def test_featured_lists_are_disjoint_and_cover_the_vendored_behaviours():
    fmt, ev = set(data.FORMAT_BEHAVIORS), set(data.EVALUATION_BEHAVIORS)
    assert not fmt & ev and fmt | ev == set(data.VENDORED_BEHAVIORS)
    assert set(data.AUTHORS_BEHAVIORS) <= ev and len(ev) == 20 and len(fmt) == 12


def test_gzip_and_plain_files_load_alike(tmp_path):
    import gzip

    rows = [_row(), _row("I like coffee.", yes=False)]
    _write(tmp_path / "plain", "tea", rows)
    (tmp_path / "gz").mkdir()
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "gz" / "tea.jsonl.gz").write_bytes(gzip.compress(payload))
    assert data.load_persona(tmp_path / "gz") == data.load_persona(tmp_path / "plain")
    _write(tmp_path / "gz", "tea", rows)
    with pytest.raises(data.PersonaDataError, match="twice"):
        data.available_behaviors(tmp_path / "gz")


def test_real_behaviours_are_balanced_and_split_as_the_authors_split():
    persona = data.load_persona(data.PERSONA_SOURCE, [84, 130])
    for _name, rows in persona.items():
        assert len(rows) == 1000
        assert collections.Counter(r["answer_matching_behavior"] for r in rows) == {
            " Yes": 500,
            " No": 500,
        }
        train, test = data.split_rows(rows)
        assert (len(train), len(test)) == (900, 100)


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


def test_config_source_names_the_real_behaviours():
    from dpo_utils import config

    cfg = config.get_config("cpu")
    assert cfg.persona_source == data.PERSONA_SOURCE
    assert data.load_persona(cfg.persona_source, 84).keys() == {data.PERSONA_BEHAVIORS[84]}
    assert tuple(cfg.behaviors) == data.AUTHORS_BEHAVIORS
    assert len(data.load_persona(data.CORPUS_SOURCE)) == 8  # the corpus stays selectable
    assert config.get_config("mistral-7b").persona_source == data.HUB_PERSONA_ID


def test_data_card_table_matches_the_corpus():
    card = (Path(__file__).resolve().parents[1] / "book" / "data_card.md").read_text()
    persona = data.load_persona(data.CORPUS_SOURCE)
    design = {r["behavior"]: r for r in corpus.design_rows()}
    for name, rows in persona.items():
        ambiguous = sum(r["label_confidence"] == 0.5 for r in rows)
        d = design[name]
        expected = (
            f"| {name} | {d['knob']} | {d['label_words']} | {ambiguous} of {len(rows)} "
            f"| {d['bayes_accuracy']:.3f}"
        )
        assert expected in card, expected


def test_a_persona_file_is_read_once_and_callers_get_copies(tmp_path):
    """load_persona keeps each file's validated rows for the process (keyed by path, mtime and
    size); a caller that changes a row does not change what the next caller gets, and a file
    that changes on disk is read again."""
    source = data.source_folder("persona")
    name = data.available_behaviors("persona")[0]
    first = data.load_persona("persona", [name])[name]
    kept = len(data._READ)
    first[0]["statement"] = "changed by a caller"
    again = data.load_persona("persona", [name])[name]
    assert len(data._READ) == kept  # read once: the second load came from the memo
    assert again[0]["statement"] != "changed by a caller"
    folder = tmp_path / "persona"
    folder.mkdir()
    path = data._behavior_files(source)[name]
    copy = folder / path.name
    copy.write_bytes(path.read_bytes())
    assert data.load_persona(folder, [name])[name] == again
    rows = again[:-1]  # fewer rows: a new size, so the memo cannot serve the old ones
    with gzip.open(copy, "wt") if copy.name.endswith(".gz") else open(copy, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    assert len(data.load_persona(folder, [name])[name]) == len(again) - 1
